//! Each user's model tokens per UTC day ([`TokenUsage`]), in `token_usage`
//! (migration `token_usage`; `day` as `YYYY-MM-DD`).
//!
//! Invariant: [`TokenUsage::add_tokens`] is one upsert under the file's
//! write lock, so additions from any process on the file all count.

use async_trait::async_trait;
use chrono::NaiveDate;

use super::{SqliteStore, db};
use crate::store::{StoreError, TokenUsage};

/// A day as the `day` column holds it.
fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

#[async_trait]
impl TokenUsage for SqliteStore {
    async fn tokens_used(&self, user_id: &str, day: NaiveDate) -> Result<u64, StoreError> {
        let used: Option<i64> =
            sqlx::query_scalar("SELECT tokens FROM token_usage WHERE user_id = ? AND day = ?")
                .bind(user_id)
                .bind(day_text(day))
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading the user's token usage"))?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    async fn add_tokens(
        &self,
        user_id: &str,
        day: NaiveDate,
        tokens: u64,
    ) -> Result<u64, StoreError> {
        // Our own writers queue here rather than busy-wait on the file.
        let _writer = self.write_lock.lock().await;
        let total: i64 = sqlx::query_scalar(
            "INSERT INTO token_usage (user_id, day, tokens) VALUES (?, ?, ?) \
             ON CONFLICT (user_id, day) DO UPDATE SET tokens = tokens + excluded.tokens \
             RETURNING tokens",
        )
        .bind(user_id)
        .bind(day_text(day))
        .bind(i64::try_from(tokens).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
        .map_err(db("counting the user's tokens"))?;
        Ok(total.max(0) as u64)
    }

    async fn prune_token_usage(&self, before: NaiveDate) -> Result<u64, StoreError> {
        let _writer = self.write_lock.lock().await;
        let pruned = sqlx::query("DELETE FROM token_usage WHERE day < ?")
            .bind(day_text(before))
            .execute(&self.pool)
            .await
            .map_err(db("dropping old token usage"))?;
        Ok(pruned.rows_affected())
    }
}
