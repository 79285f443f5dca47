//! `engram import FILE`: memories from engram's own export, mem0,
//! OpenMemory or server-memory ([`crate::import`] reads each), written
//! through the service's import flow ([`MemoryService::import`]) in
//! chunks of one user's memories, each chunk one transaction with its
//! audit row (transport `cli`).
//!
//! Invariants:
//! * running it twice adds nothing: a memory keeps its source's id where
//!   it has one (and stays under the source's user), else gets one derived
//!   from the source record ([`derived_id`]), which the next run derives again;
//! * a record that cannot be read or is refused stops the import with an
//!   error naming its place in the file; every record before it is
//!   imported first (and a re-run, once it is fixed, skips them);
//! * stdout stays empty: the progress bar and the summary go to stderr.

use std::path::PathBuf;
use std::time::Instant;

use sha1::Digest;

use super::{StartupError, build, flush_audit};
use crate::auth::Principal;
use crate::config::Config;
use crate::import::{Entry, Format, ReadError, SourceRecord};
use crate::model::{MemoryId, UserId};
use crate::service::{ImportItem, Imported, MemoryService};

/// Memories written per transaction.
const CHUNK: usize = 128;

/// The namespace of ids derived from source records (a UUID v5 namespace).
const NAMESPACE: uuid::Uuid = uuid::uuid!("6f1c3c52-5b9e-4c8e-9a43-2d1f0e7a9b10");

/// `engram import`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The file to import: an engram export (JSON or JSONL), mem0's
    /// get_all JSON or a dump of its pgvector table (CSV or JSON lines),
    /// OpenMemory's export zip (or its memories.json / memories.jsonl), or
    /// server-memory's memory.jsonl.
    pub file: PathBuf,
    /// The file's format (detected from its content when not given).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// The user every memory lands under, whatever the file says (default:
    /// the user the file names for each memory, else ENGRAM_DEFAULT_USER).
    #[arg(long, value_name = "USER_ID")]
    pub user: Option<String>,
}

/// How an import went, counted.
#[derive(Debug, Default)]
struct Tally {
    added: u64,
    present: u64,
    repeats: u64,
    skipped: u64,
    /// Why entries were skipped, each reason once.
    skip_reasons: Vec<&'static str>,
    users: std::collections::BTreeSet<String>,
}

impl Tally {
    fn count(&mut self, results: &[Imported]) {
        for result in results {
            match result {
                Imported::Added(_) => self.added += 1,
                Imported::Present(_) => self.present += 1,
                Imported::Repeat(_) => self.repeats += 1,
            }
        }
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "{} added, {} already there, {} repeating a current memory's text",
            self.added, self.present, self.repeats
        );
        if self.skipped > 0 {
            text.push_str(&format!(
                ", {} not imported ({})",
                self.skipped,
                self.skip_reasons.join("; ")
            ));
        }
        text
    }
}

/// One user's records waiting to be written.
struct Chunk {
    user: UserId,
    items: Vec<ImportItem>,
}

