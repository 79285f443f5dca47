//! Whose rows a connection sees: the settings the row-level security
//! policies read (migration `row_level_security`).
//!
//! Invariants:
//! * every statement about one user's rows runs in a transaction begun by
//!   [`PgStore::user_transaction`], whose first statement sets
//!   `engram.user_id` to that user, transaction-local: PostgreSQL then shows
//!   and accepts that user's rows only, whatever the statement's own filter
//!   says, and the setting ends with the transaction, so it never follows a
//!   pooled connection to its next use;
//! * `engram.all_users=on` is a session setting of the operator pool and of
//!   the setup connections alone (work that spans users by design: keys
//!   looked up by hash, the re-extraction queue, the purge, key rotation, the
//!   audit trail, migrations). The request pool never has it.
//!
//! Setting the user costs no round trip of its own: it travels with `BEGIN`
//! in one simple-query message, beside the connection settings (`session`).

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Transaction};

use super::{PgStore, db};
use crate::store::StoreError;

/// The session setting that lets a connection see every user's rows.
pub(super) const ALL_USERS: (&str, &str) = ("engram.all_users", "on");

/// Connections the operator pool may hold: its work is occasional.
pub(super) const OPERATOR_POOL_SIZE: u32 = 4;

impl PgStore {
    /// A transaction on the request pool in which PostgreSQL shows and
    /// accepts only `user_id`'s rows of the per-user tables, even to a
    /// statement that names no user. What every per-user call of this store
    /// runs in; public so that a test, or an extension, can run its own SQL
    /// under the same policy.
    pub async fn user_transaction(
        &self,
        user_id: &str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.begin_for(user_id, "BEGIN", "starting a transaction")
            .await
    }

    /// As [`Self::user_transaction`], with `then` (statements of this code's
    /// own, no parameters) run after the settings in the same message: a
    /// write's first savepoint travels with its `BEGIN`.
    pub(super) async fn user_transaction_then(
        &self,
        user_id: &str,
        then: &str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let begin = self.settings.begin("BEGIN", Some(&scoped_to(user_id)));
        self.begin_with_sql(format!("{begin}; {then}"), "starting a write")
            .await
    }

    /// As [`Self::user_transaction`], begun with `begin` (e.g. `BEGIN
    /// ISOLATION LEVEL REPEATABLE READ READ ONLY`); `context` names the work
    /// in errors.
    pub(super) async fn begin_for(
        &self,
        user_id: &str,
        begin: &str,
        context: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.begin_on_pool(begin, Some(&scoped_to(user_id)), context)
            .await
    }

    /// A transaction on the request pool scoped to no user, for what is not
    /// one user's (the audit trail): every statement on the request pool
    /// runs in a transaction begun here or by [`Self::begin_for`], so that
    /// it holds through a transaction pooler (`session`).
    pub(super) async fn begin_unscoped(
        &self,
        context: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.begin_on_pool("BEGIN", None, context).await
    }

    async fn begin_on_pool(
        &self,
        begin: &str,
        scope: Option<&str>,
        context: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.begin_with_sql(self.settings.begin(begin, scope), context)
            .await
    }

    /// A transaction on the request pool begun by `sql`, one simple-query
    /// message that starts with a `BEGIN` and the settings.
    pub(super) async fn begin_with_sql(
        &self,
        sql: String,
        context: &'static str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let started = std::time::Instant::now();
        let tx = self
            .pool
            .begin_with(sqlx::AssertSqlSafe(sql))
            .await
            .map_err(db(context));
        crate::metrics::metrics()
            .pool_acquire
            .observe(started.elapsed().as_secs_f64());
        tx
    }

    /// A connection of the request pool, outside any transaction: for a
    /// statement that is a transaction of its own (a round on a direct
    /// connection). `context` names the work in errors.
    pub(super) async fn acquire_request(
        &self,
        context: &'static str,
    ) -> Result<PoolConnection<Postgres>, StoreError> {
        let started = std::time::Instant::now();
        let conn = self.pool.acquire().await.map_err(db(context));
        crate::metrics::metrics()
            .pool_acquire
            .observe(started.elapsed().as_secs_f64());
        conn
    }

    /// Ends `tx`, which only read, without waiting for its end. Dropped, it
    /// is rolled back: sqlx queues the ROLLBACK on the connection, and the
    /// pool sends it as it takes the connection back, off the caller's task
    /// and before the connection's next use, so the user's setting still
    /// ends with the transaction. For a transaction that wrote nothing, a
    /// rollback is a commit; the caller saves a round trip (0.1-0.3 ms here).
    pub(super) fn end_read(tx: Transaction<'static, Postgres>) {
        drop(tx);
    }

    /// The pool of operator-wide work, which sees every user's rows.
    pub(super) fn operator(&self) -> &PgPool {
        &self.operator
    }
}

/// The call that scopes a transaction to `user_id`. The id travels
/// hex-encoded, so no character of it is ever read as SQL.
pub(super) fn scoped_to(user_id: &str) -> String {
    format!(
        "set_config('engram.user_id', {}, true)",
        text_literal(user_id)
    )
}

/// `text` as a SQL expression that never reads any of its characters as
/// SQL: hex-encoded, decoded by the server.
pub(super) fn text_literal(text: &str) -> String {
    let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    format!("convert_from(decode('{hex}', 'hex'), 'UTF8')")
}

#[cfg(test)]
mod tests {
    use super::scoped_to;

    #[test]
    fn the_user_never_reaches_the_sql_as_text() {
        let sql = scoped_to("o'brien'); DROP TABLE memories; --");
        assert!(!sql.contains("brien"), "{sql}");
        assert!(!sql.contains("DROP"), "{sql}");
        assert_eq!(
            scoped_to("ab"),
            "set_config('engram.user_id', convert_from(decode('6162', 'hex'), 'UTF8'), true)"
        );
    }
}
