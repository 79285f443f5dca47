//! The span processor: ended spans wait in a bounded queue and one task on
//! the tokio runtime exports them in batches, woken by its timer or by a
//! full batch, never once per span.
//!
//! The SDK's batch processor on the runtime sends every ended span through
//! a channel to its task, so each span wakes the task (and, on a
//! multi-threaded runtime, often a parked worker thread): a context switch
//! per span, which cost more wall-clock time than making the span did
//! (docs/benchmarks.md, telemetry overhead). Here ending a span takes a
//! short lock and a push.
//!
//! Settings are the specification's batch processor variables, with its
//! defaults: `OTEL_BSP_SCHEDULE_DELAY` (ms, 5000), `OTEL_BSP_EXPORT_TIMEOUT`
//! (ms, 30000), `OTEL_BSP_MAX_QUEUE_SIZE` (2048),
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512, at most the queue size). Spans
//! ended while the queue is full are dropped and counted; the exporter's
//! task logs it, and export failures, once each until things recover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{Notify, mpsc};

/// The batch settings (`OTEL_BSP_*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Settings {
    pub delay: Duration,
    pub export_timeout: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(5_000),
            export_timeout: Duration::from_millis(30_000),
            max_queue: 2_048,
            max_batch: 512,
        }
    }
}

impl Settings {
    /// The settings `var` gives (a lookup of `OTEL_BSP_*`); values that
    /// are not positive integers keep the default, as in the SDK.
    pub fn from(var: impl Fn(&str) -> Option<String>) -> Self {
        let number = |name: &str| {
            var(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&n| n > 0)
        };
        let default = Self::default();
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE").map_or(default.max_queue, |n| n as usize);
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
            .map_or(default.max_batch, |n| n as usize)
            .min(max_queue);
        Self {
            delay: number("OTEL_BSP_SCHEDULE_DELAY").map_or(default.delay, Duration::from_millis),
            export_timeout: number("OTEL_BSP_EXPORT_TIMEOUT")
                .map_or(default.export_timeout, Duration::from_millis),
            max_queue,
            max_batch,
        }
    }
}

/// What the processor asks of its task besides exporting.
enum Command {
    Resource(Resource),
    /// Export everything queued, then answer.
    Flush(std::sync::mpsc::Sender<OTelSdkResult>),
    /// Export everything queued, shut the exporter down, answer, stop.
    Shutdown(std::sync::mpsc::Sender<OTelSdkResult>),
}

/// The queue the spans' ends fill and the task drains.
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    /// Woken when a batch is full.
    full: Notify,
    /// Spans dropped because the queue was full, since the start.
    dropped: AtomicU64,
    settings: Settings,
}

/// The processor the tracer provider calls as spans end.
#[derive(Debug)]
pub(super) struct Batcher {
    queue: Arc<Queue>,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// A processor feeding `exporter`, whose task is spawned on the current
    /// tokio runtime (so this must run inside one).
    pub fn start<E: SpanExporter + 'static>(exporter: E, settings: Settings) -> Self {
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::with_capacity(settings.max_batch)),
            full: Notify::new(),
            dropped: AtomicU64::new(0),
            settings,
        });
        let (commands, received) = mpsc::unbounded_channel();
        tokio::spawn(export_loop(queue.clone(), exporter, received));
        Self { queue, commands }
    }

    /// Sends `command` (built around the answer's sender) and waits up to
    /// `timeout` for the answer. Blocks the calling thread.
    fn ask(
        &self,
        command: impl FnOnce(std::sync::mpsc::Sender<OTelSdkResult>) -> Command,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (answer, answered) = std::sync::mpsc::channel();
        self.commands
            .send(command(answer))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answered
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }
}

