//! The `engram` binary: parse the command line, load config, run a subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use engram::config::Config;

#[derive(Parser)]
#[command(
    name = "engram",
    version,
    about = "Long-term memory for AI agents, served over MCP"
)]
struct Cli {
    /// TOML config file (keys as the ENGRAM_* variables, lower-cased without the prefix).
    #[arg(long, global = true, env = "ENGRAM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP (stdio by default; logs go to stderr).
    Serve {
        /// How clients connect: `stdio` (the client starts engram and speaks
        /// MCP over its stdin/stdout) or `http` (MCP at /mcp, legacy SSE at
        /// /sse, REST at /api/v1/memory, health at /healthz and /readyz,
        /// Prometheus metrics at /metrics; every request but health and
        /// metrics needs an API key unless ENGRAM_AUTH=none).
        #[arg(long, value_enum, default_value_t = Transport::Stdio)]
        transport: Transport,
        /// `http`: the address to listen on (port 0: any free port, logged).
        #[arg(long, env = "ENGRAM_BIND", default_value = "127.0.0.1:8765")]
        bind: String,
    },
    /// Apply pending database migrations and exit (`serve` does this itself
    /// unless ENGRAM_AUTO_MIGRATE=false). With ENGRAM_DATABASE_OWNER_URL, run
    /// them as that owner role and grant ENGRAM_DATABASE_URL's role what
    /// serving needs (the two-role setup).
    Migrate,
    /// Rebuild every stored vector with the configured embedder (stop servers first),
    /// e.g. `ENGRAM_EMBEDDER=local engram reembed` to move a `hash` store to meaning.
    Reembed,
    /// Sentence models for the in-process embedder (ENGRAM_EMBEDDER=local).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Re-encrypt every encrypted value under the current ENGRAM_ENCRYPTION_KEY
    /// (older keys in ENGRAM_ENCRYPTION_OLD_KEYS); servers may keep running.
    RotateKey,
    /// Finish remembers kept verbatim when the model failed (on_llm_error =
    /// verbatim) or the user's token budget was spent: extract, reconcile and
    /// replace their verbatim copies (entries of users still over today's
    /// budget stay queued).
    Reextract {
        /// At most this many pending entries, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// API keys for the HTTP transport: a user key acts for its user only,
    /// an admin key for any user.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit trail: list rows (newest first), seal them into the hash
    /// chain, or verify the chain.
    Audit(AuditArgs),
    /// Remove the memories retention makes due (ENGRAM_RETENTION_DAYS,
    /// ENGRAM_RETENTION_CATEGORIES, a remember's ttl_days: expired;
    /// ENGRAM_HISTORY_RETENTION_DAYS: superseded), audited. `serve` does it
    /// every ENGRAM_RETENTION_PURGE_INTERVAL_SECS.
    Purge {
        /// Say what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write everything stored for one user (memories with their history,
    /// deferred remembers) as the JSON GET /api/v1/memory/export/{user_id}
    /// returns, audited; `--encrypt` seals it under ENGRAM_ENCRYPTION_KEY,
    /// `--decrypt FILE` opens such a file again. `--all` (or `--format
    /// jsonl`) streams JSON lines instead, one record a line, every user's.
    Export(engram::startup::ExportArgs),
    /// Ask a running HTTP server whether it is ready (exit 0) or not (exit 1):
    /// the container image's health check.
    Healthcheck {
        /// The URL to probe; default: /readyz on ENGRAM_BIND, over the
        /// loopback when it binds every address.
        #[arg(long)]
        url: Option<String>,
        /// The address `serve --transport http` listens on.
        #[arg(long, env = "ENGRAM_BIND", default_value = "127.0.0.1:8765")]
        bind: String,
    },
    /// Print a generated part of the reference docs as Markdown: every
    /// setting (`config`), the REST API (`rest`) or the MCP tools (`tools`).
    Reference {
        #[arg(value_enum)]
        part: engram::reference::Part,
    },
    /// Bring memories in from engram's own export, mem0 (get_all JSON or a
    /// dump of its pgvector table), OpenMemory's export archive or
    /// server-memory's knowledge graph; the format is detected. Texts are
    /// embedded again with the configured embedder; ids, times and metadata
    /// are kept where the source has them. Running it twice adds nothing.
    Import(engram::startup::ImportArgs),
    /// Fill a scratch store and print remember throughput and recall latency.
    Bench(engram::bench::BenchArgs),
    /// Measure recall on a LoCoMo-format conversation set: every turn
    /// remembered into a scratch store (the configured database is not
    /// touched) with the configured embedder, every question recalled and
    /// scored; prints a report per question category.
    Eval(engram::eval::EvalArgs),
}

#[derive(clap::Args)]
struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Only rows about this user id.
    #[arg(long)]
    user: Option<String>,
    /// Only rows at or after this time (RFC 3339, e.g. 2026-11-30T00:00:00Z).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this operation (remember, recall, user_context, forget, forget_matching,
    /// forget_user, get, history, stats, export, import, reextract, purge, audit).
    #[arg(long)]
    op: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One JSON object per row.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Chain every committed row now (`serve` does it every few seconds).
    Seal,
    /// Recompute the chain and report the first row that breaks it.
    Verify,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download a model ahead of time into the model cache
    /// (ENGRAM_MODEL_CACHE_DIR), every file checked against the hub's checksum.
    Pull {
        /// A Hugging Face model id (default: ENGRAM_EMBEDDING_MODEL, else
        /// sentence-transformers/all-MiniLM-L6-v2).
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once: only its hash is stored).
    Create {
        /// The one user the key acts for.
        #[arg(long, required_unless_present = "admin", conflicts_with = "admin")]
        user: Option<String>,
        /// A key that may act for any user.
        #[arg(long)]
        admin: bool,
        /// A note to tell keys apart in `keys list`.
        #[arg(long, default_value = "")]
        label: String,
        /// A key that may only read (recall, context, stats, export,
        /// history), never remember or forget.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        expiry: engram::startup::KeyExpiry,
    },
    /// List keys (never the keys themselves), with their state (active,
    /// expired, revoked), expiry and access.
    List,
    /// Revoke a key by its id (from `keys list`).
    Revoke { id: String },
    /// Replace a key: print a new one (same user, access and label) and
    /// let the old one work for a grace period only.
    Rotate {
        /// The id of the active key to replace (from `keys list`).
        id: String,
        /// How long the old key keeps working: a whole number and a unit,
        /// s, m, h, d or w.
        #[arg(long, value_name = "SPAN", default_value = "24h")]
        grace: String,
        /// The new key's expiry; by default it lives as long as the old
        /// one did (from now), or never expires if the old one did not.
        #[command(flatten)]
        expiry: engram::startup::KeyExpiry,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Transport {
    Stdio,
    Http,
}

/// Allocations of 256 KiB and more are mapped on their own, and given back
/// to the system when freed. glibc otherwise raises that threshold to the
/// largest block freed so far (up to 32 MiB): the users' in-process copies
/// (a few MB each, loaded and dropped as they come and go within
/// `ENGRAM_VECTOR_CACHE_MB`) then come from the heap, whose freed middle is
/// never returned, and the process held 2.7 times the copies' budget
/// (258 MiB at 96 MiB, against 165 MiB with this; `docs/benchmarks.md`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_copies() {
    // SAFETY: mallopt only sets a malloc parameter; it is called before any
    // thread but this one exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_copies() {}

fn main() -> ExitCode {
    return_freed_copies();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("engram: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs, and traces when OTEL_EXPORTER_OTLP_ENDPOINT is set (their
    // exporter runs on the runtime).
    let telemetry = match runtime.block_on(async { engram::telemetry::init() }) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("engram: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // The spans still queued go out before the process does.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engram: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve { transport, bind } => {
            let config = Config::load(cli.config.as_deref())?;
            match transport {
                Transport::Stdio => engram::startup::serve_stdio(&config).await?,
                Transport::Http => engram::startup::serve_http(&config, &bind).await?,
            }
        }
        Command::Migrate => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::migrate(&config).await?;
        }
        Command::RotateKey => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::rotate_encryption_key(&config).await?;
        }
        Command::Reembed => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::reembed(&config).await?;
        }
        Command::Models(ModelsCommand::Pull { id }) => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::pull_model(&config, id).await?;
        }
        Command::Reextract { limit } => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::reextract(&config, limit).await?;
        }
        Command::Keys(command) => {
            let config = Config::load(cli.config.as_deref())?;
            match command {
                KeysCommand::Create {
                    user,
                    admin,
                    label,
                    read_only,
                    expiry,
                } => {
                    let user = if admin { None } else { user };
                    engram::startup::create_key(&config, user, label, read_only, &expiry).await?;
                }
                KeysCommand::List => engram::startup::list_keys(&config).await?,
                KeysCommand::Revoke { id } => engram::startup::revoke_key(&config, &id).await?,
                KeysCommand::Rotate { id, grace, expiry } => {
                    engram::startup::rotate_key(&config, &id, &grace, &expiry).await?;
                }
            }
        }
        Command::Audit(args) => {
            let config = Config::load(cli.config.as_deref())?;
            match args.command {
                Some(AuditCommand::Seal) => engram::startup::audit_seal(&config).await?,
                Some(AuditCommand::Verify) => engram::startup::audit_verify(&config).await?,
                None => {
                    let listing = engram::startup::AuditListing {
                        user: args.user,
                        since: args.since,
                        operation: args.op,
                        limit: args.limit,
                        json: args.json,
                    };
                    engram::startup::audit_list(&config, listing).await?;
                }
            }
        }
        Command::Purge { dry_run } => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::purge(&config, dry_run).await?;
        }
        Command::Export(args) => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::export(&config, &args).await?;
        }
        Command::Healthcheck { url, bind } => {
            let url = url.unwrap_or_else(|| engram::startup::default_probe_url(&bind));
            engram::startup::healthcheck(&url).await?;
        }
        Command::Reference { part } => print!("{}", part.render()),
        Command::Import(args) => {
            let config = Config::load(cli.config.as_deref())?;
            engram::startup::import(&config, &args).await?;
        }
        Command::Bench(args) => engram::bench::run(args).await?,
        Command::Eval(args) => {
            let config = Config::load(cli.config.as_deref())?;
            engram::eval::run(&config, args).await?;
        }
    }
    Ok(())
}
