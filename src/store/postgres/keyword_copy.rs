//! In-process copies of users' keyword postings (and, for small users,
//! their vectors: `copy_vectors`; for larger ones, codes of them:
//! `copy_codes`), so that recall's keyword side (and its vector side, or
//! the narrowing of it) runs here instead of in SQL.
//!
//! Why: on PostgreSQL the keyword search (`engram_keyword_search`) costs as
//! much as the vector search (4-5 ms at 10,000 memories of the bench's
//! text: PostgreSQL spends ~1 µs a posting), and recall waited for both.
//! With a copy, recall is one statement: the nearest memories, the cosines
//! of the copy's keyword hits and the user's version (`search.rs`); with a
//! copy that holds vectors, the user's version and the picked rows only;
//! with one that holds codes, the exact cosines of the rows they name in
//! place of the search function's nearest.
//!
//! Invariants:
//! * a copy is the user's current memories and postings as of one version
//!   of the user (`memory_users.version`), read in one snapshot;
//! * a copy is used only when the statement that reads the vectors finds
//!   that same version, in its own snapshot, or (for the memories a copy
//!   with floats holds) when a read of the version made during the recall
//!   finds it: whatever another instance, or this one, wrote since makes the
//!   copy stale, and recall then takes the SQL path, never a stale answer;
//! * a stale or missing copy is (re)loaded in the background, at most once
//!   per user every [`RELOAD_EVERY`], so a user written to all the time
//!   costs one load per interval, not one per write;
//! * the copies together hold at most the budget's bytes; the least
//!   recently used go first;
//! * a copy of version V that holds vectors is moved to this instance's own
//!   write's version W, with the rows that write added ([`KeywordCopies::advance`]),
//!   only when the write took the user's lock at V, held their version's
//!   row from then to its commit (so no other write came between) and did
//!   nothing but add those rows (the user's count of current memories after
//!   it is the copy's and theirs): the copy then is the user as of W.
//!
//! This instance's writers of one user take turns ([`KeywordCopies::turn`])
//! while the user's copy holds vectors, so that each finds the copy its
//! predecessor moved on: the duplicate check of a remember is then answered
//! here (`write.rs`), and a write that came between (from another instance)
//! only makes the database check for itself.
//!
//! Scoring is [`UserKeywords`]' (the same BM25 as SQLite's copy and as
//! `engram_keyword_search`: statistics over all of the user's current
//! memories, expired ones left out of the answer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use pgvector::Vector;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::copy_codes::{self, CopyCodes};
use super::copy_uses::Uses;
use super::copy_vectors::{self, CopyVectors};
use super::rows::micros;
use super::scope::scoped_to;
use super::session::Settings;
use super::{PgStore, db};
use crate::keywords::DocumentTerms;
use crate::model::{Memory, MemoryId};
use crate::store::StoreError;
use crate::store::keyword_copy::{QueryScores, UserKeywords};
use crate::store::shared::memory_from_row;

/// A copy is loaded again at most this often per user.
pub(super) const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// A user whose copy would not fit the budget is not tried again sooner.
const TOO_LARGE_WAIT: Duration = Duration::from_secs(600);

/// A copy unused this long may be dropped for any other.
const IDLE: Duration = Duration::from_secs(60);

/// The bytes a copy of `memories` memories of `dims` dimensions holding
/// its vectors as `kind` holds beyond its postings.
fn bytes_without_postings(memories: usize, dims: usize, kind: Option<VectorKind>) -> usize {
    let vectors = match kind {
        Some(VectorKind::Floats) => CopyVectors::bytes_for(memories, dims),
        Some(VectorKind::Codes) => CopyCodes::bytes_for(memories, dims),
        None => 0,
    };
    UserKeywords::bytes_at_least(memories)
        + memories * 16
        + vectors
        + std::mem::size_of::<UserCopy>()
}

/// Which users' copies hold their vectors, and how.
#[derive(Debug, Clone, Copy)]
pub(super) struct VectorLimits {
    /// Rows times dimensions of the largest user whose copy holds floats
    /// ([`copy_vectors::MAX_FLOATS`]; 0: none does).
    pub floats: usize,
    /// Rows times dimensions of the largest user whose copy holds codes,
    /// past the floats ([`copy_codes::MAX_CODE_BYTES`]; 0: none does).
    pub code_bytes: usize,
}

/// How a copy holds its user's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VectorKind {
    /// Exactly (`copy_vectors`): recall's both sides are computed here.
    Floats,
    /// As codes (`copy_codes`): they name the rows PostgreSQL scores.
    Codes,
}

impl VectorLimits {
    /// How a copy of `rows` memories of `dims` dimensions holds their
    /// vectors, if it does.
    pub fn kind(self, rows: usize, dims: usize) -> Option<VectorKind> {
        if copy_vectors::small_enough(rows, dims, self.floats) {
            Some(VectorKind::Floats)
        } else if copy_codes::coded_enough(rows, dims, self.code_bytes) {
            Some(VectorKind::Codes)
        } else {
            None
        }
    }
}

