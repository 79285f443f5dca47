//! [`OpenAiEmbedder`]: any OpenAI-compatible `/embeddings` endpoint (OpenAI,
//! Azure-style gateways, Ollama, vLLM, LM Studio, TEI) through `async-openai`.
//!
//! * Documents go in batches of `batch_size` texts per request, in order.
//! * Queries and documents can carry different prefixes (`query: ` /
//!   `passage: ` for E5-style models) and different values of an input-type
//!   field (`input_type: query|document` for Voyage, `search_query|
//!   search_document` for Cohere-style gateways, `task` for Jina).
//! * 429 and 5xx are retried with backoff, honouring `Retry-After`, and every
//!   request has a timeout ([`crate::openai`]).
//! * A reply is checked before use: one vector per input, each of the
//!   configured dimension; vectors are L2-normalised (stores compare by dot product).

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::embeddings::{
    CreateEmbeddingRequest, CreateEmbeddingResponse, EmbeddingInput,
};
use async_trait::async_trait;

use super::{EmbedError, Embedder, EmbedderIdentity};
use crate::openai::Endpoint;
use crate::telemetry::spans;

#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub endpoint: Endpoint,
    pub model: String,
    pub dims: usize,
    /// Send `dimensions` in the request (OpenAI v3 models shorten their
    /// vectors; many other servers refuse the field).
    pub send_dimensions: bool,
    pub query_prefix: String,
    pub document_prefix: String,
    /// A request field telling the server what the texts are, for servers
    /// that embed queries and documents differently; `None`: not sent.
    pub input_type: Option<InputType>,
    pub batch_size: usize,
}

/// The input-type field: its name, and the value for each side (a side
/// without a value sends no field).
#[derive(Debug, Clone, PartialEq)]
pub struct InputType {
    pub field: String,
    pub query: Option<String>,
    pub document: Option<String>,
}

pub struct OpenAiEmbedder {
    client: Client<OpenAIConfig>,
    settings: OpenAiSettings,
}

impl OpenAiEmbedder {
    /// Builds the client; fails only on settings no request could succeed with.
    pub fn new(settings: OpenAiSettings) -> Result<Self, EmbedError> {
        let client = crate::openai::client(&settings.endpoint, "ENGRAM_EMBEDDER=hash")
            .map_err(EmbedError::Failed)?;
        Ok(Self { client, settings })
    }

    /// One request: `texts` (already prefixed) to vectors, in order, with
    /// the input-type field set to `input_type` when given.
    async fn request(
        &self,
        texts: Vec<String>,
        input_type: Option<(&str, &str)>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
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
        let span = spans::embeddings(
            &self.settings.model,
            &self.settings.endpoint.base_url,
            self.settings.dims,
            count,
        );
        let embeddings = self.client.embeddings();
        let response: CreateEmbeddingResponse = match input_type {
            None => embeddings.create(request).await,
            Some((field, value)) => {
                let mut body = serde_json::to_value(&request)
                    .map_err(|e| EmbedError::Failed(format!("cannot encode a request: {e}")))?;
                body[field] = serde_json::Value::String(value.to_owned());
                embeddings.create_byot(body).await
            }
        }
        .map_err(|e| {
            spans::fail(&span, &crate::openai::error_type(&e), || e.to_string());
            self.explain(e)
        })?;
        spans::set(&span, "gen_ai.response.model", response.model.clone());
        spans::set(
            &span,
            "gen_ai.usage.input_tokens",
            i64::from(response.usage.prompt_tokens),
        );
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

    fn query_input_type(&self) -> Option<(&str, &str)> {
        let t = self.settings.input_type.as_ref()?;
        Some((t.field.as_str(), t.query.as_deref()?))
    }

    fn document_input_type(&self) -> Option<(&str, &str)> {
        let t = self.settings.input_type.as_ref()?;
        Some((t.field.as_str(), t.document.as_deref()?))
    }

    fn where_(&self) -> String {
        format!(
            "the embeddings server at {} (model {})",
            self.settings.endpoint.base_url, self.settings.model
        )
    }

    fn explain(&self, error: OpenAIError) -> EmbedError {
        EmbedError::Failed(crate::openai::explain(
            &error,
            &self.where_(),
            &self.settings.endpoint,
            "ENGRAM_EMBEDDING_MODEL",
            "ENGRAM_EMBEDDING_TIMEOUT_SECS",
        ))
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
        let input_type = self.query_input_type().map(|(f, v)| format!("{f}={v}"));
        format!(
            "{}\n{}\n{}",
            self.settings.endpoint.base_url,
            self.settings.query_prefix,
            input_type.unwrap_or_default()
        )
    }

    async fn embed_documents(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.settings.batch_size.max(1)) {
            let prefixed = batch
                .iter()
                .map(|t| format!("{}{t}", self.settings.document_prefix))
                .collect();
            vectors.extend(self.request(prefixed, self.document_input_type()).await?);
        }
        Ok(vectors)
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut one = self
            .request(
                vec![format!("{}{text}", self.settings.query_prefix)],
                self.query_input_type(),
            )
            .await?;
        one.pop()
            .ok_or_else(|| EmbedError::Failed(format!("{} returned nothing", self.where_())))
    }
}
