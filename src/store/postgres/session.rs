//! How engram's connections are set up, and where each of its settings
//! lives so that it holds behind a transaction pooler (PgBouncer, Supavisor)
//! as well as on a direct connection.
//!
//! Two kinds of pool, by the URL they use:
//! * the **request pool** on `database_url`, which may be a transaction
//!   pooler: consecutive transactions of one client connection may run on
//!   different server sessions, so nothing may be left on a session and
//!   nothing may be expected from one. Its settings travel with each
//!   transaction ([`Settings::begin`]): `BEGIN; SELECT set_config(..., true),
//!   ...` in one simple-query message, so they cost no round trip (recall's
//!   hot path is `BEGIN`, one search statement, `COMMIT`), are
//!   transaction-local (they end with the transaction, and never reach
//!   another client of the pooler), and cannot be dropped by a pooler the
//!   way startup `options` are (PgBouncer refuses that startup parameter,
//!   or with `ignore_startup_parameters` silently drops it);
//! * **session pools** (setup, operator-wide work) on a direct URL (or a
//!   session-mode pooler): their settings are set once per connection,
//!   session-wide, by [`Settings::session`] right after it connects.
//!
//! Invariants:
//! * no connection is ever opened with startup `options`; the startup
//!   packet carries only what every pooler accepts (user, database,
//!   `application_name`, and sqlx's `DateStyle`, `client_encoding`, `TimeZone`);
//! * nothing is set session-wide on the request pool but, on a direct
//!   connection, its statement bound ([`Settings::direct_bound`]): a
//!   session setting through a transaction pooler would leak to whichever
//!   client gets that server session next (`engram.all_users` would lift
//!   row-level security);
//! * behind a transaction pooler ([`Pooler::Transaction`]) every statement
//!   of the request pool runs inside a transaction begun by
//!   [`Settings::begin`] (so its Parse and Bind reach the same server
//!   session), sqlx keeps no statement cache, and each transaction starts by
//!   dropping the prepared statements an earlier client left on that server
//!   session (see [`Pooler::Transaction`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor, PgConnection};

use super::{PlanSettings, redact};
use crate::store::StoreError;

/// What stands between engram and PostgreSQL on `database_url`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pooler {
    /// A direct connection, or a pooler in session mode: each client
    /// connection keeps one server session.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`,
    /// Supabase's pooler on port 6543): a server session per transaction.
    ///
    /// sqlx names its prepared statements `sqlx_s_1`, `sqlx_s_2`, ... per
    /// client connection, and even with its statement cache off it still
    /// names them (and never closes them): through such a pooler a second
    /// client meets the first one's on the same server session (`prepared
    /// statement "sqlx_s_1" already exists`). So the statement cache is
    /// off, and every transaction begins with `DEALLOCATE ALL` in the same
    /// message as `BEGIN`: the server session is then this transaction's
    /// until it ends, and holds no statement but its own. The price is a
    /// Parse (one round trip) per statement, which the cache saved.
    Transaction,
}

/// The settings of engram's connections: no JIT, the statement bound of
/// requests, and the plan settings `engram_exact_scan_limit` and the index
/// triggers read.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// `(name, value)`, values rendered by engram from numbers (no quotes in them).
    pairs: Vec<(&'static str, String)>,
    pooler: Pooler,
}

impl Settings {
    pub(super) fn new(plan: &PlanSettings, statement_timeout: Option<Duration>) -> Self {
        // JIT compiles plans whose estimated cost is high (an exact scan of a
        // large user looks expensive) and adds tens of milliseconds to them.
        let mut pairs = vec![("jit", "off".to_owned())];
        if let Some(limit) = statement_timeout {
            pairs.push(("statement_timeout", limit.as_millis().to_string()));
        }
        if let Some(rows) = plan.exact_scan_max_rows {
            pairs.push(("engram.exact_scan_max_rows", rows.to_string()));
        }
        if let Some(ratio) = plan.exact_scan_ratio {
            pairs.push(("engram.exact_scan_ratio", ratio.to_string()));
        }
        if let Some(ef) = plan.ef_search {
            pairs.push(("engram.ef_search", ef.to_string()));
        }
        if let Some(rows) = plan.index_from_rows {
            pairs.push(("engram.index_from_rows", rows.to_string()));
        }
        if let Some(rows) = plan.index_tail_rows {
            pairs.push(("engram.index_tail_rows", rows.to_string()));
        }
        Self {
            pairs,
            pooler: Pooler::None,
        }
    }

    /// For the request pool on a URL behind `pooler`.
    pub(super) fn behind(self, pooler: Pooler) -> Self {
        Self { pooler, ..self }
    }

    /// The same settings with `name` = `value` added (session pools' `engram.all_users`).
    pub(super) fn with(mut self, name: &'static str, value: &str) -> Self {
        self.pairs.push((name, value.to_owned()));
        self
    }

    /// `begin` (e.g. `BEGIN ISOLATION LEVEL REPEATABLE READ`) and then,
    /// in the same message, every setting transaction-local, plus `more`
    /// (further `set_config` calls, e.g. the transaction's user).
    pub(super) fn begin(&self, begin: &str, more: Option<&str>) -> String {
        let mut sql = format!("{begin}; ");
        if self.pooler == Pooler::Transaction {
            sql.push_str("DEALLOCATE ALL; ");
        }
        sql.push_str("SELECT ");
        let calls = self
            .pairs
            .iter()
            .map(|(name, value)| format!("set_config('{name}', '{value}', true)"))
            .chain(more.map(str::to_owned));
        sql.push_str(&calls.collect::<Vec<_>>().join(", "));
        sql
    }

