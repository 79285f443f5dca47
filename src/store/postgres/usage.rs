//! Each user's model tokens per UTC day ([`TokenUsage`]), in `token_usage`
//! (migration `token_usage`), under the row-level security policy of every
//! per-user table.
//!
//! Invariant: [`TokenUsage::add_tokens`] is one upsert, so additions from
//! any number of processes at once all count (a conflicting insert waits
//! for the row and adds to it).

use async_trait::async_trait;
use chrono::NaiveDate;

use super::{PgStore, db};
use crate::store::{StoreError, TokenUsage};

/// A count as the `bigint` column holds it.
fn column(tokens: u64) -> i64 {
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

#[async_trait]
impl TokenUsage for PgStore {
    async fn tokens_used(&self, user_id: &str, day: NaiveDate) -> Result<u64, StoreError> {
        let cx = "reading the user's token usage";
        let mut tx = self.user_transaction(user_id).await?;
        let used: Option<i64> =
            sqlx::query_scalar("SELECT tokens FROM token_usage WHERE user_id = $1 AND day = $2")
                .bind(user_id)
                .bind(day)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(cx))?;
        tx.commit().await.map_err(db(cx))?;
        Ok(used.unwrap_or(0).max(0) as u64)
    }

    async fn add_tokens(
        &self,
        user_id: &str,
        day: NaiveDate,
        tokens: u64,
    ) -> Result<u64, StoreError> {
        let cx = "counting the user's tokens";
        let mut tx = self.user_transaction(user_id).await?;
        let total: i64 = sqlx::query_scalar(
            "INSERT INTO token_usage (user_id, day, tokens) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, day) DO UPDATE SET tokens = token_usage.tokens + EXCLUDED.tokens \
             RETURNING tokens",
        )
        .bind(user_id)
        .bind(day)
        .bind(column(tokens))
        .fetch_one(&mut *tx)
        .await
        .map_err(db(cx))?;
        tx.commit().await.map_err(db(cx))?;
        Ok(total.max(0) as u64)
    }

    async fn prune_token_usage(&self, before: NaiveDate) -> Result<u64, StoreError> {
        // Every user's rows: the operator pool's work.
        let pruned = sqlx::query("DELETE FROM token_usage WHERE day < $1")
            .bind(before)
            .execute(self.operator())
            .await
            .map_err(db("dropping old token usage"))?;
        Ok(pruned.rows_affected())
    }
}
