//! Per-user write versions ([`Versions`]), moved by triggers
//! (migration `user_versions`).

use async_trait::async_trait;

use super::{PgStore, db};
use crate::store::{StoreError, Versions};

#[async_trait]
impl Versions for PgStore {
    async fn version(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        // Moved by the memories_version_* triggers (migration user_versions).
        let cx = "reading the user's version";
        let mut tx = self.user_transaction(user_id).await?;
        let v: Option<i64> =
            sqlx::query_scalar("SELECT version FROM memory_users WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(cx))?;
        tx.commit().await.map_err(db(cx))?;
        Ok(v.map(|v| v as u64))
    }
}