/// The version of a copy of a user who has no memories: no version the
/// database gives (its sequence starts at 1), so no search validates it;
/// the duplicate check's trigger calls that state `none`.
pub(super) const NO_USER: i64 = 0;

/// A claim as the duplicate check's trigger reads it (one entry of
/// `engram.dedup_searched`): the memory and the version of its user at
/// which nothing near it was found, in [`locked_text`]'s words, so that a
/// claim made on the copy of a user who had no memories holds when the
/// write finds them still without any.
pub(super) fn claim_text(id: Uuid, version: u64) -> String {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    format!("{id}@{}", locked_text(version))
}

/// As the duplicate check's trigger writes the version it locked a user
/// at (`engram.locked_version`).
pub(super) fn locked_text(version: i64) -> String {
    if version == NO_USER {
        "none".to_owned()
    } else {
        version.to_string()
    }
}

/// One user's postings as of `version`.
#[derive(Debug, Clone)]
pub(super) struct UserCopy {
    pub version: i64,
    keywords: UserKeywords,
    /// By the copy's row number: the memory's expiry.
    expires: Vec<Option<DateTime<Utc>>>,
    /// By the same row numbers, for a user small enough.
    vectors: Option<CopyVectors>,
    /// By the same row numbers, for a larger user whose codes fit.
    codes: Option<CopyCodes>,
    /// By the same row numbers, with the floats: each row's memory as recall
    /// returns it, so that a recall that read the user's version while its
    /// query was embedded reads nothing more ([`Self::memories`]). `None`
    /// without floats, or once a row came without its memory.
    rows: Option<Vec<Memory>>,
    /// What `rows` hold ([`memory_bytes`] of each), kept as rows come.
    row_bytes: usize,
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
            .map(|(_, id, score)| (id.0, score))
            .collect();
        (best, scores)
    }

    /// The copy of a user who has no memories (no row in `memory_users`),
    /// at [`NO_USER`].
    fn empty(dims: usize) -> Self {
        UserCopy {
            version: NO_USER,
            keywords: UserKeywords::default(),
            expires: Vec::new(),
            vectors: Some(CopyVectors::with_capacity(dims, 0)),
            codes: None,
            rows: Some(Vec::new()),
            row_bytes: 0,
            bytes: 0,
        }
    }

    /// The copy with its bytes counted.
    fn measured(mut self) -> Self {
        self.bytes = self.keywords.bytes()
            + self.expires.len() * 16
            + self.vectors.as_ref().map_or(0, CopyVectors::bytes)
            + self.codes.as_ref().map_or(0, CopyCodes::bytes)
            + self.rows.as_ref().map_or(0, |_| self.row_bytes)
            + std::mem::size_of::<UserCopy>();
        self
    }

    /// Bytes the copy would give up by holding its vectors as codes only.
    fn float_bytes(&self) -> usize {
        self.vectors
            .as_ref()
            .map_or(0, |v| v.bytes() - v.codes().bytes())
    }

    /// The copy with its vectors as codes only (`copy_codes`): a quarter of
    /// the bytes at 1536 dimensions, and recall's exact cosines of the rows
    /// they name read in PostgreSQL. What copies give up first when they
    /// do not all fit.
    fn without_floats(self) -> Self {
        let UserCopy {
            version,
            keywords,
            expires,
            vectors,
            codes,
            rows: _,
            row_bytes: _,
            bytes: _,
        } = self;
        UserCopy {
            version,
            keywords,
            expires,
            vectors: None,
            codes: codes.or_else(|| vectors.map(CopyVectors::into_codes)),
            rows: None,
            row_bytes: 0,
            bytes: 0,
        }
        .measured()
    }

    /// [`Self::without_floats`] of a copy readers may still hold: all but
    /// the floats cloned.
    fn shared_without_floats(shared: Arc<Self>) -> Self {
        match Arc::try_unwrap(shared) {
            Ok(copy) => copy.without_floats(),
            Err(shared) => UserCopy {
                version: shared.version,
                keywords: shared.keywords.clone(),
                expires: shared.expires.clone(),
                vectors: None,
                codes: shared
                    .codes
                    .clone()
                    .or_else(|| shared.vectors.as_ref().map(|v| v.codes().clone())),
                rows: None,
                row_bytes: 0,
                bytes: 0,
            }
            .measured(),
        }
    }

    /// Whether the copy holds the user's vectors (recall's vector side is
    /// then answered here too).
    pub fn has_vectors(&self) -> bool {
        self.vectors.is_some()
    }

    /// Whether the copy holds its rows' memories, so that recall may take
    /// them from it ([`Self::memories`]).
    pub fn holds_memories(&self) -> bool {
        self.rows.is_some() && self.vectors.is_some()
    }

    /// Whether the copy can answer a remember's duplicate check (it holds
    /// the user's vectors, as floats or as codes).
    pub fn may_claim(&self) -> bool {
        self.vectors.is_some() || self.codes.is_some()
    }

    /// From a copy that holds codes: the unexpired memories that may be
    /// among the `k` nearest to `query` (`copy_codes`), whose exact cosines
    /// decide; `None` without codes.
    pub fn may_be_nearest(&self, query: &[f32], k: usize) -> Option<Vec<Uuid>> {
        let now = Utc::now();
        let codes = self.codes.as_ref()?;
        Some(codes.may_be_nearest(query, k, |row| self.expired(row as i64, now)))
    }

    /// Up to `k` unexpired memories nearest to `query`, best first, each
    /// with its cosine similarity; empty without vectors.
    pub fn nearest(&self, query: &[f32], k: usize) -> Vec<(Uuid, f32)> {
        let now = Utc::now();
        self.vectors.as_ref().map_or_else(Vec::new, |vectors| {
            vectors.nearest(query, k, |row| self.expired(row as i64, now))
        })
    }

    /// Whether no memory of the copy, expired or not, is within `threshold`
    /// of `vector` (less a margin for the database's rounding): the copy's
    /// version is then a claim the duplicate check may trust. `false`
    /// without vectors.
    pub fn clear_of(&self, vector: &[f32], threshold: f32) -> bool {
        const ROUNDING: f32 = 1e-4;
        if let Some(codes) = &self.codes {
            return codes.clear_of(vector, threshold);
        }
        self.vectors
            .as_ref()
            .is_some_and(|vectors| vectors.any_reaches(vector, threshold - ROUNDING) == Some(false))
    }

    /// Each of `ids`' cosine similarity to `query`, for those whose vector
    /// the copy holds.
    pub fn similarities<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a Uuid>,
        query: &[f32],
    ) -> Vec<(Uuid, f32)> {
        self.vectors
            .as_ref()
            .map_or_else(Vec::new, |vectors| vectors.similarities(ids, query))
    }

    /// The unexpired memories among `ids`, when `seen` (the user's version,
    /// read since the search began) is the copy's and the copy holds its
    /// rows' memories; `None` otherwise. What the database held for them at
    /// that version.
    pub fn memories_at(&self, seen: Option<u64>, ids: &[MemoryId]) -> Option<Vec<Memory>> {
        let seen = i64::try_from(seen?).ok()?;
        if seen != self.version {
            return None;
        }
        let (rows, vectors) = (self.rows.as_ref()?, self.vectors.as_ref()?);
        let now = Utc::now();
        Some(
            ids.iter()
                .filter_map(|id| vectors.row_of(&id.0))
                .filter_map(|row| rows.get(row))
                .filter(|memory| !memory.expired_at(now))
                .cloned()
                .collect(),
        )
    }

    fn expired(&self, row: i64, now: DateTime<Utc>) -> bool {
        usize::try_from(row)
            .ok()
            .and_then(|row| self.expires.get(row).copied().flatten())
            .is_some_and(|at| at <= now)
    }
}

