//! The user's version, read while the flow waits on a model, for a store
//! that can answer the search that follows from what it holds at that
//! version ([`crate::store::Search::version_now`]).
//!
//! Invariant: the read never adds to the flow's wait, nor holds a
//! connection past it. It is polled only beside a model's call, after the
//! call: a call that answers at once (the hash embedder, a cached query)
//! starts no read. A read still under way when a call is done waits, not
//! polled, for the flow's next call (a remember's embedding after its
//! extraction), and is dropped when the flow asks for what it saw; the
//! search then reads the version itself, as it would without the read. So
//! a database that has stopped answering costs the flow nothing more than
//! it did before, and a failed read only costs the store its shortcut.

use std::future::Future;
use std::pin::Pin;

use crate::store::StoreError;

/// A read of the user's version, carried beside a flow's model calls.
pub(super) struct ReadAhead<F> {
    /// The read, until it answers (or the flow stops carrying it).
    read: Option<Pin<Box<F>>>,
    seen: Option<u64>,
}

impl<F> ReadAhead<F>
where
    F: Future<Output = Result<Option<u64>, StoreError>>,
{
    /// `read`, not started yet.
    pub(super) fn new(read: F) -> Self {
        Self::maybe(Some(read))
    }

    /// `read` if there is one; without, [`Self::beside`] only awaits its
    /// call and nothing is seen.
    pub(super) fn maybe(read: Option<F>) -> Self {
        Self {
            read: read.map(Box::pin),
            seen: None,
        }
    }

    /// `call`'s output, with the read polled beside it while it runs.
    pub(super) async fn beside<T>(&mut self, call: impl Future<Output = T>) -> T {
        let Some(read) = self.read.as_mut() else {
            return call.await;
        };
        tokio::pin!(call);
        let first = tokio::select! {
            biased;
            output = &mut call => Ok(output),
            seen = read => Err(seen),
        };
        match first {
            Ok(output) => output,
            Err(seen) => {
                self.read = None;
                self.seen = seen.unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "the user's version could not be read ahead");
                    None
                });
                call.await
            }
        }
    }

    /// The version, if the read answered during a call; a read still under
    /// way is dropped.
    pub(super) fn seen(self) -> Option<u64> {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    async fn after<T>(ms: u64, value: T) -> T {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        value
    }

    #[tokio::test]
    async fn a_call_that_answers_at_once_starts_no_read() {
        let started = AtomicBool::new(false);
        let mut ahead = ReadAhead::new(async {
            started.store(true, Ordering::SeqCst);
            Ok(Some(7))
        });
        assert_eq!(ahead.beside(async { 1 }).await, 1);
        assert_eq!(ahead.seen(), None);
        assert!(!started.load(Ordering::SeqCst), "the read was started");
    }

    #[tokio::test]
    async fn a_read_that_answers_during_the_call_is_kept() {
        let mut ahead = ReadAhead::new(async { Ok(Some(7)) });
        assert_eq!(ahead.beside(after(20, 1)).await, 1);
        assert_eq!(ahead.seen(), Some(7));
    }

    #[tokio::test]
    async fn a_read_still_under_way_is_carried_to_the_next_call() {
        let mut ahead = ReadAhead::new(after(40, Ok(Some(7))));
        assert_eq!(ahead.beside(after(5, 1)).await, 1);
        assert_eq!(ahead.beside(after(200, 2)).await, 2);
        assert_eq!(ahead.seen(), Some(7));
    }

    #[tokio::test]
    async fn a_read_still_under_way_is_never_waited_for() {
        let mut ahead = ReadAhead::new(after(30_000, Ok(Some(7))));
        let started = std::time::Instant::now();
        assert_eq!(ahead.beside(after(5, 1)).await, 1);
        assert_eq!(ahead.beside(after(5, 2)).await, 2);
        assert_eq!(ahead.seen(), None);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the read was waited for"
        );
    }

    #[tokio::test]
    async fn without_a_read_the_call_alone_is_awaited() {
        type Read = std::future::Ready<Result<Option<u64>, StoreError>>;
        let mut ahead = ReadAhead::maybe(None::<Read>);
        assert_eq!(ahead.beside(after(5, 1)).await, 1);
        assert_eq!(ahead.seen(), None);
    }

    #[tokio::test]
    async fn a_failed_read_costs_only_the_shortcut() {
        let mut ahead = ReadAhead::new(async { Err(StoreError::Corrupt("gone".into())) });
        assert_eq!(ahead.beside(after(20, 1)).await, 1);
        assert_eq!(ahead.seen(), None);
    }
}
