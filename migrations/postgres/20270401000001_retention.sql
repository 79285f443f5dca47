-- Retention: memories expire (`expires_at`) and the purge removes them;
-- superseded memories are removed after the history retention.
--
-- Invariant kept here and in the store's reads: a memory whose expires_at
-- is at or before the transaction's clock (now()) is never returned, scored
-- or counted as a duplicate, even before the purge removes it.

-- The user's current memories that carry an expiry (memories without one,
-- the common case, are not in it): what reads leave out.
CREATE INDEX memories_expiring ON memories (user_id, expires_at)
    WHERE valid_to IS NULL AND expires_at IS NOT NULL;
-- What the purge looks for across all users.
CREATE INDEX memories_expiry ON memories (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX memories_closed_at ON memories (valid_to) WHERE valid_to IS NOT NULL;

-- The user's current memories that have expired and await the purge.
CREATE FUNCTION engram_expired_ids(p_user text) RETURNS uuid[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(m.id), '{}') FROM memories m
    WHERE m.user_id = p_user AND m.valid_to IS NULL
      AND m.expires_at IS NOT NULL AND m.expires_at <= now()
$$;

-- As before (20261201000002), and expiry-aware: an expired memory with the
-- same text is closed (at its expiry) so that it no longer holds the unique
-- index on current texts, and expired memories are never near-duplicates.
-- The closed row still has its expiry: the purge removes it like any other.
CREATE OR REPLACE FUNCTION engram_refuse_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    threshold real := coalesce(
        nullif(current_setting('engram.dedup_threshold', true), '')::real, 0.9);
    allowed uuid[] := coalesce(
        nullif(current_setting('engram.dedup_allow', true), '')::uuid[], '{}');
    k integer := least(greatest(coalesce(
        nullif(current_setting('engram.dedup_k', true), '')::integer, 8), 1), 4096);
    near jsonb;
BEGIN
    IF NEW.valid_to IS NOT NULL THEN
        RETURN NEW;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || NEW.user_id, 0));

    UPDATE memories m SET valid_to = m.expires_at
        WHERE m.user_id = NEW.user_id AND m.content_hash = NEW.content_hash
          AND m.valid_to IS NULL AND m.expires_at <= now();

    -- The same text: exact, through the unique index's btree.
    SELECT jsonb_agg(jsonb_build_object('id', m.id, 'similarity', 1.0)) INTO near
        FROM memories m
        WHERE m.user_id = NEW.user_id AND m.content_hash = NEW.content_hash
          AND m.valid_to IS NULL AND m.id <> ALL (allowed);
    IF near IS NULL THEN
        SELECT jsonb_agg(jsonb_build_object('id', n.id, 'similarity', n.similarity)) INTO near
            -- A near-duplicate sits very close to the new vector, where even
            -- pgvector's default search list (40) finds it; a wider round
            -- needs a list at least as long as the rows it asks for.
            FROM engram_nearest(NEW.user_id, NULL, NULL, NULL, NEW.embedding, k,
                                allowed || engram_expired_ids(NEW.user_id),
                                greatest(40, k)) n
            WHERE n.similarity >= threshold;
    END IF;

    IF near IS NOT NULL THEN
        RAISE EXCEPTION 'memory % duplicates a current memory of its user', NEW.id
            USING ERRCODE = 'EG001', DETAIL = near::text;
    END IF;
    RETURN NEW;
END $$;
