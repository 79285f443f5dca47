//! Remembers that wait for the store are written together: one
//! transaction, one statement for their facts, one commit (group commit).
//!
//! A user's writes serialise in the store (the user's lock, and on
//! PostgreSQL this instance's turn for the user's copy), and every write
//! pays its own begin, statement and commit with its WAL flush, most of a
//! remember's cost in the database. Here:
//!
//! * a remember whose facts are all new (the usual one: no update,
//!   supersede or re-extraction; facts found already known beside them
//!   write nothing and ride along as events), whose user has no write under way, and
//!   which finds fewer than [`WRITES_AT_ONCE`] writes running, writes at
//!   once, alone, as before (no hop, no wait);
//! * any other joins its user's queue and waits: behind its user's write
//!   under way, or for a write to end;
//! * when a write ends, every user that waits and has no write under way
//!   goes into the next round, written by a task of its own (so a caller
//!   that gives up does not strand the others): several users' in one
//!   transaction ([`super::remember::write_round`]) where the store takes
//!   rounds (PostgreSQL), and each user's in turn where it does not;
//! * one user's remembers (alone, or their part of a round written user by
//!   user) go as a round of that one user where the store takes rounds (on
//!   PostgreSQL one message), and as a batch ([`super::remember::write_new`])
//!   where it does not or declines (a duplicate).
//!
//! Invariants:
//! * a user is in `users` exactly while a write of theirs runs or a
//!   remember of theirs waits; `writing` holds those whose write runs, and
//!   a user in `users` but not `writing` has remembers waiting (their
//!   queue is not empty);
//! * `running` counts the writes running, each holding a [`Slot`]; whenever
//!   it is below [`WRITES_AT_ONCE`], no user waits without a write of theirs
//!   under way (an entry's change and a remember's joining happen under the
//!   same lock, so no remember is left queued with nobody to write it);
//! * a user is in at most one running write, so this instance's rounds never
//!   wait on each other for a user;
//! * every queued remember is answered once: its own events, in its facts'
//!   order, or its own error. A round that fails writes each user's
//!   remembers apart, and those of a user that fails each alone, so one
//!   remember's failure is not another's;
//! * deduplication is unchanged: within a user's remembers the facts are
//!   checked against each other as one remember's are ([`super::remember`]'s
//!   `Writer::add_all`), and against what is stored by the store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::remember::{NewFacts, write_new, write_round};
use super::types::MemoryEvent;
use crate::error::Error;
use crate::store::{Store, StoreError};

/// Writes that run at once before remembers wait to go in a round. Two keep
/// the database working on one write while engram prepares the next
/// (measured: docs/benchmarks.md, seventeenth run).
pub(super) const WRITES_AT_ONCE: usize = 2;

/// What a queued remember is answered with: its facts' events, or why not.
type Answer = Result<Vec<MemoryEvent>, Error>;

/// A remember waiting for its turn to be written.
struct Queued {
    facts: NewFacts,
    answer: oneshot::Sender<Answer>,
}

/// The next round: users, each with the remembers of theirs it writes.
type Round = Vec<(String, Vec<Queued>)>;

/// Who is being written and who waits (the module's invariants).
#[derive(Default)]
struct State {
    users: HashMap<String, Vec<Queued>>,
    writing: HashSet<String>,
    running: usize,
}

/// The remembers waiting, and where and how they are written.
pub(super) struct Groups {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    dedup_threshold: f32,
    /// Rounds written for queued remembers (a count for tests and benchmarks).
    rounds: AtomicU64,
}

/// Where a remember's write goes. (Lives for one match, on the stack:
/// boxing the larger variant would only add an allocation.)
#[allow(clippy::large_enum_variant)]
enum Place {
    /// Written now; the slot hands on to whatever queues meanwhile.
    Now(Slot, NewFacts),
    /// Queued: wait for the answer.
    Queued(oneshot::Receiver<Answer>),
}

