-- Widening dedup rounds.
--
-- A user may hold many memories close to a new one that each state another
-- detail ("... reference 1001", "... reference 1002", ...). The trigger
-- reports near-duplicates a round at a time; the writer judges them, lists
-- the different ones in engram.dedup_allow and inserts again. With a fixed 8
-- per round, a user with more than (8 x the writer's rounds) such memories
-- could not add another. Now the writer also sets engram.dedup_k, the number
-- of near-duplicates a round may report (engram doubles it every round), so
-- n close memories take about log2(n / 8) rounds. Other writers keep 8.

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
            FROM engram_nearest(NEW.user_id, NULL, NULL, NULL, NEW.embedding, k, allowed,
                                greatest(40, k)) n
            WHERE n.similarity >= threshold;
    END IF;

    IF near IS NOT NULL THEN
        RAISE EXCEPTION 'memory % duplicates a current memory of its user', NEW.id
            USING ERRCODE = 'EG001', DETAIL = near::text;
    END IF;
    RETURN NEW;
END $$;
