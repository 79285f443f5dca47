//! Fresh PostgreSQL databases for tests, on the server named by
//! `ENGRAM_TEST_DATABASE_URL` (scripts/test.sh starts one with pgvector).
//! Each test gets its own database, so tests run in parallel; it is dropped
//! when the test ends (scripts/services.sh sweeps any a crash left behind).

use sqlx::{Connection, Executor, PgConnection};

const ENV: &str = "ENGRAM_TEST_DATABASE_URL";

pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// `postgres://...` of the new database.
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = std::env::var(ENV).unwrap_or_else(|_| {
            panic!(
                "{ENV} is not set. Run the tests through scripts/test.sh, which starts \
                 PostgreSQL with pgvector, or set {ENV} to a server that has pgvector \
                 (e.g. postgres://postgres@127.0.0.1:54329/postgres)"
            )
        });
        let name = format!("engram_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {ENV}={admin_url}: {e}"));
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let url = with_database(&admin_url, &name);
        Self {
            admin_url,
            name,
            url,
        }
    }
}

impl TestDatabase {
    /// A pool of the test's own on the database, for SQL beside the store's.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot block on itself.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("note: could not drop test database {}: {e}", self.name);
        }
    }
}

/// `url` pointing at database `name` instead (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}