/// `engram import FILE`.
pub async fn import(config: &Config, args: &ImportArgs) -> Result<(), StartupError> {
    let path = args.file.display().to_string();
    let bytes = std::fs::read(&args.file).map_err(|source| StartupError::File {
        path: path.clone(),
        source,
    })?;
    let source = crate::import::read(bytes, args.format).map_err(|e| refused(&path, e))?;
    let over = args.user.as_deref().map(UserId::parse).transpose()?;
    let service = build(config).await?;
    eprintln!(
        "engram: importing {path} ({}, {} records)",
        source.shape, source.total
    );
    let bar = progress(source.total);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut chunk: Option<Chunk> = None;
    let mut failure = None;
    for entry in source.entries {
        let record = match entry {
            Ok(Entry::Memory(record)) => *record,
            Ok(Entry::Skipped { why, .. }) => {
                tally.skipped += 1;
                if !tally.skip_reasons.contains(&why) {
                    tally.skip_reasons.push(why);
                }
                bar.inc(1);
                continue;
            }
            Err(e) => {
                failure = Some(refused(&path, e));
                break;
            }
        };
        let at = record.at.clone();
        let item = match item(&service, config, source.format, over.as_ref(), record) {
            Ok(item) => item,
            Err(e) => {
                failure = Some(StartupError::Unsupported(format!("{path}: {at}: {e}")));
                break;
            }
        };
        let full = chunk
            .as_ref()
            .is_some_and(|c| c.user != *item.user_id() || c.items.len() >= CHUNK);
        if full
            && let Some(done) = chunk.take()
            && let Err(e) = write(&service, done, &mut tally, &bar).await
        {
            failure = Some(e);
            break;
        }
        chunk
            .get_or_insert_with(|| Chunk {
                user: item.user_id().clone(),
                items: Vec::with_capacity(CHUNK),
            })
            .items
            .push(item);
    }
    // What was read before a failure is imported all the same.
    if let Some(done) = chunk.take() {
        let written = write(&service, done, &mut tally, &bar).await;
        if let (Err(e), None) = (written, &failure) {
            failure = Some(e);
        }
    }
    bar.finish_and_clear();
    flush_audit(&service).await;
    let seconds = started.elapsed().as_secs_f64();
    let users = tally.users.len();
    match failure {
        None => {
            eprintln!(
                "engram: imported {path} for {users} user(s) in {seconds:.1} s: {}",
                tally.summary()
            );
            Ok(())
        }
        Some(e) => {
            eprintln!(
                "engram: stopped importing {path}; before the error: {} (a re-run skips \
                 what is there)",
                tally.summary()
            );
            Err(e)
        }
    }
}

/// The progress bar on stderr (drawn only when stderr is a terminal).
fn progress(total: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "importing [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// `record` as an item for its user: the user decided, the ids settled.
fn item(
    service: &MemoryService,
    config: &Config,
    format: Format,
    over: Option<&UserId>,
    record: SourceRecord,
) -> Result<ImportItem, crate::error::Error> {
    let own = record.user_id.as_deref().map(UserId::parse).transpose()?;
    let user = over
        .or(own.as_ref())
        .unwrap_or(&config.memory.default_user)
        .clone();
    let mut memory = record.record;
    memory.fallback_id = derived_id(format, &user, &record.key);
    // An id moves with its user only: under another user the record is
    // another memory, with an id of its own.
    if own.as_ref().is_some_and(|own| *own != user) {
        memory.id = None;
    }
    service.prepare_import(&user, memory)
}

/// The id a record gets when its own cannot be kept: a UUID (v5) of the
/// format, the user and the record's key, the same on every run.
pub fn derived_id(format: Format, user: &UserId, key: &str) -> MemoryId {
    let mut hash = sha1::Sha1::new();
    hash.update(NAMESPACE.as_bytes());
    hash.update(format.name().as_bytes());
    hash.update([0]);
    hash.update(user.as_str().as_bytes());
    hash.update([0]);
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    MemoryId(uuid::Builder::from_sha1_bytes(bytes).into_uuid())
}

/// Writes one chunk through the audited service (transport `cli`).
async fn write(
    service: &MemoryService,
    chunk: Chunk,
    tally: &mut Tally,
    bar: &indicatif::ProgressBar,
) -> Result<(), StartupError> {
    let cli = crate::audit::Origin {
        transport: "cli",
        client_addr: None,
    };
    let n = chunk.items.len();
    let results = crate::audit::from(
        cli,
        service.import(&Principal::Operator, &chunk.user, chunk.items),
    )
    .await?;
    tally.count(&results);
    tally.users.insert(chunk.user.to_string());
    bar.inc(n as u64);
    Ok(())
}

/// A source that could not be read, named with its file.
fn refused(path: &str, e: ReadError) -> StartupError {
    match e {
        ReadError::Malformed { at, reason } => {
            StartupError::Unsupported(format!("{path}: {at}: {reason}"))
        }
        other => StartupError::Unsupported(format!("{path}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_differ_by_user_format_and_key() {
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let a = derived_id(Format::ServerMemory, &alice, "k");
        assert_eq!(a, derived_id(Format::ServerMemory, &alice, "k"));
        assert_eq!(a.0.get_version_num(), 5);
        for other in [
            derived_id(Format::ServerMemory, &bob, "k"),
            derived_id(Format::Mem0, &alice, "k"),
            derived_id(Format::ServerMemory, &alice, "k2"),
        ] {
            assert_ne!(a, other);
        }
    }
}