    /// What stands between the request pool and PostgreSQL.
    pub(super) fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// Every setting's name and value, as two arrays in one order (for
    /// `engram_write_round`, which sets them transaction-local itself).
    pub(super) fn names_and_values(&self) -> (Vec<&str>, Vec<&str>) {
        self.pairs
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .unzip()
    }

    /// On a direct request connection, the statement that sets its
    /// statement bound session-wide, if it has one: the one setting a
    /// statement needs in force before it starts, for a statement sent
    /// outside `BEGIN` (a round, `round`), whose settings come too late for
    /// itself. The same value every transaction sets; never behind a
    /// transaction pooler (the module's invariants).
    pub(super) fn direct_bound(&self) -> Option<String> {
        if self.pooler != Pooler::None {
            return None;
        }
        self.pairs
            .iter()
            .find(|(name, _)| *name == "statement_timeout")
            .map(|(name, value)| format!("SELECT set_config('{name}', '{value}', false)"))
    }

    /// The statement that sets every setting for the rest of a session.
    pub(super) fn session(&self) -> String {
        let calls: Vec<String> = self
            .pairs
            .iter()
            .map(|(name, value)| format!("set_config('{name}', '{value}', false)"))
            .collect();
        format!("SELECT {}", calls.join(", "))
    }

    /// A pool of session connections on `connect`, each set up with these
    /// settings session-wide as it connects; made as calls need them.
    pub(super) fn session_pool(
        &self,
        connect: PgConnectOptions,
        max: u32,
        acquire_timeout: Duration,
    ) -> PgPool {
        let session = self.session();
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(true)
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move { apply(conn, session).await })
            })
            .connect_lazy_with(connect)
    }
}

/// Connects `pool` (a lazy one, on `url`) once: a lazy pool reports only
/// its timeout, this what is wrong (refused, auth, a certificate not trusted).
pub(super) async fn reachable(pool: &PgPool, url: &str) -> Result<(), StoreError> {
    pool.acquire()
        .await
        .map(drop)
        .map_err(|source| StoreError::Open {
            url: redact(url),
            source,
        })
}

/// Runs `sql` (settings of this code's own) on a connection as it connects.
pub(super) async fn apply(conn: &mut PgConnection, sql: String) -> Result<(), sqlx::Error> {
    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
        .await
        .map(|_| ())
}

/// How engram connects to `url`: as `engram`, with nothing in the startup
/// packet a pooler might refuse, and without sqlx's statement cache behind
/// a transaction pooler.
pub(super) fn connect_options(url: &str, pooler: Pooler) -> Result<PgConnectOptions, StoreError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|source| StoreError::Open {
            url: redact(url),
            source,
        })?
        .application_name("engram")
        // PgBouncer refuses this startup parameter unless told to ignore it;
        // values travel in binary, and PostgreSQL 12+ prints floats exactly
        // by default, so it changes nothing here.
        .extra_float_digits(None);
    Ok(match pooler {
        Pooler::None => options,
        Pooler::Transaction => options.statement_cache_capacity(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PlanSettings {
        PlanSettings {
            exact_scan_max_rows: Some(10),
            ef_search: Some(80),
            ..PlanSettings::default()
        }
    }

    #[test]
    fn a_transaction_carries_every_setting_locally_in_one_message() {
        let settings = Settings::new(&plan(), Some(Duration::from_millis(5000)));
        assert_eq!(
            settings.begin("BEGIN", Some("f()")),
            "BEGIN; SELECT set_config('jit', 'off', true), \
             set_config('statement_timeout', '5000', true), \
             set_config('engram.exact_scan_max_rows', '10', true), \
             set_config('engram.ef_search', '80', true), f()"
        );
    }

    #[test]
    fn only_a_direct_connection_takes_its_statement_bound_session_wide() {
        let bounded = Settings::new(&plan(), Some(Duration::from_millis(5000)));
        assert_eq!(
            bounded.direct_bound().as_deref(),
            Some("SELECT set_config('statement_timeout', '5000', false)")
        );
        assert_eq!(bounded.behind(Pooler::Transaction).direct_bound(), None);
        assert_eq!(Settings::new(&plan(), None).direct_bound(), None);
    }

    #[test]
    fn behind_a_transaction_pooler_a_transaction_first_drops_old_statements() {
        let settings = Settings::new(&PlanSettings::default(), None).behind(Pooler::Transaction);
        assert_eq!(
            settings.begin("BEGIN READ ONLY", None),
            "BEGIN READ ONLY; DEALLOCATE ALL; SELECT set_config('jit', 'off', true)"
        );
    }

    #[test]
    fn sessions_set_the_same_settings_for_good() {
        let settings = Settings::new(&plan(), None).with("engram.all_users", "on");
        assert_eq!(
            settings.session(),
            "SELECT set_config('jit', 'off', false), \
             set_config('engram.exact_scan_max_rows', '10', false), \
             set_config('engram.ef_search', '80', false), \
             set_config('engram.all_users', 'on', false)"
        );
    }

    #[test]
    fn no_startup_options_and_no_statement_cache_behind_a_pooler() {
        let url = "postgres://u@db:6543/engram";
        let direct = connect_options(url, Pooler::None).unwrap();
        assert_eq!(direct.get_options(), None);
        let pooled = connect_options(url, Pooler::Transaction).unwrap();
        assert_eq!(pooled.get_options(), None);
        assert_eq!(pooled.get_application_name(), Some("engram"));
    }
}
