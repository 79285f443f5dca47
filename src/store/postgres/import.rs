//! [`WriteBatch::import`](crate::store::WriteBatch::import) on PostgreSQL: a
//! memory written with its source's id, times and history, inside the
//! batch's transaction under the user's write lock (see
//! `crate::store::imported` for the invariants).
//!
//! Row-level security shows the batch its user's rows only: an id held by
//! another user is found by the primary key refusing the row (after a
//! savepoint, so the batch goes on). The deduplication trigger runs with a
//! threshold no similarity reaches, so it refuses exact repeats only, as
//! the unique index on current texts would.

use uuid::Uuid;

use super::db;
use super::keyword_index::{keyword_length, posting_columns};
use super::write::{Dedup, PgBatch, refused_as_duplicate};
use crate::keywords;
use crate::model::MemoryId;
use crate::store::shared::content_hash;
use crate::store::{ImportOutcome, ImportedMemory, StoreError};

impl PgBatch<'_> {
    /// Writes `imported` unless its id or its current text is already there.
    pub(super) async fn import_memory(
        &mut self,
        imported: ImportedMemory,
    ) -> Result<ImportOutcome, StoreError> {
        self.lock().await?;
        let new = &imported.memory;
        // The user's own row (a superuser, whom no policy binds, sees
        // every user's: the filter says whose).
        let (conn, user_id) = self.with_user().await?;
        let mine: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM memories WHERE id = $1 AND user_id = $2")
                .bind(new.id.0)
                .bind(user_id)
                .fetch_optional(conn)
                .await
                .map_err(db("finding a memory"))?;
        if mine.is_some() {
            return Ok(ImportOutcome::Present);
        }
        let current = imported.valid_to.is_none();
        if current {
            let (conn, user_id) = self.with_user().await?;
            let repeat: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM memories WHERE user_id = $1 AND content_hash = $2 \
                 AND valid_to IS NULL AND (expires_at IS NULL OR expires_at > now())",
            )
            .bind(user_id)
            .bind(content_hash(&new.content))
            .fetch_optional(conn)
            .await
            .map_err(db("checking for duplicates"))?;
            if let Some(id) = repeat {
                return Ok(ImportOutcome::Repeat(MemoryId(id)));
            }
        }
        self.savepoint(Some(Dedup::exact_text(1))).await?;
        match insert_imported(self.conn().await?, &imported).await {
            Ok(()) => Ok(ImportOutcome::Added),
            Err(e) if is_primary_key_violation(&e) => {
                self.undo().await?;
                Ok(ImportOutcome::IdTaken)
            }
            Err(e) => match refused_as_duplicate(&e) {
                Some(near) => {
                    self.undo().await?;
                    let near = near?;
                    let id = near.first().map(|n| MemoryId(n.id)).ok_or_else(|| {
                        StoreError::Corrupt("a refused import named no memory".into())
                    })?;
                    Ok(ImportOutcome::Repeat(id))
                }
                None => Err(StoreError::Database {
                    context: "importing a memory",
                    source: e,
                }),
            },
        }
    }
}

fn is_primary_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("23505") && d.constraint() == Some("memories_pkey"))
}

/// The row, its history rows and (when current) its keyword postings, in
/// one statement; triggers keep the user's counts and version.
async fn insert_imported(
    conn: &mut sqlx::PgConnection,
    imported: &ImportedMemory,
) -> Result<(), sqlx::Error> {
    let new = &imported.memory;
    let terms = keywords::document_terms(&new.content);
    let (words, counts) = posting_columns(&terms);
    let history = imported.history_rows();
    let events: Vec<&str> = history.iter().map(|h| h.event.as_str()).collect();
    let old: Vec<Option<&str>> = history.iter().map(|h| h.old_memory.as_deref()).collect();
    let text: Vec<Option<&str>> = history.iter().map(|h| h.new_memory.as_deref()).collect();
    let actors: Vec<&str> = history.iter().map(|h| h.actor.as_str()).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> = history.iter().map(|h| h.created_at).collect();
    sqlx::query(
        "WITH m AS ( \
             INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash, \
                 embedding, metadata, categories, created_at, updated_at, valid_from, valid_to, \
                 keyword_length, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $12, $13, $14) \
             RETURNING id, user_id, keyword_length, valid_to), \
              h AS (INSERT INTO memory_history (memory_id, user_id, event, old_content, \
                        new_content, actor, created_at) \
                    SELECT m.id, m.user_id, e.event, e.old, e.new, e.actor, e.at \
                    FROM m, unnest($17::text[], $18::text[], $19::text[], $20::text[], \
                                   $21::timestamptz[]) WITH ORDINALITY \
                                   AS e (event, old, new, actor, at, n) \
                    ORDER BY e.n) \
         INSERT INTO keyword_postings (user_id, term, memory_id, tf, length) \
         SELECT m.user_id, t.term, m.id, t.tf, m.keyword_length \
         FROM m, unnest($15::text[], $16::integer[]) AS t (term, tf) WHERE m.valid_to IS NULL",
    )
    .bind(new.id.0)
    .bind(new.scope.user_id().as_str())
    .bind(new.scope.agent_id())
    .bind(new.scope.run_id())
    .bind(&new.content)
    .bind(content_hash(&new.content))
    .bind(pgvector::Vector::from(new.embedding.clone()))
    .bind(serde_json::Value::Object(new.metadata.clone()))
    .bind(&new.categories)
    .bind(imported.created_at)
    .bind(imported.updated_at)
    .bind(imported.valid_to)
    .bind(keyword_length(&terms))
    .bind(new.expires_at)
    .bind(&words)
    .bind(&counts)
    .bind(&events)
    .bind(&old)
    .bind(&text)
    .bind(&actors)
    .bind(&at)
    .execute(&mut *conn)
    .await
    .map(|_| ())
}
