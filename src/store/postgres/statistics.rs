//! Statistics for the tables that grow faster than autovacuum looks.
//!
//! PostgreSQL plans a statement that a session runs again and again (a
//! trigger's queries, a prepared statement) once, from the statistics of the
//! time, and keeps that plan until an ANALYZE of the table replaces them.
//! autovacuum analyzes a table once `autovacuum_analyze_threshold` rows plus
//! `autovacuum_analyze_scale_factor` of it have changed (50 and 10% by
//! default), but looks only every `autovacuum_naptime` (a minute). A store
//! that starts empty and takes thousands of memories in its first minute was
//! served all that time by plans made when its tables were empty, where every
//! index of `memories` that leads with `user_id` costs the same: the
//! duplicate check's same-text lookup was seen scanning all of a user's rows
//! through `memories_by_creation` instead of probing the unique index on
//! `(user_id, content_hash)` (docs/benchmarks.md, fifteenth run).
//!
//! So each store looks every second at the tables its hot statements read
//! ([`WATCHED`]), and analyzes those whose changes since their last analyze
//! have reached their size ([`GROWTH`]: autovacuum's base threshold, 50
//! rows, plus 100% of the rows), so a table is analyzed at each doubling.
//! A plan's choice between indexes moves with the table's size, which a
//! doubling tracks; autovacuum's finer 10% is left to autovacuum. (At
//! autovacuum's threshold, loading 10,000 memories in 35 s analyzed each
//! table 17-20 times, most of them in the last seconds, when an ANALYZE of
//! `memories` reads every row, 6 kB each at 1536 dimensions, in 175 ms, and
//! of `keyword_postings` in 100 ms; at a doubling, 4-6 times.)
//!
//! Invariants:
//! * an ANALYZE resets the table's count of changes, so autovacuum does not
//!   analyze it again for the same changes, and instances sharing a database
//!   mostly find nothing left to do; with `SKIP_LOCKED`, a table someone
//!   else is analyzing is left to them;
//! * a table this role may not analyze (it neither owns it nor holds
//!   MAINTAIN on it, which the runtime role is granted on PostgreSQL 17 and
//!   later) is never tried: autovacuum alone keeps it.

use std::time::Duration;

use sqlx::PgPool;

use super::background::{self, Background};
use super::{StoreError, db};

/// The tables whose plans every request depends on: `memories` (the
/// duplicate check, recall's reads) and `keyword_postings` (the keyword
/// search). Names of the store's own schema, written into statements as
/// they are.
pub(super) const WATCHED: [&str; 2] = ["memories", "keyword_postings"];

/// The share of a table's rows that must have changed since its last
/// analyze (beyond `autovacuum_analyze_threshold`) for the store to analyze
/// it again; autovacuum's own scale factor where that is larger.
const GROWTH: f64 = 1.0;

/// How long one ANALYZE may run: a large table's takes seconds (it reads
/// a sample of 30,000 rows), past the request connections' statement timeout.
const ANALYZE_TIMEOUT: &str = "10min";

/// The watched tables whose changes reach `autovacuum_analyze_threshold`
/// plus [`GROWTH`] of their rows, and that this role may analyze.
async fn due(operator: &PgPool) -> Result<Vec<&'static str>, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text \
         FROM unnest($1::text[]) AS w (name) \
         JOIN pg_class c ON c.oid = to_regclass(w.name) \
         JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE s.n_mod_since_analyze >= \
                   current_setting('autovacuum_analyze_threshold')::float8 \
                   + greatest(current_setting('autovacuum_analyze_scale_factor')::float8, $2) \
                     * greatest(c.reltuples, 0) \
           AND CASE WHEN current_setting('server_version_num')::integer >= 170000 \
                    THEN has_table_privilege(c.oid, 'MAINTAIN') \
                    ELSE pg_has_role(c.relowner, 'MEMBER') END",
    )
    .bind(WATCHED.as_slice())
    .bind(GROWTH)
    .fetch_all(operator)
    .await
    .map_err(db("looking for tables whose statistics are behind"))?;
    Ok(WATCHED
        .into_iter()
        .filter(|table| names.iter().any(|name| name == table))
        .collect())
}

/// Analyzes the watched tables that are due; returns those analyzed (or
/// left to whoever was analyzing them already).
async fn step(operator: &PgPool) -> Result<Vec<&'static str>, StoreError> {
    const CX: &str = "analyzing a table whose statistics are behind";
    let tables = due(operator).await?;
    for table in &tables {
        // In a transaction of its own, for a statement timeout of its own.
        let mut tx = operator.begin().await.map_err(db(CX))?;
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(ANALYZE_TIMEOUT)
            .execute(&mut *tx)
            .await
            .map_err(db(CX))?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ANALYZE (SKIP_LOCKED) {table}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(db(CX))?;
        tx.commit().await.map_err(db(CX))?;
    }
    Ok(tables)
}

/// Starts the task on `operator`: it looks every `every`.
pub(super) fn spawn(operator: PgPool, every: Duration) -> Background {
    let what = "tables whose statistics are behind could not be analyzed";
    background::repeat(what, every, move || {
        let operator = operator.clone();
        async move {
            let tables = step(&operator).await?;
            if !tables.is_empty() {
                tracing::debug!(?tables, "analyzed tables whose statistics were behind");
            }
            Ok(false)
        }
    })
}

impl super::PgStore {
    /// Analyzes now the watched tables that are due (tests and
    /// benchmarks); returns those analyzed.
    pub async fn analyze_stale_tables(&self) -> Result<Vec<&'static str>, StoreError> {
        step(self.operator()).await
    }
}
