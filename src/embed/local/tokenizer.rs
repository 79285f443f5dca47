//! BERT's WordPiece tokenizer, read from a Hugging Face `tokenizer.json`.
//!
//! The steps are those the file names, in its order: the `BertNormalizer`
//! (drop control characters, space out CJK ideographs, strip accents,
//! lowercase), the `BertPreTokenizer` (split on whitespace and around every
//! punctuation mark), then greedy longest-match WordPiece with the `##`
//! continuation prefix, and `[CLS] ... [SEP]` around the result. Any other
//! tokenizer (SentencePiece, BPE) is refused with the model's name in the error:
//! the sentence models engram runs in process are BERT's family.

use std::collections::HashMap;

use serde::Deserialize;
use unicode_general_category::{GeneralCategory, get_general_category};
use unicode_normalization::UnicodeNormalization;

/// Token ids of one text, `[CLS]` first and `[SEP]` last.
pub type TokenIds = Vec<u32>;

#[derive(Debug)]
pub struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_word_chars: usize,
    lowercase: bool,
    strip_accents: bool,
    chinese_chars: bool,
    clean_text: bool,
}

#[derive(Deserialize)]
struct File {
    normalizer: Option<Normalizer>,
    pre_tokenizer: Option<Typed>,
    /// Read as [`Model`] once its type is known to be WordPiece (other
    /// types shape their vocabulary differently).
    model: serde_json::Value,
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Normalizer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    clean_text: bool,
    #[serde(default = "yes")]
    handle_chinese_chars: bool,
    strip_accents: Option<bool>,
    #[serde(default = "yes")]
    lowercase: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Model {
    #[serde(default)]
    vocab: HashMap<String, u32>,
    #[serde(default = "unk_token")]
    unk_token: String,
    #[serde(default = "continuing_prefix")]
    continuing_subword_prefix: String,
    #[serde(default = "max_input_chars")]
    max_input_chars_per_word: usize,
}

fn unk_token() -> String {
    "[UNK]".to_owned()
}
fn continuing_prefix() -> String {
    "##".to_owned()
}
fn max_input_chars() -> usize {
    100
}

impl WordPiece {
    /// Reads a `tokenizer.json`; `Err` says what in it engram cannot run.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: File =
            serde_json::from_str(text).map_err(|e| format!("tokenizer.json is not valid: {e}"))?;
        let kind = file.model["type"].as_str().unwrap_or("untyped");
        if kind != "WordPiece" {
            return Err(format!(
                "tokenizer.json holds a {kind} tokenizer; engram runs BERT-family models, \
                 whose tokenizer is WordPiece"
            ));
        }
        let model: Model = serde_json::from_value(file.model)
            .map_err(|e| format!("tokenizer.json's WordPiece model is not valid: {e}"))?;
        if let Some(pre) = &file.pre_tokenizer
            && pre.kind != "BertPreTokenizer"
        {
            return Err(format!(
                "tokenizer.json splits words with {}; engram knows BertPreTokenizer",
                pre.kind
            ));
        }
        let normalizer = match file.normalizer {
            Some(n) if n.kind == "BertNormalizer" => n,
            Some(n) => {
                return Err(format!(
                    "tokenizer.json normalises with {}; engram knows BertNormalizer",
                    n.kind
                ));
            }
            None => Normalizer {
                kind: String::new(),
                clean_text: false,
                handle_chinese_chars: false,
                strip_accents: Some(false),
                lowercase: false,
            },
        };
        let vocab = model.vocab;
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| format!("the vocabulary has no {token} token"))
        };
        Ok(Self {
            unk: id(&model.unk_token)?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            prefix: model.continuing_subword_prefix,
            max_word_chars: model.max_input_chars_per_word,
            // As in BERT: accents go with the case unless said otherwise.
            strip_accents: normalizer.strip_accents.unwrap_or(normalizer.lowercase),
            lowercase: normalizer.lowercase,
            chinese_chars: normalizer.handle_chinese_chars,
            clean_text: normalizer.clean_text,
            vocab,
        })
    }

    /// The ids of `text`, at most `max_len` with `[CLS]` and `[SEP]`
    /// (longer texts lose their end).
    pub fn encode(&self, text: &str, max_len: usize) -> TokenIds {
        let room = max_len.saturating_sub(2);
        let mut ids = Vec::with_capacity(room.min(64) + 2);
        ids.push(self.cls);
        let normal = self.normalize(text);
        'words: for word in pre_tokenize(&normal) {
            for piece in self.word_pieces(word) {
                if ids.len() > room {
                    break 'words;
                }
                ids.push(piece);
            }
        }
        ids.push(self.sep);
        ids
    }

    fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    out.push(' ');
                    continue;
                }
            }
            if self.chinese_chars && is_chinese(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out
                .nfd()
                .filter(|&c| get_general_category(c) != GeneralCategory::NonspacingMark)
                .collect();
        }
        if self.lowercase {
            out = out.to_lowercase();
        }
        out
    }

    /// Greedy longest match first; a word with a part not in the vocabulary
    /// (or longer than the limit) is one `[UNK]`.
    fn word_pieces(&self, word: &str) -> Vec<u32> {
        if word.chars().count() > self.max_word_chars {
            return vec![self.unk];
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut candidate = String::with_capacity(word.len() + self.prefix.len());
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(candidate.as_str()) {
                    found = Some(id);
                    break;
                }
                end = floor_char_boundary(word, end - 1);
            }
            match found {
                Some(id) => pieces.push(id),
                None => return vec![self.unk],
            }
            start = end;
        }
        pieces
    }
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Words: split on whitespace, every punctuation mark a word of its own.
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace).flat_map(|chunk| {
        let mut words = Vec::new();
        let mut start = 0;
        for (i, c) in chunk.char_indices() {
            if is_punctuation(c) {
                if start < i {
                    words.push(&chunk[start..i]);
                }
                words.push(&chunk[i..i + c.len_utf8()]);
                start = i + c.len_utf8();
            }
        }
        if start < chunk.len() {
            words.push(&chunk[start..]);
        }
        words
    })
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

