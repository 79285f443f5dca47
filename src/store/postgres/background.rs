//! The store's background tasks (`indexer`, `statistics`): a pass repeated
//! on the operator pool, each stopping with the store that started it.

use std::time::Duration;

use super::StoreError;

/// Aborts its task when dropped, that is with the store that holds it.
#[derive(Debug)]
pub(super) struct Background(tokio::task::AbortHandle);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `pass` again at once while it answers that more work waits
/// (`Ok(true)`), else after `every`. A failure is logged once, naming
/// `what` could not be done, until a pass works.
pub(super) fn repeat<F, Fut>(what: &'static str, every: Duration, mut pass: F) -> Background
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<bool, StoreError>> + Send,
{
    let task = tokio::spawn(async move {
        let mut failing = false;
        loop {
            match pass().await {
                Ok(more) => {
                    failing = false;
                    if more {
                        continue;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "{what}; retrying");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(every).await;
        }
    });
    Background(task.abort_handle())
}
