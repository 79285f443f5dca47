//! Every setting engram reads, with its default and what it means: the one
//! list `engram reference config` prints and docs/operations.md holds.
//!
//! Invariants, held by this module's tests:
//! * every file key of every section (`KEYS`) is here, under its variable
//!   (`layers::env_var`), and every `ENGRAM_*` variable here is a file key
//!   or one of [`ENVIRONMENT_ONLY`];
//! * a [`WhenUnset::Value`] is the default: setting the variable to it loads
//!   the same [`Config`](super::Config) as leaving it unset;
//! * docs/operations.md holds [`markdown_table`]'s output as it is now
//!   (`tests/it/docs.rs`).
//!
//! Links in meanings are relative to `docs/`.

/// One setting: an environment variable (and, for `ENGRAM_*` ones but
/// [`ENVIRONMENT_ONLY`], the file key named after it).
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The environment variable.
    pub variable: &'static str,
    /// What applies when it is not set.
    pub default: WhenUnset,
    /// What it does (Markdown).
    pub meaning: &'static str,
}

/// A setting's default.
#[derive(Debug, Clone, Copy)]
pub enum WhenUnset {
    /// A value the variable could be set to, with the same effect as unset.
    Value(&'static str),
    /// Nothing: the feature is off or the value absent.
    Unset,
    /// Worked out at start, or not a single value (Markdown).
    Described(&'static str),
}

/// `ENGRAM_*` variables read from the environment only (no file key).
pub const ENVIRONMENT_ONLY: &[&str] = &["ENGRAM_CONFIG", "ENGRAM_LOG", "ENGRAM_BIND"];

/// Every setting, in the order the reference lists them.
pub const SETTINGS: &[Setting] = {
    use WhenUnset::*;
    &[
        Setting {
            variable: "ENGRAM_CONFIG",
            default: Unset,
            meaning: "a TOML file of settings (as `--config FILE`): keys are the `ENGRAM_*` names without `ENGRAM_`, lower-cased (`default_user = \"alice\"`); the environment wins over it",
        },
        Setting {
            variable: "ENGRAM_DATABASE_URL",
            default: Described("`sqlite://$XDG_DATA_HOME/engram/engram.db`"),
            meaning: "the store: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DB` (PostgreSQL with pgvector >= 0.8); TLS in the URL (`?sslmode=verify-full&sslrootcert=CA.pem`, see [TLS](managed-postgres.md#tls-to-postgresql)). May be a transaction pooler (Supabase's port 6543) when `ENGRAM_DATABASE_DIRECT_URL` is set",
        },
        Setting {
            variable: "ENGRAM_DATABASE_OWNER_URL",
            default: Unset,
            meaning: "PostgreSQL only: the role that owns the schema, for the [two-role setup](#the-two-role-setup-recommended-for-production). Set: migrations and index builds run as it, and `ENGRAM_DATABASE_URL`'s role, which then owns nothing, is granted what serving needs. Unset: the direct URL (else `ENGRAM_DATABASE_URL`) does both. Never a transaction pooler",
        },
        Setting {
            variable: "ENGRAM_DATABASE_DIRECT_URL",
            default: Unset,
            meaning: "PostgreSQL only: a session connection (direct, or a session-mode pooler) as `ENGRAM_DATABASE_URL`'s role, for what a transaction pooler cannot carry: migrations (without an owner URL) and operator-wide work (key lookups, the re-extraction queue, the purge). Set to a URL other than `ENGRAM_DATABASE_URL`, engram treats that one as a transaction pooler (see `ENGRAM_DATABASE_POOLER`); [URLs and roles](managed-postgres.md#urls-and-roles)",
        },
        Setting {
            variable: "ENGRAM_DATABASE_POOLER",
            default: Value("auto"),
            meaning: "what is in front of `ENGRAM_DATABASE_URL`: `transaction` (a pooler in transaction mode: sqlx's statement cache off, each transaction first drops prepared statements left on its server session; needs `ENGRAM_DATABASE_DIRECT_URL`), `none` (direct, or session mode), `auto` (`transaction` when a different direct URL is set, else `none`); [poolers](managed-postgres.md#what-engram-does-behind-a-transaction-pooler)",
        },
        Setting {
            variable: "ENGRAM_DATABASE_POOL_SIZE",
            default: Value("16"),
            meaning: "PostgreSQL connections per engram process for requests (plus up to 4 for operator-wide work: key lookups, the re-extraction queue, the purge)",
        },
        Setting {
            variable: "ENGRAM_DATABASE_TIMEOUT_MS",
            default: Value("3000"),
            meaning: "longest a request waits for a PostgreSQL connection (a free one, checked with a ping, or a new one); past it, while the database is down or not answering, the request fails 503 `unavailable`. Connections are made again as soon as it answers",
        },
        Setting {
            variable: "ENGRAM_DATABASE_STATEMENT_TIMEOUT_MS",
            default: Value("5000"),
            meaning: "longest one PostgreSQL statement of a request may run (`statement_timeout` on request connections; start-up's migrations and index builds are not bound by it). A request's call to the store, waiting for a connection included, gives up after `ENGRAM_DATABASE_TIMEOUT_MS` + this even when the database stops answering mid-statement (a network partition); it fails 503 `unavailable`",
        },
        Setting {
            variable: "ENGRAM_DATABASE_READY_TIMEOUT_MS",
            default: Value("1000"),
            meaning: "longest `/readyz` waits for the database (either store) before answering 503",
        },
        Setting {
            variable: "ENGRAM_AUTO_MIGRATE",
            default: Value("true"),
            meaning: "apply pending PostgreSQL migrations at start; `false`: run `engram migrate` yourself (start-up refuses a schema that is behind)",
        },
        Setting {
            variable: "ENGRAM_INDEX",
            default: Value("auto"),
            meaning: "PostgreSQL vector index: `hnsw` (pgvector), `diskann` (pgvectorscale's StreamingDiskANN; start-up fails without the `vectorscale` extension), `auto` (hnsw; see [PostgreSQL](#postgresql) on pgvectorscale). SQLite: leave unset",
        },
        Setting {
            variable: "ENGRAM_CACHE_URL",
            default: Described("unset (no cache)"),
            meaning: "`redis://[:PASSWORD@]HOST:PORT[/DB]`: Dragonfly, Redis or Valkey (or `redis-cluster://...`), or over TLS `rediss://...` (`rediss-cluster://...`); see [Cache](#cache-dragonfly-or-redis)",
        },
        Setting {
            variable: "ENGRAM_CACHE_CA_FILE",
            default: Described("unset (the system's roots)"),
            meaning: "with a `rediss://` cache URL: PEM file of the CA certificates the cache server's certificate must chain to ([TLS](managed-postgres.md#redis-dragonfly-and-valkey-over-tls))",
        },
        Setting {
            variable: "ENGRAM_CACHE_PREFIX",
            default: Value("engram:"),
            meaning: "prepended to every key, so deployments can share a server",
        },
        Setting {
            variable: "ENGRAM_CACHE_TTL_SECS",
            default: Value("300"),
            meaning: "longest a cached recall or context is served (any write to the user ends it sooner)",
        },
        Setting {
            variable: "ENGRAM_CACHE_EMBEDDING_TTL_SECS",
            default: Value("604800"),
            meaning: "lifetime of cached query embeddings (remote embedders only)",
        },
        Setting {
            variable: "ENGRAM_CACHE_TIMEOUT_MS",
            default: Value("100"),
            meaning: "per cache command; past it the request goes on without the cache",
        },
        Setting {
            variable: "ENGRAM_CACHE_RETRY_MS",
            default: Value("1000"),
            meaning: "after a cache failure, how long engram goes without it before trying again",
        },
        Setting {
            variable: "ENGRAM_CACHE_POOL_SIZE",
            default: Value("4"),
            meaning: "connections to the cache server",
        },
        Setting {
            variable: "ENGRAM_DEFAULT_USER",
            default: Value("default"),
            meaning: "whose memories a call without `user_id` uses",
        },
        Setting {
            variable: "ENGRAM_AUDIT",
            default: Value("true"),
            meaning: "record every operation in the audit trail ([Audit trail](security.md#audit-trail))",
        },
        Setting {
            variable: "ENGRAM_AUDIT_QUERIES",
            default: Value("false"),
            meaning: "also keep the query text of recalls and focused contexts in audit rows",
        },
        Setting {
            variable: "ENGRAM_AUDIT_KEY",
            default: Unset,
            meaning: "the key (at least 32 bytes) users' pseudonyms in audit rows are made with; unset: a random key made once and kept in `<sqlite file>.audit-key`, or for PostgreSQL in `$XDG_DATA_HOME/engram/audit.key` (set this when several instances share a database, so they share pseudonyms)",
        },
        Setting {
            variable: "ENGRAM_ENCRYPTION_KEY",
            default: Unset,
            meaning: "32 random bytes, base64 (`openssl rand -base64 32`): sensitive metadata values and queued inputs are encrypted at rest under it ([Encryption at rest](security.md#encryption-at-rest)); never logged",
        },
        Setting {
            variable: "ENGRAM_ENCRYPTION_KEY_FILE",
            default: Unset,
            meaning: "instead of `ENGRAM_ENCRYPTION_KEY`: a file of keys, one per line (blank lines and `#` comments skipped); the first encrypts, the others only decrypt",
        },
        Setting {
            variable: "ENGRAM_ENCRYPTION_OLD_KEYS",
            default: Unset,
            meaning: "comma-separated keys that only decrypt: the ones a rotation replaces",
        },
        Setting {
            variable: "ENGRAM_SENSITIVE_METADATA_KEYS",
            default: Unset,
            meaning: "comma-separated metadata keys whose values are encrypted (any key starting `secret_` always is, when a key is set)",
        },
        Setting {
            variable: "ENGRAM_EMBEDDER",
            default: Value("auto"),
            meaning: "`auto`: the embedder the store recorded, and for a new store `local` when its model is on disk or can be fetched, else `hash` ([Embedders](integration.md#embedders-meaning-with-no-key)); `local`: a sentence model run in process; `hash`: offline feature hashing (words + character trigrams, no meaning); `openai`: any OpenAI-compatible `/embeddings` server (below)",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_DIMS",
            default: Described("`384`"), // set, it also counts as asked for (`dims_set`)
            meaning: "vector dimensions of `hash` and `openai` (for `openai`: what the model returns, or asks it to shorten to); `local` takes the model's",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_MODEL",
            default: Described(
                "`text-embedding-3-small` (`openai`), `sentence-transformers/all-MiniLM-L6-v2` (`local`)",
            ),
            meaning: "`openai`: the model name the server knows; `local`: the Hugging Face id of a BERT-family sentence model (it names the store's vectors)",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_MODEL_PATH",
            default: Unset,
            meaning: "`local`: a directory holding the model's `config.json`, `tokenizer.json` and `model.safetensors` (and, when it has them, `1_Pooling/config.json`, `sentence_bert_config.json`); nothing is downloaded. Set `ENGRAM_EMBEDDING_MODEL` to the id of the model the files are",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_THREADS",
            default: Value("0"),
            meaning: "`local`: texts embedded at once, each on a blocking thread (0: one per core)",
        },
        Setting {
            variable: "ENGRAM_MODEL_CACHE_DIR",
            default: Described("`$XDG_CACHE_HOME/engram/models`"),
            meaning: "`local`: where downloaded models are kept, one directory per id (`org--name`)",
        },
        Setting {
            variable: "ENGRAM_MODEL_HUB_URL",
            default: Described("`$HF_ENDPOINT`, else `https://huggingface.co`"),
            meaning: "`local`: where models are downloaded from (`{url}/{id}/resolve/main/{file}`); `off` never downloads (also `HF_HUB_OFFLINE=1`)",
        },
        Setting {
            variable: "HF_TOKEN",
            default: Unset,
            meaning: "`local`: the hub's access token, for gated or private models (environment only); sent to the hub's own host, never to where it redirects downloads",
        },
        Setting {
            variable: "OPENAI_BASE_URL",
            default: Value("https://api.openai.com/v1"),
            meaning: "any OpenAI-compatible server, ending in `/v1` (Ollama `http://localhost:11434/v1`, vLLM, LM Studio, TEI)",
        },
        Setting {
            variable: "OPENAI_API_KEY",
            default: Unset,
            meaning: "required for api.openai.com; other servers get it if set",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_SEND_DIMENSIONS",
            default: Value("true"),
            meaning: "send `dimensions` (OpenAI v3 models shorten their vectors); set `false` for servers that refuse the field",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_QUERY_PREFIX",
            default: Described("empty"),
            meaning: "prepended to queries / stored texts (E5-style models: `query: ` / `passage: `)",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_DOCUMENT_PREFIX",
            default: Described("empty"),
            meaning: "prepended to queries / stored texts (E5-style models: `query: ` / `passage: `)",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_QUERY_INPUT_TYPE",
            default: Unset,
            meaning: "for servers that embed queries and documents differently through a request field: its value for each (Voyage `query` / `document`, Cohere-style gateways `search_query` / `search_document`); a side left unset sends no field",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_DOCUMENT_INPUT_TYPE",
            default: Unset,
            meaning: "for servers that embed queries and documents differently through a request field: its value for each (Voyage `query` / `document`, Cohere-style gateways `search_query` / `search_document`); a side left unset sends no field",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_INPUT_TYPE_FIELD",
            default: Value("input_type"),
            meaning: "that field's name (Jina: `task`, with `retrieval.query` / `retrieval.passage`)",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_BATCH_SIZE",
            default: Value("64"),
            meaning: "texts per embeddings request",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_TIMEOUT_SECS",
            default: Value("30"),
            meaning: "per request",
        },
        Setting {
            variable: "ENGRAM_EMBEDDING_MAX_RETRIES",
            default: Value("3"),
            meaning: "retries of a request answered 429 or 5xx, with backoff, honouring `Retry-After`",
        },
        Setting {
            variable: "ENGRAM_EXTRACTOR",
            default: Value("verbatim"),
            meaning: "`verbatim`: messages are stored as said; `llm`: an OpenAI-compatible chat model (same `OPENAI_BASE_URL` / `OPENAI_API_KEY`) extracts atomic, categorised facts",
        },
        Setting {
            variable: "ENGRAM_LLM_MODEL",
            default: Value("gpt-4o-mini"),
            meaning: "`llm` extractor: the chat model",
        },
        Setting {
            variable: "ENGRAM_LLM_CATEGORIES",
            default: Described(
                "identity, preferences, relationships, plans, health, diet, work, travel.destinations, travel.dates, travel.budget, travel.accommodation, travel.transport, travel.loyalty",
            ),
            meaning: "comma-separated (TOML: an array); facts carry zero or more of them",
        },
        Setting {
            variable: "ENGRAM_LLM_TIMEOUT_SECS",
            default: Value("60"),
            meaning: "per chat request; retries of 429 and 5xx, honouring `Retry-After`",
        },
        Setting {
            variable: "ENGRAM_LLM_MAX_RETRIES",
            default: Value("3"),
            meaning: "per chat request; retries of 429 and 5xx, honouring `Retry-After`",
        },
        Setting {
            variable: "ENGRAM_ON_LLM_ERROR",
            default: Value("verbatim"),
            meaning: "when the chat model or the embedder fails: `verbatim` keeps the text as said and queues it for `engram reextract`; `fail` refuses the `remember` and stores nothing",
        },
        Setting {
            variable: "ENGRAM_TOKEN_BUDGET_DAILY",
            default: Described("`0` (none)"),
            meaning: "model tokens (prompt + completion, as the model reports them) each user may spend per UTC day; once a user's reach it, `remember` keeps the text as said and queues it instead of calling the model ([Token budgets](#token-budgets)); 0..=10^12",
        },
        Setting {
            variable: "ENGRAM_TOKEN_BUDGET_USERS",
            default: Described("(none)"),
            meaning: "per-user budgets replacing the daily one: `alice=200000,bob=none` (`none`: no budget for that user; TOML: an array of the same items); each user once, ids checked as everywhere",
        },
        Setting {
            variable: "ENGRAM_DEDUP_THRESHOLD",
            default: Value("0.9"),
            meaning: "cosine similarity at which a new memory counts as known",
        },
        Setting {
            variable: "ENGRAM_RECONCILE_THRESHOLD",
            default: Value("0.5"),
            meaning: "`llm` extractor: stored memories at least this similar to a new fact are shown to the model to reconcile",
        },
        Setting {
            variable: "ENGRAM_MAX_TEXT_BYTES",
            default: Value("32768"),
            meaning: "largest accepted text, query or conversation",
        },
        Setting {
            variable: "ENGRAM_SECRETS",
            default: Value("redact"),
            meaning: "credentials and payment data in what `remember` is about to store: `redact` replaces each by `[REDACTED:kind]` before extraction, embedding and storage; `refuse` refuses the `remember`; `allow` stores it as given ([Secrets kept out](security.md#secrets-kept-out))",
        },
        Setting {
            variable: "ENGRAM_VECTOR_CACHE_MB",
            default: Value("96"),
            meaning: "memory for the in-process copies of users' data, all users together: vectors and keyword postings on SQLite; keyword postings on PostgreSQL, with the f32 vectors of users of at most 5,000 memories at 384 dimensions (1,250 at 1536; 7.7 MB for 1,000 at 1536) and 8-bit codes of larger users' up to 32 MiB a user (21,845 memories at 1536; 15 MB for 10,000). A copy answers only while it is of the user's current version. On PostgreSQL, when the copies do not all fit, floats go first (a copy keeps its codes: 1.8 MB for 1,000 memories at 1536), then the copies of users wanted least often, and a user wanted no more often than those held goes without one (recall reads PostgreSQL alone); on SQLite the least recently used users are dropped (and reloaded when next used)",
        },
        Setting {
            variable: "ENGRAM_RETENTION_DAYS",
            default: Described("`0` (off)"),
            meaning: "days a memory is kept after it is stored in engram; then it is never returned and the purge removes it ([Retention](security.md#retention))",
        },
        Setting {
            variable: "ENGRAM_RETENTION_CATEGORIES",
            default: Described("(none)"),
            meaning: "per-category retention replacing the default, e.g. `health=30,travel=365` (TOML: an array of such strings); a memory in several uses the fewest days",
        },
        Setting {
            variable: "ENGRAM_HISTORY_RETENTION_DAYS",
            default: Described("`0` (off)"),
            meaning: "days a superseded memory (and its history) is kept after it stopped being current",
        },
        Setting {
            variable: "ENGRAM_RETENTION_PURGE_INTERVAL_SECS",
            default: Value("600"),
            meaning: "how often `serve` purges what retention made due (0: never; run `engram purge`)",
        },
        Setting {
            variable: "ENGRAM_BIND",
            default: Value("127.0.0.1:8765"),
            meaning: "`serve --transport http`: where to listen (same as `--bind`)",
        },
        Setting {
            variable: "ENGRAM_ALLOWED_HOSTS",
            default: Value("localhost,127.0.0.1,::1"),
            meaning: "HTTP transport: `Host` values it answers (`name` or `name:port`); others get 403, which stops DNS-rebinding pages",
        },
        Setting {
            variable: "ENGRAM_AUTH",
            default: Value("keys"),
            meaning: "HTTP transport: `keys` (every request carries `Authorization: Bearer`) or `none` (no keys; loopback binds only)",
        },
        Setting {
            variable: "ENGRAM_ALLOWED_ORIGINS",
            default: Described("(none)"),
            meaning: "HTTP transport: browser origins (`https://app.example.com`, comma-separated) that may call it; CORS is answered for these only",
        },
        Setting {
            variable: "ENGRAM_REST_USER_RATE_LIMIT",
            default: Value("120"),
            meaning: "REST requests per minute per acting user, whichever keys act for them (0: no limit)",
        },
        Setting {
            variable: "ENGRAM_MCP_USER_RATE_LIMIT",
            default: Value("600"),
            meaning: "MCP calls that act on a user, per minute per acting user, whichever keys act for them (0: no limit)",
        },
        Setting {
            variable: "ENGRAM_REST_RATE_LIMIT",
            default: Value("12000"),
            meaning: "REST requests per minute per API key, whichever users it acts for (0: no limit)",
        },
        Setting {
            variable: "ENGRAM_MCP_RATE_LIMIT",
            default: Value("60000"),
            meaning: "MCP requests per minute per API key, whichever users it acts for (0: no limit)",
        },
        Setting {
            variable: "ENGRAM_MCP_SESSIONS_PER_KEY",
            default: Value("64"),
            meaning: "Streamable HTTP sessions one API key may hold open (1..=100000); a session idle 5 minutes ends",
        },
        Setting {
            variable: "ENGRAM_REQUEST_TIMEOUT_SECS",
            default: Value("120"),
            meaning: "longest a REST request may run before it is answered 503 `timeout`",
        },
        Setting {
            variable: "ENGRAM_LOG",
            default: Value("info"),
            meaning: "log filter; logs always go to stderr",
        },
        Setting {
            variable: "RUST_LOG",
            default: Value("info"),
            meaning: "log filter; logs always go to stderr",
        },
        Setting {
            variable: "ENGRAM_METRICS_BIND",
            default: Unset,
            meaning: "also serve `GET /metrics` alone on this address (`HOST:PORT`): how a stdio deployment is scraped, or a scrape port apart from the API ([Metrics](#metrics))",
        },
        Setting {
            variable: "ENGRAM_METRICS_REFRESH_SECS",
            default: Value("15"),
            meaning: "how often the gauges read from the store and the cache (`engram_memories`, `engram_pending_extractions`, `engram_database_up`, `engram_cache_up`) are refreshed, 1..=3600",
        },
        Setting {
            variable: "OTEL_EXPORTER_OTLP_ENDPOINT",
            default: Described("unset (no traces)"),
            meaning: "export traces over OTLP to this collector (`http://HOST:4318`; spans go to `/v1/traces`; `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names the full URL instead); see [Traces](#traces-opentelemetry)",
        },
        Setting {
            variable: "OTEL_EXPORTER_OTLP_PROTOCOL",
            default: Value("http/protobuf"),
            meaning: "the only one this build speaks; `grpc` and `http/json` stop start-up with a message saying so",
        },
        Setting {
            variable: "OTEL_EXPORTER_OTLP_HEADERS",
            default: Described("none"),
            meaning: "headers sent with every export (`key=value,...`, e.g. the collector's token)",
        },
        Setting {
            variable: "OTEL_EXPORTER_OTLP_TIMEOUT",
            default: Value("10000"),
            meaning: "ms an export may take before it is given up (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` for traces alone)",
        },
        Setting {
            variable: "OTEL_SERVICE_NAME",
            default: Value("engram"),
            meaning: "the traces' `service.name` (`OTEL_RESOURCE_ATTRIBUTES` adds more)",
        },
        Setting {
            variable: "OTEL_TRACES_SAMPLER",
            default: Value("parentbased_always_on"),
            meaning: "which traces are kept, e.g. `parentbased_traceidratio` with `0.1`",
        },
        Setting {
            variable: "OTEL_TRACES_SAMPLER_ARG",
            default: Unset,
            meaning: "the sampler's argument: for `traceidratio` and `parentbased_traceidratio`, the share of traces kept (`0.1`: one in ten)",
        },
        Setting {
            variable: "ENGRAM_TRACE_CONTENT",
            default: Value("false"),
            meaning: "also put memory text, query text, the model's messages, tool arguments and user ids in spans (the GenAI conventions' opt-in attributes)",
        },
    ]
};

/// The reference as a Markdown table: variable, default, meaning.
pub fn markdown_table() -> String {
    let mut table = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for setting in SETTINGS {
        let default = match setting.default {
            WhenUnset::Value("") => "empty".to_owned(),
            WhenUnset::Value(value) => format!("`{value}`"),
            WhenUnset::Unset => "unset".to_owned(),
            WhenUnset::Described(text) => text.to_owned(),
        };
        table.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            setting.variable, setting.meaning
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::config::{Config, file_keys, layers::env_var};

    #[test]
    fn every_file_key_is_listed_and_every_listed_engram_variable_is_read() {
        let listed: BTreeSet<&str> = SETTINGS.iter().map(|s| s.variable).collect();
        assert_eq!(listed.len(), SETTINGS.len(), "a variable is listed twice");
        let keys: BTreeSet<String> = file_keys().into_iter().map(env_var).collect();
        let unlisted: Vec<&String> = keys
            .iter()
            .filter(|v| !listed.contains(v.as_str()))
            .collect();
        assert!(unlisted.is_empty(), "not in the reference: {unlisted:?}");
        let unread: Vec<&&str> = listed
            .iter()
            .filter(|v| v.starts_with("ENGRAM_"))
            .filter(|v| !keys.contains(**v) && !ENVIRONMENT_ONLY.contains(*v))
            .collect();
        assert!(
            unread.is_empty(),
            "listed but no file key reads them: {unread:?}"
        );
    }

    #[test]
    fn each_default_value_is_what_an_unset_variable_gives() {
        let base = HashMap::from([(
            "ENGRAM_DATABASE_URL".to_owned(),
            "sqlite:///tmp/engram-reference.db".to_owned(),
        )]);
        let unset = Config::load_from(None, &base).expect("the defaults load");
        let keys: BTreeSet<String> = file_keys().into_iter().map(env_var).collect();
        let mut checked = 0;
        for setting in SETTINGS {
            let WhenUnset::Value(value) = setting.default else {
                continue;
            };
            if !keys.contains(setting.variable) {
                continue;
            }
            let mut env = base.clone();
            env.insert(setting.variable.to_owned(), value.to_owned());
            let set = Config::load_from(None, &env)
                .unwrap_or_else(|e| panic!("{}={value}: {e}", setting.variable));
            assert_eq!(
                set, unset,
                "{}: the reference says its default is `{value}`, and setting that changes the configuration",
                setting.variable
            );
            checked += 1;
        }
        assert!(checked >= 40, "only {checked} defaults checked");
    }

    #[test]
    fn the_table_has_one_row_per_setting() {
        let table = markdown_table();
        assert_eq!(table.lines().count(), SETTINGS.len() + 2);
        assert!(table.contains("| `ENGRAM_DATABASE_URL` |"));
    }
}
