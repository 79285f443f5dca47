//! One user's remembers that arrive while another of theirs is being
//! written go to the store together: one transaction, one statement for
//! their facts, one commit (group commit).
//!
//! A user's writes serialise in the store (the user's lock, and on
//! PostgreSQL this instance's turn for the user's copy), so remembers of
//! one user from several clients used to queue for it one at a time, each
//! paying its own begin, insert and commit with its WAL flush. Here:
//!
//! * a remember whose facts are all new (the usual one: no update,
//!   supersede or re-extraction) and which finds no write of its user under
//!   way writes at once, alone, as before (no hop, no wait);
//! * one that finds a write under way joins its user's queue and waits;
//! * when the write under way ends, everything queued is written in one
//!   round ([`super::remember::write_new`]), by a task of its own (so a
//!   caller that gives up does not strand the others), and so on while
//!   remembers keep arriving; the user leaves the table when a round ends
//!   with nothing queued.
//!
//! Invariants:
//! * a user is in `under_way` exactly while one write or round of theirs
//!   is running or about to (an entry's removal and a remember's joining
//!   happen under the same lock, so no remember is left queued with nobody
//!   to write it);
//! * every queued remember is answered once: its own events, in its facts'
//!   order, or its own error. A round that fails writes each of its
//!   remembers alone, so one remember's failure is not another's;
//! * deduplication is unchanged: within a round the facts are checked
//!   against each other as one remember's are ([`super::remember`]'s
//!   `Writer::add_all`), and against what is stored by the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::remember::{NewFacts, write_new};
use super::types::MemoryEvent;
use crate::error::Error;
use crate::store::{Store, StoreError};

/// What a queued remember is answered with: its facts' events, or why not.
type Answer = Result<Vec<MemoryEvent>, Error>;

/// A remember waiting for its user's write under way to end.
struct Queued {
    facts: NewFacts,
    answer: oneshot::Sender<Answer>,
}

/// The users with a write under way, and the remembers waiting on each;
/// and where and how they are written.
pub(super) struct Groups {
    under_way: Mutex<HashMap<String, Vec<Queued>>>,
    store: Arc<dyn Store>,
    dedup_threshold: f32,
    /// Rounds written for queued remembers (a count for tests and benchmarks).
    rounds: AtomicU64,
}

/// Where a remember's write goes. (Lives for one match, on the stack:
/// boxing the larger variant would only add an allocation.)
#[allow(clippy::large_enum_variant)]
enum Place {
    /// Nothing of the user's is under way: write the facts now; the guard
    /// hands on to whatever queues meanwhile.
    Now(Handoff, NewFacts),
    /// Queued behind a write under way: wait for the answer.
    Queued(oneshot::Receiver<Answer>),
}

impl Groups {
    pub(super) fn new(store: Arc<dyn Store>, dedup_threshold: f32) -> Self {
        Self {
            under_way: Mutex::default(),
            store,
            dedup_threshold,
            rounds: AtomicU64::new(0),
        }
    }

    /// Writes `facts` (all new) for their user: at once when nothing of the
    /// user's is under way, else with whatever else waits, in one round
    /// after the write under way.
    pub(super) async fn write(self: &Arc<Self>, facts: NewFacts) -> Answer {
        match self.enter(facts) {
            Place::Now(_handoff, facts) => self.write_alone(facts).await,
            Place::Queued(answer) => answer
                .await
                .unwrap_or_else(|_| Err(lost("the round writing this remember ended unanswered"))),
        }
    }

    /// Takes the user's place for `facts`: the write, or a place in the queue.
    fn enter(self: &Arc<Self>, facts: NewFacts) -> Place {
        let mut under_way = self.lock();
        if let Some(queue) = under_way.get_mut(&facts.user_id) {
            let (answer, answered) = oneshot::channel();
            queue.push(Queued { facts, answer });
            return Place::Queued(answered);
        }
        under_way.insert(facts.user_id.clone(), Vec::new());
        let handoff = Handoff {
            groups: self.clone(),
            user_id: facts.user_id.clone(),
        };
        Place::Now(handoff, facts)
    }

