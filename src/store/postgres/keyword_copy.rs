//! In-process copies of users' keyword postings, so that recall's keyword
//! side runs here instead of in SQL.
//!
//! Why: on PostgreSQL the keyword search (`engram_keyword_search`) costs as
//! much as the vector search (4-5 ms at 10,000 memories of the bench's
//! text: PostgreSQL spends ~1 µs a posting), and recall waited for both.
//! With a copy, recall is one statement: the nearest memories, the cosines
//! of the copy's keyword hits and the user's version (`search.rs`).
//!
//! Invariants:
//! * a copy is the user's current memories and postings as of one version
//!   of the user (`memory_users.version`), read in one snapshot;
//! * a copy is used only when the statement that reads the vectors finds
//!   that same version, in its own snapshot: whatever another instance, or
//!   this one, wrote since makes the copy stale, and recall then takes the
//!   SQL path, never a stale answer;
//! * a stale or missing copy is (re)loaded in the background, at most once
//!   per user every [`RELOAD_EVERY`], so a user written to all the time
//!   costs one load per interval, not one per write;
//! * the copies together hold at most the budget's bytes; the least
//!   recently used go first.
//!
//! Scoring is [`UserKeywords`]' (the same BM25 as SQLite's copy and as
//! `engram_keyword_search`: statistics over all of the user's current
//! memories, expired ones left out of the answer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::scope::scoped_to;
use super::session::Settings;
use super::{PgStore, db};
use crate::keywords::DocumentTerms;
use crate::model::MemoryId;
use crate::store::StoreError;
use crate::store::keyword_copy::{QueryScores, UserKeywords};

/// A copy is loaded again at most this often per user.
pub(super) const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// A user whose copy would not fit the budget is not tried again sooner.
const TOO_LARGE_WAIT: Duration = Duration::from_secs(600);

/// The bytes a copy of `memories` memories holds beyond its postings.
fn bytes_without_postings(memories: usize) -> usize {
    UserKeywords::bytes_at_least(memories) + memories * 16 + std::mem::size_of::<UserCopy>()
}

/// One user's postings as of `version`.
#[derive(Debug)]
pub(super) struct UserCopy {
    pub version: i64,
    keywords: UserKeywords,
    /// By the copy's row number: the memory's expiry.
    expires: Vec<Option<DateTime<Utc>>>,
    bytes: usize,
}

impl UserCopy {
    /// One scoring pass for recall's keyword side: up to `k` memories
    /// holding a term of `terms`, best BM25 first (ties by id), expired ones
    /// left out; and the BM25 of any memory holding a term, by id.
    pub fn search(&self, terms: &[String], k: usize) -> (Vec<(Uuid, f32)>, QueryScores<'_>) {
        let now = Utc::now();
        let scores = self.keywords.query(terms, |_| true);
        let best = scores
            .best(k, |row| !self.expired(row, now))
            .into_iter()
            .map(|(id, score)| (id.0, score))
            .collect();
        (best, scores)
    }

    fn expired(&self, row: i64, now: DateTime<Utc>) -> bool {
        usize::try_from(row)
            .ok()
            .and_then(|row| self.expires.get(row).copied().flatten())
            .is_some_and(|at| at <= now)
    }
}

#[derive(Default)]
struct Held {
    copies: HashMap<String, (Arc<UserCopy>, Instant)>,
    /// Before when no load of a user may start.
    loads: HashMap<String, Instant>,
    bytes: usize,
}

/// Every user's copy, within a budget of bytes.
pub(super) struct KeywordCopies {
    budget: usize,
    held: Mutex<Held>,
    /// Recalls whose keyword side a copy answered.
    answered: std::sync::atomic::AtomicU64,
}

impl KeywordCopies {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Mutex::new(Held::default()),
            answered: Default::default(),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The user's copy, if one is held (whatever its version).
    pub fn get(&self, user: &str) -> Option<Arc<UserCopy>> {
        let mut held = self.held.lock().ok()?;
        let (copy, used) = held.copies.get_mut(user)?;
        *used = Instant::now();
        Some(copy.clone())
    }

