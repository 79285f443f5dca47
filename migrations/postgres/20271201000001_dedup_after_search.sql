-- The duplicate check trusts a search engram has just made of the same
-- user, when nothing of the user has changed since.
--
-- Why: a remember with inference searches the user's memories for every
-- new fact before it writes (the reconciler's candidates). The duplicate
-- check then searched the same memories again, for the same vector, under
-- the user's lock: on the pipeline bench the two searches were most of the
-- database's time per remember (docs/benchmarks.md).
--
-- How: engram sets `engram.dedup_searched` to '<memory id>@<version>' for
-- an insert whose vector a search of the whole user, at that version, found
-- no memory within the duplicate threshold of (engram also compares it with
-- every vector its transaction wrote before it). The check skips its own
-- nearest search for that row when the user's version, read the first time
-- this transaction held the user's lock, is that version: no write of the
-- user came between the search and the lock, and none can come after it.
--
-- Invariants:
-- * versions come from one sequence for all users, so a version names one
--   user at one state; a claim about another row, another user or another
--   state is ignored, and the check searches as before;
-- * `engram.locked_version` is recorded before this transaction's first
--   insert of the user changes anything; a transaction that wrote before
--   its first insert records the version after its own write, which no
--   search outside it saw, so no claim matches;
-- * an insert of a text no current memory holds runs no UPDATE: closing an
--   expired memory with the same text (as 20270401000001 does) now follows
--   the same-text lookup instead of running before it, with its two
--   statement triggers, on every insert;
-- * the exact-text check (a btree lookup) always runs, and is all that
--   runs for a threshold above 1 (engram's supersedes and imports ask for
--   exact texts only; they used to search for nothing the threshold could
--   accept);
-- * both settings are transaction-local and, set in a savepoint that is
--   rolled back, are rolled back with it.

-- As before (20271001000002), with the search skipped for a row engram
-- vouches for.
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
       AND current_setting('engram.dedup_searched', true)
           IS DISTINCT FROM NEW.id::text || '@' || locked THEN
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
