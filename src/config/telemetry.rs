//! `telemetry`: what traces may carry (`trace_content`). Whether traces are
//! exported at all, and where, is the standard `OTEL_*` variables' business
//! (`crate::telemetry`).

use super::layers::{ConfigError, Layers};

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &["trace_content"];

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetryConfig {
    /// Record memory text, query text, the model's messages, tool
    /// arguments and user ids in exported spans (the GenAI conventions'
    /// opt-in content attributes). Default off.
    pub trace_content: bool,
}

impl TelemetryConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            trace_content: src.boolean("trace_content", false)?,
        })
    }
}
