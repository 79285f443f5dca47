//! The user's vectors: the in-process copy kept at the user's generation,
//! and exact cosines read from the stored f32 blobs.

use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::rows::{json_array, parse_id};
use super::versions::generation;
use super::{SqliteStore, db};
use crate::embed::dot;
use crate::keywords;
use crate::model::MemoryId;
use crate::store::StoreError;
use crate::store::vector_index::{RowOf, UserVectors};

impl SqliteStore {
    /// Keeps the in-process copy of `user_id` (vectors and keyword
    /// postings) at the user's generation, reloading from `conn` when it is
    /// behind; returns that generation.
    pub(super) async fn sync_vectors(
        &self,
        conn: &mut SqliteConnection,
        user_id: &str,
        vecs: &mut UserVectors,
    ) -> Result<i64, StoreError> {
        let generation = generation(conn, user_id).await?;
        if vecs.generation == Some(generation) {
            return Ok(generation);
        }
        // Expired memories are left out of the copy: no search or dedup
        // check counts them. One that expires after the load stays in the
        // copy until the next reload; the exact read below drops it.
        let rows = sqlx::query(concat!(
            "SELECT m.pk, m.id, m.agent_id, m.run_id, m.content, m.expires_at, v.embedding \
             FROM memories m JOIN memory_vectors v ON v.pk = m.pk \
             WHERE m.user_id = ? AND m.valid_to IS NULL AND ",
            unexpired!("m")
        ))
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("loading vectors"))?;
        vecs.reset(generation);
        for row in &rows {
            let embedding =
                decode_vector(row.try_get("embedding").map_err(db("reading a vector"))?)?;
            if embedding.len() != self.embedder.dims {
                return Err(StoreError::Corrupt(format!(
                    "a vector has {} dims, the store {}",
                    embedding.len(),
                    self.embedder.dims
                )));
            }
            let agent_id: Option<&str> = row.try_get("agent_id").map_err(db("reading a scope"))?;
            let run_id: Option<&str> = row.try_get("run_id").map_err(db("reading a scope"))?;
            let content: &str = row.try_get("content").map_err(db("reading a memory"))?;
            let expires_at: Option<i64> =
                row.try_get("expires_at").map_err(db("reading an expiry"))?;
            let memory = RowOf {
                agent_id,
                run_id,
                expires_at,
                ..RowOf::new(
                    row.try_get("pk").map_err(db("reading a vector"))?,
                    parse_id(row)?,
                )
            };
            vecs.push(memory, &embedding, &keywords::document_terms(content));
        }
        tracing::debug!(user_id, rows = rows.len(), generation, "loaded vectors");
        Ok(generation)
    }
}

/// Exact cosine similarity of `query` with the stored vectors of `pks` that
/// are current memories, with their ids, and the user's generation, read in
/// one statement.
pub(super) async fn exact_scores_and_ids(
    conn: &mut SqliteConnection,
    user_id: &str,
    pks: &[i64],
    query: &[f32],
) -> Result<(i64, Vec<(i64, MemoryId, f32)>), StoreError> {
    // The row without a pk carries the user's generation; the others a vector.
    let rows = sqlx::query(concat!(
        "SELECT NULL AS pk, NULL AS id, NULL AS embedding, \
                coalesce((SELECT generation FROM user_generations WHERE user_id = ?), 0) \
                AS generation \
         UNION ALL \
         SELECT * FROM (SELECT v.pk, m.id, v.embedding, NULL FROM json_each(?) j \
                        CROSS JOIN memory_vectors v ON v.pk = j.value \
                        JOIN memories m ON m.pk = v.pk WHERE m.valid_to IS NULL AND ",
        unexpired!("m"),
        ")"
    ))
    .bind(user_id)
    .bind(json_array(pks))
    .fetch_all(&mut *conn)
    .await
    .map_err(db("reading vectors"))?;
    let mut generation = None;
    let mut scores = Vec::with_capacity(pks.len());
    for row in &rows {
        let pk: Option<i64> = row.try_get("pk").map_err(db("reading a vector"))?;
        match pk {
            None => {
                generation = row
                    .try_get("generation")
                    .map_err(db("reading the user's generation"))?;
            }
            Some(pk) => {
                let v = decode_vector(row.try_get("embedding").map_err(db("reading a vector"))?)?;
                scores.push((pk, parse_id(row)?, dot(query, &v)));
            }
        }
    }
    let generation = generation.ok_or_else(|| StoreError::Corrupt("no generation row".into()))?;
    Ok((generation, scores))
}

/// Exact cosine similarity of `query` with the stored vectors of `pks`
/// (those still current), and the user's generation, in one statement.
pub(super) async fn exact_scores(
    conn: &mut SqliteConnection,
    user_id: &str,
    pks: &[i64],
    query: &[f32],
) -> Result<(i64, Vec<(i64, f32)>), StoreError> {
    let (generation, scores) = exact_scores_and_ids(conn, user_id, pks, query).await?;
    Ok((
        generation,
        scores
            .into_iter()
            .map(|(pk, _, cosine)| (pk, cosine))
            .collect(),
    ))
}

pub(super) fn encode_vector(v: &[f32]) -> Vec<u8> {
    crate::embed::to_le_bytes(v)
}

pub(super) fn decode_vector(bytes: Vec<u8>) -> Result<Vec<f32>, StoreError> {
    crate::embed::from_le_bytes(&bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("a vector blob of {} bytes", bytes.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.5, -1.25, 3.0];
        assert_eq!(decode_vector(encode_vector(&v)).unwrap(), v);
        assert!(decode_vector(vec![1, 2, 3]).is_err());
    }
}
