//! The audit trail's hash chain: each sealed row's hash covers the previous
//! row's hash and every recorded field of the row, so editing, deleting or
//! reordering a sealed row breaks every hash after it.

use sha2::{Digest, Sha256};

use crate::store::AuditRow;

/// The hash the chain's first row links to.
pub const GENESIS: &str = "engram audit chain";

/// SHA-256 (hex) of `previous` and `row`'s recorded fields, in a fixed
/// order (its `seq` included, its sealing fields not). Times count in
/// microseconds, as PostgreSQL keeps them (SQLite keeps milliseconds,
/// which are the same microseconds with zeros).
pub fn audit_link(previous: &str, row: &AuditRow) -> String {
    let r = &row.record;
    let ids: Vec<String> = r.memory_ids.iter().map(ToString::to_string).collect();
    let fields = serde_json::json!([
        row.seq,
        r.at.timestamp_micros(),
        r.principal,
        r.key_id.map(|k| k.to_string()),
        r.user_ref,
        r.transport,
        r.client_addr,
        r.operation,
        ids,
        r.memory_count,
        r.outcome,
        r.query,
    ]);
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(fields.to_string().as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The chain's last sealed row (position and hash), the same SQL in both
/// dialects; none on an empty chain.
pub(in crate::store) const CHAIN_TAIL: &str = "SELECT chain_pos, hash FROM audit_log \
     WHERE chain_pos IS NOT NULL ORDER BY chain_pos DESC LIMIT 1";

/// One row's place in the chain, as sealing writes it.
pub(in crate::store) struct Link {
    pub seq: i64,
    pub pos: i64,
    pub hash: String,
}

/// Links `rows` (unsealed, in `seq` order) onto the chain ending at `tail`
/// ([`CHAIN_TAIL`]): each row's next position and its hash.
pub(in crate::store) fn link_all(tail: Option<(i64, String)>, rows: &[AuditRow]) -> Vec<Link> {
    let (mut pos, mut previous) = tail.unwrap_or((0, GENESIS.to_owned()));
    rows.iter()
        .map(|row| {
            pos += 1;
            previous = audit_link(&previous, row);
            Link {
                seq: row.seq,
                pos,
                hash: previous.clone(),
            }
        })
        .collect()
}
