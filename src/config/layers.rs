//! The layers under every section: the built-in default, then the TOML file,
//! then the environment (later wins), and the typed reads the sections make
//! through [`Layers`].
//!
//! Invariant: a value is read only through these methods, so every refusal
//! names the key and where its value came from ([`Origin`]): the file's path
//! for a file value, the variable for an environment value. A value that is
//! out of range is refused by [`Layers::number`] alone, with the allowed
//! range and the default written from the section's [`Range`] constant.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for engram: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: unknown key '{key}'; {hint}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        hint: String,
    },
    #[error("{key} ({origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: Origin,
        message: String,
    },
    #[error(
        "no data directory found for the default database; set ENGRAM_DATABASE_URL=sqlite://PATH"
    )]
    NoDataDir,
}

/// Where a refused value came from, so the user fixes the right place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The environment variable that held it.
    Env(String),
    /// The TOML file that held it.
    File(PathBuf),
    /// Neither: the built-in default (a default is valid, so this names the
    /// variable that would change it).
    Default { env: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default { env } => write!(f, "default; env {env} is not set"),
        }
    }
}

/// The environment variable for a key: `ENGRAM_` and the key upper-cased,
/// except the OpenAI endpoint's pair, which keep the names every OpenAI
/// client reads (`OPENAI_BASE_URL`, `OPENAI_API_KEY`).
pub fn env_var(key: &str) -> String {
    match key {
        "openai_base_url" | "openai_api_key" => key.to_ascii_uppercase(),
        _ => format!("ENGRAM_{}", key.to_ascii_uppercase()),
    }
}

/// One key's value as given, before it is typed.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Env(&'a str),
    File(&'a toml::Value),
}

impl Raw<'_> {
    /// The value as an error shows it: quoted from the environment, in TOML
    /// syntax from the file.
    fn shown(&self) -> String {
        match self {
            Raw::Env(text) => format!("'{text}'"),
            Raw::File(value) => value.to_string(),
        }
    }
}

struct FileLayer {
    path: PathBuf,
    table: toml::Table,
}

/// The file and environment layers, read key by key.
pub(super) struct Layers<'a> {
    file: Option<FileLayer>,
    env: &'a HashMap<String, String>,
}

impl<'a> Layers<'a> {
    /// Reads and parses `file` (if any); a key outside `file_keys` is
    /// refused by name, so a typo fails loudly instead of being ignored.
    pub(super) fn new(
        file: Option<&Path>,
        env: &'a HashMap<String, String>,
        file_keys: &[&str],
    ) -> Result<Self, ConfigError> {
        let file = match file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                if let Some(key) = table.keys().find(|k| !file_keys.contains(&k.as_str())) {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_owned(),
                        key: key.clone(),
                        hint: unknown_key_hint(key, file_keys),
                    });
                }
                Some(FileLayer {
                    path: path.to_owned(),
                    table,
                })
            }
        };
        Ok(Self { file, env })
    }

    /// The environment's value of `key` if set, else the file's.
    fn raw(&self, key: &str) -> Option<Raw<'_>> {
        if let Some(text) = self.env.get(&env_var(key)) {
            return Some(Raw::Env(text));
        }
        self.file.as_ref()?.table.get(key).map(Raw::File)
    }

    /// A variable engram does not own but honours (`HF_ENDPOINT`, `HF_HUB_OFFLINE`).
    pub(super) fn foreign_env(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// Where the value of `key` comes from.
    pub(super) fn origin(&self, key: &str) -> Origin {
        let env = env_var(key);
        if self.env.contains_key(&env) {
            return Origin::Env(env);
        }
        match &self.file {
            Some(file) if file.table.contains_key(key) => Origin::File(file.path.clone()),
            _ => Origin::Default { env },
        }
    }

    /// Refuses the value of `key`, naming where it came from.
    pub(super) fn invalid(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            origin: self.origin(key),
            message: message.into(),
        }
    }

    fn not_a(&self, key: &'static str, raw: &Raw<'_>, what: &str) -> ConfigError {
        self.invalid(key, format!("{} is not {what}", raw.shown()))
    }

    /// A text value, as given (an environment value is not trimmed: a
    /// prefix such as `query: ` keeps its space).
    pub(super) fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Raw::Env(text)) => Ok(Some(text.to_owned())),
            Some(Raw::File(toml::Value::String(text))) => Ok(Some(text.clone())),
            Some(raw) => Err(self.not_a(key, &raw, "a string")),
        }
    }

    /// One of `T::CHOICES`, by name, ignoring case and surrounding spaces.
    pub(super) fn choice<T: Choice>(
        &self,
        key: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(given) = self.string(key)? else {
            return Ok(default);
        };
        let name = given.trim().to_ascii_lowercase();
        T::CHOICES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                let names: Vec<&str> = T::CHOICES.iter().map(|(n, _)| *n).collect();
                self.invalid(
                    key,
                    format!("'{given}' is not one of: {}", names.join(", ")),
                )
            })
    }

    /// A TOML boolean, or in the environment true/1/yes/on or false/0/no/off.
    pub(super) fn boolean(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(Raw::File(toml::Value::Boolean(b))) => Ok(*b),
            Some(Raw::Env(text)) => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(self.not_a(key, &Raw::Env(text), "true or false")),
            },
            Some(raw) => Err(self.not_a(key, &raw, "true or false")),
        }
    }

    /// A TOML array of strings, or in the environment a comma-separated
    /// list (items trimmed; a blank value is the empty list).
    pub(super) fn list(&self, key: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some(Raw::Env(text)) if text.trim().is_empty() => Ok(Some(Vec::new())),
            Some(Raw::Env(text)) => Ok(Some(
                text.split(',').map(|item| item.trim().to_owned()).collect(),
            )),
            Some(raw @ Raw::File(toml::Value::Array(items))) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(self.not_a(key, &raw, "an array of strings")),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(raw) => Err(self.not_a(key, &raw, "an array of strings")),
        }
    }

    /// A number within `range`: the one place a range is checked, and the
    /// one message for it. The default is checked too, so a constant that
    /// breaks its own range fails every load (and the tests).
    pub(super) fn number<T: Number>(
        &self,
        key: &'static str,
        range: &Range<T>,
    ) -> Result<T, ConfigError> {
        let value = match self.raw(key) {
            None => range.default,
            Some(raw) => {
                let read = match raw {
                    Raw::Env(text) => T::parse(text),
                    Raw::File(value) => T::from_toml(value),
                };
                match read {
                    Ok(value) => value,
                    Err(Unfit::NotNumber) => return Err(self.not_a(key, &raw, T::WHAT)),
                    Err(Unfit::Beyond(shown)) => {
                        return Err(self.invalid(key, range.refusal(&shown)));
                    }
                }
            }
        };
        if range.contains(value) {
            Ok(value)
        } else {
            Err(self.invalid(key, range.refusal(&value)))
        }
    }
}

