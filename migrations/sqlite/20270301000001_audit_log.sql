-- The audit trail: one row per operation, appended; sealed afterwards into a
-- hash chain (chain_pos, hash) by `engram audit seal` or the sealer in `serve`.
-- Users are named by a keyed pseudonym (user_ref), never by their id.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    principal TEXT NOT NULL,
    key_id TEXT,
    user_ref TEXT,
    transport TEXT NOT NULL,
    client_addr TEXT,
    operation TEXT NOT NULL,
    memory_ids TEXT NOT NULL DEFAULT '[]',
    memory_count INTEGER NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL,
    query TEXT,
    chain_pos INTEGER UNIQUE,
    hash TEXT
);
CREATE INDEX audit_log_user ON audit_log (user_ref, seq);
CREATE INDEX audit_log_unsealed ON audit_log (seq) WHERE chain_pos IS NULL;

-- Append-only for engram: rows are never deleted, and once sealed never
-- changed (sealing sets chain_pos and hash once). Whoever drops these
-- triggers can edit rows; `engram audit verify` then finds the edit.
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_sealed_rows_are_final BEFORE UPDATE ON audit_log
WHEN OLD.chain_pos IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'a sealed audit_log row cannot change');
END;
