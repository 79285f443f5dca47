//! What both backends do alike, written once: how rows become the store's
//! values (`rows`, over each dialect's [`Columns`]), the column lists they
//! read, the hash of a memory's text (`hashing`) and a search's metadata
//! filter as JSON (`filter`). What stays in a backend's folder is its SQL
//! and its dialect: placeholders, id, time and JSON types, and how it runs.

mod columns;
mod filter;
mod hashing;
mod rows;

pub(super) use columns::Columns;
pub(super) use hashing::{content_hash, content_hash_hex};
pub(super) use rows::{
    HISTORY_SELECT, KEY_SELECT, MEMORY_COLUMNS, PENDING_SELECT, export_from_rows, history_from_row,
    key_from_row, memory_from_row, pending_from_row, stats_from_row,
};