/// What a copy is loaded for.
#[derive(Debug, Clone, Copy)]
enum Wanted {
    /// A search found none current: any user the budget can hold, evicting
    /// the least recently used.
    ForSearch,
    /// A write had none to move on: a user small enough for vectors, in
    /// room the budget has left.
    ForWrites,
}

/// A memory this instance's write added, as a copy holds it.
#[derive(Debug)]
pub(super) struct Added {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub terms: DocumentTerms,
    pub expires_at: Option<DateTime<Utc>>,
    /// The memory as stored, when the write knows it.
    pub memory: Option<Memory>,
}

impl Added {
    /// `new` as the copy holds it once its write commits.
    pub(super) fn of(new: &crate::store::NewMemory) -> Self {
        Added {
            id: new.id.0,
            vector: new.embedding.clone(),
            terms: crate::keywords::document_terms(&new.content),
            expires_at: new.expires_at,
            memory: None,
        }
    }

    /// The same, with the memory as its write stored it; its expiry as the
    /// database holds it, to the microsecond.
    pub(super) fn stored_as(self, memory: Memory) -> Self {
        Added {
            memory: Some(Memory {
                expires_at: memory.expires_at.map(micros),
                ..memory
            }),
            ..self
        }
    }
}

/// About the bytes `memory` holds: its struct, its text, its scope, its
/// categories and its metadata (as JSON, doubled for the map's own).
fn memory_bytes(memory: &Memory) -> usize {
    let scope = memory.scope.user_id().as_str().len()
        + memory.scope.agent_id().map_or(0, str::len)
        + memory.scope.run_id().map_or(0, str::len);
    let metadata = if memory.metadata.is_empty() {
        0
    } else {
        2 * serde_json::to_string(&memory.metadata).map_or(0, |json| json.len())
    };
    std::mem::size_of::<Memory>()
        + memory.memory.len()
        + scope
        + memory
            .categories
            .iter()
            .map(|c| c.len() + 24)
            .sum::<usize>()
        + metadata
}

#[derive(Default)]
struct Held {
    copies: HashMap<String, (Arc<UserCopy>, Instant)>,
    /// Before when no load of a user may start.
    loads: HashMap<String, Instant>,
    bytes: usize,
    /// How often each user's copy was wanted lately.
    uses: Uses,
}

/// What making room for a copy does to another user's copy.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// Keeps it, with its vectors as codes only ([`UserCopy::without_floats`]).
    Demote(String),
    /// Drops it (loaded again when next wanted, if it then fits).
    Drop(String),
}

