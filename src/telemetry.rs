//! Logging. Everything goes to stderr: on the stdio transport, stdout carries
//! the protocol and a stray byte there breaks the client.

use tracing_subscriber::EnvFilter;

/// Installs the stderr subscriber. `RUST_LOG` (or `ENGRAM_LOG`) sets the
/// filter; default `info`. Safe to call more than once.
pub fn init() {
    let filter = std::env::var("ENGRAM_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
