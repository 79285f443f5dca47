//! `engram reembed`'s rounds, alike on both backends: read a batch of
//! memories in key order and embed their texts again. Writing the vectors
//! back, and what the store records afterwards, stay with each backend.

use sqlx::{Connection, Database, Encode, Executor, FromRow, Type};

use super::Dialect;
use crate::embed::Embedder;
use crate::store::{StoreError, db};

/// Memories read, embedded and written per round.
pub(in crate::store) const REEMBED_BATCH: i64 = 256;

/// The next memories to re-embed, with their new vectors: up to
/// [`REEMBED_BATCH`] rows (key, text) after `after`, in key order, read on
/// `conn` by the backend's statement `sql` (parameters: `after`, the batch
/// size). Empty when every memory is done.
pub(in crate::store) async fn next_batch<C, K>(
    conn: &mut C,
    sql: &'static str,
    after: K,
    embedder: &dyn Embedder,
) -> Result<Vec<(K, Vec<f32>)>, StoreError>
where
    C: Connection<Database: Dialect>,
    for<'c> &'c mut C: Executor<'c, Database = C::Database>,
    K: for<'t> Encode<'t, C::Database> + Type<C::Database> + Send + Unpin,
    (K, String): for<'r> FromRow<'r, <C::Database as Database>::Row>,
    i64: for<'t> Encode<'t, C::Database> + Type<C::Database>,
{
    let rows: Vec<(K, String)> = sqlx::query_as(sql)
        .bind(after)
        .bind(REEMBED_BATCH)
        .fetch_all(&mut *conn)
        .await
        .map_err(db("reading memories to re-embed"))?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (keys, texts): (Vec<K>, Vec<String>) = rows.into_iter().unzip();
    let vectors = embedder.embed_documents(&texts).await?;
    Ok(keys.into_iter().zip(vectors).collect())
}
