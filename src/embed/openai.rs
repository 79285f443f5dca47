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
//! * Vectors are asked for in base64 (`encoding_format: base64`, as
//!   OpenAI's own clients do): half the bytes of JSON floats and no float
//!   parsing on either side (1536 dimensions from a local server: 0.76 ms
//!   a request against 1.58 ms, docs/benchmarks.md). A server that answers
//!   floats anyway is read as such; one that refuses the field (400 or 422)
//!   gets the same request without it, and floats from then on.
//! * A reply is checked before use: one vector per input, each of the
//!   configured dimension; vectors are L2-normalised (stores compare by dot product).

use std::sync::atomic::{AtomicBool, Ordering};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_trait::async_trait;
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

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
    /// Set once the server has refused a base64 request and answered the
    /// same request for floats: every later request asks for floats.
    floats_only: AtomicBool,
}

/// An `/embeddings` reply. Lenient where servers differ: `model` and
/// `usage` may be missing, and a vector may come as floats even when base64
/// was asked for (a server that ignores `encoding_format`).
#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(default)]
    model: Option<String>,
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Item {
    index: u32,
    embedding: Encoded,
}

#[derive(Debug, Deserialize)]
struct Usage {
    prompt_tokens: u32,
}

/// A vector as the server sent it.
#[derive(Debug)]
enum Encoded {
    Floats(Vec<f32>),
    /// Little-endian f32s, base64 (standard alphabet, padded).
    Base64(String),
}

/// Read by what the JSON holds, an array or a string, in one pass. (An
/// untagged enum buffered each vector, then tried floats first: on a base64
/// string that made an error message quoting all 8 kB of it, escaped, before
/// trying the string: 2% of engram's CPU under a remember load.)
impl<'de> Deserialize<'de> for Encoded {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;

        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = Encoded;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of floats or a base64 string")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Encoded, E> {
                Ok(Encoded::Base64(text.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<Encoded, E> {
                Ok(Encoded::Base64(text))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Encoded, A::Error> {
                let mut floats = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(x) = seq.next_element::<f32>()? {
                    floats.push(x);
                }
                Ok(Encoded::Floats(floats))
            }
        }

        deserializer.deserialize_any(Either)
    }
}

impl Encoded {
    /// The floats, or what is wrong with them (for "the server returned ...").
    fn decode(self) -> Result<Vec<f32>, String> {
        match self {
            Encoded::Floats(v) => Ok(v),
            Encoded::Base64(text) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| format!("an embedding that is not valid base64 ({e})"))?;
                super::from_le_bytes(&bytes).ok_or_else(|| {
                    format!(
                        "a base64 embedding of {} bytes, not a whole number of 4-byte floats",
                        bytes.len()
                    )
                })
            }
        }
    }
}

/// True when a base64 request was refused as such: a 400 or 422 (servers
/// that validate `encoding_format` and do not know `base64`).
fn refused_base64(error: &OpenAIError) -> bool {
    matches!(error, OpenAIError::ApiError(response)
        if matches!(response.status_code.as_u16(), 400 | 422))
}

impl OpenAiEmbedder {
    /// Builds the client; fails only on settings no request could succeed with.
    pub fn new(settings: OpenAiSettings) -> Result<Self, EmbedError> {
        let client = crate::openai::client(&settings.endpoint, "ENGRAM_EMBEDDER=hash")
            .map_err(EmbedError::Failed)?;
        Ok(Self {
            client,
            settings,
            floats_only: AtomicBool::new(false),
        })
    }