fn unknown_key_hint(key: &str, known: &[&str]) -> String {
    if key == "openai_api_key" {
        return "the API key is read from the environment only (OPENAI_API_KEY)".into();
    }
    let mut known = known.to_vec();
    known.sort_unstable();
    format!(
        "keys are the ENGRAM_* variable names without ENGRAM_, lower-cased, at the top level: {}",
        known.join(", ")
    )
}

/// An enum chosen by name in the configuration.
pub(super) trait Choice: Copy + 'static {
    /// Each accepted name (lower-case) with its value, in the order errors
    /// list them.
    const CHOICES: &'static [(&'static str, Self)];
}

/// Why a given value is not a number of the wanted type.
pub(super) enum Unfit {
    /// Not a number of the wanted kind at all.
    NotNumber,
    /// A number the type cannot hold (as shown): out of range.
    Beyond(String),
}

/// A number type the configuration reads.
pub(super) trait Number: Copy + PartialOrd + fmt::Display {
    /// How a refusal names the kind: "an integer", "a number".
    const WHAT: &'static str;
    /// From an environment value.
    fn parse(text: &str) -> Result<Self, Unfit>;
    /// From a TOML value.
    fn from_toml(value: &toml::Value) -> Result<Self, Unfit>;
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Number for $t {
            const WHAT: &'static str = "an integer";

            fn parse(text: &str) -> Result<Self, Unfit> {
                let n: i128 = text.trim().parse().map_err(|_| Unfit::NotNumber)?;
                Self::try_from(n).map_err(|_| Unfit::Beyond(n.to_string()))
            }

            fn from_toml(value: &toml::Value) -> Result<Self, Unfit> {
                let toml::Value::Integer(n) = value else {
                    return Err(Unfit::NotNumber);
                };
                Self::try_from(*n).map_err(|_| Unfit::Beyond(n.to_string()))
            }
        }
    )*};
}

integer!(u32, u64, usize);

impl Number for f32 {
    const WHAT: &'static str = "a number";

    fn parse(text: &str) -> Result<Self, Unfit> {
        let x: f64 = text.trim().parse().map_err(|_| Unfit::NotNumber)?;
        Ok(x as f32)
    }

    fn from_toml(value: &toml::Value) -> Result<Self, Unfit> {
        match value {
            toml::Value::Float(x) => Ok(*x as f32),
            toml::Value::Integer(n) => Ok(*n as f32),
            _ => Err(Unfit::NotNumber),
        }
    }
}

/// A number's default and the values it may take. Each section declares one
/// constant per numeric key; [`Layers::number`] writes both into its refusal
/// ("0 is out of range; allowed 1..=86400 (default 300)"), so no message
/// repeats them by hand.
#[derive(Debug, Clone, Copy)]
pub(super) struct Range<T> {
    pub default: T,
    pub min: T,
    pub max: T,
    /// `min` itself is refused: the range is `(min, max]`.
    pub above_min: bool,
    /// Said after the range: a unit, or what a special value means.
    pub note: &'static str,
}

impl<T: Number> Range<T> {
    /// `min..=max`, with `default` inside it.
    pub const fn new(default: T, min: T, max: T) -> Self {
        Self {
            default,
            min,
            max,
            above_min: false,
            note: "",
        }
    }

    /// `(min, max]`: `min` itself is refused.
    pub const fn above_min(self) -> Self {
        Self {
            above_min: true,
            ..self
        }
    }

    pub const fn note(self, note: &'static str) -> Self {
        Self { note, ..self }
    }

    fn contains(&self, value: T) -> bool {
        let above = if self.above_min {
            value > self.min
        } else {
            value >= self.min
        };
        above && value <= self.max
    }

    /// "1..=86400" or "(0, 1]", with the note.
    pub fn allowed(&self) -> String {
        let (min, max) = (self.min, self.max);
        if self.above_min {
            format!("({min}, {max}]{}", self.note)
        } else {
            format!("{min}..={max}{}", self.note)
        }
    }

    fn refusal(&self, shown: &dyn fmt::Display) -> String {
        format!(
            "{shown} is out of range; allowed {} (default {})",
            self.allowed(),
            self.default
        )
    }
}
