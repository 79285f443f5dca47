//! The OpenAI-compatible HTTP client shared by the `openai` embedder and the
//! `llm` extractor: base URL, key, timeout and retries (429 and 5xx, with
//! backoff honouring `Retry-After`), and failures explained in terms of the
//! settings that fix them.

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::middleware::retry::OpenAIRetryLayer;
use tower::ServiceBuilder;

/// The public OpenAI API; without an API key only other servers are usable.
pub const OPENAI_API_BASE: &str = "https://api.openai.com/v1";

/// Where requests go and how patiently.
#[derive(Clone)]
pub struct Endpoint {
    /// Ends in `/v1` (e.g. `http://localhost:11434/v1` for Ollama).
    pub base_url: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub max_retries: usize,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// Builds a client for `endpoint`. `fallback` names the setting that avoids
/// the server altogether (e.g. `ENGRAM_EMBEDDER=hash`; empty if none), for
/// the one error no request could get past: OpenAI itself without a key.
pub fn client(endpoint: &Endpoint, fallback: &str) -> Result<Client<OpenAIConfig>, String> {
    let base = endpoint.base_url.trim_end_matches('/');
    if endpoint.api_key.is_none() && base == OPENAI_API_BASE {
        let or_else = if fallback.is_empty() {
            String::new()
        } else {
            format!(", or use {fallback}")
        };
        return Err(format!(
            "OPENAI_API_KEY is not set; set it, or point OPENAI_BASE_URL at a server that \
             needs no key (Ollama, vLLM, ...){or_else}"
        ));
    }
    let http = reqwest::Client::builder()
        .timeout(endpoint.timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let service = ServiceBuilder::new()
        .layer(OpenAIRetryLayer::new(endpoint.max_retries))
        .service(ReqwestService::new(http.clone()));
    let config = OpenAIConfig::new()
        .with_api_base(base)
        // Servers without auth ignore the header; the client needs a value.
        .with_api_key(endpoint.api_key.clone().unwrap_or_else(|| "none".into()));
    Ok(Client::build(http, config).with_http_service(service))
}

/// A failure in words a user can act on. `at` names the server and model;
/// `model_key` and `timeout_key` the settings that change them.
pub fn explain(
    error: &OpenAIError,
    at: &str,
    endpoint: &Endpoint,
    model_key: &str,
    timeout_key: &str,
) -> String {
    match error {
        OpenAIError::Reqwest(e) if e.is_timeout() => format!(
            "{at} did not answer within {:?} ({timeout_key})",
            endpoint.timeout
        ),
        OpenAIError::Reqwest(e) if e.is_connect() => {
            format!("cannot reach {at}: {e}; check OPENAI_BASE_URL")
        }
        OpenAIError::ApiError(response) => {
            let api = &response.api_error;
            let status = response.status_code.as_u16();
            let hint = match api.code.as_deref().or(api.r#type.as_deref()) {
                Some("invalid_api_key") | Some("authentication_error") => {
                    "; check OPENAI_API_KEY".to_owned()
                }
                Some("model_not_found") => format!("; check {model_key}"),
                Some("insufficient_quota") => "; the account has no quota left".to_owned(),
                _ if status == 401 || status == 403 => "; check OPENAI_API_KEY".to_owned(),
                _ if status == 404 => {
                    format!("; check OPENAI_BASE_URL (it ends in /v1) and {model_key}")
                }
                _ if status == 429 => "; still rate-limited after the retries".to_owned(),
                _ => String::new(),
            };
            format!("{at} refused the request ({status}): {}{hint}", api.message)
        }
        other => format!("{at} failed: {other}"),
    }
}

/// True when the server refused the request's `response_format` (servers
/// without structured outputs answer 400 naming it).
pub fn refused_response_format(error: &OpenAIError) -> bool {
    match error {
        OpenAIError::ApiError(response) => {
            let message = response.api_error.message.to_ascii_lowercase();
            response.status_code.as_u16() == 400
                && (message.contains("response_format") || message.contains("json_schema"))
        }
        _ => false,
    }
}

/// A failure's `error.type` in traces: `timeout`, `connect`, the HTTP
/// status a server refused with, or `_OTHER`.
pub fn error_type(error: &OpenAIError) -> String {
    match error {
        OpenAIError::Reqwest(e) if e.is_timeout() => "timeout".to_owned(),
        OpenAIError::Reqwest(e) if e.is_connect() => "connect".to_owned(),
        OpenAIError::ApiError(response) => response.status_code.as_u16().to_string(),
        _ => "_OTHER".to_owned(),
    }
}
