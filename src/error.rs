//! The service boundary's error type. Every failure a caller can see is one of
//! these; each message says what went wrong and, where it can, what to do.

use crate::embed::EmbedError;
use crate::extract::ExtractError;
use crate::model::Invalid;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something we do not accept. `field` names the argument,
    /// `message` says what was wrong and what is accepted.
    #[error("invalid `{field}`: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },

    /// The thing asked for does not exist for this user.
    #[error("{0}")]
    NotFound(String),

    /// The caller is known but may not act for the user it named: a user's
    /// API key naming another user. Refused, never rewritten to its own user.
    #[error("{0}")]
    Forbidden(String),

    /// The request is well formed but the memory's state refuses it: a
    /// correction of a memory that is no longer current, or into the text
    /// of another current memory. Nothing was changed.
    #[error("{0}")]
    Conflict(String),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(transparent)]
    Embed(#[from] EmbedError),

    #[error(transparent)]
    Extract(#[from] ExtractError),
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Self {
        Self::InvalidInput {
            field: invalid.field,
            message: invalid.message,
        }
    }
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            field,
            message: message.into(),
        }
    }

    /// The error's stable code, as problem+json and audit rows give it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidInput { .. } => "invalid_input",
            Self::NotFound(_) => "not_found",
            Self::Forbidden(_) => "forbidden",
            Self::Conflict(_) | Self::Store(StoreError::Conflict(_)) => "conflict",
            Self::Store(
                StoreError::Database { .. }
                | StoreError::Open { .. }
                | StoreError::TimedOut { .. }
                | StoreError::Unanswered(_),
            ) => "unavailable",
            Self::Embed(_) | Self::Extract(_) | Self::Store(StoreError::Embed(_)) => "model_failed",
            Self::Store(_) => "internal",
        }
    }

    /// True when the caller can fix the request; false for server-side failures.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Self::InvalidInput { .. } | Self::NotFound(_) | Self::Forbidden(_) | Self::Conflict(_)
        )
    }
}
