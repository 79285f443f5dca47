//! `engram healthcheck`: asks a running HTTP server whether it is ready, for
//! a container's health check (the image has no curl). It reads no
//! configuration and opens no store, so it costs a probe, not a start-up.
//!
//! Invariants: success means the server answered 2xx within the timeout;
//! anything else is an error that names the URL and what came back.

use std::time::Duration;

use super::StartupError;

/// How long the probe waits for an answer (`/readyz` itself waits at most
/// ENGRAM_DATABASE_READY_TIMEOUT_MS for the database).
const TIMEOUT: Duration = Duration::from_secs(10);

/// The URL probed when none is given: `/readyz` on the address `serve
/// --transport http` listens on (`bind`, as ENGRAM_BIND), reached over the
/// loopback when it listens on every address.
pub fn default_probe_url(bind: &str) -> String {
    let (host, port) = bind.rsplit_once(':').unwrap_or((bind, "8765"));
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    format!("http://{host}:{port}/readyz")
}

/// Probes `url`: Ok on a 2xx answer.
pub async fn healthcheck(url: &str) -> Result<(), StartupError> {
    let unhealthy = |why: String| StartupError::Unhealthy {
        url: url.to_owned(),
        why,
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(unhealthy(
            "that is not an http:// or https:// URL; give the server's /readyz, \
             e.g. http://127.0.0.1:8080/readyz"
                .into(),
        ));
    }
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| unhealthy(e.to_string()))?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| unhealthy(format!("no answer: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(unhealthy(format!("{status}: {}", body.trim())))
}

#[cfg(test)]
mod tests {
    use super::{default_probe_url, healthcheck};

    #[test]
    fn the_default_probe_reaches_the_bind_address_over_the_loopback() {
        assert_eq!(
            default_probe_url("0.0.0.0:8080"),
            "http://127.0.0.1:8080/readyz"
        );
        assert_eq!(default_probe_url("[::]:8080"), "http://[::1]:8080/readyz");
        assert_eq!(
            default_probe_url("127.0.0.1:8765"),
            "http://127.0.0.1:8765/readyz"
        );
        assert_eq!(
            default_probe_url("engram.internal:9000"),
            "http://engram.internal:9000/readyz"
        );
    }

    #[tokio::test]
    async fn a_url_that_is_not_http_is_refused_saying_so() {
        let refused = healthcheck("notaurl").await.unwrap_err().to_string();
        assert!(
            refused.contains("not an http:// or https:// URL"),
            "{refused}"
        );
    }
}
