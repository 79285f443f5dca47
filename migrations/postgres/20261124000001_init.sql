-- engram production store (PostgreSQL + pgvector >= 0.8).
--
-- The embedding column is created without a dimension: the store fixes it
-- (ALTER ... TYPE vector(N)) and builds the vector index when it is first
-- opened with an embedder, and records that embedder in store_info.

CREATE EXTENSION IF NOT EXISTS vector;

-- Facts about the store itself: which embedder built the vectors, which index.
CREATE TABLE store_info (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE memories (
    id           uuid        PRIMARY KEY,            -- UUID v7, the public id
    user_id      text        NOT NULL,
    agent_id     text,
    run_id       text,
    content      text        NOT NULL,
    content_hash bytea       NOT NULL,               -- sha256 of the content
    embedding    vector      NOT NULL,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    categories   text[]      NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    valid_from   timestamptz NOT NULL,
    valid_to     timestamptz,                        -- set when superseded; NULL = current
    expires_at   timestamptz,
    CHECK (jsonb_typeof(metadata) = 'object')
);

-- Scoping and listing; every query names a user and reads current rows.
CREATE INDEX memories_scope  ON memories (user_id, agent_id, run_id) WHERE valid_to IS NULL;
CREATE INDEX memories_recent ON memories (user_id, updated_at DESC) WHERE valid_to IS NULL;
-- One current copy of a text per user, whatever the vector index finds.
CREATE UNIQUE INDEX memories_current_text ON memories (user_id, content_hash) WHERE valid_to IS NULL;
-- fastupdate off: a pending list would be scanned linearly by every search
-- until vacuum merges it (3 ms per keyword search at 30k rows, measured).
CREATE INDEX memories_metadata ON memories USING gin (metadata jsonb_path_ops) WITH (fastupdate = off);

-- Keyword search has a table of its own, kept by a trigger: one narrow row
-- per current memory. Ranking reads every row that matches a query word,
-- and memories rows are ~1.8 kB (the vector sits inline), one per page; here
-- ~40 fit a page. `terms` holds the content's lexemes plus a token for the
-- user, so the GIN index intersects the user's postings with the words'
-- instead of collecting every user's matches and filtering afterwards.
CREATE TABLE memory_keywords (
    id       uuid     PRIMARY KEY REFERENCES memories (id) ON DELETE CASCADE,
    user_id  text     NOT NULL,
    agent_id text,
    run_id   text,
    terms    tsvector NOT NULL
);
CREATE INDEX memory_keywords_terms ON memory_keywords USING gin (terms) WITH (fastupdate = off);
CREATE INDEX memory_keywords_scope ON memory_keywords (user_id, agent_id, run_id);

-- The lexeme that stands for a user inside `terms` (and in queries).
CREATE FUNCTION engram_user_lexeme(user_id text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'u' || md5(user_id) $$;

CREATE FUNCTION engram_keyword_terms(user_id text, content text) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_tsvector('english', content) || array_to_tsvector(ARRAY[engram_user_lexeme(user_id)])
$$;

CREATE FUNCTION engram_index_keywords() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM memory_keywords WHERE id = OLD.id;
    END IF;
    IF NEW.valid_to IS NULL THEN
        INSERT INTO memory_keywords (id, user_id, agent_id, run_id, terms)
        VALUES (NEW.id, NEW.user_id, NEW.agent_id, NEW.run_id,
                engram_keyword_terms(NEW.user_id, NEW.content));
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER memories_index_keywords AFTER INSERT ON memories
    FOR EACH ROW EXECUTE FUNCTION engram_index_keywords();
CREATE TRIGGER memories_reindex_keywords
    AFTER UPDATE OF user_id, agent_id, run_id, content, valid_to ON memories
    FOR EACH ROW EXECUTE FUNCTION engram_index_keywords();

-- Up to k current memories in scope matching any of `words` (plain words,
-- space-separated), best ts_rank first.
-- * A user with few rows (engram_exact_scan_limit, as for vectors): their
--   rows are read through the scope index and tested one by one. Through
--   GIN, a common word's postings cover every user (1M rows: ~7 ms a query,
--   against well under 1 ms for 1k rows read directly).
-- * Many rows: GIN, where ranking must still read every matching row, and a
--   common word matches thousands. So the rows matching at least two of the
--   words are ranked first: when they are k or more, they are the top k
--   (each matched word adds to ts_rank, so a row matching two outranks rows
--   matching one, term frequencies aside) and the rest is never read.
--   Otherwise every row matching any word is ranked.
CREATE FUNCTION engram_keyword_search(
    p_user text, p_agent text, p_run text, p_filter jsonb, p_words text, p_k integer
) RETURNS TABLE (id uuid, rank real)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lexemes text[] := ARRAY(
        SELECT DISTINCT l FROM unnest(tsvector_to_array(to_tsvector('english', p_words))) l
        ORDER BY l LIMIT 16);
    user_query tsquery := quote_literal(engram_user_lexeme(p_user))::tsquery;
    in_scope bigint;
    any_word tsquery;
    two_words tsquery;
    top_ids uuid[];
    top_ranks real[];
BEGIN
    IF cardinality(lexemes) = 0 THEN
        RETURN;
    END IF;
    SELECT string_agg(quote_literal(l), ' | ')::tsquery INTO any_word FROM unnest(lexemes) l;
    SELECT u.current INTO in_scope FROM memory_users u WHERE u.user_id = p_user;
    IF coalesce(in_scope, 0) <= engram_exact_scan_limit() THEN
        -- OFFSET 0 keeps the word test out of the scan: left to itself the
        -- planner ANDs the user's rows with GIN's bitmap of every user's
        -- matches (16 ms for a 1k-row user in 1.1M rows, measured).
        RETURN QUERY
            SELECT k.id, ts_rank(k.terms, any_word) AS r
            FROM (SELECT * FROM memory_keywords WHERE user_id = p_user OFFSET 0) k
            WHERE k.terms @@ any_word
              AND (p_agent IS NULL OR k.agent_id = p_agent) AND (p_run IS NULL OR k.run_id = p_run)
              AND (p_filter IS NULL OR EXISTS (
                  SELECT 1 FROM memories m WHERE m.id = k.id AND m.metadata @> p_filter))
            ORDER BY r DESC, k.id LIMIT p_k;
        RETURN;
    END IF;
    IF cardinality(lexemes) >= 2 THEN
        SELECT string_agg(format('(%s & %s)', quote_literal(a), quote_literal(b)), ' | ')::tsquery
            INTO two_words
            FROM unnest(lexemes) a, unnest(lexemes) b WHERE a < b;
        SELECT coalesce(array_agg(t.id), '{}'), coalesce(array_agg(t.r), '{}')
            INTO top_ids, top_ranks
            FROM (SELECT k.id, ts_rank(k.terms, any_word) AS r
                  FROM memory_keywords k
                  WHERE k.terms @@ (user_query && two_words) AND k.user_id = p_user
                    AND (p_agent IS NULL OR k.agent_id = p_agent)
                    AND (p_run IS NULL OR k.run_id = p_run)
                    AND (p_filter IS NULL OR EXISTS (
                        SELECT 1 FROM memories m WHERE m.id = k.id AND m.metadata @> p_filter))
                  ORDER BY r DESC, k.id LIMIT p_k) t;
        IF cardinality(top_ids) >= p_k THEN
            RETURN QUERY SELECT * FROM unnest(top_ids, top_ranks);
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
        SELECT k.id, ts_rank(k.terms, any_word) AS r
        FROM memory_keywords k
        WHERE k.terms @@ (user_query && any_word) AND k.user_id = p_user
          AND (p_agent IS NULL OR k.agent_id = p_agent) AND (p_run IS NULL OR k.run_id = p_run)
          AND (p_filter IS NULL OR EXISTS (
              SELECT 1 FROM memories m WHERE m.id = k.id AND m.metadata @> p_filter))
        ORDER BY r DESC, k.id LIMIT p_k;
END $$;

CREATE TABLE memory_history (
    pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    memory_id   uuid        NOT NULL,
    user_id     text        NOT NULL,
    event       text        NOT NULL CHECK (event IN ('ADD', 'UPDATE', 'SUPERSEDE', 'DELETE')),
    old_content text,
    new_content text,
    actor       text        NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX memory_history_memory ON memory_history (user_id, memory_id, pk);

-- How many current memories each user has: what the search picks its plan by
-- (exact scan for few rows, the vector index for many). Kept by triggers.
CREATE TABLE memory_users (
    user_id text   PRIMARY KEY,
    current bigint NOT NULL
);

CREATE FUNCTION engram_count_current() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO memory_users AS u (user_id, current)
            SELECT user_id, count(*) FROM added WHERE valid_to IS NULL GROUP BY user_id
            ON CONFLICT (user_id) DO UPDATE SET current = u.current + excluded.current;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE memory_users u SET current = u.current - g.n
            FROM (SELECT user_id, count(*) AS n FROM removed WHERE valid_to IS NULL
                  GROUP BY user_id) g
            WHERE u.user_id = g.user_id;
        DELETE FROM memory_users u
            WHERE u.current <= 0 AND u.user_id IN (SELECT user_id FROM removed);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER memories_count_insert AFTER INSERT ON memories
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION engram_count_current();
CREATE TRIGGER memories_count_update AFTER UPDATE ON memories
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION engram_count_current();
CREATE TRIGGER memories_count_delete AFTER DELETE ON memories
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION engram_count_current();

-- How many rows in scope a vector search still scans exactly; larger scopes
-- go through the vector index. Measured here (384 dims, 2 cores): an exact scan
-- costs ~0.8 us per row in scope; the index costs a few milliseconds (3.9 ms
-- for 10k rows at ef_search 400, 2.5 ms at 200) plus more the smaller the scope's share of
-- the table, because iterative scans skip the rows the filter rejects (k=40,
-- ef 100: 10 ms at a 25% share, 26 ms at 2.5%). So: exact while the scope has
-- at most engram.exact_scan_max_rows rows (default 5000), and also while
-- rows^2 < engram.exact_scan_ratio x
-- table rows (default 1000), i.e. the scope is a small share of a large
-- table (1M rows: exact up to ~32k rows in scope). Both settable per session.
CREATE FUNCTION engram_exact_scan_limit() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT greatest(
        coalesce(nullif(current_setting('engram.exact_scan_max_rows', true), '')::bigint, 5000),
        sqrt(coalesce(nullif(current_setting('engram.exact_scan_ratio', true), '')::float8, 1000)
             * greatest((SELECT c.reltuples FROM pg_class c WHERE c.oid = 'memories'::regclass), 0)
        )::bigint)
$$;

-- The k current memories in scope nearest to `query` (cosine), skipping
-- `exclude`; `ef` overrides the index's search list size. The plan is picked per call, so filtered search loses nothing:
-- * few rows in scope (by memory_users, or a capped count when narrowed by
--   agent, run or metadata): an exact scan through the scope's btree;
-- * many: the vector index with iterative scans, which keep walking the
--   graph until k rows pass the filter; should it still come back short
--   (max_scan_tuples reached), the exact scan answers instead.
-- Rows come back unordered (relaxed_order); callers sort by similarity.
CREATE FUNCTION engram_nearest(
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
        -- The candidate list HNSW keeps while searching (pgvector's default is
        -- 40): p_ef, else engram.ef_search (default 250: recall@10 vs an
        -- exact scan at 100k memories of one user was 0.988 at 200, 0.992 at
        -- 250, 0.998 at 300; docs/benchmarks.md), and at least twice k.
        PERFORM set_config('hnsw.ef_search', greatest(p_k * 2, coalesce(p_ef,
            nullif(current_setting('engram.ef_search', true), '')::integer, 250))::text, true);
        SELECT coalesce(array_agg(a.id), '{}'), coalesce(array_agg(a.similarity), '{}')
            INTO ann_ids, ann_similarities
            FROM (SELECT m.id, (1 - (m.embedding <=> p_query))::real AS similarity
                  FROM memories m
                  WHERE m.user_id = p_user AND m.valid_to IS NULL
                    AND (p_agent IS NULL OR m.agent_id = p_agent)
                    AND (p_run IS NULL OR m.run_id = p_run)
                    AND (p_filter IS NULL OR m.metadata @> p_filter)
                    AND m.id <> ALL (p_exclude)
                  ORDER BY m.embedding <=> p_query
                  LIMIT p_k) a;
        IF cardinality(ann_ids) >= p_k THEN
            RETURN QUERY SELECT * FROM unnest(ann_ids, ann_similarities);
            RETURN;
        END IF;
        -- Came back short: answer exactly instead.
        PERFORM set_config('enable_sort', 'on', true);
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

-- The deduplication guarantee. Under a per-user advisory lock (held to the
-- end of the transaction, so concurrent writers for one user queue here and
-- each sees the rows committed before it), a new current memory is refused
-- when a current memory of the same user has the same text or a cosine
-- similarity >= engram.dedup_threshold (default 0.9). The error (SQLSTATE
-- EG001) lists the near-duplicates as JSON in its DETAIL. A writer that has
-- looked at them and judged them different (engram compares numbers and
-- negations) lists their ids in engram.dedup_allow and inserts again.
CREATE FUNCTION engram_refuse_duplicate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    threshold real := coalesce(
        nullif(current_setting('engram.dedup_threshold', true), '')::real, 0.9);
    allowed uuid[] := coalesce(
        nullif(current_setting('engram.dedup_allow', true), '')::uuid[], '{}');
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
            -- pgvector's default search list (40) finds it; recall needs more.
            FROM engram_nearest(NEW.user_id, NULL, NULL, NULL, NEW.embedding, 8, allowed, 40) n
            WHERE n.similarity >= threshold;
    END IF;

    IF near IS NOT NULL THEN
        RAISE EXCEPTION 'memory % duplicates a current memory of its user', NEW.id
            USING ERRCODE = 'EG001', DETAIL = near::text;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER memories_refuse_duplicate BEFORE INSERT ON memories
    FOR EACH ROW EXECUTE FUNCTION engram_refuse_duplicate();
