//! The configuration's unit tests: layering, accepted forms, and that each
//! refusal names the key, where the value came from, and what is allowed.

use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_then_file_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engram.toml");
    std::fs::write(
        &file,
        "database_url = \"sqlite:///tmp/a.db\"\nembedding_dims = 128\ndefault_user = \"filey\"\n",
    )
    .unwrap();

    let cfg = Config::load_from(Some(&file), &env(&[("ENGRAM_DEFAULT_USER", "envy")])).unwrap();
    assert_eq!(cfg.store.database_url, "sqlite:///tmp/a.db");
    assert_eq!(cfg.embedder.dims, 128);
    assert_eq!(cfg.memory.default_user, "envy");
    assert_eq!(cfg.memory.dedup_threshold, 0.9);
    assert_eq!(cfg.memory.max_text_bytes, 32 * 1024);
    assert_eq!(cfg.store.vector_cache_mb, 96);
    assert_eq!(cfg.store.timeout_ms, 3000);
    assert_eq!(cfg.store.statement_timeout_ms, 5000);
    assert_eq!(cfg.store.ready_timeout_ms, 1000);
    assert_eq!(cfg.embedder.kind, EmbedderKind::Auto);
    assert!(cfg.embedder.dims_set, "the file set embedding_dims");
    assert_eq!(cfg.store.index, IndexKind::Auto);
    assert!(cfg.store.auto_migrate);
}

#[test]
fn openai_settings_come_from_the_standard_variables() {
    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_EMBEDDER", "openai"),
            ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
            ("OPENAI_API_KEY", "sk-secret"),
            ("ENGRAM_EMBEDDING_QUERY_PREFIX", "query: "),
            ("ENGRAM_EMBEDDING_SEND_DIMENSIONS", "false"),
            ("ENGRAM_EMBEDDING_BATCH_SIZE", "16"),
            ("ENGRAM_EMBEDDING_QUERY_INPUT_TYPE", "search_query"),
            ("ENGRAM_ON_LLM_ERROR", "Fail"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.embedder.input_type_field, "input_type");
    assert_eq!(
        cfg.embedder.query_input_type.as_deref(),
        Some("search_query")
    );
    assert_eq!(cfg.embedder.document_input_type, None);
    assert_eq!(cfg.memory.on_llm_error, OnLlmError::Fail);
    for bad in ["model", "", "a b"] {
        let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDING_INPUT_TYPE_FIELD", bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ENGRAM_EMBEDDING_INPUT_TYPE_FIELD"), "{err}");
    }
    let err = Config::load_from(None, &env(&[("ENGRAM_ON_LLM_ERROR", "ignore")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("verbatim, fail"), "{err}");
    assert_eq!(cfg.embedder.kind, EmbedderKind::Openai);
    assert_eq!(cfg.openai.base_url, "http://localhost:11434/v1");
    assert_eq!(cfg.embedder.query_prefix, "query: ");
    assert!(!cfg.embedder.send_dimensions);
    assert_eq!(cfg.embedder.batch_size, 16);
    assert_eq!(cfg.embedder.max_retries, DEFAULT_EMBEDDING_MAX_RETRIES);
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("sk-secret"), "{shown}");

    let defaults = Config::load_from(None, &env(&[])).unwrap();
    assert_eq!(defaults.openai.base_url, crate::openai::OPENAI_API_BASE);
    assert_eq!(defaults.openai.api_key, None);

    let err = Config::load_from(None, &env(&[("OPENAI_BASE_URL", "localhost:11434")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("OPENAI_BASE_URL") && err.contains("http"),
        "{err}"
    );
    let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDING_BATCH_SIZE", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ENGRAM_EMBEDDING_BATCH_SIZE"), "{err}");
}

