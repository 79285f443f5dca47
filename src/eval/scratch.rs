//! The fresh store an evaluation fills and then throws away: a SQLite file
//! in a directory of its own under the temp dir, or a database created for
//! the run on a PostgreSQL server (`CREATE DATABASE engram_eval_<pid>_<random>`,
//! dropped `WITH (FORCE)` afterwards). The configured database is never opened.

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::{Connection, Executor, PgConnection};

use super::EvalError;
use crate::config::Config;
use crate::embed::EmbedderIdentity;
use crate::store::{PgOptions, PgStore, SqliteStore, Store, redact};

/// A scratch store and where it lives.
pub struct Scratch {
    pub store: Arc<dyn Store>,
    /// What it is, for the report (`sqlite, ...` or `postgres, ...`).
    pub description: String,
    place: Place,
}

enum Place {
    Sqlite { dir: PathBuf },
    Postgres { server: String, name: String },
}

/// `engram_eval_<pid>_<8 random hex digits>`: unique per run, a plain SQL identifier.
fn scratch_name() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("engram_eval_{}_{}", std::process::id(), &random[..8])
}

impl Scratch {
    /// A new, empty store: on the PostgreSQL server `postgres` names, else SQLite.
    pub async fn create(
        postgres: Option<&str>,
        config: &Config,
        identity: EmbedderIdentity,
    ) -> Result<Self, EvalError> {
        match postgres {
            Some(url) => Self::postgres(url, config, identity).await,
            None => Self::sqlite(config, identity).await,
        }
    }

    async fn sqlite(config: &Config, identity: EmbedderIdentity) -> Result<Self, EvalError> {
        let dir = std::env::temp_dir().join(scratch_name().replace('_', "-"));
        std::fs::create_dir_all(&dir).map_err(|e| {
            EvalError::Failed(format!(
                "cannot create the scratch directory {}: {e}",
                dir.display()
            ))
        })?;
        let url = format!("sqlite://{}", dir.join("eval.db").display());
        let store = match SqliteStore::open(&url, identity).await {
            Ok(store) => store.with_vector_cache_bytes(config.store.vector_cache_mb * 1024 * 1024),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        Ok(Self {
            store: Arc::new(store),
            description: format!(
                "sqlite, a scratch file in {} (removed after)",
                dir.display()
            ),
            place: Place::Sqlite { dir },
        })
    }

    async fn postgres(
        server: &str,
        config: &Config,
        identity: EmbedderIdentity,
    ) -> Result<Self, EvalError> {
        if !(server.starts_with("postgres://") || server.starts_with("postgresql://")) {
            return Err(EvalError::Failed(format!(
                "--postgres {}: expected a postgres://user@host:port/database URL",
                redact(server)
            )));
        }
        let name = scratch_name();
        let mut admin = connect(server).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .map_err(|e| {
                EvalError::Failed(format!(
                    "cannot create the scratch database {name} on {}: {e}",
                    redact(server)
                ))
            })?;
        let _ = admin.close().await;
        let place = Place::Postgres {
            server: server.to_owned(),
            name: name.clone(),
        };
        let options = PgOptions {
            pool_size: config.store.pool_size,
            acquire_timeout: std::time::Duration::from_millis(config.store.timeout_ms),
            statement_timeout: Some(std::time::Duration::from_millis(
                config.store.statement_timeout_ms,
            )),
            migrate: true,
            index: config.store.index,
            plan: Default::default(),
            owner_url: None,
            ..PgOptions::default()
        };
        match PgStore::open(&with_database(server, &name), identity, options).await {
            Ok(store) => Ok(Self {
                store: Arc::new(store),
                description: format!(
                    "postgres, scratch database {name} on {} (dropped after)",
                    redact(server)
                ),
                place,
            }),
            Err(e) => {
                if let Err(drop_error) = remove(place).await {
                    tracing::warn!("{drop_error}");
                }
                Err(e.into())
            }
        }
    }

    /// Closes the store and deletes it (its directory, or its database).
    pub async fn remove(self) -> Result<(), EvalError> {
        drop(self.store);
        remove(self.place).await
    }
}

async fn remove(place: Place) -> Result<(), EvalError> {
    match place {
        Place::Sqlite { dir } => std::fs::remove_dir_all(&dir).map_err(|e| {
            EvalError::Failed(format!(
                "cannot remove the scratch directory {}: {e}",
                dir.display()
            ))
        }),
        Place::Postgres { server, name } => {
            let mut admin = connect(&server).await?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .map_err(|e| {
                    EvalError::Failed(format!(
                        "cannot drop the scratch database {name} on {} (drop it by hand): {e}",
                        redact(&server)
                    ))
                })?;
            let _ = admin.close().await;
            Ok(())
        }
    }
}

async fn connect(server: &str) -> Result<PgConnection, EvalError> {
    PgConnection::connect(server).await.map_err(|e| {
        EvalError::Failed(format!(
            "cannot connect to the PostgreSQL server {}: {e}",
            redact(server)
        ))
    })
}

/// `url` naming database `name` instead of its own (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |at| at + 3);
    let server = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_database_replaces_the_urls_own() {
        assert_eq!(
            with_database("postgres://u:p@db:5432/postgres", "x"),
            "postgres://u:p@db:5432/x"
        );
        assert_eq!(with_database("postgres://db", "x"), "postgres://db/x");
        assert_eq!(
            with_database("postgresql://db/app?sslmode=disable", "x"),
            "postgresql://db/x?sslmode=disable"
        );
    }

    #[test]
    fn scratch_names_are_plain_identifiers_and_differ() {
        let (a, b) = (scratch_name(), scratch_name());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("engram_eval_{}_", std::process::id())));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{a}"
        );
    }
}
