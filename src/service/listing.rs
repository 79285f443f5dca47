//! Listing a user's current memories page by page (`GET /api/v1/memory`,
//! mem0's `get_all`), and the cursor that says where a page goes on.
//!
//! Invariants:
//! * pages come oldest first by (`created_at`, `id`), a total order: each
//!   page starts right after the last memory of the one before
//!   ([`ListingKey`]), so a memory written or deleted between two pages
//!   never makes another repeat or go missing;
//! * `next_cursor` is absent exactly on the last page (one more memory is
//!   read to know), so a client never fetches an empty page to find the end;
//! * the cursor is opaque and carries no user: it is a position in whichever
//!   user's listing it is sent with, and reads nothing of anyone else's. A
//!   cursor that does not decode, or whose check bytes do not match (one
//!   cut, edited or made up), is `invalid_input` naming `cursor`. The check
//!   catches mistakes, not forgers, and needs to: the worst a forged
//!   cursor can do is start the caller's own listing somewhere else.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::DateTime;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::MemoryService;
use super::types::MemoryPage;
use super::validate;
use crate::auth::Principal;
use crate::error::Error;
use crate::model::MemoryId;
use crate::params::ListParams;
use crate::store::ListingKey;

/// Memories on a page when the request does not say.
pub const DEFAULT_LIST_LIMIT: usize = 50;

impl MemoryService {
    /// A page of the user's current memories, oldest first.
    pub(super) async fn list_inner(
        &self,
        caller: &Principal,
        req: ListParams,
    ) -> Result<MemoryPage, Error> {
        let user = self.acting_user(caller, req.user_id.as_deref())?;
        let limit = validate::limit(req.limit, DEFAULT_LIST_LIMIT)?;
        let after = req.cursor.as_deref().map(decode).transpose()?;
        let mut results = self.store.list(&user, after, limit + 1).await?;
        let next_cursor = if results.len() > limit {
            results.truncate(limit);
            results.last().map(|m| encode(ListingKey::of(m)))
        } else {
            None
        };
        for memory in &mut results {
            self.open_memory(memory);
        }
        Ok(MemoryPage {
            user_id: user.into(),
            results,
            next_cursor,
        })
    }
}

/// The bytes of a cursor: `created_at` in microseconds since the epoch
/// (big-endian), the id's 16 bytes, and the first [`CHECK_BYTES`] of the
/// SHA-256 of those 24. Microseconds hold PostgreSQL's `timestamptz` and
/// SQLite's milliseconds exactly.
const KEY_BYTES: usize = 8 + 16;
const CHECK_BYTES: usize = 4;
const CURSOR_BYTES: usize = KEY_BYTES + CHECK_BYTES;

/// `key` as a cursor: URL-safe base64, 38 characters.
fn encode(key: ListingKey) -> String {
    let mut bytes = [0u8; CURSOR_BYTES];
    bytes[..8].copy_from_slice(&key.created_at.timestamp_micros().to_be_bytes());
    bytes[8..KEY_BYTES].copy_from_slice(key.id.0.as_bytes());
    let check = check(&bytes[..KEY_BYTES]);
    bytes[KEY_BYTES..].copy_from_slice(&check);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The check bytes of a cursor's key bytes.
fn check(key: &[u8]) -> [u8; CHECK_BYTES] {
    let digest = Sha256::digest(key);
    let mut check = [0u8; CHECK_BYTES];
    check.copy_from_slice(&digest[..CHECK_BYTES]);
    check
}

/// The key a cursor from [`encode`] stands for.
fn decode(cursor: &str) -> Result<ListingKey, Error> {
    let refuse = || {
        Error::invalid(
            "cursor",
            "is not a cursor this server gave; send the previous page's `next_cursor` as \
             given, or leave `cursor` out for the first page",
        )
    };
    let bytes: [u8; CURSOR_BYTES] = URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(refuse)?;
    let (key, sum) = bytes.split_at(KEY_BYTES);
    if check(key) != sum {
        return Err(refuse());
    }
    let (micros, id) = key.split_at(8);
    let micros = i64::from_be_bytes(micros.try_into().map_err(|_| refuse())?);
    let created_at = DateTime::from_timestamp_micros(micros).ok_or_else(refuse)?;
    let id = Uuid::from_slice(id).map_err(|_| refuse())?;
    Ok(ListingKey {
        created_at,
        id: MemoryId(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_to_the_microsecond() {
        let created_at = DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap();
        let key = ListingKey {
            created_at,
            id: MemoryId::new(),
        };
        let cursor = encode(key);
        assert_eq!(cursor.len(), 38);
        assert!(
            cursor
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{cursor}: safe in a query string as is"
        );
        assert_eq!(decode(&cursor).unwrap(), key);
    }

    #[test]
    fn anything_else_is_refused_naming_the_cursor() {
        let good = encode(ListingKey {
            created_at: chrono::Utc::now(),
            id: MemoryId::new(),
        });
        let cut = &good[..good.len() - 4];
        let longer = format!("{good}AAAA");
        // One character changed: it still decodes, but the check fails.
        let edited = format!(
            "{}{}",
            if good.starts_with('A') { 'B' } else { 'A' },
            &good[1..]
        );
        // i64::MAX microseconds, checked: past the last time chrono can hold.
        let mut far = [0u8; CURSOR_BYTES];
        far[..8].copy_from_slice(&i64::MAX.to_be_bytes());
        let sum = check(&far[..KEY_BYTES]);
        far[KEY_BYTES..].copy_from_slice(&sum);
        let out_of_range = URL_SAFE_NO_PAD.encode(far);
        for bad in ["", "page-2", "%%%", cut, &longer, &edited, &out_of_range] {
            match decode(bad) {
                Err(Error::InvalidInput { field, message }) => {
                    assert_eq!(field, "cursor");
                    assert!(message.contains("next_cursor"), "{message}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
