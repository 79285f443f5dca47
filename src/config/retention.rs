//! `retention`: how long memories are kept (`retention_days`,
//! `retention_categories`, `history_retention_days`) and how often `serve`
//! purges what is due (`retention_purge_interval_secs`).
//!
//! Expiry counts from when a memory is stored in engram, never from a date
//! it carries (a message's `date`, metadata): a memory brought in with old
//! dates gets the full retention from its arrival.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use super::layers::{ConfigError, Layers, Range};

/// The longest retention accepted anywhere (about a century), in days.
pub const MAX_RETENTION_DAYS: u32 = 36_500;
pub const DEFAULT_PURGE_INTERVAL_SECS: u64 = 600;

pub(super) const RETENTION_DAYS: Range<u32> =
    Range::new(0, 0, MAX_RETENTION_DAYS).note(" days; 0 keeps memories until forgotten");
pub(super) const HISTORY_RETENTION_DAYS: Range<u32> =
    Range::new(0, 0, MAX_RETENTION_DAYS).note(" days; 0 keeps superseded memories until forgotten");
pub(super) const PURGE_INTERVAL_SECS: Range<u64> =
    Range::new(DEFAULT_PURGE_INTERVAL_SECS, 0, 86_400)
        .note(" seconds; 0: `serve` does not purge (run `engram purge`)");

/// The file keys (and, upper-cased after `ENGRAM_`, the variables) read here.
pub(super) const KEYS: &[&str] = &[
    "retention_days",
    "retention_categories",
    "history_retention_days",
    "retention_purge_interval_secs",
];

/// How long memories are kept. Invariant: every number of days is in
/// 1..=[`MAX_RETENTION_DAYS`] (0 in the configuration means "none").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionConfig {
    /// Days a memory is kept after it is stored; `None`: until forgotten.
    pub days: Option<u32>,
    /// Per category, days that replace `days` for memories of that
    /// category (the fewest when a memory has several).
    pub categories: BTreeMap<String, u32>,
    /// Days a superseded memory (and its history) is kept after it was
    /// closed; `None`: until forgotten.
    pub history_days: Option<u32>,
    /// How often `serve` purges; `None`: never (only `engram purge`).
    pub purge_every_secs: Option<u64>,
}

impl RetentionConfig {
    pub(super) fn load(src: &Layers<'_>) -> Result<Self, ConfigError> {
        let some = |days: u32| (days > 0).then_some(days);
        let mut categories = BTreeMap::new();
        for item in src.list("retention_categories")?.unwrap_or_default() {
            if item.is_empty() {
                continue;
            }
            let parsed = item.split_once('=').and_then(|(name, days)| {
                let days: u32 = days.trim().parse().ok()?;
                let name = name.trim().to_ascii_lowercase();
                (!name.is_empty() && (1..=MAX_RETENTION_DAYS).contains(&days))
                    .then_some((name, days))
            });
            let Some((name, days)) = parsed else {
                return Err(src.invalid(
                    "retention_categories",
                    format!(
                        "'{item}' is not category=days with days in 1..={MAX_RETENTION_DAYS}, \
                         e.g. health=30,travel=365"
                    ),
                ));
            };
            categories.insert(name, days);
        }
        Ok(Self {
            days: some(src.number("retention_days", &RETENTION_DAYS)?),
            categories,
            history_days: some(src.number("history_retention_days", &HISTORY_RETENTION_DAYS)?),
            purge_every_secs: Some(
                src.number("retention_purge_interval_secs", &PURGE_INTERVAL_SECS)?,
            )
            .filter(|&secs| secs > 0),
        })
    }

    /// The days a memory of `categories` is kept: the fewest among its
    /// categories that have their own retention, else the default; a
    /// caller's `requested` days can shorten that, never lengthen it.
    pub fn days_for(&self, categories: &[String], requested: Option<u32>) -> Option<u32> {
        let by_category = categories
            .iter()
            .filter_map(|c| self.categories.get(&c.to_ascii_lowercase()).copied())
            .min();
        let policy = by_category.or(self.days);
        match (policy, requested) {
            (Some(p), Some(r)) => Some(p.min(r)),
            (p, r) => p.or(r),
        }
    }

    /// When a memory of `categories` stored at `stored_at` expires (see
    /// [`RetentionConfig::days_for`]); `None`: never.
    pub fn expiry(
        &self,
        stored_at: DateTime<Utc>,
        categories: &[String],
        requested: Option<u32>,
    ) -> Option<DateTime<Utc>> {
        self.days_for(categories, requested)
            .map(|days| stored_at + Duration::days(i64::from(days)))
    }

    /// Closed memories closed before this are due for the purge at `now`.
    pub fn closed_before(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.history_days
            .map(|days| now - Duration::days(i64::from(days)))
    }
}
