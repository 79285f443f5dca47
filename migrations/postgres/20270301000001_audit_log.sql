-- The audit trail: one row per operation, appended; sealed afterwards into a
-- hash chain (chain_pos, hash) by `engram audit seal` or the sealer in `serve`.
-- Users are named by a keyed pseudonym (user_ref), never by their id.
-- `xid` lets the sealer take only rows whose transaction has ended.
CREATE TABLE audit_log (
    seq bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at timestamptz NOT NULL,
    principal text NOT NULL,
    key_id uuid,
    user_ref text,
    transport text NOT NULL,
    client_addr text,
    operation text NOT NULL,
    memory_ids uuid[] NOT NULL DEFAULT '{}',
    memory_count bigint NOT NULL DEFAULT 0,
    outcome text NOT NULL,
    query text,
    chain_pos bigint UNIQUE,
    hash text
);
CREATE INDEX audit_log_user ON audit_log (user_ref, seq);
CREATE INDEX audit_log_unsealed ON audit_log (seq) WHERE chain_pos IS NULL;

-- Append-only for engram: rows are never deleted, and once sealed never
-- changed. Whoever drops these triggers can edit rows; `engram audit verify`
-- then finds the edit.
CREATE FUNCTION engram_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit_log is append-only';
    END IF;
    IF OLD.chain_pos IS NOT NULL THEN
        RAISE EXCEPTION 'a sealed audit_log row cannot change';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION engram_audit_append_only();
