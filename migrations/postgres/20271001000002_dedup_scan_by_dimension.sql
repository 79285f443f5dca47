-- The duplicate check scans exactly only as many rows as cost what the
-- exact-scan limit was measured to cost: at 384 dimensions.
--
-- Why: engram_exact_scan_limit() (default 5,000 rows) was tuned on 384-
-- dimensional vectors. An exact scan's cost grows with the dimension, and
-- at 1536 (OpenAI's small model) the check under the user's lock cost
-- 5.5 ms at 1,000-2,000 rows and 17 ms at 4,000-5,000, as much as every
-- other part of a remember together (docs/benchmarks.md). The check looks
-- only for rows very close to the new one (similarity >= 0.9), which the
-- vector index finds even with a short search list: that is already how it
-- runs past the limit.
--
-- How: at d > 384 dimensions the check scales both settings the limit is
-- made of for its own call to engram_nearest (rows by 384 / d, the table
-- ratio by (384 / d)^2, since the limit takes its square root) and puts
-- them back after. Recall's searches keep the limit as configured: there
-- an exact answer is worth the time. Forcing settings (exact scans always,
-- the index always) keep their meaning.

-- As before (20270401000001), with the limit scaled to the dimension.
CREATE OR REPLACE FUNCTION engram_refuse_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    threshold real := coalesce(
        nullif(current_setting('engram.dedup_threshold', true), '')::real, 0.9);
    allowed uuid[] := coalesce(
        nullif(current_setting('engram.dedup_allow', true), '')::uuid[], '{}');
    k integer := least(greatest(coalesce(
        nullif(current_setting('engram.dedup_k', true), '')::integer, 8), 1), 4096);
    near jsonb;
    dims integer;
    saved_rows text;
    saved_ratio text;
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
