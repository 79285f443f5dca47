//! [`OpenAiEmbedder`]: any OpenAI-compatible `/embeddings` endpoint (OpenAI,
//! Azure-style gateways, Ollama, vLLM, LM Studio, TEI) through `async-openai`.
//!
//! * Documents go in batches of `batch_size` texts per request, in order.
//! * Queries and documents can carry different prefixes (`query: ` /
//!   `passage: ` for E5-style models).
//! * 429 and 5xx are retried with backoff, honouring `Retry-After`
//!   (async-openai's retry layer); every request has a timeout.
//! * A reply is checked before use: one vector per input, each of the
//!   configured dimension; vectors are L2-normalised (stores compare by dot product).

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::middleware::retry::OpenAIRetryLayer;
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use async_trait::async_trait;
use tower::ServiceBuilder;

use super::{EmbedError, Embedder, EmbedderIdentity};

/// The public OpenAI API; without an API key only other servers are usable.
pub const OPENAI_API_BASE: &str = "https://api.openai.com/v1";

#[derive(Clone)]
pub struct OpenAiSettings {
    /// Ends in `/v1` (e.g. `http://localhost:11434/v1` for Ollama).
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub dims: usize,
    /// Send `dimensions` in the request (OpenAI v3 models shorten their
    /// vectors; many other servers refuse the field).
    pub send_dimensions: bool,
    pub query_prefix: String,
    pub document_prefix: String,
    pub batch_size: usize,
    pub timeout: Duration,
    pub max_retries: usize,
}

impl std::fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("model", &self.model)
            .field("dims", &self.dims)
            .finish_non_exhaustive()
    }
}

pub struct OpenAiEmbedder {
    client: Client<OpenAIConfig>,
    settings: OpenAiSettings,
}

impl OpenAiEmbedder {
    /// Builds the client; fails only on settings no request could succeed with.
    pub fn new(settings: OpenAiSettings) -> Result<Self, EmbedError> {
        if settings.api_key.is_none() && settings.base_url.trim_end_matches('/') == OPENAI_API_BASE
        {
            return Err(EmbedError::Failed(
                "OPENAI_API_KEY is not set; set it, point OPENAI_BASE_URL at a server that \
                 needs no key (Ollama, vLLM, ...), or use ENGRAM_EMBEDDER=hash"
                    .into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| EmbedError::Failed(format!("cannot build the HTTP client: {e}")))?;
        let service = ServiceBuilder::new()
            .layer(OpenAIRetryLayer::new(settings.max_retries))
            .service(ReqwestService::new(http.clone()));
        let config = OpenAIConfig::new()
            .with_api_base(settings.base_url.trim_end_matches('/'))
            // Servers without auth ignore the header; async-openai needs a value.
            .with_api_key(settings.api_key.clone().unwrap_or_else(|| "none".into()));
        let client = Client::build(http, config).with_http_service(service);
        Ok(Self { client, settings })
    }

    /// One request: `texts` (already prefixed) to vectors, in order.
    async fn request(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let count = texts.len();
        let request = CreateEmbeddingRequest {
            model: self.settings.model.clone(),
            input: EmbeddingInput::StringArray(texts),
            encoding_format: None,
            user: None,
            dimensions: self
                .settings
                .send_dimensions
                .then_some(self.settings.dims as u32),
        };
        let response = self
            .client
            .embeddings()
            .create(request)
            .await
            .map_err(|e| self.explain(e))?;
        if response.data.len() != count {
            return Err(EmbedError::Failed(format!(
                "{} returned {} embeddings for {count} inputs",
                self.where_(),
                response.data.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; count];
        for item in response.data {
            let slot = out.get_mut(item.index as usize).ok_or_else(|| {
                EmbedError::Failed(format!(
                    "{} returned an embedding for input {} of {count}",
                    self.where_(),
                    item.index
                ))
            })?;
            if item.embedding.len() != self.settings.dims {
                return Err(EmbedError::Failed(format!(
                    "{} returned {}-dimensional vectors but ENGRAM_EMBEDDING_DIMS is {}; \
                     set it to {} (or, for models that can shorten their vectors, keep \
                     ENGRAM_EMBEDDING_SEND_DIMENSIONS=true)",
                    self.where_(),
                    item.embedding.len(),
                    self.settings.dims,
                    item.embedding.len()
                )));
            }
            *slot = Some(normalised(item.embedding));
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| {
                v.ok_or_else(|| {
                    EmbedError::Failed(format!(
                        "{} left input {i} without an embedding",
                        self.where_()
                    ))
                })
            })
            .collect()
    }

    fn where_(&self) -> String {
        format!(
            "the embeddings server at {} (model {})",
            self.settings.base_url, self.settings.model
        )
    }

    /// A failure in words a user can act on.
    fn explain(&self, error: OpenAIError) -> EmbedError {
        let at = self.where_();
        let message = match &error {
            OpenAIError::Reqwest(e) if e.is_timeout() => format!(
                "{at} did not answer within {:?} (ENGRAM_EMBEDDING_TIMEOUT_SECS)",
                self.settings.timeout
            ),
            OpenAIError::Reqwest(e) if e.is_connect() => {
                format!("cannot reach {at}: {e}; check OPENAI_BASE_URL")
            }
            OpenAIError::ApiError(response) => {
                let api = &response.api_error;
                let status = response.status_code.as_u16();
                let hint = match api.code.as_deref().or(api.r#type.as_deref()) {
                    Some("invalid_api_key") | Some("authentication_error") => {
                        "; check OPENAI_API_KEY"
                    }
                    Some("model_not_found") => "; check ENGRAM_EMBEDDING_MODEL",
                    Some("insufficient_quota") => "; the account has no quota left",
                    _ if status == 401 || status == 403 => "; check OPENAI_API_KEY",
                    _ if status == 404 => {
                        "; check OPENAI_BASE_URL (it ends in /v1) and ENGRAM_EMBEDDING_MODEL"
                    }
                    _ if status == 429 => "; still rate-limited after the retries",
                    _ => "",
                };
                format!("{at} refused the request ({status}): {}{hint}", api.message)
            }
            other => format!("{at} failed: {other}"),
        };
        EmbedError::Failed(message)
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn identity(&self) -> EmbedderIdentity {
        EmbedderIdentity {
            name: format!("openai:{}", self.settings.model),
            dims: self.settings.dims,
        }
    }

    fn query_variant(&self) -> String {
        format!("{}\n{}", self.settings.base_url, self.settings.query_prefix)
    }

    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.settings.batch_size.max(1)) {
            let prefixed = batch
                .iter()
                .map(|t| format!("{}{t}", self.settings.document_prefix))
                .collect();
            vectors.extend(self.request(prefixed).await?);
        }
        Ok(vectors)
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut one = self
            .request(vec![format!("{}{text}", self.settings.query_prefix)])
            .await?;
        one.pop()
            .ok_or_else(|| EmbedError::Failed(format!("{} returned nothing", self.where_())))
    }
}