impl Groups {
    pub(super) fn new(store: Arc<dyn Store>, dedup_threshold: f32) -> Self {
        Self {
            state: Mutex::default(),
            store,
            dedup_threshold,
            rounds: AtomicU64::new(0),
        }
    }

    /// Writes `facts` (all new, beside any already known) for their user: at once when nothing of the
    /// user's is under way and a write may start, else in a round with
    /// whatever else waits.
    pub(super) async fn write(self: &Arc<Self>, facts: NewFacts) -> Answer {
        match self.enter(facts) {
            Place::Now(_slot, facts) => self.write_alone(facts).await,
            Place::Queued(answer) => answer
                .await
                .unwrap_or_else(|_| Err(lost("the round writing this remember ended unanswered"))),
        }
    }

    /// Takes a place for `facts`: a write now, or a place in its user's queue.
    fn enter(self: &Arc<Self>, facts: NewFacts) -> Place {
        let mut state = self.lock();
        if state.users.contains_key(&facts.user_id) || state.running >= WRITES_AT_ONCE {
            let (answer, answered) = oneshot::channel();
            let queue = state.users.entry(facts.user_id.clone()).or_default();
            queue.push(Queued { facts, answer });
            return Place::Queued(answered);
        }
        let user = facts.user_id.clone();
        state.users.insert(user.clone(), Vec::new());
        state.writing.insert(user.clone());
        state.running += 1;
        Place::Now(self.slot(vec![user]), facts)
    }

    fn slot(self: &Arc<Self>, users: Vec<String>) -> Slot {
        Slot {
            groups: self.clone(),
            users,
        }
    }

    /// One remember's facts in a write of their own.
    async fn write_alone(&self, facts: NewFacts) -> Answer {
        let mut events = self.write_together(std::slice::from_ref(&facts)).await?;
        events
            .pop()
            .ok_or_else(|| lost("a write answered no events"))
    }

    /// One user's remembers in one write: a round of that one user where
    /// the store takes rounds (on PostgreSQL one message, where a batch
    /// takes four), else, or when the store declined it (a duplicate), a
    /// batch, which judges duplicates as always.
    async fn write_together(&self, facts: &[NewFacts]) -> Result<Vec<Vec<MemoryEvent>>, Error> {
        let store = self.store.as_ref();
        let all: Vec<&NewFacts> = facts.iter().collect();
        if let Some(events) = write_round(store, self.dedup_threshold, &all).await? {
            return Ok(events);
        }
        write_new(store, self.dedup_threshold, facts).await
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state as consistent as
        // any of its single operations: go on with it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the running write of `users`, and takes the next round (its
    /// write counted as running) when any user waits.
    fn release(&self, users: &[String]) -> Option<Round> {
        let mut state = self.lock();
        for user in users {
            state.writing.remove(user);
            if state.users.get(user).is_some_and(Vec::is_empty) {
                state.users.remove(user);
            }
        }
        state.running = state.running.saturating_sub(1);
        let State {
            users: queues,
            writing,
            running,
        } = &mut *state;
        let round: Round = queues
            .iter_mut()
            .filter(|(user, queue)| !queue.is_empty() && !writing.contains(*user))
            .map(|(user, queue)| (user.clone(), std::mem::take(queue)))
            .collect();
        if round.is_empty() {
            return None;
        }
        writing.extend(round.iter().map(|(user, _)| user.clone()));
        *running += 1;
        Some(round)
    }

    /// Takes `users` out of the table with whatever waits for them (no
    /// runtime is left to write it: its callers are told so, their answers
    /// dropped unsent), ending their write.
    fn abandon(&self, users: &[String]) {
        let mut state = self.lock();
        for user in users {
            state.writing.remove(user);
            state.users.remove(user);
        }
        state.running = state.running.saturating_sub(1);
    }

    /// Rounds written for queued remembers so far.
    #[cfg(test)]
    pub(super) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// How many remembers wait for `user_id`.
    #[cfg(test)]
    pub(super) fn queued(&self, user_id: &str) -> usize {
        self.lock().users.get(user_id).map_or(0, Vec::len)
    }

    /// Marks a write of `user_id` running, as a remember writing alone
    /// does, until the slot is dropped.
    #[cfg(test)]
    pub(super) fn hold(self: &Arc<Self>, user_id: &str) -> Slot {
        let mut state = self.lock();
        state.users.entry(user_id.to_owned()).or_default();
        state.writing.insert(user_id.to_owned());
        state.running += 1;
        drop(state);
        self.slot(vec![user_id.to_owned()])
    }
}

/// Held by a running write (alone or a round) of `users`; when it ends
/// (done, failed or dropped mid-way), the next round, if anyone waits, is
/// written by a task of its own.
pub(super) struct Slot {
    groups: Arc<Groups>,
    users: Vec<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(round) = self.groups.release(&self.users) else {
            return;
        };
        let users: Vec<String> = round.iter().map(|(user, _)| user.clone()).collect();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.groups.slot(users).write(round));
            }
            Err(_) => {
                // No runtime (shutting down): nothing can write them. Their
                // callers are told so (the answers drop unsent).
                tracing::warn!(
                    users = users.len(),
                    queued = round.iter().map(|(_, q)| q.len()).sum::<usize>(),
                    "remembers queued at shutdown were not written"
                );
                self.groups.abandon(&users);
            }
        }
    }
}

