//! A real PgBouncer (Debian's `pgbouncer`) in transaction pooling mode in
//! front of the test PostgreSQL, on a free port, with a configuration the
//! test generates: what Supabase's pooler on port 6543, and most managed
//! poolers, are to engram. Optionally it terminates TLS for clients
//! (`client_tls_sslmode`), which the embedded test PostgreSQL cannot.
//!
//! It is configured strictly: no `ignore_startup_parameters` (a startup
//! parameter it does not know fails the connection), a server pool smaller
//! than engram's so server sessions really are shared between clients, and
//! no reset query between them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use super::certs::{ServerFiles, readable};
use super::postgres::{APP_ROLE, OWNER_ROLE};

/// Server sessions per (database, user): fewer than engram's request pool.
pub const SERVER_POOL_SIZE: u32 = 4;

pub struct PgBouncer {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PgBouncer {
    /// PgBouncer in front of the server `ENGRAM_TEST_DATABASE_URL` names,
    /// for every database on it (connections keep their database and user).
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// As [`Self::start`], requiring TLS of clients, with `server` as its
    /// certificate and key.
    pub async fn start_tls(server: &ServerFiles) -> Self {
        Self::start_with(Some(server)).await
    }

    async fn start_with(tls: Option<&ServerFiles>) -> Self {
        let binary = binary();
        let upstream = std::env::var("ENGRAM_TEST_DATABASE_URL")
            .expect("ENGRAM_TEST_DATABASE_URL is not set; run the tests through scripts/test.sh");
        let upstream = PgConnectOptions::from_str(&upstream).unwrap();
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        // PgBouncer runs as another user when the tests run as root.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let users = dir.path().join("users.txt");
        let roles = ["postgres", OWNER_ROLE, APP_ROLE];
        let lines: Vec<String> = roles.iter().map(|r| format!("\"{r}\" \"\"\n")).collect();
        std::fs::write(&users, lines.concat()).unwrap();
        readable(&users);
        let tls_lines = match tls {
            Some(files) => format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
                files.cert.display(),
                files.key.display()
            ),
            None => "client_tls_sslmode = disable\n".to_owned(),
        };
        let config = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n\
                 * = host={host} port={upstream_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {SERVER_POOL_SIZE}\n\
                 max_client_conn = 1000\n\
                 server_reset_query =\n\
                 {tls_lines}",
                host = upstream.get_host(),
                upstream_port = upstream.get_port(),
                users = users.display(),
            ),
        )
        .unwrap();
        readable(&config);
        let log = dir.path().join("pgbouncer.log");
        let mut command = Command::new(&binary);
        if running_as_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut bouncer = Self {
            port,
            child,
            log,
            _dir: dir,
        };
        bouncer.wait_until_listening().await;
        bouncer
    }

    async fn wait_until_listening(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgbouncer exited ({status}):\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("pgbouncer did not listen on {}:\n{}", self.port, self.log());
    }

    /// `url` (a database on the test server) through this PgBouncer.
    pub fn url(&self, url: &str) -> String {
        self.url_at("127.0.0.1", url)
    }

    /// `url` through this PgBouncer, reached by the name `host`.
    pub fn url_at(&self, host: &str, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = match authority.rsplit_once('@') {
            Some((user, _)) => format!("{user}@"),
            None => String::new(),
        };
        format!("{scheme}://{user}{host}:{}/{path}", self.port)
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pgbouncer binary: on PATH, or where Debian puts it.
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|path| Path::new(path).is_file())
        .unwrap_or_else(|| {
            panic!(
                "pgbouncer not found: install Debian's pgbouncer package \
                 (apt-get install -y pgbouncer); scripts/test.sh installs it when run as root"
            )
        })
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
