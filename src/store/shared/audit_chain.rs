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
