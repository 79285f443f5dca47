//! What both backends do alike, written once. Over each dialect's
//! [`Columns`] (how its rows hold ids, times and JSON): `rows`, how rows
//! become the store's values, and the column lists they read. Over each
//! dialect's [`Dialect`] (placeholders, how ids and times are bound): the
//! statements both run the same but for spelling, in `keys` (API keys; a
//! backend is a [`KeyTable`]), `reads` (recent memories, history),
//! `reports` (stats, export), `reembed` (a re-embedding round) and
//! `for_user` (a statement about one user). Beside them `hashing` (the
//! hash of a memory's text) and `filter` (a search's metadata filter as
//! JSON). What stays in a backend's folder is what differs: its own SQL,
//! its types, and how it opens, writes, locks and searches.

mod audit_chain;
mod columns;
mod dialect;
mod filter;
mod for_user;
mod hashing;
mod keys;
pub(super) mod reads;
mod reembed;
pub(super) mod reports;
mod rows;

pub(super) use audit_chain::{CHAIN_TAIL, Link, link_all};
pub use audit_chain::{GENESIS as AUDIT_GENESIS, audit_link};
pub(super) use columns::Columns;
pub(super) use dialect::Dialect;
pub(super) use for_user::{for_user, same_user};
pub(crate) use hashing::sha256_hex;
pub(super) use hashing::{content_hash, content_hash_hex};
pub(super) use keys::KeyTable;
pub(super) use reembed::next_batch;
pub(super) use rows::{
    HISTORY_SELECT, KEY_SELECT, MEMORY_COLUMNS, PENDING_SELECT, history_from_row, key_from_row,
    memory_from_row, pending_from_row,
};
