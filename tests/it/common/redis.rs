//! Redis for tests: the shared server `ENGRAM_TEST_REDIS_URL` names (tests
//! keep apart by key prefix), private `redis-server` processes a test may
//! kill and restart, and a plain client to look at what engram stored.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fred::prelude::*;
use fred::types::CustomCommand;

const ENV: &str = "ENGRAM_TEST_REDIS_URL";

/// The shared test server.
pub fn shared_url() -> String {
    std::env::var(ENV).unwrap_or_else(|_| {
        panic!(
            "{ENV} is not set. Run the tests through scripts/test.sh, which finds or starts \
             Redis, or set {ENV} (e.g. redis://127.0.0.1:6379)"
        )
    })
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("engram-test:{}:", uuid::Uuid::new_v4().simple())
}

/// A `redis-server` of the test's own, on a free port, keeping nothing on disk.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut redis = Self { port, child: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (is it installed and on PATH?): {e}")
            });
        self.child = Some(child);
        for _ in 0..100 {
            if ping(&self.url()).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    /// SIGKILL: the server vanishes mid-conversation, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn ping(url: &str) -> bool {
    let Ok(client) = Builder::from_config(Config::from_url(url).unwrap()).build() else {
        return false;
    };
    let ok = tokio::time::timeout(Duration::from_millis(500), async {
        client.init().await.is_ok() && client.ping::<String>(None).await.is_ok()
    })
    .await
    .unwrap_or(false);
    let _ = client.quit().await;
    ok
}

/// A plain client, to look at keys the way an operator would.
pub struct Peek(Client);

impl Peek {
    pub async fn connect(url: &str) -> Self {
        let client = Builder::from_config(Config::from_url(url).unwrap())
            .build()
            .unwrap();
        client.init().await.expect("connect to redis");
        Self(client)
    }

    pub async fn command(&self, name: &'static str, args: Vec<Value>) -> Value {
        self.0
            .custom(CustomCommand::new_static(name, None::<u16>, false), args)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Every key matching `pattern` (test prefixes keep this small).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let value = self.command("KEYS", vec![pattern.into()]).await;
        let mut keys: Vec<String> = value.convert().unwrap();
        keys.sort();
        keys
    }

    /// Every key under `prefix` and every value, each as text (values are
    /// read as bytes: cache entries are a binary header, then JSON).
    pub async fn everything(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for key in self.keys(&format!("{prefix}*")).await {
            let kind: String = self
                .command("TYPE", vec![key.clone().into()])
                .await
                .convert()
                .unwrap();
            let values: Vec<Value> = match kind.as_str() {
                "string" => vec![self.command("GET", vec![key.clone().into()]).await],
                "hash" => self
                    .command("HGETALL", vec![key.clone().into()])
                    .await
                    .into_array(),
                // Expired between KEYS and TYPE: a rate-limit allowance lives
                // only until it refills (5 ms per request at the default
                // per-key REST limit), and a key that is gone holds nothing.
                "none" => continue,
                other => panic!("cache key {key} is a {other}: read it here"),
            };
            let values = values.iter().map(|v| match v.as_bytes() {
                Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                None => v.as_string().unwrap_or_default(),
            });
            out.push(key);
            out.extend(values);
        }
        out
    }

    pub async fn hash_fields(&self, key: &str) -> Vec<String> {
        let value = self.command("HKEYS", vec![key.into()]).await;
        let mut fields: Vec<String> = value.convert().unwrap();
        fields.sort();
        fields
    }
}