impl SpanProcessor for Batcher {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let settings = &self.queue.settings;
        let Ok(mut spans) = self.queue.spans.lock() else {
            return;
        };
        if spans.len() >= settings.max_queue {
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        spans.push(span);
        if spans.len() == settings.max_batch {
            self.queue.full.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let timeout = self.queue.settings.export_timeout;
        self.ask(Command::Flush, timeout)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Command::Shutdown, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.commands.send(Command::Resource(resource.clone()));
    }
}

/// The exporter's task: waits for the timer, a full batch or a command,
/// then exports all that is queued, a batch at a time.
async fn export_loop<E: SpanExporter>(
    queue: Arc<Queue>,
    mut exporter: E,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut health = Health::default();
    loop {
        // Commands first: the resource is set before anything is exported.
        let command = tokio::select! {
            biased;
            command = commands.recv() => Some(command),
            () = queue.full.notified() => None,
            () = tokio::time::sleep(queue.settings.delay) => None,
        };
        match command {
            Some(Some(Command::Resource(resource))) => {
                exporter.set_resource(&resource);
                continue;
            }
            Some(Some(Command::Flush(answer))) => {
                let result = export_queued(&queue, &exporter, &mut health).await;
                let _ = answer.send(result);
            }
            Some(Some(Command::Shutdown(answer))) => {
                let exported = export_queued(&queue, &exporter, &mut health).await;
                let result = exported.and(exporter.shutdown());
                let _ = answer.send(result);
                return;
            }
            // The processor is gone (the provider dropped without a
            // shutdown): export what is left and stop.
            Some(None) => {
                let _ = export_queued(&queue, &exporter, &mut health).await;
                let _ = exporter.shutdown();
                return;
            }
            None => {
                let _ = export_queued(&queue, &exporter, &mut health).await;
            }
        }
    }
}

/// What the task last told the log, so that a collector that is down for
/// an hour costs one warning, not one per batch.
#[derive(Default)]
struct Health {
    failing: bool,
    dropped_reported: u64,
}

/// Exports every queued span, in batches of at most `max_batch`.
async fn export_queued<E: SpanExporter>(
    queue: &Queue,
    exporter: &E,
    health: &mut Health,
) -> OTelSdkResult {
    let dropped = queue.dropped.load(Ordering::Relaxed);
    if dropped > health.dropped_reported {
        tracing::warn!(
            dropped = dropped - health.dropped_reported,
            queue = queue.settings.max_queue,
            "trace spans dropped: the export queue was full (raise OTEL_BSP_MAX_QUEUE_SIZE, \
             or sample with OTEL_TRACES_SAMPLER)"
        );
        health.dropped_reported = dropped;
    }
    let mut result = Ok(());
    loop {
        let batch: Vec<SpanData> = {
            let Ok(mut spans) = queue.spans.lock() else {
                return Err(OTelSdkError::InternalFailure("span queue poisoned".into()));
            };
            let take = spans.len().min(queue.settings.max_batch);
            spans.drain(..take).collect()
        };
        if batch.is_empty() {
            return result;
        }
        let timeout = queue.settings.export_timeout;
        let exported = match tokio::time::timeout(timeout, exporter.export(batch)).await {
            Ok(exported) => exported,
            Err(_) => Err(OTelSdkError::Timeout(timeout)),
        };
        match &exported {
            Ok(()) if health.failing => {
                health.failing = false;
                tracing::info!("exporting traces works again");
            }
            Err(e) if !health.failing => {
                health.failing = true;
                tracing::warn!(error = %e, "exporting traces failed; spans are dropped until it works again");
            }
            _ => {}
        }
        result = result.and(exported);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;

    /// An exporter that keeps what it is given, batch by batch.
    #[derive(Clone, Debug, Default)]
    struct Kept(Arc<Mutex<Vec<Vec<String>>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let names = batch.into_iter().map(|s| s.name.into_owned()).collect();
            self.0.lock().unwrap().push(names);
            Ok(())
        }
    }

    impl Kept {
        fn batches(&self) -> Vec<usize> {
            self.0.lock().unwrap().iter().map(Vec::len).collect()
        }
    }

    fn provider(kept: &Kept, settings: Settings) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(Batcher::start(kept.clone(), settings))
            .build()
    }

    fn end_spans(provider: &SdkTracerProvider, n: usize) {
        let tracer = provider.tracer("test");
        for i in 0..n {
            tracer.in_span(format!("span {i}"), |_| {});
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn settings_follow_the_specifications_variables_and_defaults() {
        let vars: HashMap<&str, &str> = [
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "-3"),
        ]
        .into();
        let settings = Settings::from(|name| vars.get(name).map(|v| v.to_string()));
        assert_eq!(settings.delay, Duration::from_millis(250));
        assert_eq!(settings.max_queue, 100);
        assert_eq!(settings.max_batch, 100, "a batch is at most the queue");
        assert_eq!(settings.export_timeout, Settings::default().export_timeout);
        assert_eq!(Settings::from(|_| None), Settings::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_is_exported_before_the_timer_and_shutdown_exports_the_rest() {
        let kept = Kept::default();
        let settings = Settings {
            delay: Duration::from_secs(600),
            max_batch: 4,
            ..Settings::default()
        };
        let provider = provider(&kept, settings);
        end_spans(&provider, 3);
        settle().await;
        assert!(kept.batches().is_empty(), "3 of 4: waits for the timer");
        end_spans(&provider, 1);
        settle().await;
        assert_eq!(kept.batches(), vec![4], "a full batch goes at once");
        end_spans(&provider, 2);
        settle().await;
        assert_eq!(kept.batches(), vec![4], "2 of 4: waits");
        let shut = tokio::task::spawn_blocking(move || provider.shutdown());
        shut.await.unwrap().unwrap();
        assert_eq!(kept.batches(), vec![4, 2], "the rest at shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_timer_exports_a_partial_batch() {
        let kept = Kept::default();
        let settings = Settings {
            delay: Duration::from_millis(20),
            ..Settings::default()
        };
        let provider = provider(&kept, settings);
        end_spans(&provider, 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(kept.batches(), vec![3]);
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .unwrap();
    }

    // On one thread the export task cannot run while the spans end.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_instead_of_growing() {
        let kept = Kept::default();
        let settings = Settings {
            delay: Duration::from_secs(600),
            max_queue: 5,
            max_batch: 5,
            ..Settings::default()
        };
        let batcher = Batcher::start(kept.clone(), settings);
        let queue = batcher.queue.clone();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batcher)
            .build();
        end_spans(&provider, 8);
        assert_eq!(queue.spans.lock().unwrap().len(), 5);
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.batches(), vec![5], "the queued ones are exported");
    }
}
