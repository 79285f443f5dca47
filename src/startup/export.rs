//! `engram export`: everything stored for one user, as the JSON
//! `GET /api/v1/memory/export/{user_id}` returns, through the service's
//! audited `export` (its row says transport `cli`); with `--encrypt`, sealed
//! under `ENGRAM_ENCRYPTION_KEY` ([`crate::crypto::export`]); with
//! `--decrypt FILE`, such a file opened again with the configured keys.
//! With `--format jsonl` (implied by `--all`, every user), JSON lines
//! instead, streamed a user at a time: each memory as the document's
//! `memories` hold it (it names its user), each deferred remember as
//! `{"user_id": ..., "pending": {...}}`; `engram import` reads both.
//!
//! Invariants:
//! * the plain export is the REST answer's bytes (compact JSON), then a
//!   newline; `--decrypt` writes exactly what the plain export wrote;
//! * a JSONL line is the REST answer's record, byte for byte (compact
//!   JSON); each user's export is read in one snapshot and audited;
//! * a refusal writes nothing: the key is checked and an existing `--out`
//!   refused (without `--force`) before the store is read;
//! * an `--out` file is created readable by its owner only (0600 on unix;
//!   with `--force` an existing file is narrowed to 0600 too);
//! * the document goes to stdout or `--out`; what was done, to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{StartupError, build, flush_audit};
use crate::auth::Principal;
use crate::config::Config;
use crate::crypto::OpenError;

/// `engram export`'s arguments: `--user U [--encrypt]`, `--all`, or
/// `--decrypt FILE`, each to stdout or `--out FILE`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The user whose memories, history and deferred remembers to export.
    #[arg(
        long,
        value_name = "USER_ID",
        required_unless_present_any = ["decrypt", "all"],
        conflicts_with_all = ["decrypt", "all"]
    )]
    pub user: Option<String>,
    /// Every user with anything stored, as JSONL (one record a line).
    #[arg(long, conflicts_with_all = ["decrypt", "encrypt"])]
    pub all: bool,
    /// `json`: one document, the REST export's (the default for --user);
    /// `jsonl`: one record a line, streamed (the default for --all).
    #[arg(long, value_enum, conflicts_with = "decrypt")]
    pub format: Option<ExportFormat>,
    /// Encrypt the export (AES-256-GCM) under ENGRAM_ENCRYPTION_KEY (JSON only).
    #[arg(long, conflicts_with = "decrypt")]
    pub encrypt: bool,
    /// Open an encrypted export with the configured keys (ENGRAM_ENCRYPTION_KEY
    /// and ENGRAM_ENCRYPTION_OLD_KEYS) and write its plain JSON; the database
    /// is not touched.
    #[arg(long, value_name = "FILE")]
    pub decrypt: Option<PathBuf>,
    /// Write to this new file (readable by its owner only) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Replace the --out file if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

/// How `engram export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON document (one user).
    Json,
    /// JSON lines: one record a line.
    Jsonl,
}

/// `engram export`: exports a user or every user, or decrypts an export,
/// as `args` say.
pub async fn export(config: &Config, args: &ExportArgs) -> Result<(), StartupError> {
    let out = Output {
        path: args.out.as_deref(),
        force: args.force,
    };
    let lines = match (args.format, args.all) {
        (Some(ExportFormat::Json), true) => {
            return Err(StartupError::Unsupported(
                "--all writes JSON lines (--format jsonl): one document cannot hold every user"
                    .into(),
            ));
        }
        (Some(ExportFormat::Jsonl), _) | (None, true) => true,
        _ => false,
    };
    if lines && args.encrypt {
        return Err(StartupError::Unsupported(
            "--encrypt seals one JSON document; export one user as JSON to encrypt it".into(),
        ));
    }
    match (&args.decrypt, &args.user) {
        (Some(file), _) => decrypt(config, file, &out),
        (None, _) if lines => export_lines(config, args.user.as_deref(), &out).await,
        (None, Some(user)) => export_user(config, user, args.encrypt, &out).await,
        // clap requires one of the two.
        (None, None) => Err(StartupError::Unsupported(
            "say which user to export (--user) or which file to decrypt (--decrypt)".into(),
        )),
    }
}

/// Reads `user`'s export through the audited service and writes it, plain
/// or sealed.
async fn export_user(
    config: &Config,
    user: &str,
    encrypt: bool,
    out: &Output<'_>,
) -> Result<(), StartupError> {
    let sealer = match (encrypt, config.crypto.sealer()) {
        (true, None) => return Err(StartupError::NoExportKey),
        (true, Some(sealer)) => Some(sealer),
        (false, _) => None,
    };
    out.refuse_existing()?;
    let service = build(config).await?;
    let cli = crate::audit::Origin {
        transport: "cli",
        client_addr: None,
    };
    let export = crate::audit::from(cli, service.export(&Principal::Operator, Some(user))).await;
    flush_audit(&service).await;
    let export = export?;
    let plain = serde_json::to_vec(&export)
        .map_err(|e| StartupError::Unsupported(format!("the export did not serialize: {e}")))?;
    let (document, how) = match &sealer {
        Some(sealer) => (
            crate::crypto::export::seal(sealer, &plain)
                .map_err(|e| StartupError::Unsupported(e.to_string()))?,
            format!(", encrypted under key id {}", sealer.current_id()),
        ),
        None => (plain, String::new()),
    };
    out.write(&document)?;
    eprintln!(
        "engram: exported {} memories and {} deferred remembers of user {} to {}{how}",
        export.memories.len(),
        export.pending.len(),
        export.user_id,
        out.name()
    );
    Ok(())
}

