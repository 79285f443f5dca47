-- The duplicate check trusts a search for each row of an insert of several.
--
-- Why: a remember of several facts wrote them one statement each, with a
-- savepoint (and the check's settings) before each: two round trips, a
-- plan and a run of the statement triggers per fact. engram now inserts a
-- remember's new facts in one statement (src/store/postgres/write.rs), and
-- the claims of 20271201000001 named one row only.
--
-- How: `engram.dedup_searched` holds a comma-separated list of
-- '<memory id>@<version>' claims, one per row a search of the whole user
-- found clear; the check skips its nearest search for a row whose claim is
-- in the list, at the version it recorded when it first took the user's
-- lock. A single claim is a list of one, so what engram set before means
-- what it meant.
--
-- Invariants (beside those of 20271201000001, which all hold):
-- * an empty or unset list trusts nothing;
-- * a row's claim is made by engram only when no row before it in the same
--   statement, nor any row the transaction wrote before, is within the
--   threshold of it; the rows before it in the statement are visible to its
--   check (a row trigger's queries see the rows its statement has already
--   inserted), so an unclaimed row is checked against them too.

-- As in 20271201000001, with the claim looked up in the list.
CREATE OR REPLACE FUNCTION engram_refuse_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    threshold real := coalesce(
        nullif(current_setting('engram.dedup_threshold', true), '')::real, 0.9);
    allowed uuid[] := coalesce(
        nullif(current_setting('engram.dedup_allow', true), '')::uuid[], '{}');
    k integer := least(greatest(coalesce(
        nullif(current_setting('engram.dedup_k', true), '')::integer, 8), 1), 4096);
    locked text;
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
    IF locked IS NULL THEN
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
