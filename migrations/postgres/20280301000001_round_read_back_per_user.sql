-- A round's read-back one user at a time, so that it is not planned again
-- on every call.
--
-- Why: with pg_stat_statements tracking planning, over a shape-a load from
-- eight clients (docs/benchmarks.md, twentieth run) the read-back that
-- ended `engram_write_round` (`... FROM memory_users w WHERE w.user_id =
-- ANY (round_users)`) was planned at 1,448 of its 2,408 calls, 0.09 ms
-- each: more than it took to run. PostgreSQL's plan cache keeps a custom
-- plan when the generic one looks dearer, and a generic plan must guess
-- the array's length (ten elements) where a custom one knows it (one or
-- two). A statement on one user's key costs the same either way, so its
-- generic plan is kept after the first calls.
--
-- Everything else in the function is as 20280201000001 made it; the
-- function's signature and result are unchanged, and the rows come back in
-- `round_users`' order (engram matches them by user, not by position).

CREATE OR REPLACE FUNCTION engram_write_round(
    setting_names text[], setting_values text[],
    round_users text[], dedup_threshold real, dedup_k integer, dedup_searched text,
    new_user_ids text[], new_ids uuid[], new_agent_ids text[], new_run_ids text[],
    new_texts text[], new_hashes bytea[], new_vectors vector[], new_metadata jsonb[],
    new_categories jsonb[], new_lengths integer[], new_expiries timestamptz[],
    new_actors text[], stored_at timestamptz,
    posting_rows bigint[], posting_terms text[], posting_tfs integer[],
    audit_at timestamptz[], audit_principals text[], audit_key_ids uuid[],
    audit_user_refs text[], audit_transports text[], audit_client_addrs text[],
    audit_operations text[], audit_memory_ids text[], audit_memory_counts bigint[],
    audit_outcomes text[], audit_queries text[])
RETURNS TABLE (round_user text, left_version bigint, left_current bigint, locked_version text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    u text;
BEGIN
    FOR i IN 1 .. coalesce(array_length(setting_names, 1), 0) LOOP
        PERFORM set_config(setting_names[i], setting_values[i], true);
    END LOOP;
    PERFORM set_config('engram.round_users', round_users::text, true),
            set_config('engram.dedup_threshold', dedup_threshold::text, true),
            set_config('engram.dedup_allow', '{}', true),
            set_config('engram.dedup_k', dedup_k::text, true),
            set_config('engram.dedup_searched', dedup_searched, true);
    FOREACH u IN ARRAY round_users LOOP
        PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || u, 0));
    END LOOP;
    -- Read under the locks, through the round's own row security.
    PERFORM set_config('engram.round_locked', coalesce(
        (SELECT jsonb_object_agg(w.user_id, w.version::text) FROM memory_users w
         WHERE w.user_id = ANY (round_users)), '{}')::text, true);

    PERFORM engram_insert_memories(
        new_user_ids, new_ids, new_agent_ids, new_run_ids, new_texts, new_hashes,
        new_vectors, new_metadata, new_categories, new_lengths, new_expiries, new_actors,
        stored_at, posting_rows, posting_terms, posting_tfs);

    IF cardinality(audit_at) > 0 THEN
        INSERT INTO audit_log (at, principal, key_id, user_ref, transport, client_addr,
                               operation, memory_ids, memory_count, outcome, query)
        SELECT a.at, a.principal, a.key_id, a.user_ref, a.transport, a.client_addr,
               a.operation, a.memory_ids::uuid[], a.memory_count, a.outcome, a.query
        FROM unnest(audit_at, audit_principals, audit_key_ids, audit_user_refs,
                    audit_transports, audit_client_addrs, audit_operations,
                    audit_memory_ids, audit_memory_counts, audit_outcomes, audit_queries)
            WITH ORDINALITY AS a (at, principal, key_id, user_ref, transport, client_addr,
                                  operation, memory_ids, memory_count, outcome, query, n)
        ORDER BY a.n;
    END IF;

    -- One user at a time: a statement on one user's key keeps its generic
    -- plan, where one on `= ANY (round_users)` was planned again at most
    -- calls (the array's length is known to a custom plan only).
    FOREACH u IN ARRAY round_users LOOP
        RETURN QUERY
            SELECT w.user_id, w.version, w.current,
                   current_setting('engram.round_locked')::jsonb ->> w.user_id
            FROM memory_users w WHERE w.user_id = u;
    END LOOP;
END $$;