impl Slot {
    /// Writes `round` (the slot's users, each with their queued remembers):
    /// several users in one transaction where the store takes it, else (or
    /// should that fail) each user's remembers apart. Dropping the slot at
    /// the end hands on to the next round.
    async fn write(self, round: Round) {
        let groups = &self.groups;
        groups.rounds.fetch_add(1, Ordering::Relaxed);
        if round.len() > 1 {
            let facts: Vec<&NewFacts> = round
                .iter()
                .flat_map(|(_, queued)| queued.iter().map(|q| &q.facts))
                .collect();
            tracing::debug!(
                users = round.len(),
                remembers = facts.len(),
                "writing queued remembers of several users in one round"
            );
            match write_round(groups.store.as_ref(), groups.dedup_threshold, &facts).await {
                Ok(Some(events)) => {
                    let queued = round.into_iter().flat_map(|(_, queued)| queued);
                    for (q, events) in queued.zip(events) {
                        let _ = q.answer.send(Ok(events));
                    }
                    return;
                }
                Ok(None) => tracing::debug!(
                    users = round.len(),
                    "the store declined a round of several users; writing each apart"
                ),
                Err(e) => tracing::warn!(
                    users = round.len(),
                    error = %e,
                    "a round of several users failed; writing each apart"
                ),
            }
        }
        for (user, queued) in round {
            groups.write_user(&user, queued).await;
        }
    }
}

impl Groups {
    /// One user's queued remembers in one write; if that fails and there
    /// were several, each alone.
    async fn write_user(&self, user_id: &str, queued: Vec<Queued>) {
        let (facts, answers): (Vec<NewFacts>, Vec<_>) =
            queued.into_iter().map(|q| (q.facts, q.answer)).unzip();
        tracing::debug!(
            user_id,
            remembers = facts.len(),
            "writing queued remembers together"
        );
        // A caller that gave up has dropped its receiver: its facts are
        // written all the same, and its answer is dropped (`let _`).
        match self.write_together(&facts).await {
            Ok(events) => {
                for (answer, events) in answers.into_iter().zip(events) {
                    let _ = answer.send(Ok(events));
                }
            }
            Err(e) if facts.len() == 1 => {
                if let Some(answer) = answers.into_iter().next() {
                    let _ = answer.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(
                    user_id,
                    remembers = facts.len(),
                    error = %e,
                    "a round of remembers failed together; writing each alone"
                );
                for (facts, answer) in facts.into_iter().zip(answers) {
                    let _ = answer.send(self.write_alone(facts).await);
                }
            }
        }
    }
}

fn lost(what: &'static str) -> Error {
    StoreError::Unanswered(what).into()
}
