//! Per-user write generations: one store-wide sequence, and each user's
//! latest value, which is the user's cache version ([`Versions`]) and what
//! the vector copy is checked against.

use async_trait::async_trait;
use sqlx::sqlite::SqliteConnection;

use super::{SqliteStore, db};
use crate::store::{StoreError, Versions};

#[async_trait]
impl Versions for SqliteStore {
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        let g: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM user_generations WHERE user_id = ?")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading the user's version"))?;
        Ok(g.map(|g| g as u64))
    }
}

pub(super) async fn generation(
    conn: &mut SqliteConnection,
    user_id: &str,
) -> Result<i64, StoreError> {
    let g: Option<i64> =
        sqlx::query_scalar("SELECT generation FROM user_generations WHERE user_id = ?")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db("reading the user's generation"))?;
    Ok(g.unwrap_or(0))
}

/// The next value of the store-wide write sequence (never reused).
pub(super) async fn next_write_seq(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    sqlx::query_scalar("UPDATE write_seq SET value = value + 1 WHERE one = 1 RETURNING value")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("advancing the write sequence"))
}

/// Moves every user to one new generation: what every user had cached or
/// copied in process is stale (a re-embed, a keyword re-index).
pub(super) async fn advance_every_generation(
    conn: &mut SqliteConnection,
) -> Result<(), StoreError> {
    let next = next_write_seq(conn).await?;
    sqlx::query("UPDATE user_generations SET generation = ?")
        .bind(next)
        .execute(&mut *conn)
        .await
        .map_err(db("advancing generations"))?;
    Ok(())
}

pub(super) async fn bump_generation(
    conn: &mut SqliteConnection,
    user_id: &str,
) -> Result<i64, StoreError> {
    let next = next_write_seq(conn).await?;
    sqlx::query(
        "INSERT INTO user_generations (user_id, generation) VALUES (?, ?) \
         ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation",
    )
    .bind(user_id)
    .bind(next)
    .execute(&mut *conn)
    .await
    .map_err(db("recording the user's generation"))?;
    Ok(next)
}