    /// Whether a load of `user`'s copy may start now; if so, it counts as
    /// started.
    fn may_load(&self, user: &str) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        let now = Instant::now();
        match held.loads.get(user) {
            Some(until) if now < *until => false,
            _ => {
                // Only waits not over matter.
                if held.loads.len() >= 1024 {
                    held.loads.retain(|_, until| now < *until);
                }
                held.loads.insert(user.to_owned(), now + RELOAD_EVERY);
                true
            }
        }
    }

    /// Keeps `copy` for `user` (in place of an older one), evicting the
    /// least recently used copies to stay within the budget. A copy larger
    /// than the budget is not kept.
    fn keep(&self, user: &str, copy: UserCopy) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        if let Some((old, _)) = held.copies.remove(user) {
            held.bytes -= old.bytes;
        }
        if copy.bytes > self.budget {
            held.loads
                .insert(user.to_owned(), Instant::now() + TOO_LARGE_WAIT);
            return;
        }
        while held.bytes + copy.bytes > self.budget {
            let Some(oldest) = held
                .copies
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(user, _)| user.clone())
            else {
                break;
            };
            if let Some((gone, _)) = held.copies.remove(&oldest) {
                held.bytes -= gone.bytes;
            }
        }
        held.bytes += copy.bytes;
        held.copies
            .insert(user.to_owned(), (Arc::new(copy), Instant::now()));
    }

    /// Counts a recall a copy answered.
    pub fn answered(&self) {
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a copy of `memories` memories could fit at all; if not, the
    /// user is not tried again for [`TOO_LARGE_WAIT`].
    fn could_fit(&self, user: &str, memories: usize) -> bool {
        if bytes_without_postings(memories) <= self.budget {
            return true;
        }
        if let Ok(mut held) = self.held.lock() {
            held.loads
                .insert(user.to_owned(), Instant::now() + TOO_LARGE_WAIT);
        }
        false
    }

    /// Bytes held (tests).
    pub fn held_bytes(&self) -> usize {
        self.held.lock().map_or(0, |held| held.bytes)
    }
}

impl PgStore {
    /// Starts loading `user`'s copy in the background, unless copies are
    /// off or a load started less than [`RELOAD_EVERY`] ago.
    pub(super) fn refresh_keyword_copy(&self, user: &str) {
        if self.keyword_copies.budget() == 0 || !self.keyword_copies.may_load(user) {
            return;
        }
        let (pool, settings, copies) = (
            self.pool.clone(),
            self.settings.clone(),
            self.keyword_copies.clone(),
        );
        let user = user.to_owned();
        tokio::spawn(async move {
            if let Err(e) = load(&pool, &settings, &copies, &user).await {
                tracing::debug!(error = %e, "a user's keyword copy could not be loaded");
            }
        });
    }

    /// Loads `user`'s copy now and keeps it (tests and benchmarks; recall
    /// loads copies in the background).
    pub async fn load_keyword_copy(&self, user: &str) -> Result<(), StoreError> {
        load(&self.pool, &self.settings, &self.keyword_copies, user).await
    }

    /// Bytes the keyword copies hold.
    pub fn keyword_copy_bytes(&self) -> usize {
        self.keyword_copies.held_bytes()
    }

    /// Whether a copy of `user`'s postings is held, of whatever version: a
    /// benchmark waits on it for the load a user's first recall starts.
    pub fn keyword_copy_held(&self, user: &str) -> bool {
        self.keyword_copies.get(user).is_some()
    }

    /// How many recalls' keyword sides a copy has answered.
    pub fn keyword_copy_answers(&self) -> u64 {
        self.keyword_copies
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Reads `user`'s current memories and postings in one snapshot, with the
/// version they are at, and keeps them as the user's copy.
async fn load(
    pool: &PgPool,
    settings: &Settings,
    copies: &KeywordCopies,
    user: &str,
) -> Result<(), StoreError> {
    const CX: &str = "loading a keyword copy";
    let begin = settings.begin(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        Some(&scoped_to(user)),
    );
    let mut tx = pool
        .begin_with(sqlx::AssertSqlSafe(begin))
        .await
        .map_err(db(CX))?;
    let Some((version, current)): Option<(i64, i64)> =
        sqlx::query_as("SELECT version, current FROM memory_users WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(CX))?
    else {
        return Ok(());
    };
    // A user too large for the budget is not read at all.
    if !copies.could_fit(user, usize::try_from(current).unwrap_or(usize::MAX)) {
        return Ok(());
    }
    let memories: Vec<(Uuid, i32, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, keyword_length, expires_at FROM memories \
         WHERE user_id = $1 AND valid_to IS NULL",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await
    .map_err(db(CX))?;
    let postings: Vec<(Uuid, String, i32)> =
        sqlx::query_as("SELECT memory_id, term, tf FROM keyword_postings WHERE user_id = $1")
            .bind(user)
            .fetch_all(&mut *tx)
            .await
            .map_err(db(CX))?;
    tx.commit().await.map_err(db(CX))?;

    let mut terms: HashMap<Uuid, Vec<(String, u32)>> = HashMap::new();
    for (id, term, tf) in postings {
        terms
            .entry(id)
            .or_default()
            .push((term, u32::try_from(tf).unwrap_or(0)));
    }
    let mut keywords = UserKeywords::default();
    let mut expires = Vec::with_capacity(memories.len());
    for (row, (id, length, expires_at)) in memories.into_iter().enumerate() {
        let mut counts = terms.remove(&id).unwrap_or_default();
        counts.sort();
        let doc = DocumentTerms {
            counts,
            length: u32::try_from(length).unwrap_or(0),
        };
        keywords.insert(row as i64, MemoryId(id), 0, &doc);
        expires.push(expires_at);
    }
    let bytes = keywords.bytes() + expires.len() * 16 + std::mem::size_of::<UserCopy>();
    debug_assert!(bytes >= bytes_without_postings(expires.len()));
    copies.keep(
        user,
        UserCopy {
            version,
            keywords,
            expires,
            bytes,
        },
    );
    Ok(())
}
