-- A round of remembers in one statement: on a direct connection, one
-- message and one round trip for the whole transaction.
--
-- Why: a round was four messages (BEGIN with its settings, locks and
-- versions; the insert; the audit records and the read-back; COMMIT), and
-- with eight clients on two cores each message waits for a process to be
-- scheduled on both sides: at 819-852 remembers/s the four took 0.72, 2.2,
-- 0.68 and 0.74 ms, while PostgreSQL's own work in the first, third and
-- fourth (beside the commit's WAL flush) is a few tens of microseconds
-- (docs/benchmarks.md, eighteenth and nineteenth runs).
--
-- How:
-- * `engram_insert_memories` is the insert of new memories (with their
--   keyword postings and ADD history rows) that engram sent as one
--   statement before; a single user's write calls it as that statement,
--   and a round calls it inside `engram_write_round`.
-- * `engram_write_round` does a round's work in order: the request
--   settings and the round's (as 20280101000001 describes them), each
--   user's write lock in the array's order, each user's version under it
--   (`engram.round_locked`), the insert, the audit records, and then each
--   user's version and count as the round leaves them. Each of its
--   statements is a statement of its own to PostgreSQL, so the insert's
--   statement triggers have run when the read-back reads.
-- * Sent alone, outside `BEGIN` (a direct connection), the call is its own
--   transaction: it commits when it returns and rolls back whole on any
--   error (a duplicate refused by the trigger), leaving nothing behind on
--   the connection, settings included. Behind a transaction pooler engram
--   sends it inside `BEGIN ... COMMIT`, as every statement there.
--
-- Invariants (beside those of 20280101000001, which all hold):
-- * the settings take effect for the function's own statements only: a
--   statement's bound (`statement_timeout`) is the one in force when the
--   call starts, which engram sets on each direct request connection;
-- * a round's users arrive sorted by their ids' bytes, and are locked in
--   that order, by every instance.

CREATE FUNCTION engram_insert_memories(
    new_user_ids text[], new_ids uuid[], new_agent_ids text[], new_run_ids text[],
    new_texts text[], new_hashes bytea[], new_vectors vector[], new_metadata jsonb[],
    new_categories jsonb[], new_lengths integer[], new_expiries timestamptz[],
    new_actors text[], stored_at timestamptz,
    posting_rows bigint[], posting_terms text[], posting_tfs integer[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Postings name their row by its position in the arrays (from 1).
    WITH r AS (
        SELECT * FROM unnest(new_user_ids, new_ids, new_agent_ids, new_run_ids, new_texts,
                             new_hashes, new_vectors, new_metadata, new_categories,
                             new_lengths, new_expiries, new_actors) WITH ORDINALITY
            AS r (user_id, id, agent_id, run_id, content, content_hash, embedding,
                  metadata, categories, keyword_length, expires_at, actor, n)),
         m AS (
        INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash,
                              embedding, metadata, categories, created_at, updated_at,
                              valid_from, keyword_length, expires_at)
        SELECT r.id, r.user_id, r.agent_id, r.run_id, r.content, r.content_hash, r.embedding,
               r.metadata, ARRAY(SELECT jsonb_array_elements_text(r.categories)),
               stored_at, stored_at, stored_at, r.keyword_length, r.expires_at
        FROM r ORDER BY r.n
        RETURNING id, user_id, content, created_at, keyword_length),
         h AS (
        INSERT INTO memory_history (memory_id, user_id, event, old_content, new_content,
                                    actor, created_at)
        SELECT m.id, m.user_id, 'ADD', NULL, m.content, r.actor, m.created_at
        FROM m JOIN r ON r.id = m.id)
    INSERT INTO keyword_postings (user_id, term, memory_id, tf, length)
    SELECT m.user_id, t.term, m.id, t.tf, m.keyword_length
    FROM unnest(posting_rows, posting_terms, posting_tfs) AS t (n, term, tf)
    JOIN r ON r.n = t.n JOIN m ON m.id = r.id;
END $$;

CREATE FUNCTION engram_write_round(
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

    RETURN QUERY
        SELECT w.user_id, w.version, w.current,
               current_setting('engram.round_locked')::jsonb ->> w.user_id
        FROM memory_users w WHERE w.user_id = ANY (round_users);
END $$;
