//! The user's version, read while the flow waits on a model, for a store
//! that can answer the search that follows from what it holds at that
//! version ([`crate::store::Search::version_now`]).
//!
//! Invariant: the read never adds to the flow's wait, nor holds a
//! connection past it. The model's call is polled first, so one that
//! answers at once (the hash embedder, a cached query) starts no read; a
//! read still under way when the call is done is dropped, and the search
//! then reads the version itself, as it would without the read. So a
//! database that has stopped answering costs the flow nothing more than
//! it did before, and a failed read only costs the store its shortcut.

use std::future::Future;

use crate::store::StoreError;

/// `call`'s output, and the version `read` gave if it answered first.
pub(super) async fn while_waiting_on<T>(
    call: impl Future<Output = T>,
    read: impl Future<Output = Result<Option<u64>, StoreError>>,
) -> (T, Option<u64>) {
    tokio::pin!(call, read);
    tokio::select! {
        biased;
        output = &mut call => (output, None),
        seen = &mut read => {
            let seen = seen.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "the user's version could not be read ahead");
                None
            });
            (call.await, seen)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_call_that_answers_at_once_starts_no_read() {
        let started = AtomicBool::new(false);
        let read = async {
            started.store(true, Ordering::SeqCst);
            Ok(Some(7))
        };
        let (out, seen) = while_waiting_on(async { 1 }, read).await;
        assert_eq!((out, seen), (1, None));
        assert!(!started.load(Ordering::SeqCst), "the read was started");
    }

    #[tokio::test]
    async fn a_read_that_answers_first_is_kept() {
        let call = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            1
        };
        let (out, seen) = while_waiting_on(call, async { Ok(Some(7)) }).await;
        assert_eq!((out, seen), (1, Some(7)));
    }

    #[tokio::test]
    async fn a_read_still_under_way_is_dropped_when_the_call_is_done() {
        let call = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            1
        };
        let read = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Some(7))
        };
        let started = std::time::Instant::now();
        let (out, seen) = while_waiting_on(call, read).await;
        assert_eq!((out, seen), (1, None));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the read was waited for"
        );
    }

    #[tokio::test]
    async fn a_failed_read_costs_only_the_shortcut() {
        let call = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            1
        };
        let read = async { Err(StoreError::Corrupt("gone".into())) };
        let (out, seen) = while_waiting_on(call, read).await;
        assert_eq!((out, seen), (1, None));
    }
}
