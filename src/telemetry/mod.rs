//! Telemetry: logs, always, and traces, when the operator asks for them.
//!
//! * Logs go to stderr: on the stdio transport, stdout carries the
//!   protocol and a stray byte there breaks the client. `ENGRAM_LOG` (or
//!   `RUST_LOG`) filters them; default `info`.
//! * Traces (`traces.rs`) are the `tracing` spans of [`spans`], exported over
//!   OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Unset, no OpenTelemetry
//!   layer is installed and the spans are disabled at their call sites.
//!
//! The spans never show in the logs (the log filter leaves out their
//! target), so turning traces on changes nothing on stderr.

mod batch;
pub mod spans;
mod traces;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use traces::TracesError;

/// What [`init`] installed. [`Telemetry::shutdown`] exports the spans still
/// queued: call it once the command is done.
#[must_use = "call shutdown() when done, or queued spans are lost"]
pub struct Telemetry {
    traces: Option<traces::Pipeline>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn traces(&self) -> bool {
        self.traces.is_some()
    }

    /// Exports every span ended so far and stops the exporter. Blocks: call
    /// it outside the async runtime (which must still be running).
    pub fn shutdown(self) {
        if let Some(pipeline) = self.traces {
            spans::set_enabled(false);
            pipeline.shutdown();
        }
    }
}

/// Installs the stderr log subscriber and, when the `OTEL_*` variables ask
/// for it, the trace exporter. Must run inside the tokio runtime (the
/// exporter's batch task runs on it). Installing twice keeps the first
/// subscriber (and exports nothing for the second).
pub fn init() -> Result<Telemetry, TracesError> {
    let mut filter = std::env::var("ENGRAM_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if let Ok(quiet) = format!("{}=off", spans::TARGET).parse() {
        filter = filter.add_directive(quiet);
    }
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(filter);
    let pipeline = traces::from_env()?;
    let exported = pipeline.as_ref().map(traces::Pipeline::layer);
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(exported)
        .try_init()
        .is_ok();
    let pipeline = match pipeline {
        Some(pipeline) if !installed => {
            pipeline.shutdown();
            None
        }
        other => other,
    };
    spans::set_enabled(pipeline.is_some());
    if let Some(pipeline) = &pipeline {
        tracing::info!(
            endpoint = %pipeline.endpoint(),
            service = %pipeline.service(),
            "exporting traces over OTLP (http/protobuf)"
        );
    }
    Ok(Telemetry { traces: pipeline })
}
