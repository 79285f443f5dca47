//! `engram export`: everything stored for one user, as the JSON
//! `GET /api/v1/memory/export/{user_id}` returns, through the service's
//! audited `export` (its row says transport `cli`); with `--encrypt`, sealed
//! under `ENGRAM_ENCRYPTION_KEY` ([`crate::crypto::export`]); with
//! `--decrypt FILE`, such a file opened again with the configured keys.
//!
//! Invariants:
//! * the plain export is the REST answer's bytes (compact JSON), then a
//!   newline; `--decrypt` writes exactly what the plain export wrote;
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

/// `engram export`'s arguments: `--user U [--encrypt]` or `--decrypt FILE`,
/// each to stdout or `--out FILE`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The user whose memories, history and deferred remembers to export.
    #[arg(
        long,
        value_name = "USER_ID",
        required_unless_present = "decrypt",
        conflicts_with = "decrypt"
    )]
    pub user: Option<String>,
    /// Encrypt the export (AES-256-GCM) under ENGRAM_ENCRYPTION_KEY.
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

/// `engram export`: exports a user, or decrypts an export, as `args` say.
pub async fn export(config: &Config, args: &ExportArgs) -> Result<(), StartupError> {
    let out = Output {
        path: args.out.as_deref(),
        force: args.force,
    };
    match (&args.decrypt, &args.user) {
        (Some(file), _) => decrypt(config, file, &out),
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
