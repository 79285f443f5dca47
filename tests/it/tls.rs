//! TLS to the database and to the cache, against real servers with
//! certificates each test makes (`common::certs`): PostgreSQL behind a
//! PgBouncer that terminates TLS (the embedded test PostgreSQL has no
//! OpenSSL), in transaction mode as on Supabase, and `redis-server` on a TLS
//! port. The right CA and host name connect; a CA that did not sign the
//! server's certificate, or a host name it does not name, is refused with
//! an error that says what to fix.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::certs::Authority;
use common::http::Server;
use common::pgbouncer::PgBouncer;
use common::postgres::TestDatabase;
use engram::cache::{Cache, RedisCache, RedisSettings};
use engram::embed::{Embedder, HashEmbedder};
use engram::model::{MemoryId, Scope};
use engram::store::prelude::*;
use engram::store::{InsertOutcome, NewMemory, PgOptions, PgStore, Pooler, SearchScope};
use reqwest::Method;
use serde_json::json;

const DIMS: usize = 64;

/// A test database, and a PgBouncer in front of it requiring TLS with a
/// certificate for `localhost` that `ca` signed.
struct TlsDatabase {
    db: TestDatabase,
    bouncer: PgBouncer,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsDatabase {
    async fn start() -> Self {
        let dir = certificate_dir();
        let ca = Authority::new("engram test CA");
        let ca_file = ca.write(dir.path(), "ca.pem");
        let server = ca.issue(dir.path(), &["localhost"]);
        Self {
            db: TestDatabase::create().await,
            bouncer: PgBouncer::start_tls(&server).await,
            ca_file,
            _dir: dir,
        }
    }

    /// The runtime role's URL through PgBouncer at `host`, with `tls` appended.
    fn url(&self, host: &str, tls: &str) -> String {
        format!("{}?{tls}", self.bouncer.url_at(host, &self.db.app_url))
    }

    /// How engram opens it: requests through the pooler, session work direct.
    fn options(&self) -> PgOptions {
        PgOptions {
            owner_url: Some(self.db.owner_url.clone()),
            direct_url: Some(self.db.app_url.clone()),
            pooler: Pooler::Transaction,
            ..PgOptions::default()
        }
    }

    async fn open(&self, url: &str) -> Result<PgStore, String> {
        PgStore::open(url, HashEmbedder::new(DIMS).identity(), self.options())
            .await
            .map_err(|e| e.to_string())
    }
}

/// A directory servers running as another user can read.
fn certificate_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

async fn remember_and_find(store: &PgStore) {
    let alice = Scope::new("alice", None, None).unwrap();
    let text = "Keeps the spare key under the blue pot";
    let memory = NewMemory {
        id: MemoryId::new(),
        scope: alice.clone(),
        content: text.to_owned(),
        embedding: HashEmbedder::new(DIMS).embed(text),
        metadata: Default::default(),
        categories: vec![],
        actor: "user".into(),
        expires_at: None,
    };
    let InsertOutcome::Added(added) = store.insert(memory, 0.9).await.unwrap() else {
        panic!("a first memory is no duplicate");
    };
    let hits = store
        .keyword_search(SearchScope::unfiltered(&alice), "spare key", 10)
        .await
        .unwrap();
    assert_eq!(hits.first().map(|h| h.id), Some(added.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_servers_ca_connects_through_a_tls_pooler() {
    let tls = TlsDatabase::start().await;
    let verified = format!("sslmode=verify-full&sslrootcert={}", tls.ca_file.display());
    let store = tls
        .open(&tls.url("localhost", &verified))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tls.bouncer.log()));
    remember_and_find(&store).await;

    // The pooler takes nothing but TLS: what worked above was encrypted.
    let err = tls
        .open(&tls.url("localhost", "sslmode=disable"))
        .await
        .err()
        .expect("a plain connection is refused");
    assert!(err.contains("SSL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_did_not_sign_the_certificate_is_refused_with_what_to_fix() {
    let tls = TlsDatabase::start().await;
    let dir = certificate_dir();
    let stranger = Authority::new("another CA").write(dir.path(), "other.pem");
    let url = tls.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", stranger.display()),
    );
    let err = tls
        .open(&url)
        .await
        .err()
        .expect("an unknown issuer is refused");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        err.contains("sslrootcert"),
        "the error says what to set: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_the_certificate_does_not_name_is_refused_unless_only_encrypting() {
    let tls = TlsDatabase::start().await;
    // 127.0.0.1 is the same server, but the certificate names only localhost.
    let verified = format!("sslmode=verify-full&sslrootcert={}", tls.ca_file.display());
    let err = tls
        .open(&tls.url("127.0.0.1", &verified))
        .await
        .err()
        .expect("a name the certificate lacks is refused");
    assert!(err.contains("not valid for name"), "{err}");
    assert!(
        err.contains("host name"),
        "the error says what to fix: {err}"
    );

    // sslmode=require encrypts and checks neither.
    let store = tls
        .open(&tls.url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap();
    remember_and_find(&store).await;
}

/// A `redis-server` of the test's own serving TLS only, with a certificate
/// for `localhost` signed by a CA of the test's.
struct TlsRedis {
    port: u16,
    ca_file: std::path::PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = certificate_dir();
        let ca = Authority::new("engram test CA");
        let ca_file = ca.write(dir.path(), "ca.pem");
        let server = ca.issue(dir.path(), &["localhost"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (Debian: redis-server, built with TLS): {e}")
            });
        Self {
            port,
            ca_file,
            dir,
            child,
        }
    }

    async fn wait_until_listening(&self) {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not listen on TLS port {}", self.port);
    }

    async fn cache(&self, host: &str, ca_file: Option<std::path::PathBuf>) -> RedisCache {
        self.wait_until_listening().await;
        RedisCache::connect(RedisSettings {
            url: format!("rediss://{host}:{}", self.port),
            prefix: format!("engram-test:{}:", uuid::Uuid::new_v4().simple()),
            entry_ttl: Duration::from_secs(60),
            vector_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            pool_size: 1,
            retry_every: Duration::from_millis(100),
            ca_file,
        })
        .await
        .unwrap()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_over_rediss_trusts_the_given_ca_and_nothing_else() {
    let redis = TlsRedis::start();
    let cache = redis.cache("localhost", Some(redis.ca_file.clone())).await;
    cache.ping().await.unwrap();
    cache
        .put_entry("alice", "recall:x", 1, b"entry".to_vec())
        .await;
    assert_eq!(
        cache.get_entry("alice", "recall:x").await.as_deref(),
        Some(&b"entry"[..])
    );

    // A CA that did not sign the server's certificate: the cache stays
    // down (engram serves without it), and says why.
    let other = Authority::new("another CA").write(redis.dir.path(), "other.pem");
    let untrusted = redis.cache("localhost", Some(other)).await;
    let err = untrusted.ping().await.unwrap_err();
    assert!(!untrusted.is_up(), "{err}");
    assert!(err.contains("rediss://localhost"), "{err}");

    // The right CA, but a host name the certificate does not name.
    let misnamed = redis.cache("127.0.0.1", Some(redis.ca_file.clone())).await;
    assert!(misnamed.ping().await.is_err());
    assert!(!misnamed.is_up());
}

/// The binary, configured as a Supabase user would: requests through the
/// (TLS, transaction-mode) pooler, the direct URL beside it (which turns the
/// pooler mode on), the owner for migrations, and the cache over TLS with
/// its CA file. The default embedder (`auto`) first reads the one the
/// store recorded, through the pooler too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engram_serves_through_a_tls_pooler_and_a_tls_cache_from_its_environment() {
    let tls = TlsDatabase::start().await;
    let redis = TlsRedis::start();
    redis.wait_until_listening().await;
    let verified = format!("sslmode=verify-full&sslrootcert={}", tls.ca_file.display());
    let database_url = tls.url("localhost", &verified);
    let cache_url = format!("rediss://localhost:{}", redis.port);
    let ca_file = redis.ca_file.display().to_string();
    let server = Server::start_process_with(&[
        ("ENGRAM_DATABASE_URL", database_url.as_str()),
        ("ENGRAM_DATABASE_DIRECT_URL", tls.db.app_url.as_str()),
        ("ENGRAM_DATABASE_OWNER_URL", tls.db.owner_url.as_str()),
        ("ENGRAM_CACHE_URL", cache_url.as_str()),
        ("ENGRAM_CACHE_CA_FILE", ca_file.as_str()),
    ])
    .await;
    let stored = server
        .call(
            Method::POST,
            "/api/v1/memory",
            None,
            Some(
                json!({"user_id": "alice", "text": "Waters the ferns on Sundays", "infer": false}),
            ),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text);
    // Twice: the second answer may come from the cache.
    for _ in 0..2 {
        let found = server
            .call(
                Method::POST,
                "/api/v1/memory/search",
                None,
                Some(json!({"user_id": "alice", "query": "ferns"})),
            )
            .await;
        assert_eq!(found.status, 200, "{}", found.text);
        assert!(found.text.contains("Waters the ferns"), "{}", found.text);
    }
    // The cache answered over TLS: up, a hit, no error.
    let metrics = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "engram_cache_up 1",
        "engram_cache_requests_total{result=\"error\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(
        !metrics.contains("engram_cache_requests_total{result=\"hit\"} 0"),
        "{metrics}"
    );
}
