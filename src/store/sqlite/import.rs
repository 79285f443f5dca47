//! [`WriteBatch::import`](crate::store::WriteBatch::import) on SQLite: a
//! memory written with its source's id, times and history, inside the
//! batch's `BEGIN IMMEDIATE` transaction (see `crate::store::imported` for
//! the invariants). The batch keeps the user's vector copy in step.

use chrono::Utc;
use sqlx::sqlite::SqliteConnection;

use super::vectors::encode_vector;
use super::write::{SqliteBatch, keep};
use super::{SqliteStore, db};
use crate::keywords;
use crate::model::MemoryId;
use crate::store::shared::content_hash_hex;
use crate::store::{ImportOutcome, ImportedMemory, StoreError};

impl SqliteBatch<'_> {
    /// Writes `imported` unless its id or its current text is already there.
    pub(super) async fn import_memory(
        &mut self,
        imported: ImportedMemory,
    ) -> Result<ImportOutcome, StoreError> {
        let user_id = self.user_id.clone();
        let new = &imported.memory;
        let mine: Option<i64> =
            sqlx::query_scalar("SELECT pk FROM memories WHERE id = ? AND user_id = ?")
                .bind(new.id.to_string())
                .bind(&user_id)
                .fetch_optional(&mut *self.tx)
                .await
                .map_err(db("finding a memory"))?;
        if mine.is_some() {
            return Ok(ImportOutcome::Present);
        }
        let current = imported.valid_to.is_none();
        if current
            && let Some(pk) =
                SqliteStore::exact_repeat(&mut self.tx, &user_id, &new.content, -1).await?
        {
            let existing = SqliteStore::fetch_memory(&mut self.tx, pk).await?;
            return Ok(ImportOutcome::Repeat(existing.id));
        }
        // Another user's id is found by the unique index refusing the row
        // (which undoes that statement alone): no read looks past the user.
        let pk = match insert_imported(&mut self.tx, &imported).await {
            Err(e) if is_taken_id(&e) => return Ok(ImportOutcome::IdTaken),
            Err(e) => {
                return Err(StoreError::Database {
                    context: "importing a memory",
                    source: e,
                });
            }
            Ok(pk) => pk,
        };
        self.generation = super::versions::bump_generation(&mut self.tx, &user_id).await?;
        if imported.searchable_at(Utc::now()) {
            keep(
                &mut self.copy.vecs,
                pk,
                new,
                &keywords::document_terms(&new.content),
            );
        }
        Ok(ImportOutcome::Added)
    }
}

/// Whether `e` is the unique index on memory ids refusing a row.
fn is_taken_id(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation() && d.message().contains("memories.id"))
}

/// The row, its vector and its history rows, as the source kept them;
/// returns the row's pk. The row goes first, alone: a refusal of its id
/// leaves nothing behind.
async fn insert_imported(
    conn: &mut SqliteConnection,
    imported: &ImportedMemory,
) -> Result<i64, sqlx::Error> {
    let new = &imported.memory;
    let pk: i64 = sqlx::query_scalar(
        "INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash, metadata, \
             categories, created_at, updated_at, valid_from, valid_to, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9, ?11, ?12) RETURNING pk",
    )
    .bind(new.id.to_string())
    .bind(new.scope.user_id().as_str())
    .bind(new.scope.agent_id())
    .bind(new.scope.run_id())
    .bind(&new.content)
    .bind(content_hash_hex(&new.content))
    .bind(to_json(&new.metadata)?)
    .bind(to_json(&new.categories)?)
    .bind(imported.created_at.timestamp_millis())
    .bind(imported.updated_at.timestamp_millis())
    .bind(imported.valid_to.map(|at| at.timestamp_millis()))
    .bind(new.expires_at.map(|at| at.timestamp_millis()))
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO memory_vectors (pk, embedding) VALUES (?, ?)")
        .bind(pk)
        .bind(encode_vector(&new.embedding))
        .execute(&mut *conn)
        .await?;
    for row in imported.history_rows() {
        insert_history(conn, new.id, new.scope.user_id().as_str(), &row).await?;
    }
    Ok(pk)
}

fn to_json(value: &impl serde::Serialize) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

async fn insert_history(
    conn: &mut SqliteConnection,
    id: MemoryId,
    user_id: &str,
    row: &crate::store::HistoryEntry,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO memory_history (memory_id, user_id, event, old_content, new_content, actor, \
         created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.to_string())
    .bind(user_id)
    .bind(row.event.as_str())
    .bind(row.old_memory.as_deref())
    .bind(row.new_memory.as_deref())
    .bind(&row.actor)
    .bind(row.created_at.timestamp_millis())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
