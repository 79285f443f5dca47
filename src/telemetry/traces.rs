//! The trace pipeline: `tracing` spans, through `tracing-opentelemetry`, to
//! an OTLP exporter posting protobuf over HTTP.
//!
//! Configured by the standard OpenTelemetry variables alone, read here or by
//! the SDK itself:
//!
//! * on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-only
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, unless
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`;
//! * `OTEL_EXPORTER_OTLP_PROTOCOL` (`_TRACES_` too): `http/protobuf`, the
//!   default and the only one this build speaks; `grpc` and `http/json`
//!   are refused at start with what to set instead;
//! * `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `_COMPRESSION` (none; gzip
//!   is refused by the exporter), `OTEL_TRACES_SAMPLER` /
//!   `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES`;
//! * `OTEL_SERVICE_NAME`, default `engram`.
//!
//! Spans are batched on the tokio runtime (`batch.rs`, which reads
//! `OTEL_BSP_*`) and posted with engram's own `reqwest` client. Spans not
//! yet exported when the command ends are exported by
//! [`Pipeline::shutdown`], so a short run loses none.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

/// Why traces could not be set up as the variables ask. Start-up stops.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error(
        "{variable}={value}: this build exports traces over OTLP/HTTP with protobuf only; set \
         {variable}=http/protobuf (collectors take it on port 4318) or unset it"
    )]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("OTEL_TRACES_EXPORTER={0}: this build exports traces over OTLP only; set otlp or none")]
    Exporter(String),
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Build(String),
}

/// The exporter, batching on the runtime, and the provider it feeds.
pub(super) struct Pipeline {
    provider: SdkTracerProvider,
    endpoint: String,
    service: String,
}

/// The OTLP timeout when `OTEL_EXPORTER_OTLP_TIMEOUT` is not set (the spec's).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A variable's value, trimmed; unset and empty are the same.
fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The traces-only variable, else the general one.
fn either(traces: &'static str, general: &'static str) -> Option<(&'static str, String)> {
    var(traces)
        .map(|v| (traces, v))
        .or_else(|| var(general).map(|v| (general, v)))
}

/// The pipeline the `OTEL_*` variables ask for; `None` when they ask for
/// none. Must run inside the tokio runtime.
pub(super) fn from_env() -> Result<Option<Pipeline>, TracesError> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => return Err(TracesError::Exporter(other.to_owned())),
    }
    let Some((variable, endpoint)) = either(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ) else {
        return Ok(None);
    };
    if let Some((variable, value)) = either(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) && value != "http/protobuf"
    {
        return Err(TracesError::Protocol { variable, value });
    }
    let timeout = either(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    )
    .and_then(|(_, ms)| ms.parse().ok())
    .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| TracesError::Build(format!("the HTTP client: {e}")))?;
    // Endpoint, headers and compression come from the variables, read by
    // the exporter as the specification says.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(timeout)
        .with_http_client(Reqwest(http))
        .build()
        .map_err(|e| TracesError::Build(e.to_string()))?;
    let processor = super::batch::Batcher::start(exporter, super::batch::Settings::from(var));
    let (resource, service) = resource();
    // The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let endpoint = if variable == "OTEL_EXPORTER_OTLP_ENDPOINT" {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint
    };
    Ok(Some(Pipeline {
        provider,
        endpoint: without_credentials(&endpoint),
        service,
    }))
}

/// The resource spans are exported under: the detected one
/// (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`), named `engram` when
/// nothing names it, with engram's version. And the service name.
fn resource() -> (Resource, String) {
    let service_name = opentelemetry::Key::from_static_str("service.name");
    let named = Resource::builder()
        .build()
        .get(&service_name)
        .map(|name| name.as_str().into_owned())
        .filter(|name| !name.starts_with("unknown_service"));
    let service = named.unwrap_or_else(|| "engram".to_owned());
    let resource = Resource::builder()
        .with_service_name(service.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    (resource, service)
}

/// `url` without a user name or password, for the log.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

impl Pipeline {
    /// The layer that turns engram's spans ([`super::spans::TARGET`], and
    /// nothing else: no log events, no other crate's spans) into
    /// OpenTelemetry spans.
    pub(super) fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("engram");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            // engram propagates contexts itself (`spans.rs`), never through
            // the active OpenTelemetry context: attaching it on every poll
            // of an instrumented future was most of the spans' cost.
            .with_context_activation(false)
            // INFO, the level of every engram span: a layer enabling more
            // raises the process's maximum level, and every debug and trace
            // call site of every dependency would then ask the subscriber
            // at run time (sqlx would even format each statement's summary
            // for a log line nobody reads).
            .with_filter(Targets::new().with_target(super::spans::TARGET, LevelFilter::INFO))
    }

    /// Where spans go (credentials left out).
    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `service.name` spans carry.
    pub(super) fn service(&self) -> &str {
        &self.service
    }

    /// Exports what is queued and stops. Blocks until the exporter is done
    /// (at most the OTLP timeout per batch); call it outside the runtime.
    pub(super) fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("engram: exporting the last traces failed: {e}");
        }
    }
}

/// The OTLP exporter's HTTP client: the `reqwest` engram already uses for
/// its model servers.
#[derive(Debug)]
struct Reqwest(reqwest::Client);

#[async_trait::async_trait]
impl HttpClient for Reqwest {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let response = self.0.execute(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        let mut answer = Response::builder().status(status).body(body)?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}
