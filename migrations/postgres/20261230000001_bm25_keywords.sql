-- Keyword search becomes BM25 over each user's own memories (src/keywords.rs).
--
-- Terms are made in Rust (stemmed words, function words left out), so both stores
-- index the same terms and score them the same way; the tsvector copy of
-- every memory, its trigger and ts_rank (which has no IDF) go. engram writes
-- a memory's postings in the transaction that makes it current or changes
-- its text; on first open after this migration it builds them for the
-- memories already stored (store_info key 'keyword_index').

DROP TRIGGER memories_index_keywords ON memories;
DROP TRIGGER memories_reindex_keywords ON memories;
DROP FUNCTION engram_index_keywords();
DROP FUNCTION engram_keyword_search(text, text, text, jsonb, text, integer);
DROP TABLE memory_keywords;
DROP FUNCTION engram_keyword_terms(text, text);
DROP FUNCTION engram_user_lexeme(text);

-- The memory's number of terms (keywords::DocumentTerms::length).
ALTER TABLE memories ADD COLUMN keyword_length integer NOT NULL DEFAULT 0;

-- One row per distinct term of each current memory. A query reads the
-- postings of its terms for one user through the primary key and nothing
-- else (an index-only scan once vacuum has run): `length` repeats the
-- memory's keyword_length so scoring never reads the wide memories rows.
CREATE TABLE keyword_postings (
    user_id   text    NOT NULL,
    term      text    NOT NULL,
    memory_id uuid    NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    tf        integer NOT NULL,                      -- occurrences of the term in the memory
    length    integer NOT NULL,                      -- the memory's keyword_length
    -- tf and length ride in the index: scoring reads the index alone.
    PRIMARY KEY (user_id, term, memory_id) INCLUDE (tf, length)
);
-- For the cascade, and for dropping one memory's postings.
CREATE INDEX keyword_postings_memory ON keyword_postings (memory_id);

-- BM25's average length: the sum of keyword_length over the user's current
-- memories (memory_users.current is the count).
ALTER TABLE memory_users ADD COLUMN keyword_length bigint NOT NULL DEFAULT 0;

-- As before, with the lengths summed beside the counts.
CREATE OR REPLACE FUNCTION engram_count_current() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO memory_users AS u (user_id, current, keyword_length)
            SELECT user_id, count(*), sum(keyword_length) FROM added WHERE valid_to IS NULL
            GROUP BY user_id
            ON CONFLICT (user_id) DO UPDATE SET current = u.current + excluded.current,
                keyword_length = u.keyword_length + excluded.keyword_length;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE memory_users u SET current = u.current - g.n,
                                  keyword_length = u.keyword_length - g.length
            FROM (SELECT user_id, count(*) AS n, sum(keyword_length) AS length
                  FROM removed WHERE valid_to IS NULL GROUP BY user_id) g
            WHERE u.user_id = g.user_id;
        DELETE FROM memory_users u
            WHERE u.current <= 0 AND u.user_id IN (SELECT user_id FROM removed);
    END IF;
    RETURN NULL;
END $$;

-- A memory that stops being current, or whose text (or owner) changes,
-- leaves the index; engram writes the new text's postings after this fires.
-- A writer other than engram that changes a text leaves the memory without
-- postings (unfound by keywords) rather than with the old text's.
CREATE FUNCTION engram_drop_postings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM keyword_postings WHERE memory_id = OLD.id;
    RETURN NULL;
END $$;

CREATE TRIGGER memories_drop_postings AFTER UPDATE OF valid_to, content, user_id ON memories
    FOR EACH ROW WHEN (OLD.valid_to IS NULL)
    EXECUTE FUNCTION engram_drop_postings();

-- One posting's share of a memory's raw BM25 score (k1 = 1.2, b = 0.75),
-- written as keywords::Bm25::score computes it.
CREATE FUNCTION engram_bm25_term(idf float8, tf integer, length integer, avgdl float8)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT idf * tf::float8 * (1.2::float8 + 1::float8)
           / (tf::float8 + 1.2::float8 * (1::float8 - 0.75::float8
                                         + 0.75::float8 * length::float8 / avgdl))
$$;

