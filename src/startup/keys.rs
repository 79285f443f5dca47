//! `engram keys create|list|revoke|rotate`: the operator's API key commands,
//! on the configured store.
//!
//! Times given on the command line (`--expires-in`, `--expires-at`,
//! `--grace`) are counted from this process's clock, the clock the store
//! judges expiry by ([`crate::store::Keys::active_key`]). A secret is
//! printed once, on stdout, and never again; everything else goes to stderr.

use chrono::{DateTime, Utc};

use super::{StartupError, embedder, store};
use crate::auth::{self, Access};
use crate::config::Config;
use crate::store::{ApiKey, KeyState};

/// When a new key stops working: `--expires-in SPAN` or `--expires-at
/// RFC3339`, not both; neither: never (for `rotate`: as long as the old key
/// lived).
#[derive(Debug, Default, clap::Args)]
pub struct KeyExpiry {
    /// The key expires this long after it is made: a whole number and a
    /// unit, s, m, h, d or w (90s, 12h, 30d, 2w).
    #[arg(long, value_name = "SPAN", conflicts_with = "expires_at")]
    pub expires_in: Option<String>,
    /// The key expires at this instant (RFC 3339 with an offset,
    /// e.g. 2027-03-01T00:00:00Z).
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,
}

impl KeyExpiry {
    /// The instant the flags name, counted from `now`; `None`: no flag.
    fn resolve(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StartupError> {
        let at = match (&self.expires_in, &self.expires_at) {
            (Some(span), _) => Some(now + refused(auth::parse_span("--expires-in", span))?),
            (None, Some(at)) => Some(refused(auth::parse_instant(at, now))?),
            (None, None) => None,
        };
        Ok(at)
    }
}

/// `engram keys create`: stores a new key and prints it, once, on stdout.
pub async fn create_key(
    config: &Config,
    user_id: Option<String>,
    label: String,
    read_only: bool,
    expiry: &KeyExpiry,
) -> Result<(), StartupError> {
    let user_id = match user_id {
        Some(u) if u.trim().is_empty() => {
            return Err(StartupError::Unsupported(
                "--user needs the user id the key acts for (or use --admin)".into(),
            ));
        }
        Some(u) => Some(crate::model::validate_id("user", &u)?),
        None => None,
    };
    let label = refused(auth::check_label(&label))?;
    let expires_at = expiry.resolve(Utc::now())?;
    let store = store(config, embedder(config).await?.as_ref()).await?;
    let (secret, mut key) = auth::generate(user_id, label);
    key.expires_at = expires_at;
    if read_only {
        key.access = Access::ReadOnly;
    }
    store.add_key(&key).await?;
    println!("{secret}");
    eprintln!("engram: created {}; it is shown only now", described(&key));
    Ok(())
}

/// `engram keys rotate ID`: a successor to an active key (same user,
/// access and label), printed once; the old key keeps working for `grace`
/// (or until its own expiry, if sooner), then is refused.
pub async fn rotate_key(
    config: &Config,
    id: &str,
    grace: &str,
    expiry: &KeyExpiry,
) -> Result<(), StartupError> {
    let old_id = key_id(id)?;
    let grace = refused(auth::parse_span("--grace", grace))?;
    let now = Utc::now();
    let expires_at = expiry.resolve(now)?;
    let store = store(config, embedder(config).await?.as_ref()).await?;
    let not_active = || {
        StartupError::Unsupported(format!(
            "no active key {old_id} (unknown, revoked or expired); `engram keys list` shows them"
        ))
    };
    let old = store
        .keys()
        .await?
        .into_iter()
        .find(|k| k.id == old_id && k.state(now) == KeyState::Active)
        .ok_or_else(not_active)?;
    let (secret, key) = auth::successor(&old, expires_at);
    let old_until = now + grace;
    // The store checks again, in the rotation's transaction: a key revoked
    // since it was read above is not rotated.
    if !store.rotate_key(old.id, &key, old_until).await? {
        return Err(not_active());
    }
    println!("{secret}");
    let until = old.expires_at.map_or(old_until, |end| end.min(old_until));
    eprintln!(
        "engram: created {} to succeed key {old_id}, which works until {}; the new key is \
         shown only now",
        described(&key),
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Ok(())
}

/// A key as the create and rotate messages describe it.
fn described(key: &ApiKey) -> String {
    format!(
        "key {} ({}) for {}{}{}",
        key.id,
        key.prefix,
        key.user_id
            .as_deref()
            .map_or("any user (admin)".to_owned(), |u| format!("user \"{u}\"")),
        if key.access == Access::ReadOnly {
            ", read-only"
        } else {
            ""
        },
        key.expires_at.map_or(String::new(), |t| format!(
            ", expiring {}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
    )
}

/// `engram keys list`: one line per key, never the key itself: id, prefix,
/// user, created, state (active, expired or revoked, with its time),
/// expiry, access, label.
pub async fn list_keys(config: &Config) -> Result<(), StartupError> {
    let store = store(config, embedder(config).await?.as_ref()).await?;
    let now = Utc::now();
    let minute = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M").to_string();
    for key in store.keys().await? {
        let state = match (key.state(now), key.revoked_at, key.expires_at) {
            (KeyState::Revoked, Some(at), _) => format!("revoked {}", minute(at)),
            (KeyState::Expired, _, Some(at)) => format!("expired {}", minute(at)),
            _ => "active".to_owned(),
        };
        println!(
            "{}  {}...  {:<20}  {}  {:<24}  {:<24}  {:<10}{}",
            key.id,
            key.prefix,
            key.user_id.as_deref().unwrap_or("(admin)"),
            minute(key.created_at),
            state,
            key.expires_at
                .map_or("expires never".to_owned(), |t| format!(
                    "expires {}",
                    minute(t)
                )),
            match key.access {
                Access::ReadWrite => "read-write",
                Access::ReadOnly => "read-only",
            },
            if key.label.is_empty() {
                String::new()
            } else {
                format!("  {}", printable(&key.label))
            }
        );
    }
    Ok(())
}

/// `text` with every control or invisible format character written as an
/// escape (`\u{a}`): a label stored before labels were checked still prints
/// on its own row.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || crate::model::is_format(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A flag the operator must fix, refused with what is wrong with it.
fn refused<T>(parsed: Result<T, String>) -> Result<T, StartupError> {
    parsed.map_err(StartupError::Unsupported)
}

/// A key id as given on the command line.
fn key_id(id: &str) -> Result<uuid::Uuid, StartupError> {
    uuid::Uuid::parse_str(id.trim()).map_err(|_| {
        StartupError::Unsupported(format!(
            "'{id}' is not a key id; `engram keys list` shows them"
        ))
    })
}

/// `engram keys revoke ID`.
pub async fn revoke_key(config: &Config, id: &str) -> Result<(), StartupError> {
    let parsed = key_id(id)?;
    let store = store(config, embedder(config).await?.as_ref()).await?;
    if store.revoke_key(parsed).await? {
        eprintln!("engram: revoked key {parsed}");
        Ok(())
    } else {
        Err(StartupError::Unsupported(format!(
            "no active key {parsed}; `engram keys list` shows them"
        )))
    }
}
