//! Fresh PostgreSQL databases for tests, on the server named by
//! `ENGRAM_TEST_DATABASE_URL` (scripts/test.sh starts one with pgvector).
//! Each test gets its own database, so tests run in parallel; it is dropped
//! when the test ends (scripts/services.sh sweeps any a crash left behind).
//!
//! Each database can be reached three ways: as the server's superuser
//! (`url`, which row-level security never binds: what raw inspection of
//! every row needs), as the role that owns it (`owner_url`) and as a role
//! that owns nothing (`app_url`): the two roles of the recommended
//! production setup, neither of them a superuser.

use sqlx::{Connection, Executor, PgConnection};

const ENV: &str = "ENGRAM_TEST_DATABASE_URL";

pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// `postgres://...` of the new database, as the superuser.
    pub url: String,
    /// The database as its owner, [`OWNER_ROLE`].
    pub owner_url: String,
    /// The database as [`APP_ROLE`], which owns nothing in it.
    pub app_url: String,
}

/// The role that owns every test database (not a superuser).
pub const OWNER_ROLE: &str = "engram_test_owner";
/// The runtime role of the two-role setup (not a superuser, owns nothing).
pub const APP_ROLE: &str = "engram_test_app";

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
        for role in [OWNER_ROLE, APP_ROLE] {
            ensure_role(&mut admin, role).await;
        }
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name} OWNER {OWNER_ROLE}"
            )))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let url = with_database(&admin_url, &name);
        // pgvector is not a trusted extension: the superuser creates it, as
        // a DBA would, and the owner's migrations find it there.
        let mut db = PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {name}: {e}"));
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
            .await
            .unwrap_or_else(|e| panic!("cannot create pgvector in {name}: {e}"));
        Self {
            owner_url: with_user(&url, OWNER_ROLE),
            app_url: with_user(&url, APP_ROLE),
            admin_url,
            name,
            url,
        }
    }
}

/// Creates login role `role` unless it exists (roles are the server's, shared
/// by every test database; tests creating it at once race, hence the retries).
async fn ensure_role(admin: &mut PgConnection, role: &str) {
    for _ in 0..5 {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(role)
                .fetch_one(&mut *admin)
                .await
                .unwrap_or_else(|e| panic!("cannot read the roles: {e}"));
        if exists {
            return;
        }
        match admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"
            )))
            .await
        {
            Ok(_) => return,
            // Another test created it meanwhile (duplicate_object or unique_violation).
            Err(e) if e.as_database_error().is_some() => continue,
            Err(e) => panic!("cannot create role {role}: {e}"),
        }
    }
    panic!("cannot create role {role}");
}

impl TestDatabase {
    /// A pool of the test's own on the database, for SQL beside the store's.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name))
    }

    /// Sets `setting` to `value` for every later connection to the database
    /// (`ALTER DATABASE ... SET`, as the superuser).
    pub async fn set_default(&self, setting: &str, value: &str) {
        let mut admin = PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.name));
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {} SET {setting} = '{value}'",
                self.name
            )))
            .await
            .unwrap_or_else(|e| panic!("cannot set {setting} on {}: {e}", self.name));
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

/// `url` logged in as `user` instead, without a password (the test
/// server trusts local connections).
fn with_user(url: &str, user: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let host_start = url[authority_start..]
        .find('@')
        .map_or(authority_start, |at| authority_start + at + 1);
    format!("{}{user}@{}", &url[..authority_start], &url[host_start..])
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