    /// One remember's facts in a write of their own.
    async fn write_alone(&self, facts: NewFacts) -> Answer {
        let mut events = write_new(self.store.as_ref(), self.dedup_threshold, &[facts]).await?;
        events
            .pop()
            .ok_or_else(|| lost("a write answered no events"))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Queued>>> {
        // A panic while holding this lock leaves the map as consistent as
        // any of its single operations: go on with it.
        self.under_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The remembers queued for `user_id`, taken; `None` (and the user
    /// leaves the table) when there are none.
    fn take_queued(&self, user_id: &str) -> Option<Vec<Queued>> {
        let mut under_way = self.lock();
        match under_way.get_mut(user_id) {
            Some(queue) if !queue.is_empty() => Some(std::mem::take(queue)),
            _ => {
                under_way.remove(user_id);
                None
            }
        }
    }

    /// Rounds written for queued remembers so far.
    #[cfg(test)]
    pub(super) fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// How many remembers wait for `user_id`'s write under way.
    #[cfg(test)]
    pub(super) fn queued(&self, user_id: &str) -> usize {
        self.lock().get(user_id).map_or(0, Vec::len)
    }

    /// Marks a write of `user_id` under way, as a remember writing alone
    /// does, until the guard is dropped.
    #[cfg(test)]
    pub(super) fn hold(self: &Arc<Self>, user_id: &str) -> Handoff {
        self.lock().insert(user_id.to_owned(), Vec::new());
        Handoff {
            groups: self.clone(),
            user_id: user_id.to_owned(),
        }
    }
}

/// Held by the remember writing alone; when it ends (done, failed or
/// dropped mid-way), whatever queued behind it is written by a task of its
/// own, or the user leaves the table.
pub(super) struct Handoff {
    groups: Arc<Groups>,
    user_id: String,
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let Some(first) = self.groups.take_queued(&self.user_id) else {
            return;
        };
        // The queue stays in the table (empty now): later remembers join it
        // and the task writes them next.
        let rounds = Rounds {
            groups: self.groups.clone(),
            user_id: std::mem::take(&mut self.user_id),
            done: false,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(rounds.run(first));
            }
            Err(_) => {
                // No runtime (shutting down): nothing can write them. Their
                // callers are told so (the answers drop unsent), and the
                // dropped task takes the user out of the table.
                tracing::warn!(
                    user_id = %rounds.user_id,
                    queued = first.len(),
                    "remembers queued at shutdown were not written"
                );
            }
        }
    }
}

/// The task that writes a user's queued remembers, a round at a time.
struct Rounds {
    groups: Arc<Groups>,
    user_id: String,
    /// Set when a round ended with nothing queued (the user has left the
    /// table): until then, dropping this (a panic, no runtime) takes the
    /// user out of the table itself, so later remembers are not queued
    /// behind a task that is gone.
    done: bool,
}

impl Rounds {
    async fn run(mut self, first: Vec<Queued>) {
        let mut round = Some(first);
        while let Some(queued) = round {
            self.groups.rounds.fetch_add(1, Ordering::Relaxed);
            self.write(queued).await;
            round = self.groups.take_queued(&self.user_id);
        }
        self.done = true;
    }

    /// One round: every remember in one write; if that fails and there
    /// were several, each alone.
    async fn write(&self, queued: Vec<Queued>) {
        let (facts, answers): (Vec<NewFacts>, Vec<_>) =
            queued.into_iter().map(|q| (q.facts, q.answer)).unzip();
        tracing::debug!(
            user_id = %self.user_id,
            remembers = facts.len(),
            "writing queued remembers together"
        );
        let groups = &self.groups;
        // A caller that gave up has dropped its receiver: its facts are
        // written all the same, and its answer is dropped (`let _`).
        match write_new(groups.store.as_ref(), groups.dedup_threshold, &facts).await {
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
                    user_id = %self.user_id,
                    remembers = facts.len(),
                    error = %e,
                    "a round of remembers failed together; writing each alone"
                );
                for (facts, answer) in facts.into_iter().zip(answers) {
                    let _ = answer.send(groups.write_alone(facts).await);
                }
            }
        }
    }
}

impl Drop for Rounds {
    fn drop(&mut self) {
        if !self.done {
            self.groups.lock().remove(&self.user_id);
        }
    }
}

fn lost(what: &'static str) -> Error {
    StoreError::Unanswered(what).into()
}