impl Held {
    /// What to do to the other copies so that one of `bytes` for `user`
    /// fits within `budget`. Floats go first: a copy of a user wanted at
    /// least as often as the others (or unused for [`IDLE`]) is kept as
    /// codes. Then whole copies: those unused for [`IDLE`], then the least
    /// wanted, the least recently used among equals, but only copies
    /// `user` is wanted clearly more often than ([`Uses::outweighs`]).
    /// `None` when that is not room enough: the others stay as they are,
    /// and `user` goes without.
    fn room_for(&self, user: &str, bytes: usize, budget: usize) -> Option<Vec<Room>> {
        let mut over = (self.bytes + bytes).saturating_sub(budget);
        if over == 0 {
            return Some(Vec::new());
        }
        let now = Instant::now();
        let idle = |used: Instant| now.duration_since(used) >= IDLE;
        let mut others: Vec<(&String, &UserCopy, Instant)> = self
            .copies
            .iter()
            .filter(|(other, _)| other.as_str() != user)
            .map(|(other, (copy, used))| (other, copy.as_ref(), *used))
            .collect();
        others.sort_by_key(|(other, _, used)| (!idle(*used), self.uses.of(other), *used));
        let mut plan = Vec::new();
        let mut left: HashMap<&str, usize> = HashMap::new();
        for (other, copy, used) in &others {
            let floats = copy.float_bytes();
            left.insert(other.as_str(), copy.bytes - floats);
            if floats == 0 || !(idle(*used) || self.uses.of(user) >= self.uses.of(other)) {
                continue;
            }
            plan.push(Room::Demote((*other).clone()));
            over = over.saturating_sub(floats);
            if over == 0 {
                return Some(plan);
            }
        }
        for (other, copy, used) in others {
            if !idle(used) && !self.uses.outweighs(user, other) {
                return None;
            }
            plan.push(Room::Drop(other.clone()));
            over = over.saturating_sub(left.get(other.as_str()).copied().unwrap_or(copy.bytes));
            if over == 0 {
                return Some(plan);
            }
        }
        None
    }
}

/// Every user's copy, within a budget of bytes.
pub(super) struct KeywordCopies {
    budget: usize,
    /// Which users' copies hold their vectors.
    limits: VectorLimits,
    held: Mutex<Held>,
    /// Recalls whose keyword side a copy answered.
    answered: std::sync::atomic::AtomicU64,
    /// Each user's turn to write, for this instance's writers.
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Copies moved on by this instance's own writes.
    advanced: std::sync::atomic::AtomicU64,
    /// New memories whose duplicate check a copy answered (made a claim for).
    claimed: std::sync::atomic::AtomicU64,
    /// Copies not kept for want of room that others wanted as often held.
    refused: std::sync::atomic::AtomicU64,
}

impl KeywordCopies {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            limits: VectorLimits {
                floats: copy_vectors::MAX_FLOATS,
                code_bytes: copy_codes::MAX_CODE_BYTES,
            },
            held: Mutex::new(Held::default()),
            answered: Default::default(),
            turns: Mutex::default(),
            advanced: Default::default(),
            claimed: Default::default(),
            refused: Default::default(),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The same copies, holding vectors for the users `limits` names.
    pub fn with_vector_limits(mut self, limits: VectorLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn vector_limits(&self) -> VectorLimits {
        self.limits
    }

    /// The user's copy, if one is held (whatever its version), counted as
    /// a use of it whether held or not.
    pub fn get(&self, user: &str) -> Option<Arc<UserCopy>> {
        let mut held = self.held.lock().ok()?;
        held.uses.count(user);
        let (copy, used) = held.copies.get_mut(user)?;
        *used = Instant::now();
        Some(copy.clone())
    }

    /// Counts a use of the user's copy that found none to use.
    fn wanted(&self, user: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.uses.count(user);
        }
    }

    /// The user's copy, if one is held, not counted as a use.
    pub fn peek(&self, user: &str) -> Option<Arc<UserCopy>> {
        let held = self.held.lock().ok()?;
        held.copies.get(user).map(|(copy, _)| copy.clone())
    }

    /// Counts a load of `user`'s copy as started now, whether or not one may.
    fn started(&self, user: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.loads
                .insert(user.to_owned(), Instant::now() + RELOAD_EVERY);
        }
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

