-- A round of remembers may write several users' new memories in one
-- transaction and one statement (group commit across users).
--
-- Why: a remember without inference costs PostgreSQL about 2.2 ms of CPU
-- on the side-by-side bench, and about half of it is per statement and per
-- transaction (the settings, the statement's plan start and its three
-- statement triggers, the commit), not per row: eight users' rows in one
-- statement cost 0.3-0.4 ms a row against 0.7 ms alone (docs/benchmarks.md).
-- engram writes one user's waiting remembers together already
-- (src/service/grouped.rs); now remembers of different users that wait for
-- the store are written together too (src/store/postgres/round.rs).
--
-- How:
-- * `engram.round_users` (a text[] literal, transaction-local) names the
--   users a round's transaction writes: row-level security lets it see and
--   write their rows, as `engram.user_id` does one user's. Unset or empty,
--   it admits no row (`= ANY (NULL)` is not true).
-- * The round takes every user's write lock first, in one order (the users'
--   ids sorted by their bytes), and then records each user's version, read
--   under that lock before the round writes anything, in
--   `engram.round_locked` (a JSON object, user id -> version). The duplicate
--   check compares a row's claim with its own user's entry there, as it
--   compares a single user's write with `engram.locked_version`: a claim
--   stands only for the state the search saw, for that user.
--
-- Invariants (beside those of 20271201000001 and 20271220000001, which all
-- hold):
-- * `engram.round_locked` is set only by a round, after its locks and before
--   its one insert; a row whose user is not in it has the version 'none',
--   which no claim names, so its check searches;
-- * every statement trigger already groups by user (counts, versions, keyword
--   statistics), so a statement of several users keeps each user's own.

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['memories', 'memory_history', 'memory_users',
                             'keyword_postings', 'keyword_terms',
                             'pending_extractions', 'api_keys']
    LOOP
        EXECUTE format(
            'ALTER POLICY engram_acting_user ON %I '
            'USING (user_id = (SELECT current_setting(''engram.user_id'', true)) '
            '       OR user_id = ANY ((SELECT nullif(current_setting(''engram.round_users'', true), '''')::text[])::text[]) '
            '       OR (SELECT current_setting(''engram.all_users'', true)) = ''on'')',
            t);
    END LOOP;
END $$;

-- As in 20271220000001, with a round's versions looked up per user.
CREATE OR REPLACE FUNCTION engram_refuse_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    threshold real := coalesce(
        nullif(current_setting('engram.dedup_threshold', true), '')::real, 0.9);
    allowed uuid[] := coalesce(
        nullif(current_setting('engram.dedup_allow', true), '')::uuid[], '{}');
    k integer := least(greatest(coalesce(
        nullif(current_setting('engram.dedup_k', true), '')::integer, 8), 1), 4096);
    locked text;
    round_locked text;
    expired uuid[];
    near jsonb;
    dims integer;
    saved_rows text;
    saved_ratio text;
BEGIN
    IF NEW.valid_to IS NOT NULL THEN
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || NEW.user_id, 0));
    locked := nullif(current_setting('engram.locked_version', true), '');
    round_locked := nullif(current_setting('engram.round_locked', true), '');
    IF round_locked IS NOT NULL THEN
        -- A round: each user's version as its transaction locked them, before
        -- it wrote anything.
        locked := coalesce(round_locked::jsonb ->> NEW.user_id, 'none');
    ELSIF locked IS NULL THEN
        SELECT u.version::text INTO locked FROM memory_users u WHERE u.user_id = NEW.user_id;
        locked := coalesce(locked, 'none');
        PERFORM set_config('engram.locked_version', locked, true);
    END IF;

    -- The same text: exact, through the unique index's btree. An expired
    -- memory holding it is closed (its expiry is when it ended) rather than
    -- named; only then is there anything to update, so an insert of a new
    -- text runs no UPDATE (nor its statement triggers).
    SELECT coalesce(array_agg(m.id) FILTER (WHERE m.expires_at <= now()), '{}'),
           jsonb_agg(jsonb_build_object('id', m.id, 'similarity', 1.0))
               FILTER (WHERE (m.expires_at IS NULL OR m.expires_at > now())
                         AND m.id <> ALL (allowed))
        INTO expired, near
        FROM memories m
        WHERE m.user_id = NEW.user_id AND m.content_hash = NEW.content_hash
          AND m.valid_to IS NULL;
    IF cardinality(expired) > 0 THEN
        UPDATE memories m SET valid_to = m.expires_at WHERE m.id = ANY (expired);
    END IF;
    -- No similarity is above 1: a threshold above it asks for the same
    -- text only (a supersede, an import), which the lookup above answered.
    IF near IS NULL AND threshold <= 1
       AND NOT (NEW.id::text || '@' || locked = ANY (string_to_array(
           coalesce(current_setting('engram.dedup_searched', true), ''), ','))) THEN
        dims := vector_dims(NEW.embedding);
        IF dims > 384 THEN
            saved_rows := current_setting('engram.exact_scan_max_rows', true);
            saved_ratio := current_setting('engram.exact_scan_ratio', true);
            PERFORM set_config('engram.exact_scan_max_rows', (coalesce(
                nullif(saved_rows, '')::float8, 5000) * 384 / dims)::bigint::text, true);
            PERFORM set_config('engram.exact_scan_ratio', (coalesce(
                nullif(saved_ratio, '')::float8, 1000) * (384.0 / dims) ^ 2)::text, true);
        END IF;
        SELECT jsonb_agg(jsonb_build_object('id', n.id, 'similarity', n.similarity)) INTO near
            -- A near-duplicate sits very close to the new vector, where even
            -- pgvector's default search list (40) finds it; a wider round
            -- needs a list at least as long as the rows it asks for.
            FROM engram_nearest(NEW.user_id, NULL, NULL, NULL, NEW.embedding, k,
                                allowed || engram_expired_ids(NEW.user_id),
                                greatest(40, k)) n
            WHERE n.similarity >= threshold;
        IF dims > 384 THEN
            PERFORM set_config('engram.exact_scan_max_rows', coalesce(saved_rows, ''), true);
            PERFORM set_config('engram.exact_scan_ratio', coalesce(saved_ratio, ''), true);
        END IF;
    END IF;

    IF near IS NOT NULL THEN
        RAISE EXCEPTION 'memory % duplicates a current memory of its user', NEW.id
            USING ERRCODE = 'EG001', DETAIL = near::text;
    END IF;
    RETURN NEW;
END $$;