#[test]
fn cache_settings_are_checked() {
    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_CACHE_URL", "redis://cache:6379/2"),
            ("ENGRAM_CACHE_PREFIX", "staging:"),
            ("ENGRAM_CACHE_TTL_SECS", "60"),
            ("ENGRAM_CACHE_TIMEOUT_MS", "25"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.cache.url.as_deref(), Some("redis://cache:6379/2"));
    assert_eq!(cfg.cache.prefix, "staging:");
    assert_eq!(cfg.cache.ttl_secs, 60);
    assert_eq!(cfg.cache.timeout_ms, 25);
    assert_eq!(
        cfg.cache.embedding_ttl_secs,
        DEFAULT_CACHE_EMBEDDING_TTL_SECS
    );
    assert_eq!(cfg.cache.pool_size, DEFAULT_CACHE_POOL_SIZE);

    let unset = Config::load_from(None, &env(&[("ENGRAM_CACHE_URL", " ")])).unwrap();
    assert_eq!(unset.cache.url, None);

    for (key, value, expect) in [
        ("ENGRAM_CACHE_URL", "memcached://x", "redis://"),
        (
            "ENGRAM_CACHE_URL",
            "redis-cluster+tls://:secret@x",
            "rediss-cluster://",
        ),
        ("ENGRAM_CACHE_TTL_SECS", "0", "1..=86400"),
        ("ENGRAM_CACHE_TIMEOUT_MS", "soon", "integer"),
        ("ENGRAM_CACHE_PREFIX", "a b", "without spaces"),
        ("ENGRAM_CACHE_POOL_SIZE", "0", "1..=256"),
    ] {
        let err = Config::load_from(None, &env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(expect),
            "{key}={value}: {err}"
        );
        assert!(!err.contains("secret"), "password shown: {err}");
    }
}

