//! The keyword postings: written with a memory's text, and rebuilt at open
//! when they predate this build's [`crate::keywords`].

use sqlx::PgConnection;
use uuid::Uuid;

use super::db;
use crate::keywords::{self, DocumentTerms};
use crate::model::MemoryId;
use crate::store::StoreError;

/// store_info's `keyword_index` once every current memory's postings are
/// the ones [`keywords::document_terms`] makes; anything else (or nothing)
/// and [`PgStore::open`] rebuilds them.
pub(super) const KEYWORD_INDEX: &str = keywords::INDEX_VERSION;

/// Memories read, cut into terms and written per statement by that rebuild.
pub(super) const REINDEX_BATCH: i64 = 1000;

/// A memory's postings as the columns `unnest` reads: terms, and how often each occurs.
pub(super) fn posting_columns(terms: &DocumentTerms) -> (Vec<&str>, Vec<i32>) {
    terms
        .counts
        .iter()
        .map(|(term, tf)| (term.as_str(), i32::try_from(*tf).unwrap_or(i32::MAX)))
        .unzip()
}

/// `memories.keyword_length` for these terms.
pub(super) fn keyword_length(terms: &DocumentTerms) -> i32 {
    i32::try_from(terms.length).unwrap_or(i32::MAX)
}

/// Writes the postings of memory `id` of the user, whose text now has
/// `terms` (its old postings, if any, already dropped by the trigger).
pub(super) async fn index_terms(
    conn: &mut PgConnection,
    user_id: &str,
    id: MemoryId,
    terms: &DocumentTerms,
) -> Result<(), StoreError> {
    let (words, counts) = posting_columns(terms);
    sqlx::query(
        "INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
         SELECT $1, t.term, $2, t.tf, $5 FROM unnest($3::text[], $4::integer[]) AS t (term, tf)",
    )
    .bind(user_id)
    .bind(id.0)
    .bind(&words)
    .bind(&counts)
    .bind(keyword_length(terms))
    .execute(&mut *conn)
    .await
    .map_err(db("indexing a memory's keywords"))?;
    Ok(())
}

/// Brings the keyword postings up to this build when store_info's
/// `keyword_index` is not [`KEYWORD_INDEX`] (the first open after the
/// migration that introduced them, or a store whose marker an operator
/// cleared): every current memory's text is cut into terms again and its
/// postings and keyword length rewritten, inside the caller's transaction
/// under the schema lock, so a second process opening meanwhile waits and
/// then finds the work done. A fresh database has nothing to rebuild and is
/// marked at once.
///
/// Setting a memory's keyword length writes a new version of its wide row,
/// and every index gets an entry for it; in the vector index each costs a
/// graph insertion (~4 ms: 200k memories took 13 minutes). So when lengths
/// must change, the vector index is dropped first and the caller's
/// `ensure_vector_index` builds it again, as `reembed` does.
pub(super) async fn ensure_keyword_index(tx: &mut PgConnection) -> Result<(), StoreError> {
    let marker: Option<String> =
        sqlx::query_scalar("SELECT value FROM store_info WHERE key = 'keyword_index'")
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading the keyword index version"))?;
    if marker.as_deref() == Some(KEYWORD_INDEX) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    sqlx::query("DELETE FROM keyword_postings")
        .execute(&mut *tx)
        .await
        .map_err(db("clearing the keyword postings"))?;
    let (mut memories, mut postings, mut rewritten) = (0u64, 0u64, 0u64);
    let mut after = Uuid::nil();
    loop {
        let rows: Vec<(Uuid, String, String, i32)> = sqlx::query_as(
            "SELECT id, user_id, content, keyword_length FROM memories \
             WHERE valid_to IS NULL AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(REINDEX_BATCH)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("reading memories to index"))?;
        let Some((last, ..)) = rows.last() else { break };
        after = *last;
        // Postings as parallel columns, and the lengths that changed.
        let (mut users, mut words, mut ids, mut counts, mut lengths) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut changed, mut changed_lengths) = (Vec::new(), Vec::new());
        for (id, user_id, content, stored_length) in &rows {
            let terms = keywords::document_terms(content);
            let length = keyword_length(&terms);
            for (term, tf) in &terms.counts {
                users.push(user_id.as_str());
                words.push(term.clone());
                ids.push(*id);
                counts.push(i32::try_from(*tf).unwrap_or(i32::MAX));
                lengths.push(length);
            }
            if length != *stored_length {
                changed.push(*id);
                changed_lengths.push(length);
            }
        }
        if !changed.is_empty() && rewritten == 0 {
            for statement in [
                "DROP INDEX IF EXISTS memories_embedding_hnsw",
                "DROP INDEX IF EXISTS memories_embedding_diskann",
            ] {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("dropping the vector index for the keyword rebuild"))?;
            }
        }
        // The memories_count_update trigger moves the users' total lengths
        // along with the memories' own.
        sqlx::query(
            "WITH p AS (INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
                        SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], \
                                             $4::integer[], $5::integer[])) \
             UPDATE memories m SET keyword_length = v.length \
             FROM unnest($6::uuid[], $7::integer[]) AS v (id, length) WHERE m.id = v.id",
        )
        .bind(&users)
        .bind(&words)
        .bind(&ids)
        .bind(&counts)
        .bind(&lengths)
        .bind(&changed)
        .bind(&changed_lengths)
        .execute(&mut *tx)
        .await
        .map_err(db("writing keyword postings"))?;
        memories += rows.len() as u64;
        postings += ids.len() as u64;
        rewritten += changed.len() as u64;
    }
    // Recounted rather than trusted; and every user moves to a new version,
    // as their keyword scores may have changed.
    sqlx::query(
        "UPDATE memory_users u SET keyword_length = s.total \
         FROM (SELECT user_id, sum(keyword_length) AS total FROM memories \
               WHERE valid_to IS NULL GROUP BY user_id) s \
         WHERE u.user_id = s.user_id AND u.keyword_length <> s.total",
    )
    .execute(&mut *tx)
    .await
    .map_err(db("summing keyword lengths"))?;
    sqlx::query("UPDATE memory_users SET version = nextval('engram_write_version')")
        .execute(&mut *tx)
        .await
        .map_err(db("moving user versions"))?;
    sqlx::query(
        "INSERT INTO store_info (key, value) VALUES ('keyword_index', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(KEYWORD_INDEX)
    .execute(&mut *tx)
    .await
    .map_err(db("recording the keyword index version"))?;
    if memories > 0 {
        tracing::info!(
            memories,
            postings,
            lengths_rewritten = rewritten,
            seconds = started.elapsed().as_secs_f64(),
            "keyword postings rebuilt{}",
            if rewritten > 0 {
                "; the vector index is built again next"
            } else {
                ""
            }
        );
    }
    Ok(())
}