/// Writes `user`'s export (or every user's, one after the other) as JSON
/// lines, each user's read through the audited service as it is reached.
async fn export_lines(
    config: &Config,
    user: Option<&str>,
    out: &Output<'_>,
) -> Result<(), StartupError> {
    out.refuse_existing()?;
    let service = build(config).await?;
    let cli = crate::audit::Origin {
        transport: "cli",
        client_addr: None,
    };
    let users = match user {
        Some(user) => vec![user.to_owned()],
        None => crate::audit::from(cli.clone(), service.users(&Principal::Operator)).await?,
    };
    let mut sink = out.stream()?;
    let failed = |source| StartupError::File {
        path: out.name(),
        source,
    };
    let (mut memories, mut pending) = (0usize, 0usize);
    for user in &users {
        let export = crate::audit::from(
            cli.clone(),
            service.export(&Principal::Operator, Some(user)),
        )
        .await;
        let export = match export {
            Ok(export) => export,
            Err(e) => {
                flush_audit(&service).await;
                return Err(e.into());
            }
        };
        for memory in &export.memories {
            write_line(&mut sink, memory).map_err(failed)?;
        }
        for entry in &export.pending {
            let line = serde_json::json!({"user_id": export.user_id, "pending": entry});
            write_line(&mut sink, &line).map_err(failed)?;
        }
        memories += export.memories.len();
        pending += export.pending.len();
    }
    sink.finish().map_err(failed)?;
    flush_audit(&service).await;
    eprintln!(
        "engram: exported {memories} memories and {pending} deferred remembers of {} user(s) \
         to {} (JSONL)",
        users.len(),
        out.name()
    );
    Ok(())
}

/// `value` as one compact JSON line.
fn write_line(sink: &mut Sink, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *sink, value)?;
    sink.write_all(b"\n")
}

/// Opens the encrypted export in `file` and writes its plain JSON.
fn decrypt(config: &Config, file: &Path, out: &Output<'_>) -> Result<(), StartupError> {
    out.refuse_existing()?;
    let path = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|source| StartupError::File {
        path: path.clone(),
        source,
    })?;
    let sealed = crate::crypto::export::parse(&bytes).map_err(|e| refused(&path, "", e))?;
    let missing = || StartupError::ExportKeyMissing {
        path: path.clone(),
        key_id: sealed.key_id.clone(),
    };
    let sealer = config.crypto.sealer().ok_or_else(missing)?;
    let plain = crate::crypto::export::open(&sealer, &sealed)
        .map_err(|e| refused(&path, &sealed.key_id, e))?;
    out.write(&plain)?;
    eprintln!(
        "engram: decrypted {path} (key id {}) to {}",
        sealed.key_id,
        out.name()
    );
    Ok(())
}

/// Why `path`, sealed under `key_id`, did not open, as the operator reads it.
fn refused(path: &str, key_id: &str, e: OpenError) -> StartupError {
    let path = path.to_owned();
    match e {
        OpenError::UnknownKey(key_id) => StartupError::ExportKeyMissing { path, key_id },
        OpenError::Forged => StartupError::ExportForged {
            path,
            key_id: key_id.to_owned(),
        },
        OpenError::Malformed(field) => StartupError::NotAnExport { path, field },
    }
}

/// Where a document goes: stdout, or a file readable by its owner only.
struct Output<'a> {
    path: Option<&'a Path>,
    /// Replace `path` if it exists.
    force: bool,
}

impl Output<'_> {
    /// How the operator is told where it went.
    fn name(&self) -> String {
        self.path
            .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string())
    }

    /// Refuses an existing file up front (without `force`), so nothing is
    /// read for a document that could not be written.
    fn refuse_existing(&self) -> Result<(), StartupError> {
        match self.path {
            Some(path) if !self.force && path.symlink_metadata().is_ok() => {
                Err(StartupError::OutputExists(path.display().to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Writes `document` and a newline.
    fn write(&self, document: &[u8]) -> Result<(), StartupError> {
        let failed = |source| StartupError::File {
            path: self.name(),
            source,
        };
        match self.path {
            None => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(document)
                    .and_then(|()| stdout.write_all(b"\n"))
                    .and_then(|()| stdout.flush())
                    .map_err(failed)
            }
            Some(path) => {
                let mut file = self.create(path).map_err(|source| match source.kind() {
                    std::io::ErrorKind::AlreadyExists => {
                        StartupError::OutputExists(path.display().to_string())
                    }
                    _ => failed(source),
                })?;
                file.write_all(document)
                    .and_then(|()| file.write_all(b"\n"))
                    .and_then(|()| file.sync_all())
                    .map_err(failed)
            }
        }
    }

    /// A writer for a document written piece by piece (to stdout, or to
    /// the file, created as [`Output::write`] creates it).
    fn stream(&self) -> Result<Sink, StartupError> {
        let writer: Box<dyn Write> = match self.path {
            None => Box::new(std::io::stdout()),
            Some(path) => Box::new(self.create(path).map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    StartupError::OutputExists(path.display().to_string())
                }
                _ => StartupError::File {
                    path: self.name(),
                    source,
                },
            })?),
        };
        Ok(Sink(std::io::BufWriter::new(writer)))
    }

    /// `path` opened for writing: a new file (mode 0600), or with `force`
    /// an existing one emptied and narrowed to 0600.
    fn create(&self, path: &Path) -> std::io::Result<std::fs::File> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true);
        if self.force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path)?;
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(file)
    }
}

/// A document written piece by piece; [`Sink::finish`] flushes it.
struct Sink(std::io::BufWriter<Box<dyn Write>>);

impl Sink {
    fn finish(self) -> std::io::Result<()> {
        let mut writer = self
            .0
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        writer.flush()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