-- BM25's numbers for one user and a query's distinct terms (as
-- keywords::query_terms makes them), rarest first (`rank` 1, 2, ...):
-- * df, the user's postings of the term; idf from it, with df capped at N
--   (the user's current memories), as keywords::Bm25::new computes it; a
--   term the user never wrote has df 0;
-- * scale, the sum of every term's idf (the raw score that maps to 1.0),
--   and avgdl, the mean length (at least 1; 1 without memories);
-- * bound, the most one posting of the term can add to a raw score (its
--   largest tf at the shortest length among its postings; 0 without
--   postings), and outside, the sum of the bounds of the terms after it.
CREATE FUNCTION engram_keyword_weights(p_user text, p_terms text[])
RETURNS TABLE (rank bigint, term text, df bigint, idf float8, bound float8, outside float8,
               scale float8, avgdl float8)
LANGUAGE sql STABLE AS $$
    WITH corpus AS (
             SELECT coalesce(u.current, 0)::float8 AS n,
                    CASE WHEN coalesce(u.current, 0) <= 0 THEN 1::float8
                         ELSE greatest(u.keyword_length::float8 / u.current::float8, 1::float8)
                    END AS avgdl
             FROM (SELECT) AS one LEFT JOIN memory_users u ON u.user_id = p_user),
         postings AS (
             SELECT q.term, s.df, s.max_tf, s.min_length
             FROM (SELECT DISTINCT t AS term FROM unnest(p_terms) AS t) q,
                  LATERAL (SELECT count(*) AS df, max(p.tf) AS max_tf,
                                  min(p.length) AS min_length
                           FROM keyword_postings p
                           WHERE p.user_id = p_user AND p.term = q.term) s),
         w AS (
             SELECT p.term, p.df, c.avgdl,
                    ln(1::float8 + (c.n - least(p.df, c.n) + 0.5::float8)
                                   / (least(p.df, c.n) + 0.5::float8)) AS idf,
                    p.max_tf, p.min_length
             FROM postings p, corpus c),
         b AS (
             SELECT w.*, coalesce(engram_bm25_term(w.idf, w.max_tf, w.min_length, w.avgdl),
                                  0::float8) AS bound
             FROM w)
    SELECT row_number() OVER o, b.term, b.df, b.idf, b.bound,
           coalesce(sum(b.bound) OVER (o ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING),
                    0::float8),
           sum(b.idf) OVER (), b.avgdl
    FROM b
    WINDOW o AS (ORDER BY b.df, b.term)
$$;

-- Up to k current memories in scope holding any of `p_terms` (distinct),
-- best BM25 first (0..1, as keywords::Bm25 scores them; equal scores in id
-- order). Only the user's postings of those terms are read, through the
-- primary key; the statistics cover all of the user's current memories,
-- whatever the scope. Agent, run and metadata, when given, narrow the
-- candidates: a small scope's memories are read first and only they are
-- scored; a large one is checked on the ranked memories through memories'
-- primary key, best first, until k pass.
--
-- Adding up every posting of a common term is what costs (a hash aggregate
-- over every memory holding any term: ~30k for a 5-term query at 100k
-- memories, ~20 ms), so the memories are ranked in two steps when that
-- can be exact (MaxScore): score only the memories holding one of the
-- rarest terms (all their terms counted), take the k-th best score, and if
-- a memory holding none of those terms cannot reach it (the bounds of the
-- other terms sum below it), those k are the answer. Otherwise the k-th
-- score found is a floor for the answer, which picks the rarest terms for
-- a second step that then decides, or when every term is needed, every
-- memory is scored.
CREATE FUNCTION engram_keyword_search(
    p_user text, p_agent text, p_run text, p_filter jsonb, p_terms text[], p_k integer
) RETURNS TABLE (id uuid, score real)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    -- A narrowing scope of at most this many memories is read first, and
    -- only its memories scored; a larger one is checked on the ranked
    -- memories, best first, until k pass.
    scope_cap constant integer := 1000;
    narrowed boolean := p_agent IS NOT NULL OR p_run IS NOT NULL OR p_filter IS NOT NULL;
    in_scope uuid[];
    terms text[];
    idfs float8[];
    outside float8[];
    dfs bigint[];
    scale float8;
    avgdl float8;
    m integer;
    -- The rarest `first` terms decide which memories are scored.
    first integer := 0;
    held bigint := 0;
    top_ids uuid[];
    top_scores real[];
BEGIN
    SELECT array_agg(w.term ORDER BY w.rank), array_agg(w.idf ORDER BY w.rank),
           array_agg(w.outside ORDER BY w.rank), array_agg(w.df ORDER BY w.rank),
           max(w.scale), max(w.avgdl)
        INTO terms, idfs, outside, dfs, scale, avgdl
        FROM engram_keyword_weights(p_user, p_terms) w;
    m := coalesce(cardinality(terms), 0);
    IF m = 0 OR p_k <= 0 OR dfs[m] = 0 THEN
        RETURN;
    END IF;
    IF narrowed THEN
        SELECT array_agg(r.id) INTO in_scope
            FROM (SELECT r.id FROM memories r
                  WHERE r.user_id = p_user AND r.valid_to IS NULL
                    AND (p_agent IS NULL OR r.agent_id = p_agent)
                    AND (p_run IS NULL OR r.run_id = p_run)
                    AND (p_filter IS NULL OR r.metadata @> p_filter)
                  LIMIT scope_cap + 1) r;
        IF in_scope IS NULL THEN
            RETURN;
        ELSIF cardinality(in_scope) > scope_cap THEN
            in_scope := NULL;
        ELSE
            narrowed := false;
        END IF;
    END IF;
    -- At least k postings among the first terms, or there cannot be k memories.
    WHILE first < m AND held < p_k LOOP
        first := first + 1;
        held := held + dfs[first];
    END LOOP;
    LOOP
        -- The postings of the query's terms, read by term through the primary
        -- key (OFFSET 0: in every plan, generic ones included; never probed
        -- one memory at a time), and kept when their memory holds one of the
        -- first terms (and is in a small scope): hashes of those memories.
        WITH postings AS (
                 SELECT k.memory_id, k.term, k.tf, k.length FROM keyword_postings k
                 WHERE k.user_id = p_user AND k.term = ANY (terms) OFFSET 0),
             scored AS (
                 SELECT p.memory_id AS id,
                        least(1::float8,
                              sum(engram_bm25_term(w.idf, p.tf, p.length, avgdl)) / scale
                        )::real AS score
                 FROM postings p JOIN unnest(terms, idfs) AS w (term, idf) ON w.term = p.term
                 WHERE (first >= m
                        OR p.memory_id IN (SELECT e.memory_id FROM keyword_postings e
                                           WHERE e.user_id = p_user
                                             AND e.term = ANY (terms[:first])))
                   AND (in_scope IS NULL OR p.memory_id IN (SELECT unnest(in_scope)))
                 GROUP BY p.memory_id),
             -- All of them in order when the scope narrows (checked best first
             -- below, until k pass), else only the best k.
             ranked AS (
                 SELECT scored.id, scored.score FROM scored
                 ORDER BY scored.score DESC, scored.id
                 LIMIT CASE WHEN narrowed THEN NULL ELSE p_k END),
             best AS (
                 SELECT ranked.id, ranked.score FROM ranked
                 WHERE NOT narrowed
                    OR EXISTS (SELECT 1 FROM memories r
                               WHERE r.id = ranked.id AND r.user_id = p_user
                                 AND r.valid_to IS NULL
                                 AND (p_agent IS NULL OR r.agent_id = p_agent)
                                 AND (p_run IS NULL OR r.run_id = p_run)
                                 AND (p_filter IS NULL OR r.metadata @> p_filter))
                 ORDER BY ranked.score DESC, ranked.id
                 LIMIT p_k)
        SELECT coalesce(array_agg(best.id ORDER BY best.score DESC, best.id), '{}'),
               coalesce(array_agg(best.score ORDER BY best.score DESC, best.id), '{}')
            INTO top_ids, top_scores
            FROM best;
        EXIT WHEN first >= m;
        IF cardinality(top_ids) < p_k THEN
            -- Too few in scope to set a floor: score every memory.
            first := m;
            CONTINUE;
        END IF;
        -- A memory holding none of the first terms scores at most the
        -- bounds of the others (slack for the order of the additions),
        -- which must be strictly below the k-th score: equal would tie.
        IF least(1::float8, outside[first] * (1 + 1e-9) / scale)::real < top_scores[p_k] THEN
            EXIT;
        END IF;
        -- The k-th score can only rise as more memories are scored: the
        -- first terms it already decides for are the next step's.
        LOOP
            first := first + 1;
            EXIT WHEN first >= m
                OR least(1::float8, outside[first] * (1 + 1e-9) / scale)::real < top_scores[p_k];
        END LOOP;
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(top_ids, top_scores);
END $$;

-- The keyword relevance of some of the user's memories (those of `p_ids`
-- holding a query term; others score 0), exactly as engram_keyword_search
-- gives it: the statistics still cover all of the user's memories. The
-- weights are computed once (MATERIALIZED), whatever the plan around them.
CREATE FUNCTION engram_keyword_scores(p_user text, p_terms text[], p_ids uuid[])
RETURNS TABLE (id uuid, score real)
LANGUAGE sql STABLE AS $$
    WITH w AS MATERIALIZED (SELECT * FROM engram_keyword_weights(p_user, p_terms))
    SELECT p.memory_id,
           least(1::float8, sum(engram_bm25_term(w.idf, p.tf, p.length, w.avgdl))
                            / max(w.scale))::real
    FROM w JOIN keyword_postings p ON p.user_id = p_user AND p.term = w.term
    WHERE p.memory_id = ANY (p_ids)
    GROUP BY p.memory_id
$$;
