//! `budget`: how many model tokens each user may spend per UTC day
//! (`token_budget_daily`) and per-user exceptions (`token_budget_users`).
//!
//! A token is what the model reports: prompt plus completion tokens of every
//! chat call a remember (or a re-extraction) makes. Once a user's tokens for
//! the day reach their budget, `remember` keeps the text verbatim and queues
//! it (`crate::service`), as when the model fails.

use std::collections::BTreeMap;

use super::layers::{ConfigError, Layers, Range};
use crate::model::UserId;

/// The largest budget accepted, in tokens per user per day.
pub const MAX_TOKEN_BUDGET: u64 = 1_000_000_000_000;

pub(super) const TOKEN_BUDGET_DAILY: Range<u64> =
    Range::new(0, 0, MAX_TOKEN_BUDGET).note(" tokens per user per UTC day; 0: no budget");

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &["token_budget_daily", "token_budget_users"];

/// Daily token budgets. Invariant: every budget is in
/// 1..=[`MAX_TOKEN_BUDGET`] (0 in the configuration means "none"), and
/// every key of `users` is a valid user id, listed once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetConfig {
    /// Tokens each user may spend per UTC day; `None`: no budget.
    pub daily: Option<u64>,
    /// Per user, a budget that replaces `daily`; `None`: no budget for
    /// that user.
    pub users: BTreeMap<UserId, Option<u64>>,
}

impl BudgetConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let daily = src.number("token_budget_daily", &TOKEN_BUDGET_DAILY)?;
        let mut users = BTreeMap::new();
        for item in src.list("token_budget_users")?.unwrap_or_default() {
            if item.is_empty() {
                continue;
            }
            let refuse = |why: String| {
                src.invalid(
                    "token_budget_users",
                    format!(
                        "'{item}' {why}; list user=tokens or user=none, \
                         e.g. alice=200000,bob=none"
                    ),
                )
            };
            // The last `=`: a user id may hold one, a budget never does.
            let Some((user, budget)) = item.rsplit_once('=') else {
                return Err(refuse("is not user=tokens".into()));
            };
            if user.trim().is_empty() {
                return Err(refuse("names no user".into()));
            }
            let user = UserId::parse(user)
                .map_err(|e| refuse(format!("names no valid user: the id {}", e.message)))?;
            let budget = match budget.trim().to_ascii_lowercase().as_str() {
                "none" => None,
                text => match text.parse::<u64>() {
                    Ok(tokens @ 1..=MAX_TOKEN_BUDGET) => Some(tokens),
                    _ => {
                        return Err(refuse(format!(
                            "has no budget: tokens must be in 1..={MAX_TOKEN_BUDGET}, \
                             or none for no budget"
                        )));
                    }
                },
            };
            if users.insert(user.clone(), budget).is_some() {
                return Err(refuse(format!("lists user {user} a second time")));
            }
        }
        Ok(Self {
            daily: (daily > 0).then_some(daily),
            users,
        })
    }

    /// The tokens `user` may spend per UTC day; `None`: no budget.
    pub fn for_user(&self, user: &str) -> Option<u64> {
        self.users.get(user).copied().unwrap_or(self.daily)
    }

    /// Whether any user has a budget: without one, nothing is counted.
    pub fn enabled(&self) -> bool {
        self.daily.is_some() || self.users.values().any(Option::is_some)
    }

    /// Whether `user`'s budget comes from `token_budget_users`.
    pub fn overridden(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }
}