#[test]
fn postgres_urls_and_their_settings() {
    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_DATABASE_URL", "postgres://engram@db:5432/engram"),
            ("ENGRAM_INDEX", "hnsw"),
            ("ENGRAM_AUTO_MIGRATE", "false"),
            ("ENGRAM_DATABASE_POOL_SIZE", "4"),
            ("ENGRAM_DATABASE_TIMEOUT_MS", "1500"),
            ("ENGRAM_DATABASE_STATEMENT_TIMEOUT_MS", "2500"),
            ("ENGRAM_DATABASE_READY_TIMEOUT_MS", "250"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.store.index, IndexKind::Hnsw);
    assert!(!cfg.store.auto_migrate);
    assert_eq!(cfg.store.pool_size, 4);
    assert_eq!(cfg.store.timeout_ms, 1500);
    assert_eq!(cfg.store.statement_timeout_ms, 2500);
    assert_eq!(cfg.store.ready_timeout_ms, 250);

    let err = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_DATABASE_URL", "sqlite:///tmp/x.db"),
            ("ENGRAM_INDEX", "diskann"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("ENGRAM_INDEX") && err.contains("PostgreSQL"),
        "{err}"
    );

    let err = Config::load_from(None, &env(&[("ENGRAM_AUTO_MIGRATE", "sometimes")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ENGRAM_AUTO_MIGRATE"), "{err}");
}

#[test]
fn bad_values_name_the_key_and_the_choices() {
    let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDER", "bert")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ENGRAM_EMBEDDER") && err.contains("auto, hash, local, openai"),
        "{err}"
    );

    let err = Config::load_from(None, &env(&[("ENGRAM_EMBEDDING_DIMS", "many")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("embedding_dims") && err.contains("integer"),
        "{err}"
    );

    let err = Config::load_from(None, &env(&[("ENGRAM_DEDUP_THRESHOLD", "1.5")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dedup_threshold"), "{err}");

    let err = Config::load_from(None, &env(&[("ENGRAM_DATABASE_URL", "mysql://x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sqlite://"), "{err}");
}

#[test]
fn http_limits_and_origins() {
    let cfg = Config::load_from(None, &env(&[])).unwrap();
    // Per user what one client needs; per key a hundred users' worth.
    assert_eq!(
        (cfg.http.rest_user_rate_limit, cfg.http.mcp_user_rate_limit),
        (120, 600)
    );
    assert_eq!(
        (cfg.http.rest_rate_limit, cfg.http.mcp_rate_limit),
        (12_000, 60_000)
    );
    assert_eq!(cfg.http.request_timeout_secs, 120);
    assert!(cfg.http.allowed_origins.is_empty());

    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_REST_RATE_LIMIT", "0"),
            ("ENGRAM_MCP_RATE_LIMIT", "5000"),
            ("ENGRAM_REST_USER_RATE_LIMIT", "3"),
            ("ENGRAM_MCP_USER_RATE_LIMIT", "0"),
            ("ENGRAM_REQUEST_TIMEOUT_SECS", "30"),
            (
                "ENGRAM_ALLOWED_ORIGINS",
                " https://App.example.com/ ,http://localhost:3000",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(
        (cfg.http.rest_rate_limit, cfg.http.mcp_rate_limit),
        (0, 5000)
    );
    assert_eq!(
        (cfg.http.rest_user_rate_limit, cfg.http.mcp_user_rate_limit),
        (3, 0)
    );
    assert_eq!(cfg.http.request_timeout_secs, 30);
    assert_eq!(
        cfg.http.allowed_origins,
        ["https://app.example.com", "http://localhost:3000"]
    );

    for (key, value, says) in [
        ("ENGRAM_ALLOWED_ORIGINS", "*", "no wildcards"),
        ("ENGRAM_ALLOWED_ORIGINS", "app.example.com", "scheme://host"),
        (
            "ENGRAM_ALLOWED_ORIGINS",
            "https://a.example/path",
            "not an origin",
        ),
        ("ENGRAM_REST_RATE_LIMIT", "-1", "0 for no limit"),
        ("ENGRAM_MCP_USER_RATE_LIMIT", "-1", "per acting user"),
        ("ENGRAM_REQUEST_TIMEOUT_SECS", "0", "1..=3600"),
    ] {
        let err = Config::load_from(None, &env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(says),
            "{key}={value}: {err}"
        );
    }
}

#[test]
fn unknown_file_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engram.toml");
    std::fs::write(&file, "embeder = \"hash\"\n").unwrap();
    let err = Config::load_from(Some(&file), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("embeder"), "{err}");
}

fn write_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let file = dir.path().join("engram.toml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn a_bad_file_value_is_blamed_on_the_file_not_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, says) in [
        ("dedup_threshold = 2.0\n", "dedup_threshold", "(0, 1]"),
        ("embedding_dims = \"many\"\n", "embedding_dims", "integer"),
        ("embedder = \"bert\"\n", "embedder", "hash, local, openai"),
        (
            "auto_migrate = \"sometimes\"\n",
            "auto_migrate",
            "true or false",
        ),
        (
            "allowed_origins = [\"*\"]\n",
            "allowed_origins",
            "no wildcards",
        ),
        (
            "llm_categories = \"work\"\n",
            "llm_categories",
            "array of strings",
        ),
        ("cache_url = \"memcached://x\"\n", "cache_url", "redis://"),
    ] {
        let file = write_file(&dir, text);
        let err = Config::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        let from_file = format!("{key} (config file {}): ", file.display());
        assert!(
            err.starts_with(&from_file) && err.contains(says),
            "{text}: {err}"
        );
        assert!(!err.contains("ENGRAM_"), "blamed on the variable: {err}");
    }
}

#[test]
fn the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "dedup_threshold = 2.0\ncache_ttl_secs = 60\ncache_url = \"redis://cache:6379\"\n\
         allowed_hosts = [\"Memory.Example.com\"]\nembedder = \"OpenAI\"\n\
         llm_categories = [\"work\", \"diet\"]\nopenai_base_url = \"http://file:1/v1\"\n",
    );
    let err = Config::load_from(Some(&file), &env(&[])).unwrap_err();
    assert!(err.to_string().contains("dedup_threshold"), "{err}");

    let cfg = Config::load_from(
        Some(&file),
        &env(&[
            // The file's bad value is never read: the variable wins.
            ("ENGRAM_DEDUP_THRESHOLD", "0.8"),
            ("ENGRAM_CACHE_TTL_SECS", "120"),
            // Blank in the environment: no cache, whatever the file says.
            ("ENGRAM_CACHE_URL", ""),
            ("ENGRAM_LLM_CATEGORIES", "plans, travel"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.memory.dedup_threshold, 0.8);
    assert_eq!(cfg.cache.ttl_secs, 120);
    assert_eq!(cfg.cache.url, None);
    assert_eq!(cfg.llm.categories, ["plans", "travel"]);
    // Not overridden: the file's values, in their accepted forms.
    assert_eq!(cfg.http.allowed_hosts, ["memory.example.com"]);
    assert_eq!(cfg.embedder.kind, EmbedderKind::Openai);
    assert_eq!(cfg.openai.base_url, "http://file:1/v1");

    let cfg = Config::load_from(
        Some(&file),
        &env(&[
            ("ENGRAM_DEDUP_THRESHOLD", "0.8"),
            ("OPENAI_BASE_URL", "http://env:2/v1"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.openai.base_url, "http://env:2/v1");
    assert_eq!(cfg.cache.url.as_deref(), Some("redis://cache:6379"));
}

#[test]
fn a_range_refusal_quotes_the_range_and_default_constants() {
    let err = Config::load_from(None, &env(&[("ENGRAM_CACHE_TTL_SECS", "0")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "cache_ttl_secs (env ENGRAM_CACHE_TTL_SECS): 0 is out of range; allowed {}..={} \
             (default {DEFAULT_CACHE_TTL_SECS})",
            cache::TTL_SECS.min,
            cache::TTL_SECS.max
        )
    );

    fn refused<T: layers::Number>(key: &str, range: &layers::Range<T>) {
        let allowed = format!("allowed {} (default {})", range.allowed(), range.default);
        let var = layers::env_var(key);
        let err = Config::load_from(None, &env(&[(&var, "-1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{key} (env {var}): -1 is out of range;"))
                && err.ends_with(&allowed),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = write_file(&dir, &format!("{key} = -1\n"));
        let err = Config::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{key} (config file ")) && err.ends_with(&allowed),
            "{err}"
        );
    }
    refused("database_pool_size", &store::DATABASE_POOL_SIZE);
    refused("vector_cache_mb", &store::VECTOR_CACHE_MB);
    refused("database_timeout_ms", &store::DATABASE_TIMEOUT_MS);
    refused(
        "database_statement_timeout_ms",
        &store::DATABASE_STATEMENT_TIMEOUT_MS,
    );
    refused(
        "database_ready_timeout_ms",
        &store::DATABASE_READY_TIMEOUT_MS,
    );
    refused("cache_ttl_secs", &cache::TTL_SECS);
    refused("cache_embedding_ttl_secs", &cache::EMBEDDING_TTL_SECS);
    refused("cache_timeout_ms", &cache::TIMEOUT_MS);
    refused("cache_pool_size", &cache::POOL_SIZE);
    refused("cache_retry_ms", &cache::RETRY_MS);
    refused("embedding_dims", &embedder::DIMS);
    refused("embedding_batch_size", &embedder::BATCH_SIZE);
    refused("embedding_timeout_secs", &embedder::TIMEOUT_SECS);
    refused("embedding_max_retries", &embedder::MAX_RETRIES);
    refused("llm_timeout_secs", &llm::TIMEOUT_SECS);
    refused("llm_max_retries", &llm::MAX_RETRIES);
    refused("dedup_threshold", &memory::DEDUP_THRESHOLD);
    refused("reconcile_threshold", &memory::RECONCILE_THRESHOLD);
    refused("max_text_bytes", &memory::MAX_TEXT_BYTES);
    refused("rest_rate_limit", &http::REST_RATE_LIMIT);
    refused("mcp_rate_limit", &http::MCP_RATE_LIMIT);
    refused("rest_user_rate_limit", &http::REST_USER_RATE_LIMIT);
    refused("mcp_user_rate_limit", &http::MCP_USER_RATE_LIMIT);
    refused("request_timeout_secs", &http::REQUEST_TIMEOUT_SECS);
    refused("mcp_sessions_per_key", &http::MCP_SESSIONS_PER_KEY);
}

#[test]
fn accepted_forms_of_booleans_choices_and_numbers() {
    for (value, expect) in [
        ("true", true),
        ("1", true),
        ("Yes", true),
        (" on ", true),
        ("FALSE", false),
        ("0", false),
        ("no", false),
        ("off", false),
    ] {
        let cfg = Config::load_from(None, &env(&[("ENGRAM_AUTO_MIGRATE", value)])).unwrap();
        assert_eq!(cfg.store.auto_migrate, expect, "{value}");
    }
    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_EXTRACTOR", " LLM "),
            ("ENGRAM_AUTH", "None"),
            ("ENGRAM_DEDUP_THRESHOLD", "1"),
            ("ENGRAM_RECONCILE_THRESHOLD", "0"),
            ("ENGRAM_EMBEDDING_DIMS", " 256 "),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.llm.extractor, ExtractorKind::Llm);
    assert_eq!(cfg.http.auth, AuthMode::None);
    assert_eq!(
        (cfg.memory.dedup_threshold, cfg.memory.reconcile_threshold),
        (1.0, 0.0)
    );
    assert_eq!(cfg.embedder.dims, 256);

    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "reconcile_threshold = 1\nauto_migrate = false\n");
    let cfg = Config::load_from(Some(&file), &env(&[])).unwrap();
    assert_eq!(cfg.memory.reconcile_threshold, 1.0);
    assert!(!cfg.store.auto_migrate);
}

#[test]
fn the_api_key_and_nested_tables_are_refused_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (text, says) in [
        ("openai_api_key = \"sk-x\"\n", "OPENAI_API_KEY"),
        ("[cache]\nurl = \"redis://x\"\n", "'cache'"),
    ] {
        let file = write_file(&dir, text);
        let err = Config::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains(says),
            "{err}"
        );
        assert!(!err.contains("sk-x"), "{err}");
    }
    let err = Config::load_from(Some(&dir.path().join("missing.toml")), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn secrets_default_to_redact_and_accept_the_three_modes() {
    let defaults = Config::load_from(None, &env(&[])).unwrap();
    assert_eq!(defaults.memory.secrets, SecretsMode::Redact);
    for (given, mode) in [
        ("refuse", SecretsMode::Refuse),
        (" Allow ", SecretsMode::Allow),
        ("REDACT", SecretsMode::Redact),
    ] {
        let cfg = Config::load_from(None, &env(&[("ENGRAM_SECRETS", given)])).unwrap();
        assert_eq!(cfg.memory.secrets, mode, "{given}");
    }
    let err = Config::load_from(None, &env(&[("ENGRAM_SECRETS", "mask")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ENGRAM_SECRETS") && err.contains("redact, refuse, allow"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "secrets = \"refuse\"\n");
    let cfg = Config::load_from(Some(&file), &env(&[])).unwrap();
    assert_eq!(cfg.memory.secrets, SecretsMode::Refuse);
}

#[test]
fn retention_is_off_by_default_and_checked() {
    let cfg = Config::load_from(None, &env(&[])).unwrap();
    assert_eq!(cfg.retention.days, None);
    assert_eq!(cfg.retention.history_days, None);
    assert!(cfg.retention.categories.is_empty());
    assert_eq!(
        cfg.retention.purge_every_secs,
        Some(DEFAULT_PURGE_INTERVAL_SECS)
    );

    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_RETENTION_DAYS", "365"),
            ("ENGRAM_RETENTION_CATEGORIES", "Health=30, travel=400"),
            ("ENGRAM_HISTORY_RETENTION_DAYS", "90"),
            ("ENGRAM_RETENTION_PURGE_INTERVAL_SECS", "0"),
        ]),
    )
    .unwrap();
    let r = &cfg.retention;
    assert_eq!(
        (r.days, r.history_days, r.purge_every_secs),
        (Some(365), Some(90), None)
    );
    assert_eq!(r.categories.get("health"), Some(&30));
    // A category's own retention replaces the default, longer or shorter;
    // the fewest days win among several; a caller can only shorten.
    let cats = |c: &[&str]| c.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(r.days_for(&cats(&[]), None), Some(365));
    assert_eq!(r.days_for(&cats(&["travel"]), None), Some(400));
    assert_eq!(r.days_for(&cats(&["travel", "health"]), None), Some(30));
    assert_eq!(r.days_for(&cats(&["travel"]), Some(7)), Some(7));
    assert_eq!(r.days_for(&cats(&["health"]), Some(3000)), Some(30));
    assert_eq!(RetentionConfig::default().days_for(&[], Some(5)), Some(5));
    assert_eq!(RetentionConfig::default().days_for(&[], None), None);
    // Expiry counts from when the memory is stored.
    let stored = chrono::DateTime::UNIX_EPOCH;
    assert_eq!(
        r.expiry(stored, &cats(&["health"]), None),
        Some(stored + chrono::Duration::days(30))
    );

    for (key, value, says) in [
        ("ENGRAM_RETENTION_DAYS", "-1", "out of range"),
        ("ENGRAM_RETENTION_DAYS", "40000", "0..=36500"),
        ("ENGRAM_RETENTION_CATEGORIES", "health", "category=days"),
        ("ENGRAM_RETENTION_CATEGORIES", "health=0", "category=days"),
        ("ENGRAM_HISTORY_RETENTION_DAYS", "x", "is not an integer"),
    ] {
        let err = Config::load_from(None, &env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(says),
            "{key}={value}: {err}"
        );
    }
}

#[test]
fn encryption_keys_come_from_the_variable_or_a_key_file_and_never_show() {
    use base64::Engine;
    let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let (k1, k2, k3) = (b64(1), b64(2), b64(3));
    let none = Config::load_from(None, &env(&[])).unwrap();
    assert!(none.crypto.sealer().is_none());

    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_ENCRYPTION_KEY", k1.as_str()),
            ("ENGRAM_ENCRYPTION_OLD_KEYS", &format!("{k2}, {k3}")),
            ("ENGRAM_SENSITIVE_METADATA_KEYS", "diagnosis, ssn"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.crypto.key, Some(KeyBytes([1; 32])));
    assert_eq!(
        cfg.crypto.old_keys,
        vec![KeyBytes([2; 32]), KeyBytes([3; 32])]
    );
    let sealer = cfg.crypto.sealer().unwrap();
    assert!(sealer.is_sensitive("ssn") && sealer.is_sensitive("secret_x"));
    assert!(!sealer.is_sensitive("topic"));
    let shown = format!("{cfg:?} {sealer:?}");
    for key in [&k1, &k2, &k3] {
        assert!(!shown.contains(key.as_str()), "{shown}");
    }

    // A key file: the first key seals, the rest open.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("# current first\n{k2}\n\n{k1}\n")).unwrap();
    let path = file.display().to_string();
    let cfg =
        Config::load_from(None, &env(&[("ENGRAM_ENCRYPTION_KEY_FILE", path.as_str())])).unwrap();
    assert_eq!(cfg.crypto.key, Some(KeyBytes([2; 32])));
    assert_eq!(cfg.crypto.old_keys, vec![KeyBytes([1; 32])]);

    for (vars, expected) in [
        (
            vec![("ENGRAM_ENCRYPTION_KEY", "c2hvcnQ=")],
            "ENGRAM_ENCRYPTION_KEY",
        ),
        (vec![("ENGRAM_ENCRYPTION_KEY", "not base64!")], "not base64"),
        (
            vec![
                ("ENGRAM_ENCRYPTION_KEY", k1.as_str()),
                ("ENGRAM_ENCRYPTION_KEY_FILE", path.as_str()),
            ],
            "set one",
        ),
        (
            vec![("ENGRAM_ENCRYPTION_OLD_KEYS", k1.as_str())],
            "without a current key",
        ),
        (
            vec![("ENGRAM_ENCRYPTION_KEY_FILE", "/nonexistent/engram-keys")],
            "cannot read",
        ),
    ] {
        let message = match Config::load_from(None, &env(&vars)) {
            Ok(_) => panic!("{vars:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(expected), "{vars:?}: {message}");
        assert!(!message.contains(k1.as_str()), "{message}");
    }
}

#[test]
fn metrics_settings_and_the_owner_url_are_checked() {
    let cfg = Config::load_from(None, &env(&[])).unwrap();
    assert_eq!(cfg.metrics.bind, None);
    assert_eq!(cfg.metrics.refresh_secs, DEFAULT_METRICS_REFRESH_SECS);
    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_METRICS_BIND", "0.0.0.0:9464"),
            ("ENGRAM_METRICS_REFRESH_SECS", "2"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.metrics.bind, Some("0.0.0.0:9464".parse().unwrap()));
    assert_eq!(cfg.metrics.refresh_secs, 2);
    let err = Config::load_from(None, &env(&[("ENGRAM_METRICS_BIND", "localhost")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ENGRAM_METRICS_BIND") && err.contains("HOST:PORT"),
        "{err}"
    );
    let err = Config::load_from(None, &env(&[("ENGRAM_METRICS_REFRESH_SECS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ENGRAM_METRICS_REFRESH_SECS"), "{err}");

    // The owner URL is for PostgreSQL, and must be one.
    let pg = ("ENGRAM_DATABASE_URL", "postgres://app@db/engram");
    let cfg = Config::load_from(
        None,
        &env(&[
            pg,
            ("ENGRAM_DATABASE_OWNER_URL", "postgres://owner:pw@db/engram"),
        ]),
    )
    .unwrap();
    assert_eq!(
        cfg.store.owner_url.as_deref(),
        Some("postgres://owner:pw@db/engram")
    );
    let err = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_DATABASE_URL", "sqlite:///tmp/e.db"),
            ("ENGRAM_DATABASE_OWNER_URL", "postgres://owner:pw@db/engram"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("ENGRAM_DATABASE_OWNER_URL") && !err.contains("pw"),
        "{err}"
    );
    let err = Config::load_from(
        None,
        &env(&[pg, ("ENGRAM_DATABASE_OWNER_URL", "mysql://owner@db/engram")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("postgres://OWNER"), "{err}");
}

#[test]
fn token_budgets_are_off_by_default_and_checked() {
    let cfg = Config::load_from(None, &env(&[])).unwrap();
    assert_eq!(cfg.budget, BudgetConfig::default());
    assert!(!cfg.budget.enabled());
    assert_eq!(cfg.budget.for_user("alice"), None);
    let cfg = Config::load_from(None, &env(&[("ENGRAM_TOKEN_BUDGET_DAILY", "0")])).unwrap();
    assert!(!cfg.budget.enabled(), "0 is no budget");

    let cfg = Config::load_from(
        None,
        &env(&[
            ("ENGRAM_TOKEN_BUDGET_DAILY", "50000"),
            (
                "ENGRAM_TOKEN_BUDGET_USERS",
                " alice=200000, bob=NONE ,team=a=7, ",
            ),
        ]),
    )
    .unwrap();
    let b = &cfg.budget;
    assert!(b.enabled());
    assert_eq!(b.daily, Some(50_000));
    assert_eq!(b.for_user("alice"), Some(200_000));
    assert_eq!(b.for_user("bob"), None, "none: no budget for bob");
    assert_eq!(b.for_user("team=a"), Some(7), "an id may hold '='");
    assert_eq!(b.for_user("carol"), Some(50_000));
    assert!(b.overridden("bob") && !b.overridden("carol"));

    // Overrides alone enable counting; `none` alone does not.
    let cfg = Config::load_from(None, &env(&[("ENGRAM_TOKEN_BUDGET_USERS", "alice=10")])).unwrap();
    assert!(cfg.budget.enabled());
    assert_eq!(cfg.budget.for_user("bob"), None);
    let cfg =
        Config::load_from(None, &env(&[("ENGRAM_TOKEN_BUDGET_USERS", "alice=none")])).unwrap();
    assert!(!cfg.budget.enabled());

    // The file takes an array of the same items.
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "token_budget_daily = 1000\ntoken_budget_users = [\"alice=none\"]\n",
    );
    let cfg = Config::load_from(Some(&file), &env(&[])).unwrap();
    assert_eq!(
        (cfg.budget.for_user("alice"), cfg.budget.for_user("bob")),
        (None, Some(1000))
    );

    for (key, value, says) in [
        ("ENGRAM_TOKEN_BUDGET_DAILY", "-5", "out of range"),
        ("ENGRAM_TOKEN_BUDGET_DAILY", "lots", "is not an integer"),
        (
            "ENGRAM_TOKEN_BUDGET_DAILY",
            "1000000000001",
            "0..=1000000000000",
        ),
        ("ENGRAM_TOKEN_BUDGET_USERS", "alice", "is not user=tokens"),
        (
            "ENGRAM_TOKEN_BUDGET_USERS",
            "alice=0",
            "or none for no budget",
        ),
        ("ENGRAM_TOKEN_BUDGET_USERS", "alice=many", "1..="),
        ("ENGRAM_TOKEN_BUDGET_USERS", "=100", "names no user"),
        ("ENGRAM_TOKEN_BUDGET_USERS", "a\u{200b}b=100", "invisible"),
        (
            "ENGRAM_TOKEN_BUDGET_USERS",
            "alice=1,alice=2",
            "a second time",
        ),
    ] {
        let err = Config::load_from(None, &env(&[(key, value)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(says),
            "{key}={value}: {err}"
        );
    }
    let file = write_file(&dir, "token_budget_users = \"alice=5\"\n");
    let err = Config::load_from(Some(&file), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("an array of strings"), "{err}");
}

#[test]
fn the_local_embedders_settings_honour_the_hub_variables() {
    let cfg = Config::load_from(None, &env(&[])).unwrap();
    assert_eq!(
        cfg.embedder.hub_url.as_deref(),
        Some("https://huggingface.co")
    );
    assert!(cfg.embedder.threads >= 1);
    assert!(cfg.embedder.model_cache_dir.ends_with("engram/models"));
    assert!(!cfg.embedder.dims_set);

    let cfg = Config::load_from(
        None,
        &env(&[
            ("HF_ENDPOINT", "https://mirror.example"),
            ("ENGRAM_EMBEDDING_THREADS", "3"),
            ("ENGRAM_EMBEDDING_MODEL_PATH", "/models/minilm"),
            ("ENGRAM_MODEL_CACHE_DIR", "/var/cache/models"),
        ]),
    )
    .unwrap();
    assert_eq!(
        cfg.embedder.hub_url.as_deref(),
        Some("https://mirror.example")
    );
    assert_eq!(cfg.embedder.threads, 3);
    assert_eq!(
        cfg.embedder.model_path.as_deref(),
        Some(Path::new("/models/minilm"))
    );
    assert_eq!(cfg.embedder.model_cache_dir, Path::new("/var/cache/models"));

    // Off, either way; ENGRAM_MODEL_HUB_URL wins over HF_HUB_OFFLINE.
    for vars in [
        vec![("HF_HUB_OFFLINE", "1")],
        vec![("ENGRAM_MODEL_HUB_URL", "OFF")],
    ] {
        let cfg = Config::load_from(None, &env(&vars)).unwrap();
        assert_eq!(cfg.embedder.hub_url, None, "{vars:?}");
    }
    let cfg = Config::load_from(
        None,
        &env(&[
            ("HF_HUB_OFFLINE", "1"),
            ("ENGRAM_MODEL_HUB_URL", "http://127.0.0.1:9000"),
        ]),
    )
    .unwrap();
    assert_eq!(
        cfg.embedder.hub_url.as_deref(),
        Some("http://127.0.0.1:9000")
    );

    let err = Config::load_from(None, &env(&[("ENGRAM_MODEL_HUB_URL", "ftp://x")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ENGRAM_MODEL_HUB_URL") && err.contains("off"),
        "{err}"
    );
}

#[test]
fn the_cache_over_tls_takes_a_ca_file_and_refuses_one_without_tls() {
    let tls = Config::load_from(
        None,
        &env(&[("ENGRAM_CACHE_URL", "rediss://:pw@cache:6380")]),
    )
    .unwrap();
    assert_eq!(tls.cache.url.as_deref(), Some("rediss://:pw@cache:6380"));
    assert_eq!(tls.cache.ca_file, None);

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.path().join("missing.pem");
    for (vars, expected) in [
        (
            vec![
                ("ENGRAM_CACHE_URL", "redis://cache:6379"),
                ("ENGRAM_CACHE_CA_FILE", empty.to_str().unwrap()),
            ],
            "rediss://",
        ),
        (
            vec![
                ("ENGRAM_CACHE_URL", "rediss://cache:6380"),
                ("ENGRAM_CACHE_CA_FILE", empty.to_str().unwrap()),
            ],
            "no certificate",
        ),
        (
            vec![
                ("ENGRAM_CACHE_URL", "rediss://cache:6380"),
                ("ENGRAM_CACHE_CA_FILE", missing.to_str().unwrap()),
            ],
            "missing.pem",
        ),
    ] {
        let err = Config::load_from(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ENGRAM_CACHE_CA_FILE") && err.contains(expected),
            "{vars:?}: {err}"
        );
    }
}

#[test]
fn a_direct_url_beside_a_pooled_one_turns_the_pooler_mode_on() {
    let pooled = (
        "ENGRAM_DATABASE_URL",
        "postgres://app:pw@pooler:6543/engram",
    );
    let direct = (
        "ENGRAM_DATABASE_DIRECT_URL",
        "postgres://app:pw@db:5432/engram",
    );
    let cfg = Config::load_from(None, &env(&[pooled])).unwrap();
    assert_eq!(cfg.store.pooler, Pooler::None);
    assert_eq!(
        cfg.store.setup_url(),
        "postgres://app:pw@pooler:6543/engram"
    );

    // Supabase's pair: the transaction pooler and the direct connection.
    let cfg = Config::load_from(None, &env(&[pooled, direct])).unwrap();
    assert_eq!(cfg.store.pooler, Pooler::Transaction);
    assert_eq!(cfg.store.direct_url.as_deref(), Some(direct.1));
    assert_eq!(cfg.store.setup_url(), direct.1);
    let owner = (
        "ENGRAM_DATABASE_OWNER_URL",
        "postgres://owner:pw@db:5432/engram",
    );
    let cfg = Config::load_from(None, &env(&[pooled, direct, owner])).unwrap();
    assert_eq!(cfg.store.setup_url(), owner.1);

    // Said outright, either way.
    let none = ("ENGRAM_DATABASE_POOLER", "none");
    let cfg = Config::load_from(None, &env(&[pooled, direct, none])).unwrap();
    assert_eq!(cfg.store.pooler, Pooler::None);

    for (vars, key, expected) in [
        (
            vec![pooled, ("ENGRAM_DATABASE_POOLER", "transaction")],
            "ENGRAM_DATABASE_POOLER",
            "ENGRAM_DATABASE_DIRECT_URL",
        ),
        (
            vec![pooled, ("ENGRAM_DATABASE_POOLER", "statement")],
            "ENGRAM_DATABASE_POOLER",
            "auto, none, transaction",
        ),
        (
            vec![("ENGRAM_DATABASE_URL", "sqlite:///tmp/e.db"), direct],
            "ENGRAM_DATABASE_DIRECT_URL",
            "postgres://",
        ),
        (
            vec![pooled, ("ENGRAM_DATABASE_DIRECT_URL", "mysql://db/engram")],
            "ENGRAM_DATABASE_DIRECT_URL",
            "postgres://",
        ),
    ] {
        let err = Config::load_from(None, &env(&vars))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains(expected),
            "{vars:?}: {err}"
        );
        assert!(!err.contains(":pw@"), "password shown: {err}");
    }
}
