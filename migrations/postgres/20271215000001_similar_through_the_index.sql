-- The reconciler's search reads the vector index where the user's rows are
-- in it.
--
-- Why: a remember with inference searches the user's memories for each new
-- fact (the candidates the model reconciles the fact with). That search was
-- recall's own, engram_nearest: an exact scan while the user has at most
-- engram_exact_scan_limit() rows (at least 5,000), chosen so that recall's
-- hits are exact. From a user's engram_index_from_rows()-th memory (1,000)
-- their rows are in the index anyway, and there the exact scan cost 2.6 ms
-- against 0.9 ms through the index with pgvector's default search list (40)
-- at 1,800 rows of 384 dimensions, with the same top 5 for 499 of 500
-- (docs/benchmarks.md). A fact's candidates need not be exact: they are
-- advice to the model, and the duplicate check already trusts the index
-- with that list past its own limit.
--
-- How: engram_similar() is engram_nearest() for the reconciler. For a whole
-- user (no agent, run or metadata filter) with at least as many rows in the
-- index as outside it, and at least p_k there, it asks engram_nearest for
-- the index branch (the exact-scan limit at 0 for this call) with a search
-- list of 40; engram_nearest still scans the rows outside the index
-- exactly, and answers exactly should the index come back short. Any other
-- call is engram_nearest's as it is. The settings it changes are put back
-- before it returns.
CREATE FUNCTION engram_similar(
    p_user text, p_agent text, p_run text, p_filter jsonb,
    p_query vector, p_k integer, p_exclude uuid[] DEFAULT '{}'
) RETURNS TABLE (id uuid, similarity real)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    in_index bigint;
    outside bigint;
    saved_rows text;
    saved_ratio text;
BEGIN
    IF p_agent IS NULL AND p_run IS NULL AND p_filter IS NULL THEN
        SELECT u.current - u.waiting, u.waiting INTO in_index, outside
            FROM memory_users u WHERE u.user_id = p_user;
    END IF;
    IF coalesce(in_index, 0) < greatest(coalesce(outside, 0), p_k, 1) THEN
        RETURN QUERY SELECT * FROM engram_nearest(
            p_user, p_agent, p_run, p_filter, p_query, p_k, p_exclude);
        RETURN;
    END IF;
    saved_rows := current_setting('engram.exact_scan_max_rows', true);
    saved_ratio := current_setting('engram.exact_scan_ratio', true);
    PERFORM set_config('engram.exact_scan_max_rows', '0', true),
            set_config('engram.exact_scan_ratio', '0', true);
    RETURN QUERY SELECT * FROM engram_nearest(
        p_user, NULL, NULL, NULL, p_query, p_k, p_exclude, 40);
    PERFORM set_config('engram.exact_scan_max_rows', coalesce(saved_rows, ''), true),
            set_config('engram.exact_scan_ratio', coalesce(saved_ratio, ''), true);
END $$;
