-- A read of some of a user's memories with the user's version, in one
-- statement that sets its own settings: on a direct connection it goes
-- alone, outside `BEGIN`, one message and one round trip.
--
-- Why: a search answered from the user's in-process copy (recall, and the
-- reconciler's search in a remember with inference) ends with one read: the
-- rows it picked and the user's version, which says whether the copy was
-- current. Sent as `BEGIN; SELECT set_config(...)`, the read, then
-- `ROLLBACK`, it cost two round trips before its answer (and a third after
-- it, on the same connection): a recall waits on PostgreSQL twice where
-- once would do.
--
-- How: as `engram_write_round` (20280201000001) does for a round, the
-- function sets the request settings it is given and the user's row-level
-- security scope (`engram.user_id`), all transaction-local, then runs the
-- read as its own statement, so the settings are in force when that
-- statement starts. Sent outside `BEGIN` on a direct connection, the call
-- is a transaction of its own; the connection's statement bound is set
-- session-wide there (store/postgres/session.rs, `direct_bound`). Behind a
-- transaction pooler engram keeps the read inside `BEGIN ... ROLLBACK`.
--
-- Invariants: the answer is what the transaction's read answered: a row
-- per unexpired memory of the user's among the ids (closed ones included),
-- or one row with no memory when there is none; every row carries the
-- user's version (NULL for a user with no memories), read in the same
-- snapshot as the memories. Rows of other users are never read: the
-- statement names the user, and row security scopes it to that user alone.
-- The settings are transaction-local: nothing is left on the connection.

CREATE FUNCTION engram_memories_at_version(
    setting_names text[], setting_values text[], p_user text, p_ids uuid[])
RETURNS TABLE (version bigint, id uuid, user_id text, agent_id text, run_id text,
               content text, metadata jsonb, categories text[],
               created_at timestamptz, updated_at timestamptz, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i integer;
BEGIN
    FOR i IN 1 .. coalesce(array_length(setting_names, 1), 0) LOOP
        PERFORM set_config(setting_names[i], setting_values[i], true);
    END LOOP;
    PERFORM set_config('engram.user_id', p_user, true);
    RETURN QUERY
        WITH loaded AS MATERIALIZED (
            SELECT m.id, m.user_id, m.agent_id, m.run_id, m.content, m.metadata,
                   m.categories, m.created_at, m.updated_at, m.expires_at
            FROM memories m
            WHERE m.user_id = p_user AND m.id = ANY (p_ids)
              AND (m.expires_at IS NULL OR m.expires_at > now()))
        SELECT (SELECT w.version FROM memory_users w WHERE w.user_id = p_user),
               l.id, l.user_id, l.agent_id, l.run_id, l.content, l.metadata,
               l.categories, l.created_at, l.updated_at, l.expires_at
        FROM (VALUES (1)) AS one (x) LEFT JOIN loaded l ON true;
END $$;
