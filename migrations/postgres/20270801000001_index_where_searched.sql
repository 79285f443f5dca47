-- The vector index holds only rows of users whose searches read it.
--
-- Why: engram_nearest scans a user's rows exactly while the user has few
-- (engram_exact_scan_limit: at least 5,000), so for most users the vector
-- index is never read, yet every insert paid to maintain it. An HNSW
-- insertion at 1536 dimensions took 6.0-6.4 ms here, against 0.3 ms for the
-- same insert outside the index (psql, 20,000 rows; docs/benchmarks.md):
-- most of a remember.
--
-- How:
-- * `indexed` says whether a row is in the vector index, which is partial on
--   it (the store builds the index: schema.rs). Rows written before this
--   migration keep `true`.
-- * A new current row is indexed when its user already has
--   engram_index_from_rows() current memories (default 1,000, setting
--   engram.index_from_rows), so a user past the exact-scan limit has at most
--   their first ~1,000 rows outside the index.
-- * engram_nearest's index branch searches the indexed rows and scans the
--   scope's other rows exactly (through memories_unindexed), and returns
--   the best of both: no current row is ever out of reach.
-- * Once a user's rows go into the index, the ones written before wait in
--   the user's backlog (memory_users.index_backlog): the store's indexer
--   adds them in the background (store/postgres/indexer.rs), so a large
--   user's searches soon scan nothing exactly.
ALTER TABLE memories ADD COLUMN indexed boolean NOT NULL DEFAULT true;
ALTER TABLE memories ALTER COLUMN indexed SET DEFAULT false;

CREATE INDEX memories_unindexed ON memories (user_id) WHERE valid_to IS NULL AND NOT indexed;

ALTER TABLE memory_users ADD COLUMN index_backlog boolean NOT NULL DEFAULT false;
CREATE INDEX memory_users_index_backlog ON memory_users (user_id) WHERE index_backlog;

-- The store makes the vector index again, partial on `indexed`.
DROP INDEX IF EXISTS memories_embedding_hnsw;
DROP INDEX IF EXISTS memories_embedding_diskann;
DELETE FROM store_info WHERE key = 'vector_index';

CREATE FUNCTION engram_index_from_rows() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('engram.index_from_rows', true), '')::bigint, 1000)
$$;

CREATE FUNCTION engram_choose_indexed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.indexed := coalesce(
        (SELECT u.current FROM memory_users u WHERE u.user_id = NEW.user_id), 0)
        >= engram_index_from_rows();
    -- The user's earlier rows, if any are still outside, join the backlog.
    IF NEW.indexed THEN
        UPDATE memory_users u SET index_backlog = true
            WHERE u.user_id = NEW.user_id AND NOT u.index_backlog
              AND EXISTS (SELECT 1 FROM memories m
                          WHERE m.user_id = NEW.user_id AND m.valid_to IS NULL
                            AND NOT m.indexed);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER memories_choose_indexed BEFORE INSERT ON memories
    FOR EACH ROW EXECUTE FUNCTION engram_choose_indexed();

-- As before (20261124000001), with the index branch reading the index for
-- the indexed rows and the rest of the scope exactly.
CREATE OR REPLACE FUNCTION engram_nearest(
    p_user text, p_agent text, p_run text, p_filter jsonb,
    p_query vector, p_k integer, p_exclude uuid[] DEFAULT '{}', p_ef integer DEFAULT NULL
) RETURNS TABLE (id uuid, similarity real)
LANGUAGE plpgsql VOLATILE
-- Restored on exit: what the ANN branch changes stays inside this call.
SET enable_sort = on
AS $$
DECLARE
    exact_limit bigint := engram_exact_scan_limit();
    in_scope bigint;
    ann_ids uuid[];
    ann_similarities real[];
BEGIN
    IF p_agent IS NULL AND p_run IS NULL AND p_filter IS NULL THEN
        SELECT u.current INTO in_scope FROM memory_users u WHERE u.user_id = p_user;
    ELSE
        -- Counted only as far as the decision needs.
        SELECT count(*) INTO in_scope FROM (
            SELECT 1 FROM memories m
            WHERE m.user_id = p_user AND m.valid_to IS NULL
              AND (p_agent IS NULL OR m.agent_id = p_agent)
              AND (p_run IS NULL OR m.run_id = p_run)
              AND (p_filter IS NULL OR m.metadata @> p_filter)
            LIMIT exact_limit + 1) c;
    END IF;

    IF coalesce(in_scope, 0) > exact_limit THEN
        -- Without sorts the only plan left is the vector index's own order.
        PERFORM set_config('enable_sort', 'off', true);
        PERFORM set_config('hnsw.iterative_scan', 'relaxed_order', true);
        -- The candidate list HNSW keeps while searching: as before.
        PERFORM set_config('hnsw.ef_search', greatest(p_k * 2, coalesce(p_ef,
            nullif(current_setting('engram.ef_search', true), '')::integer, 250))::text, true);
        -- `m.indexed` lets the planner use the partial index.
        SELECT coalesce(array_agg(a.id), '{}'), coalesce(array_agg(a.similarity), '{}')
            INTO ann_ids, ann_similarities
            FROM (SELECT m.id, (1 - (m.embedding <=> p_query))::real AS similarity
                  FROM memories m
                  WHERE m.user_id = p_user AND m.valid_to IS NULL AND m.indexed
                    AND (p_agent IS NULL OR m.agent_id = p_agent)
                    AND (p_run IS NULL OR m.run_id = p_run)
                    AND (p_filter IS NULL OR m.metadata @> p_filter)
                    AND m.id <> ALL (p_exclude)
                  ORDER BY m.embedding <=> p_query
                  LIMIT p_k) a;
        PERFORM set_config('enable_sort', 'on', true);
        IF cardinality(ann_ids) >= p_k THEN
            -- The scope's rows outside the index, exactly, and the best of both.
            RETURN QUERY
                SELECT b.id, b.similarity FROM (
                    SELECT * FROM unnest(ann_ids, ann_similarities) AS a (id, similarity)
                    UNION ALL
                    SELECT m.id, (1 - (m.embedding <=> p_query))::real
                    FROM memories m
                    WHERE m.user_id = p_user AND m.valid_to IS NULL AND NOT m.indexed
                      AND (p_agent IS NULL OR m.agent_id = p_agent)
                      AND (p_run IS NULL OR m.run_id = p_run)
                      AND (p_filter IS NULL OR m.metadata @> p_filter)
                      AND m.id <> ALL (p_exclude)) b
                ORDER BY b.similarity DESC
                LIMIT p_k;
            RETURN;
        END IF;
        -- Came back short: answer exactly instead.
    END IF;

    -- Ordering by similarity rather than by distance keeps the planner off
    -- the (approximate) vector index.
    RETURN QUERY
        SELECT m.id, (1 - (m.embedding <=> p_query))::real
        FROM memories m
        WHERE m.user_id = p_user AND m.valid_to IS NULL
          AND (p_agent IS NULL OR m.agent_id = p_agent)
          AND (p_run IS NULL OR m.run_id = p_run)
          AND (p_filter IS NULL OR m.metadata @> p_filter)
          AND m.id <> ALL (p_exclude)
        ORDER BY 1 - (m.embedding <=> p_query) DESC
        LIMIT p_k;
END $$;
