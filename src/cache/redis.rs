//! [`RedisCache`]: the cache on a Redis-protocol server through a pooled
//! `fred` client. Every command runs with a short timeout and fails fast
//! while the connection is down (the client reconnects in the background);
//! [`Health`] decides when to try again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::Pool;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, LuaInterface};
use fred::prelude::{Config, Expiration, Options, ReconnectPolicy};
use fred::types::{Builder, Value};

use super::Cache;
use super::health::Health;
use super::{VectorSource, user_key, vector_key};
use crate::store::redact;

/// At most this many entries per user; a full hash is emptied (keeping its
/// floor) before the next entry goes in, so a user with endless distinct
/// queries costs bounded memory.
const MAX_ENTRIES_PER_USER: u32 = 1024;
/// While down, a failure is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How long start-up waits for the first connection before going on without
/// it (a reachable server answers in milliseconds).
const CONNECT_WAIT: Duration = Duration::from_millis(500);

/// Stores an entry unless the user's floor is above its version; keeps the
/// hash bounded; refreshes its lifetime. KEYS[1] user hash; ARGV field,
/// version, entry, ttl ms, max entries.
const PUT_ENTRY: &str = r"
local floor = redis.call('HGET', KEYS[1], '~floor')
if floor and tonumber(ARGV[2]) < tonumber(floor) then return 0 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  redis.call('DEL', KEYS[1])
  if floor then redis.call('HSET', KEYS[1], '~floor', floor) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Replaces every entry of the user by a floor. KEYS[1] user hash; ARGV floor, ttl ms.
const PURGE_TO_FLOOR: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '~floor', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// A generic cell rate algorithm step on the server's clock. KEYS[1] the
/// bucket; ARGV interval ms, tolerance ms. Returns -1 when the request is
/// allowed (and counted), else the milliseconds to wait. The key expires
/// when its allowance is full again.
const ALLOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stored = redis.call('GET', KEYS[1])
local tat = stored and tonumber(stored) or now
if tat < now then tat = now end
local ahead = tat - now
if ahead > tonumber(ARGV[2]) then return ahead - tonumber(ARGV[2]) end
local next = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], next, 'PX', next - now)
return -1
";

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    /// Lifetime of recall and context entries (and of a purge floor).
    pub entry_ttl: Duration,
    pub vector_ttl: Duration,
    /// Per command.
    pub timeout: Duration,
    pub pool_size: usize,
    /// While down, one operation probes the cache this often.
    pub retry_every: Duration,
    /// For `rediss://`: the CA certificates (PEM) the server's certificate
    /// must chain to; `None`: the system's roots (`tls`).
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache_url {url}: {message}")]
    Config { url: String, message: String },
}

pub struct RedisCache {
    pool: Pool,
    options: Options,
    settings: RedisSettings,
    health: Health,
    /// Purges that failed, by user key: the floor to leave, or `None` to delete.
    /// Retried, in full, when the cache comes back.
    pending_purges: Mutex<HashMap<String, Option<u64>>>,
}

