//! Where reads' rows (and failed operations') go: a bounded queue drained by
//! one background task, which appends them in batches, each batch one
//! transaction. The request that made a row never waits for it.
//!
//! Invariant: a row handed to a full queue, or in a batch the store
//! refused, is counted in [`Sink::dropped`] and logged (at most once a
//! minute), never retried into an unbounded backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::store::{AuditRecord, Store};

/// Rows waiting to be written, at most.
pub const QUEUE: usize = 8192;
/// Rows appended per transaction, at most.
const BATCH: usize = 256;
/// How long the writer gathers rows before a transaction: under load, one
/// transaction carries many requests' rows instead of one each.
const LINGER: Duration = Duration::from_millis(50);

enum Message {
    Row(Box<AuditRecord>),
    /// Answered once every row queued before it is written or dropped.
    Flush(oneshot::Sender<()>),
}

/// The queue's sending side; cheap to clone.
#[derive(Clone)]
pub struct Sink {
    queue: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Starts the writer on the current runtime, appending to `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, rows) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_rows(store, rows, dropped.clone()));
        Self { queue, dropped }
    }

    /// Queues `row`; counts it as dropped when the queue is full.
    pub fn push(&self, row: AuditRecord) {
        if self.queue.try_send(Message::Row(Box::new(row))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("the audit queue is full: an audit row was dropped");
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until the rows queued so far are written (or dropped).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_rows(
    store: Arc<dyn Store>,
    mut queue: mpsc::Receiver<Message>,
    dropped: Arc<AtomicU64>,
) {
    let mut last_warning: Option<Instant> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut waiting = Vec::new();
    while let Some(first) = queue.recv().await {
        let gather_until = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Message::Row(row)) => batch.push(*row),
                // A flush is answered once what came before it is written.
                Some(Message::Flush(done)) => {
                    waiting.push(done);
                    break;
                }
                None => {}
            }
            if batch.len() >= BATCH {
                break;
            }
            match tokio::time::timeout_at(gather_until, queue.recv()).await {
                Ok(Some(message)) => next = Some(message),
                // The time is up, or every sender is gone.
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = store.append_audit(&batch).await {
            dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(error = %e, rows = batch.len(), "audit rows could not be written");
                last_warning = Some(Instant::now());
            }
        }
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}