    /// Keeps `copy` for `user` (in place of an older one), dropping the
    /// copies [`Held::room_for`] names to stay within the budget; `false`,
    /// and the user left without a copy, when there is no such room (or
    /// the copy is larger than the whole budget).
    fn keep(&self, user: &str, copy: UserCopy) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        if let Some((old, _)) = held.copies.remove(user) {
            held.bytes -= old.bytes;
        }
        if copy.bytes > self.budget {
            held.loads
                .insert(user.to_owned(), Instant::now() + TOO_LARGE_WAIT);
            return false;
        }
        // Floats only into free room.
        let copy = if held.bytes + copy.bytes > self.budget && copy.float_bytes() > 0 {
            copy.without_floats()
        } else {
            copy
        };
        let Some(plan) = held.room_for(user, copy.bytes, self.budget) else {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        };
        for step in plan {
            match step {
                Room::Demote(other) => {
                    let freed = held.copies.get_mut(&other).map_or(0, |(kept, _)| {
                        let before = kept.bytes;
                        let old = std::mem::replace(kept, Arc::new(UserCopy::empty(0)));
                        *kept = Arc::new(UserCopy::shared_without_floats(old));
                        before - kept.bytes
                    });
                    held.bytes -= freed;
                }
                Room::Drop(other) => {
                    if let Some((gone, _)) = held.copies.remove(&other) {
                        held.bytes -= gone.bytes;
                    }
                }
            }
        }
        held.bytes += copy.bytes;
        held.copies
            .insert(user.to_owned(), (Arc::new(copy), Instant::now()));
        true
    }

    /// Waits for this instance's turn to write `user`, held until the
    /// guard is dropped. Only order, never correctness, rests on it: the
    /// database's lock and the copy's version are what a write relies on.
    pub async fn turn(&self, user: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            if turns.len() >= 1024 {
                // Turns no writer holds or waits for.
                turns.retain(|_, turn| Arc::strong_count(turn) > 1);
            }
            turns.entry(user.to_owned()).or_default().clone()
        };
        turn.lock_owned().await
    }

    /// Moves `user`'s copy from version `from` to `to` with the rows
    /// `added` (at `dims` dimensions), when the copy is still of `from` and
    /// `current` (the user's count of current memories at `to`) is its rows
    /// and those: see the module's invariants for what the caller vouches
    /// for. Otherwise the copy is dropped (loaded again on use) unless it is
    /// already of another version.
    pub fn advance(
        &self,
        user: &str,
        from: i64,
        to: i64,
        current: i64,
        added: Vec<Added>,
        dims: usize,
    ) -> bool {
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        let Some((copy, _)) = held.copies.get(user) else {
            return false;
        };
        if copy.version != from {
            return false;
        }
        let Some((copy, _)) = held.copies.remove(user) else {
            return false;
        };
        held.bytes -= copy.bytes;
        drop(held);
        let rows = copy.expires.len() + added.len();
        if usize::try_from(current).ok() != Some(rows) {
            return false;
        }
        // A reader holding the copy keeps the old one.
        let mut copy = Arc::try_unwrap(copy).unwrap_or_else(|shared| (*shared).clone());
        let kind = self.limits.kind(rows, dims);
        if kind == Some(VectorKind::Codes)
            && let Some(vectors) = copy.vectors.take()
        {
            // The user outgrew floats: their codes from here on.
            copy.codes = Some(vectors.into_codes());
        }
        for new in added {
            let row = copy.expires.len();
            copy.keywords
                .insert(row as i64, MemoryId(new.id), 0, &new.terms);
            copy.expires.push(new.expires_at);
            if let Some(vectors) = &mut copy.vectors
                && !(kind == Some(VectorKind::Floats) && vectors.push(new.id, &new.vector))
            {
                copy.vectors = None;
            }
            match (&mut copy.rows, new.memory) {
                (Some(rows), Some(memory)) if copy.vectors.is_some() => {
                    copy.row_bytes += memory_bytes(&memory);
                    rows.push(memory);
                }
                _ => copy.rows = None,
            }
            // Codes for a user of any size that gets vectors: a small
            // user's copy holds them alone once it gave up its floats.
            if let Some(codes) = &mut copy.codes
                && !(kind.is_some() && codes.push(new.id, &new.vector))
            {
                copy.codes = None;
            }
        }
        copy.version = to;
        if !self.keep(user, copy.measured()) {
            return false;
        }
        self.advanced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Counts a claim a copy made for the duplicate check.
    pub fn claimed(&self) {
        self.claimed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a recall a copy answered.
    pub fn answered(&self) {
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a copy of `memories` memories of `dims` dimensions could fit
    /// at all; if not, the user is not tried again for [`TOO_LARGE_WAIT`].
    /// For [`Wanted::ForWrites`], only a user small enough for vectors
    /// whose copy fits beside those held (a write does not evict another
    /// user's copy); otherwise the user waits [`RELOAD_EVERY`].
    fn could_fit(&self, user: &str, memories: usize, dims: usize, wanted: Wanted) -> bool {
        // At least: with its vectors as codes, as a copy that does not fit
        // with floats holds them.
        let least = self.limits.kind(memories, dims).map(|_| VectorKind::Codes);
        let bytes = bytes_without_postings(memories, dims, least);
        if let Wanted::ForWrites = wanted {
            let with_vectors = self.limits.kind(memories, dims).is_some();
            return with_vectors && self.held_bytes() + bytes <= self.budget;
        }
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        if bytes > self.budget {
            held.loads
                .insert(user.to_owned(), Instant::now() + TOO_LARGE_WAIT);
            return false;
        }
        // Not read at all when it would not be kept.
        if held.room_for(user, bytes, self.budget).is_none() {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        true
    }

    /// How a copy of `user`'s `memories` memories of `dims` dimensions is
    /// loaded: as [`VectorLimits::kind`] says, but with codes in place of
    /// floats when a copy with floats would not fit in the room the other
    /// copies leave (it would be kept as codes: see [`Self::keep`]), so
    /// that the floats are not read and coded only to be dropped.
    fn kind_to_load(&self, user: &str, memories: usize, dims: usize) -> Option<VectorKind> {
        let kind = self.limits.kind(memories, dims);
        if kind != Some(VectorKind::Floats) {
            return kind;
        }
        let Ok(held) = self.held.lock() else {
            return kind;
        };
        let own = held.copies.get(user).map_or(0, |(copy, _)| copy.bytes);
        let with_floats = bytes_without_postings(memories, dims, kind);
        if held.bytes - own + with_floats > self.budget {
            Some(VectorKind::Codes)
        } else {
            kind
        }
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
        self.refresh_copy(user, Wanted::ForSearch);
    }

    /// After this instance wrote `user` and had no current copy of them
    /// to move on: starts loading one in the background (as
    /// [`Self::refresh_keyword_copy`]) if the user is small enough for
    /// vectors and the copy fits beside those held, so that their next
    /// writes' duplicate checks are answered here.
    pub(super) fn refresh_copy_after_write(&self, user: &str) {
        self.keyword_copies.wanted(user);
        self.refresh_copy(user, Wanted::ForWrites);
    }

    fn refresh_copy(&self, user: &str, wanted: Wanted) {
        if self.keyword_copies.budget() == 0 || !self.keyword_copies.may_load(user) {
            return;
        }
        let (pool, settings, copies, dims) = (
            self.pool.clone(),
            self.settings.clone(),
            self.keyword_copies.clone(),
            self.embedder.dims,
        );
        let user = user.to_owned();
        tokio::spawn(async move {
            if let Err(e) = load(&pool, &settings, &copies, &user, dims, wanted).await {
                tracing::debug!(error = %e, "a user's keyword copy could not be loaded");
            }
        });
    }

    /// Loads `user`'s copy now and keeps it (tests and benchmarks; recall
    /// loads copies in the background). It counts as a load started: none
    /// starts in the background for `RELOAD_EVERY` (5 s).
    pub async fn load_keyword_copy(&self, user: &str) -> Result<(), StoreError> {
        self.keyword_copies.started(user);
        load(
            &self.pool,
            &self.settings,
            &self.keyword_copies,
            user,
            self.embedder.dims,
            Wanted::ForSearch,
        )
        .await
    }

    /// Whether `user`'s copy is held and holds their vectors as codes (tests).
    pub fn copy_holds_codes(&self, user: &str) -> bool {
        self.keyword_copies
            .peek(user)
            .is_some_and(|copy| copy.codes.is_some())
    }

    /// Whether `user`'s copy is held and holds their vectors (tests).
    pub fn copy_holds_vectors(&self, user: &str) -> bool {
        self.keyword_copies
            .peek(user)
            .is_some_and(|copy| copy.has_vectors())
    }

    /// Bytes the keyword copies hold.
    pub fn keyword_copy_bytes(&self) -> usize {
        self.keyword_copies.held_bytes()
    }

    /// Whether a copy of `user`'s postings is held, of whatever version: a
    /// benchmark waits on it for the load a user's first recall starts.
    pub fn keyword_copy_held(&self, user: &str) -> bool {
        self.keyword_copies.peek(user).is_some()
    }

    /// How many new memories' duplicate checks a copy made a claim for.
    pub fn copy_claims(&self) -> u64 {
        self.keyword_copies
            .claimed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many copies were not loaded, or not kept, for want of room
    /// that copies wanted as often held.
    pub fn copies_refused(&self) -> u64 {
        self.keyword_copies
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times this instance's own writes moved a copy on.
    pub fn copy_advances(&self) -> u64 {
        self.keyword_copies
            .advanced
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many recalls' keyword sides a copy has answered.
    pub fn keyword_copy_answers(&self) -> u64 {
        self.keyword_copies
            .answered
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A copy's read of a user's current memories: id, keyword length,
/// expiry and (when `$2`) vector, and (when `$3`) the memory's columns as
/// [`memory_from_row`] reads them.
const COPIED_ROWS: &str = "SELECT m.id, m.keyword_length, m.expires_at, \
         CASE WHEN $2 THEN m.embedding END AS embedding, \
         CASE WHEN $3 THEN m.user_id END AS user_id, \
         CASE WHEN $3 THEN m.agent_id END AS agent_id, \
         CASE WHEN $3 THEN m.run_id END AS run_id, \
         CASE WHEN $3 THEN m.content END AS content, \
         CASE WHEN $3 THEN m.metadata END AS metadata, \
         CASE WHEN $3 THEN m.categories END AS categories, \
         m.created_at, m.updated_at \
     FROM memories m WHERE m.user_id = $1 AND m.valid_to IS NULL";

/// Reads `user`'s current memories and postings (and their vectors, for a
/// user small enough at `dims` dimensions) in one snapshot, with the
/// version they are at, and keeps them as the user's copy.
///
/// The load takes this instance's turn to write the user: none of its
/// writes comes between the snapshot and the copy being kept, so the copy
/// is current when kept unless another instance wrote.
async fn load(
    pool: &PgPool,
    settings: &Settings,
    copies: &KeywordCopies,
    user: &str,
    dims: usize,
    wanted: Wanted,
) -> Result<(), StoreError> {
    const CX: &str = "loading a keyword copy";
    let _turn = copies.turn(user).await;
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
        // A user with no memories yet: an empty copy, which this
        // instance's first write to them moves on.
        copies.keep(user, UserCopy::empty(dims).measured());
        return Ok(());
    };
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    // A user too large for the budget is not read at all.
    if !copies.could_fit(user, current, dims, wanted) {
        return Ok(());
    }
    let kind = copies.kind_to_load(user, current, dims);
    let with_vectors = kind.is_some();
    // Rows are taken as they stream in, each vector coded (or copied) at
    // once: a large user's vectors never sit in memory as PostgreSQL's
    // floats all at once (60 MB for 10,000 memories at 1536 dimensions),
    // only as what the copy keeps.
    let mut vectors =
        (kind == Some(VectorKind::Floats)).then(|| CopyVectors::with_capacity(dims, current));
    let mut codes =
        (kind == Some(VectorKind::Codes)).then(|| CopyCodes::with_capacity(dims, current));
    let mut rows: Vec<(Uuid, i32, Option<DateTime<Utc>>)> = Vec::with_capacity(current);
    // With floats, each row's memory too (recall's rows, read no more).
    let mut loaded: Option<Vec<Memory>> = vectors.is_some().then(|| Vec::with_capacity(current));
    {
        let mut memories = sqlx::query(COPIED_ROWS)
            .bind(user)
            .bind(with_vectors)
            .bind(loaded.is_some())
            .fetch(&mut *tx);
        while let Some(row) = memories.try_next().await.map_err(db(CX))? {
            let id: Uuid = row.try_get("id").map_err(db(CX))?;
            let length: i32 = row.try_get("keyword_length").map_err(db(CX))?;
            let expires_at: Option<DateTime<Utc>> = row.try_get("expires_at").map_err(db(CX))?;
            let vector: Option<Vector> = row.try_get("embedding").map_err(db(CX))?;
            if let Some(held) = &mut loaded {
                held.push(memory_from_row(&row)?);
            }
            // Every row has a vector, or the copy holds none.
            if let Some(held) = &mut vectors
                && !vector.as_ref().is_some_and(|v| held.push(id, v.as_slice()))
            {
                vectors = None;
            }
            if let Some(held) = &mut codes
                && !vector.as_ref().is_some_and(|v| held.push(id, v.as_slice()))
            {
                codes = None;
            }
            rows.push((id, length, expires_at));
        }
    }
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
    let mut expires = Vec::with_capacity(rows.len());
    for (row, (id, length, expires_at)) in rows.into_iter().enumerate() {
        let mut counts = terms.remove(&id).unwrap_or_default();
        counts.sort();
        let doc = DocumentTerms {
            counts,
            length: u32::try_from(length).unwrap_or(0),
        };
        keywords.insert(row as i64, MemoryId(id), 0, &doc);
        expires.push(expires_at);
    }
    // A row without a vector left the copy without floats, and so without
    // memories.
    let rows_held = loaded.filter(|_| vectors.is_some());

    copies.keep(
        user,
        UserCopy {
            version,
            keywords,
            expires,
            row_bytes: rows_held
                .as_ref()
                .map_or(0, |rows| rows.iter().map(memory_bytes).sum()),
            rows: rows_held,
            vectors,
            codes,
            bytes: 0,
        }
        .measured(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::copy_vectors::tests::vector;
    use super::*;

    /// A copy that counts as `bytes` against the budget.
    fn copy_of(bytes: usize) -> UserCopy {
        UserCopy {
            bytes,
            ..UserCopy::empty(4)
        }
    }

    fn held(copies: &KeywordCopies) -> Vec<String> {
        let held = copies.held.lock().unwrap();
        let mut users: Vec<String> = held.copies.keys().cloned().collect();
        users.sort();
        users
    }

    #[test]
    fn users_read_in_turn_keep_the_copies_held_instead_of_evicting_each_other() {
        // Two copies fill the budget: not even an empty one fits beside them.
        let copies = KeywordCopies::new(1_000_000);
        assert!(copies.keep("a", copy_of(500_000)));
        assert!(copies.keep("b", copy_of(500_000)));
        // Three users read in turn, two copies' room: the third goes without,
        // round after round (not even read), and never pushes out the others.
        for _ in 0..5 {
            for user in ["a", "b", "c"] {
                if copies.get(user).is_none() {
                    assert!(!copies.could_fit(user, 0, 4, Wanted::ForSearch));
                    assert!(!copies.keep(user, copy_of(500_000)));
                }
            }
        }
        assert_eq!(held(&copies), ["a", "b"]);
        assert_eq!(copies.held_bytes(), 1_000_000);
        // Each miss was refused twice: before the load, and on keeping.
        assert_eq!(
            copies.refused.load(std::sync::atomic::Ordering::Relaxed),
            10
        );
    }

    #[test]
    fn a_user_wanted_far_more_often_takes_the_place_of_the_least_wanted() {
        let copies = KeywordCopies::new(100);
        assert!(copies.keep("a", copy_of(40)));
        assert!(copies.keep("b", copy_of(40)));
        for _ in 0..3 {
            copies.get("a");
        }
        copies.get("b");
        // Twice b's uses is not enough; three times is.
        copies.get("hot");
        copies.get("hot");
        assert!(!copies.keep("hot", copy_of(40)));
        copies.get("hot");
        assert!(copies.keep("hot", copy_of(40)));
        assert_eq!(held(&copies), ["a", "hot"]);
        // Room for a larger one would take a too, but a is wanted as often.
        assert!(!copies.keep("big", copy_of(70)));
        assert_eq!(held(&copies), ["a", "hot"]);
        // A copy larger than the whole budget is never kept.
        for _ in 0..100 {
            copies.get("huge");
        }
        assert!(!copies.keep("huge", copy_of(101)));
        assert_eq!(copies.held_bytes(), 80);
    }

    #[test]
    fn a_copy_unused_for_a_while_makes_room_for_anyone() {
        let copies = KeywordCopies::new(100);
        assert!(copies.keep("old", copy_of(60)));
        for _ in 0..50 {
            copies.get("old");
        }
        assert!(!copies.keep("new", copy_of(60)));
        {
            let mut held = copies.held.lock().unwrap();
            let (_, used) = held.copies.get_mut("old").unwrap();
            *used = Instant::now().checked_sub(IDLE).unwrap();
        }
        assert!(copies.keep("new", copy_of(60)));
        assert_eq!(held(&copies), ["new"]);
    }

    /// A copy holding `rows` vectors as floats (and codes).
    fn floats_copy(rows: u64) -> UserCopy {
        let dims = 64;
        let mut vectors = CopyVectors::with_capacity(dims, rows as usize);
        for i in 0..rows {
            assert!(vectors.push(Uuid::new_v4(), &vector(i, dims)));
        }
        UserCopy {
            vectors: Some(vectors),
            rows: None,
            ..UserCopy::empty(dims)
        }
        .measured()
    }

    fn with_floats(copies: &KeywordCopies) -> Vec<String> {
        let held = copies.held.lock().unwrap();
        let mut users: Vec<String> = held
            .copies
            .iter()
            .filter(|(_, (copy, _))| copy.has_vectors())
            .map(|(user, _)| user.clone())
            .collect();
        users.sort();
        users
    }

    #[test]
    fn copies_that_do_not_all_fit_give_up_their_floats_before_anyone_goes_without() {
        let full = floats_copy(100);
        let coded = floats_copy(100).without_floats();
        assert!(coded.may_claim() && !coded.has_vectors());
        assert!(
            coded.bytes * 4 < full.bytes,
            "{} {}",
            coded.bytes,
            full.bytes
        );
        // Room for two copies with floats and half a third as codes.
        let copies = KeywordCopies::new(2 * full.bytes + coded.bytes / 2);
        assert!(copies.keep("a", floats_copy(100)));
        assert!(copies.keep("b", floats_copy(100)));
        assert_eq!(with_floats(&copies), ["a", "b"]);
        // A third, wanted as often: it comes in as codes, and the least
        // recently used of the others gives up its floats to make room.
        assert!(copies.keep("c", floats_copy(100)));
        assert_eq!(held(&copies), ["a", "b", "c"]);
        assert_eq!(with_floats(&copies), ["b"]);
        assert!(copies.get("c").unwrap().may_claim());
        // More users, as codes, until b's floats go too; nobody is dropped.
        let mut more = 0;
        while !with_floats(&copies).is_empty() {
            assert!(copies.keep(&format!("u{more}"), floats_copy(100)));
            more += 1;
            assert_eq!(held(&copies).len(), 3 + more);
            assert!(more < 10, "b kept its floats");
        }
        assert!(copies.held_bytes() <= copies.budget());
        assert_eq!(copies.held_bytes(), (3 + more) * coded.bytes);
        // A user wanted less than b keeps b's floats: none were asked of one
        // used more often.
        let copies = KeywordCopies::new(2 * full.bytes + coded.bytes / 2);
        assert!(copies.keep("a", floats_copy(100)));
        assert!(copies.keep("b", floats_copy(100)));
        copies.get("a");
        copies.get("b");
        assert!(!copies.keep("cold", floats_copy(100)));
        assert_eq!(with_floats(&copies), ["a", "b"]);
    }

    #[test]
    fn a_copy_replaced_by_its_own_newer_version_needs_only_the_difference() {
        let copies = KeywordCopies::new(100);
        assert!(copies.keep("a", copy_of(50)));
        assert!(copies.keep("b", copy_of(40)));
        copies.get("b");
        // a's newer copy, 10 larger, fits where a's was.
        assert!(copies.keep("a", copy_of(60)));
        assert_eq!(copies.held_bytes(), 100);
        // 5 more would push out b, who is wanted as often as a.
        assert!(!copies.keep("a", copy_of(65)));
        assert_eq!(held(&copies), ["b"]);
    }
}
