//! A sentence-embedding model read from a directory of Hugging Face files:
//! `config.json`, `tokenizer.json` and `model.safetensors`, with the
//! sentence-transformers files that say how to pool (`1_Pooling/config.json`)
//! and how long a text may be (`sentence_bert_config.json`) when present.
//! Text in, one L2-normalised vector out.

use std::path::{Path, PathBuf};

use super::bert::{Bert, BertConfig};
use super::safetensors::SafeTensors;
use super::tokenizer::WordPiece;

/// The files a model directory must hold.
pub const REQUIRED_FILES: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];
/// Files read when present.
pub const OPTIONAL_FILES: &[&str] = &[
    "1_Pooling/config.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "modules.json",
];

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average of every token's vector (sentence-transformers' default).
    Mean,
    /// The `[CLS]` token's vector (BGE).
    Cls,
}

pub struct SentenceModel {
    tokenizer: WordPiece,
    bert: Bert,
    pooling: Pooling,
    max_tokens: usize,
}

#[derive(serde::Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(serde::Deserialize)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
}

impl SentenceModel {
    /// Loads the model in `dir`. `pooling` is the fallback when the
    /// directory does not say; `Err` names the file and what is wrong.
    pub fn load(dir: &Path, pooling: Pooling) -> Result<Self, String> {
        let read = |name: &str| -> Result<Vec<u8>, String> {
            std::fs::read(dir.join(name))
                .map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))
        };
        let optional = |name: &str| std::fs::read(dir.join(name)).ok();

        let config: BertConfig = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| format!("{}: {e}", dir.join("config.json").display()))?;
        let tokenizer = String::from_utf8(read("tokenizer.json")?)
            .map_err(|_| "tokenizer.json is not UTF-8".to_owned())
            .and_then(|text| WordPiece::from_json(&text))
            .map_err(|e| format!("{}: {e}", dir.join("tokenizer.json").display()))?;
        let tensors = SafeTensors::open(&dir.join("model.safetensors"))
            .map_err(|e| format!("{}: {e}", dir.join("model.safetensors").display()))?;
        let bert = Bert::load(config, &tensors).map_err(|e| format!("{}: {e}", dir.display()))?;
        drop(tensors);

        let pooling = match optional("1_Pooling/config.json")
            .and_then(|bytes| serde_json::from_slice::<PoolingFile>(&bytes).ok())
        {
            Some(file) if file.pooling_mode_cls_token => Pooling::Cls,
            Some(file) if file.pooling_mode_mean_tokens => Pooling::Mean,
            _ => pooling,
        };
        let max_tokens = optional("sentence_bert_config.json")
            .and_then(|bytes| serde_json::from_slice::<SentenceBertFile>(&bytes).ok())
            .and_then(|file| file.max_seq_length)
            .unwrap_or(usize::MAX)
            .min(bert.max_tokens());
        Ok(Self {
            tokenizer,
            bert,
            pooling,
            max_tokens,
        })
    }

    pub fn dims(&self) -> usize {
        self.bert.hidden_size()
    }

    /// Tokens a text is cut to (`[CLS]` and `[SEP]` included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// The token ids `text` becomes (what [`Self::embed`] runs).
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, self.max_tokens)
    }

    /// The text's vector, L2-normalised (all zeros only for an all-zero state).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let ids = self.tokenizer.encode(text, self.max_tokens);
        let states = self.bert.forward(&ids);
        let hidden = self.dims();
        let mut pooled = match self.pooling {
            Pooling::Cls => states[..hidden].to_vec(),
            Pooling::Mean => {
                let mut sum = vec![0f32; hidden];
                for row in states.chunks_exact(hidden) {
                    for (s, v) in sum.iter_mut().zip(row) {
                        *s += v;
                    }
                }
                let n = (states.len() / hidden).max(1) as f32;
                sum.iter_mut().for_each(|s| *s /= n);
                sum
            }
        };
        let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            pooled.iter_mut().for_each(|v| *v /= norm);
        }
        pooled
    }
}

/// The files of a model directory that are missing, by name.
pub fn missing_files(dir: &Path) -> Vec<PathBuf> {
    REQUIRED_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| !path.is_file())
        .collect()
}
