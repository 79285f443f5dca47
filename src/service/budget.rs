//! Token budgets (`ENGRAM_TOKEN_BUDGET_DAILY`, `ENGRAM_TOKEN_BUDGET_USERS`):
//! how many model tokens a user may spend per UTC day, counted in the store
//! ([`crate::store::TokenUsage`]) so every instance agrees.
//!
//! A remember (or a re-extraction) that would call the model first asks
//! [`MemoryService::budget_spent`]; when the user's tokens for the day have
//! reached their budget, the model is not called: the remember keeps the
//! text as given and queues it (`remember.rs`, as when the model fails), a
//! re-extraction leaves the entry queued. After a call, the tokens the
//! model reported are added ([`MemoryService::count_tokens`]).
//!
//! Invariants:
//! * the check comes before the model call and the count after it, so
//!   concurrent remembers of one user may each start under the budget and
//!   end it over by at most one remember each; the next one is deferred;
//! * with no budget configured for anyone nothing is read or counted;
//! * a count that cannot be written is logged, never fails a remember
//!   whose memories are already committed.

use chrono::{NaiveDate, Utc};

use super::MemoryService;
use crate::extract::Usage;

/// How many past days of totals the retention purge keeps (today's is the
/// only one a budget reads; the rest are for the operator to look at).
pub const TOKEN_USAGE_KEPT_DAYS: u64 = 7;

/// A user's budget for the day, reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spent {
    pub day: NaiveDate,
    pub used: u64,
    pub budget: u64,
    /// The budget is the user's own (`ENGRAM_TOKEN_BUDGET_USERS`).
    pub overridden: bool,
}

impl Spent {
    /// The budget and the day's usage.
    pub fn summary(&self) -> String {
        format!(
            "the user's token budget for {} (UTC) is spent: {} of {} tokens used",
            self.day, self.used, self.budget
        )
    }

    /// The setting that would let the user go on today.
    fn raise(&self) -> &'static str {
        if self.overridden {
            "this user's entry in ENGRAM_TOKEN_BUDGET_USERS"
        } else {
            "ENGRAM_TOKEN_BUDGET_DAILY"
        }
    }

    /// What a deferred remember's caller is told, and its queued entry keeps.
    pub fn reason(&self) -> String {
        format!(
            "{}, so the model was not called; the text is kept as given and queued, and \
             `engram reextract` will finish it after 00:00 UTC, or once {} is raised",
            self.summary(),
            self.raise()
        )
    }

    /// What `engram reextract` says of an entry it leaves queued.
    pub fn held_back(&self) -> String {
        format!(
            "{}; left queued until after 00:00 UTC, or until {} is raised",
            self.summary(),
            self.raise()
        )
    }
}

/// The UTC day tokens are counted in now.
pub(super) fn today() -> NaiveDate {
    Utc::now().date_naive()
}

impl MemoryService {
    /// `Some` when `user_id` has a budget and today's tokens have reached
    /// it: the model must not be called for them today.
    pub(super) async fn budget_spent(&self, user_id: &str) -> Result<Option<Spent>, crate::Error> {
        let budgets = &self.settings.token_budget;
        let Some(budget) = budgets.for_user(user_id) else {
            return Ok(None);
        };
        let day = today();
        let used = self.store.tokens_used(user_id, day).await?;
        Ok((used >= budget).then(|| Spent {
            day,
            used,
            budget,
            overridden: budgets.overridden(user_id),
        }))
    }

    /// Adds what `usage` reports (prompt and completion tokens) to
    /// `user_id`'s total for today, when any budget is configured.
    pub(super) async fn count_tokens(&self, user_id: &str, usage: Option<&Usage>) {
        let Some(usage) = usage else { return };
        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        if tokens == 0 || !self.settings.token_budget.enabled() {
            return;
        }
        if let Err(e) = self.store.add_tokens(user_id, today(), tokens).await {
            tracing::warn!(
                user_id,
                tokens,
                error = %e,
                "could not count the model's tokens against the user's budget"
            );
        }
    }
}