/// Control and other invisible characters (Unicode's C categories), which
/// BERT drops; tab and line breaks are whitespace instead.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Surrogate
            | GeneralCategory::PrivateUse
            | GeneralCategory::Unassigned
    )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            GeneralCategory::ConnectorPunctuation
                | GeneralCategory::DashPunctuation
                | GeneralCategory::OpenPunctuation
                | GeneralCategory::ClosePunctuation
                | GeneralCategory::InitialPunctuation
                | GeneralCategory::FinalPunctuation
                | GeneralCategory::OtherPunctuation
        )
}

/// CJK ideographs, which BERT tokenizes one by one.
fn is_chinese(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPiece {
        let vocab: Vec<&str> = vec![
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "like", "play", "##ing", "!", "cafe", "中",
            "文", ",",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), serde_json::json!(i)))
            .collect();
        let file = serde_json::json!({
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                "vocab": vocab}
        });
        WordPiece::from_json(&file.to_string()).unwrap()
    }

    #[test]
    fn words_split_into_pieces_between_cls_and_sep() {
        let t = tiny();
        // i like playing ! café (accent stripped) 中 文 , and an unknown word
        assert_eq!(
            t.encode("I like PLAYING! Café中文,\u{0007} zzz", 512),
            vec![2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 3]
        );
    }

    #[test]
    fn long_texts_keep_their_start() {
        let t = tiny();
        assert_eq!(t.encode("i like playing", 4), vec![2, 4, 5, 3]);
        assert_eq!(t.encode("i like playing", 5), vec![2, 4, 5, 6, 3]);
    }

    #[test]
    fn other_tokenizers_are_refused_by_name() {
        let file = r#"{"model": {"type": "Unigram", "vocab": []}}"#;
        let err = WordPiece::from_json(file).unwrap_err();
        assert!(err.contains("Unigram"), "{err}");
    }
}