impl RedisCache {
    /// Builds the client and starts connecting. An unreachable server is not
    /// an error: engram runs without the cache until it answers.
    pub async fn connect(settings: RedisSettings) -> Result<Self, CacheError> {
        let config_err = |e: fred::error::Error| CacheError::Config {
            url: redact(&settings.url),
            message: e.details().to_owned(),
        };
        let mut config = Config::from_url(&settings.url).map_err(config_err)?;
        if config.uses_tls() {
            let connector =
                super::tls::connector(settings.ca_file.as_deref()).map_err(|message| {
                    CacheError::Config {
                        url: redact(&settings.url),
                        message,
                    }
                })?;
            config.tls = Some(connector.into());
        }
        // Retry the first connection too, rather than giving up on it.
        config.fail_fast = false;
        let pool = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = settings.timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build_pool(settings.pool_size)
            .map_err(config_err)?;
        // Runs for the life of the pool, reconnecting as needed.
        let _connection = pool.connect();
        let options = Options {
            timeout: Some(settings.timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        };
        let cache = Self {
            pool,
            options,
            health: Health::new(settings.retry_every, LOG_EVERY),
            pending_purges: Mutex::new(HashMap::new()),
            settings,
        };
        let url = redact(&cache.settings.url);
        match tokio::time::timeout(CONNECT_WAIT, cache.pool.wait_for_connect()).await {
            Ok(Ok(())) => tracing::info!(%url, "cache connected"),
            _ => cache.health.failed(
                "connect",
                &format!("{url} did not answer within {CONNECT_WAIT:?} of start"),
            ),
        }
        Ok(cache)
    }

    /// False while the cache is marked down (between a failure and a successful probe).
    pub fn is_up(&self) -> bool {
        !self.health.is_down()
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    fn user_key(&self, user_id: &str) -> String {
        user_key(&self.settings.prefix, user_id)
    }

    fn ttl_ms(ttl: Duration) -> i64 {
        ttl.as_millis().min(i64::MAX as u128) as i64
    }

    /// Runs one cache operation under the health policy: `None` when skipped
    /// or failed. The success that ends an outage first replays lost purges.
    async fn run<T, F>(&self, operation: &'static str, command: F) -> Option<T>
    where
        F: Future<Output = Result<T, fred::error::Error>>,
    {
        if !self.health.admit() {
            return None;
        }
        let span = crate::telemetry::spans::cache(redis_command(operation), operation);
        // A leaf span: timed by its life, never entered (see store/traced.rs).
        match command.await {
            Ok(value) => {
                if self.health.succeeded() {
                    self.replay_purges().await;
                }
                Some(value)
            }
            Err(error) => {
                crate::telemetry::spans::fail(&span, "cache_error", || error.to_string());
                self.health.failed(operation, &error);
                None
            }
        }
    }

    async fn purge(&self, key: &str, floor: Option<u64>) -> Result<(), fred::error::Error> {
        let client = self.pool.with_options(&self.options);
        match floor {
            None => client.del::<(), _>(key).await,
            Some(floor) => {
                let args: Vec<Value> = vec![
                    Value::from(floor as i64),
                    Value::from(Self::ttl_ms(self.settings.entry_ttl)),
                ];
                client.eval::<(), _, _, _>(PURGE_TO_FLOOR, key, args).await
            }
        }
    }

    fn defer_purge(&self, key: String, floor: Option<u64>) {
        // The later purge of a user supersedes an earlier one.
        let mut pending = self
            .pending_purges
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.insert(key, floor);
    }

    async fn replay_purges(&self) {
        let pending: Vec<(String, Option<u64>)> = {
            let mut pending = self
                .pending_purges
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if pending.is_empty() {
            return;
        }
        let total = pending.len();
        let mut failed = 0;
        for (key, floor) in pending {
            if let Err(error) = self.purge(&key, floor).await {
                failed += 1;
                self.health.failed("replay purge", &error);
                self.defer_purge(key, floor);
            }
        }
        tracing::info!(
            replayed = total - failed,
            failed,
            "purges made while the cache was down"
        );
    }

    /// Purges not yet carried out (the cache was down when they were made).
    pub fn pending_purges(&self) -> usize {
        self.pending_purges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// The Redis command behind each of [`RedisCache::run`]'s operations, for traces.
fn redis_command(operation: &str) -> &'static str {
    match operation {
        "get entry" => "HGET",
        "put entry" | "rate limit" | "purge user to floor" => "EVAL",
        "purge user" => "DEL",
        "get vector" => "GET",
        "put vector" => "SET",
        _ => "_OTHER",
    }
}

#[async_trait]
impl Cache for RedisCache {
    fn enabled(&self) -> bool {
        true
    }

    async fn get_entry(&self, user_id: &str, field: &str) -> Option<Vec<u8>> {
        let key = self.user_key(user_id);
        let client = self.pool.with_options(&self.options);
        self.run(
            "get entry",
            client.hget::<Option<Vec<u8>>, _, _>(key, field),
        )
        .await
        .flatten()
    }

    async fn put_entry(&self, user_id: &str, field: &str, version: u64, entry: Vec<u8>) {
        let key = self.user_key(user_id);
        let args: Vec<Value> = vec![
            Value::from(field),
            Value::from(version as i64),
            Value::Bytes(entry.into()),
            Value::from(Self::ttl_ms(self.settings.entry_ttl)),
            Value::from(i64::from(MAX_ENTRIES_PER_USER)),
        ];
        let client = self.pool.with_options(&self.options);
        self.run(
            "put entry",
            client.eval::<i64, _, _, _>(PUT_ENTRY, key, args),
        )
        .await;
    }

    async fn purge_user(&self, user_id: &str, floor: Option<u64>) {
        let key = self.user_key(user_id);
        let operation = match floor {
            None => "purge user",
            Some(_) => "purge user to floor",
        };
        if self.run(operation, self.purge(&key, floor)).await.is_none() {
            self.defer_purge(key, floor);
        }
    }

    async fn allow(
        &self,
        bucket: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Option<Result<(), Duration>> {
        let key = format!("{}rl:{bucket}", self.settings.prefix);
        let args: Vec<Value> = vec![
            Value::from(Self::ttl_ms(interval).max(1)),
            Value::from(Self::ttl_ms(tolerance)),
        ];
        let client = self.pool.with_options(&self.options);
        let wait = self
            .run("rate limit", client.eval::<i64, _, _, _>(ALLOW, key, args))
            .await?;
        Some(match u64::try_from(wait) {
            Ok(ms) => Err(Duration::from_millis(ms.max(1))),
            Err(_) => Ok(()),
        })
    }

    async fn get_vector(&self, embedder: &VectorSource, query: &str) -> Option<Vec<u8>> {
        let key = vector_key(&self.settings.prefix, embedder, query);
        let client = self.pool.with_options(&self.options);
        self.run("get vector", client.get::<Option<Vec<u8>>, _>(key))
            .await
            .flatten()
    }

    async fn put_vector(&self, embedder: &VectorSource, query: &str, vector: Vec<u8>) {
        let key = vector_key(&self.settings.prefix, embedder, query);
        let client = self.pool.with_options(&self.options);
        let ttl = Expiration::PX(Self::ttl_ms(self.settings.vector_ttl));
        self.run(
            "put vector",
            client.set::<(), _, _>(key, Value::Bytes(vector.into()), Some(ttl), None, false),
        )
        .await;
    }

    async fn ping(&self) -> Result<(), String> {
        self.pool
            .with_options(&self.options)
            .ping::<Value>(None)
            .await
            .map(|_| ())
            .map_err(|e| format!("{} does not answer: {e}", redact(&self.settings.url)))
    }

    fn failures(&self) -> (u64, u64) {
        self.health.counts()
    }
}
