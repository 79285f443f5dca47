//! `metrics`: where Prometheus metrics are served besides `/metrics` on the
//! HTTP transport (`metrics_bind`), and how often the gauges read from the
//! store are refreshed (`metrics_refresh_secs`).

use std::net::SocketAddr;

use super::layers::{ConfigError, Layers, Range};

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &["metrics_bind", "metrics_refresh_secs"];

pub const DEFAULT_METRICS_REFRESH_SECS: u64 = 15;

pub(super) const METRICS_REFRESH_SECS: Range<u64> =
    Range::new(DEFAULT_METRICS_REFRESH_SECS, 1, 3600).note(" seconds");

/// Metrics. Invariant: `refresh_secs` is 1..=3600 seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// A listener serving `GET /metrics` alone (for stdio deployments, or a
    /// separate scrape port); `None`: only the HTTP transport's `/metrics`.
    pub bind: Option<SocketAddr>,
    /// How often the gauges read from the store and the cache are refreshed.
    pub refresh_secs: u64,
}

impl MetricsConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let bind = match src.string("metrics_bind")? {
            None => None,
            Some(text) if text.trim().is_empty() => None,
            Some(text) => Some(text.trim().parse().map_err(|_| {
                src.invalid(
                    "metrics_bind",
                    format!(
                        "'{text}' is not an address to listen on; use HOST:PORT, e.g. 0.0.0.0:9464"
                    ),
                )
            })?),
        };
        Ok(Self {
            bind,
            refresh_secs: src.number("metrics_refresh_secs", &METRICS_REFRESH_SECS)?,
        })
    }
}