    /// One request: `texts` (already prefixed) to vectors, in order, with
    /// the input-type field set to `input_type` when given. Asks for base64
    /// until the server refuses it (see the module's notes).
    async fn request(
        &self,
        texts: Vec<String>,
        input_type: Option<(&str, &str)>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let count = texts.len();
        let span = spans::embeddings(
            &self.settings.model,
            &self.settings.endpoint.base_url,
            self.settings.dims,
            count,
        );
        let base64 = !self.floats_only.load(Ordering::Relaxed);
        let sent = match self.send(&texts, input_type, base64).await {
            Err(e) if base64 && refused_base64(&e) => {
                let sent = self.send(&texts, input_type, false).await;
                if sent.is_ok() && !self.floats_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{} refused base64 embeddings ({}); asking for floats from now on",
                        self.where_(),
                        crate::openai::error_type(&e)
                    );
                }
                sent
            }
            other => other,
        };
        let reply = sent.map_err(|e| {
            spans::fail(&span, &crate::openai::error_type(&e), || e.to_string());
            self.explain(e)
        })?;
        if let Some(model) = reply.model {
            spans::set(&span, "gen_ai.response.model", model);
        }
        if let Some(usage) = reply.usage {
            spans::set(
                &span,
                "gen_ai.usage.input_tokens",
                i64::from(usage.prompt_tokens),
            );
        }
        if reply.data.len() != count {
            return Err(EmbedError::Failed(format!(
                "{} returned {} embeddings for {count} inputs",
                self.where_(),
                reply.data.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; count];
        for item in reply.data {
            let slot = out.get_mut(item.index as usize).ok_or_else(|| {
                EmbedError::Failed(format!(
                    "{} returned an embedding for input {} of {count}",
                    self.where_(),
                    item.index
                ))
            })?;
            let vector = item
                .embedding
                .decode()
                .map_err(|what| EmbedError::Failed(format!("{} returned {what}", self.where_())))?;
            if vector.len() != self.settings.dims {
                return Err(EmbedError::Failed(format!(
                    "{} returned {}-dimensional vectors but ENGRAM_EMBEDDING_DIMS is {}; \
                     set it to {} (or, for models that can shorten their vectors, keep \
                     ENGRAM_EMBEDDING_SEND_DIMENSIONS=true)",
                    self.where_(),
                    vector.len(),
                    self.settings.dims,
                    vector.len()
                )));
            }
            *slot = Some(normalised(vector));
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

    /// The request itself: `encoding_format: base64` when `base64`, else no
    /// `encoding_format` at all (floats, every server's default).
    async fn send(
        &self,
        texts: &[String],
        input_type: Option<(&str, &str)>,
        base64: bool,
    ) -> Result<Reply, OpenAIError> {
        let mut body = json!({ "model": self.settings.model, "input": texts });
        if base64 {
            body["encoding_format"] = json!("base64");
        }
        if self.settings.send_dimensions {
            body["dimensions"] = json!(self.settings.dims);
        }
        if let Some((field, value)) = input_type {
            body[field] = json!(value);
        }
        self.client.embeddings().create_byot(body).await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> Result<Vec<f32>, String> {
        let item: Item = serde_json::from_str(json).map_err(|e| e.to_string())?;
        item.embedding.decode()
    }

    #[test]
    fn a_vector_is_read_as_floats_or_as_base64() {
        assert_eq!(
            read(r#"{"index": 0, "embedding": [0.5, -1, 2.25]}"#),
            Ok(vec![0.5, -1.0, 2.25])
        );
        let bytes: Vec<u8> = [0.5f32, -1.0, 2.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(
            read(&format!(r#"{{"index": 0, "embedding": "{text}"}}"#)),
            Ok(vec![0.5, -1.0, 2.25])
        );
        // An escaped string is read as its text.
        assert_eq!(
            read(r#"{"index": 0, "embedding": "AAAAPw\u003d\u003d"}"#),
            Ok(vec![0.5])
        );
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        let refused = read(r#"{"index": 0, "embedding": {"x": 1}}"#).unwrap_err();
        assert!(
            refused.contains("an array of floats or a base64 string"),
            "{refused}"
        );
        let refused = read(r#"{"index": 0, "embedding": [0.5, "x"]}"#).unwrap_err();
        assert!(refused.contains("invalid type"), "{refused}");
        assert!(
            read(r#"{"index": 0, "embedding": "%%%"}"#)
                .unwrap_err()
                .contains("not valid base64")
        );
        assert!(
            read(r#"{"index": 0, "embedding": "AAAA"}"#)
                .unwrap_err()
                .contains("not a whole number of 4-byte floats")
        );
    }
}
