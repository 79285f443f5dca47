-- Each user's document frequencies, kept beside the postings.
--
-- BM25 needs, for every query term, how many of the user's current memories
-- hold it. Counting the postings for it costs as much as the term is common
-- (~1.8 ms for a five-term query at 100k memories, paid by the keyword
-- search and again when the vector candidates are scored); this table makes
-- it one probe per term.
--
-- Invariants, kept by the triggers below on every write to keyword_postings:
-- * docs is the number of the user's postings of the term (a row exists
--   exactly when that number is positive);
-- * max_tf is at least the largest tf among them and min_length at most the
--   smallest length. Both only widen while the term has postings (a removed
--   posting cannot tighten them without a recount), so the per-term bound
--   MaxScore derives from them stays an upper bound, if a looser one; they
--   start afresh when docs falls to 0, and exact after a keyword rebuild.

CREATE TABLE keyword_terms (
    user_id    text    NOT NULL,
    term       text    NOT NULL,
    docs       integer NOT NULL,
    max_tf     integer NOT NULL,
    min_length integer NOT NULL,
    PRIMARY KEY (user_id, term)
);

INSERT INTO keyword_terms (user_id, term, docs, max_tf, min_length)
    SELECT user_id, term, count(*), max(tf), min(length)
    FROM keyword_postings GROUP BY user_id, term;

-- Writers of one user queue on the user's advisory lock (the one the
-- deduplication trigger takes), which engram takes before any other lock of
-- the user's; taking it here first too keeps other writers in that order.
-- Rows change in (user, term) order either way.
CREATE FUNCTION engram_count_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || u.user_id, 0))
            FROM (SELECT DISTINCT user_id FROM added ORDER BY user_id) u;
        INSERT INTO keyword_terms AS t (user_id, term, docs, max_tf, min_length)
            SELECT user_id, term, count(*), max(tf), min(length) FROM added
            GROUP BY user_id, term ORDER BY user_id, term
            ON CONFLICT (user_id, term) DO UPDATE
                SET docs = t.docs + excluded.docs,
                    max_tf = greatest(t.max_tf, excluded.max_tf),
                    min_length = least(t.min_length, excluded.min_length);
    ELSE
        PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || u.user_id, 0))
            FROM (SELECT DISTINCT user_id FROM removed ORDER BY user_id) u;
        -- The user's rows are there; an upsert keeps the order explicit.
        INSERT INTO keyword_terms AS t (user_id, term, docs, max_tf, min_length)
            SELECT user_id, term, -count(*), 0, 0 FROM removed
            GROUP BY user_id, term ORDER BY user_id, term
            ON CONFLICT (user_id, term) DO UPDATE SET docs = t.docs + excluded.docs;
        DELETE FROM keyword_terms t
            USING (SELECT DISTINCT user_id, term FROM removed) r
            WHERE t.user_id = r.user_id AND t.term = r.term AND t.docs <= 0;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER keyword_postings_count_insert AFTER INSERT ON keyword_postings
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION engram_count_terms();
CREATE TRIGGER keyword_postings_count_delete AFTER DELETE ON keyword_postings
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION engram_count_terms();

-- As before, with the term statistics read from keyword_terms.
CREATE OR REPLACE FUNCTION engram_keyword_weights(p_user text, p_terms text[])
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
             SELECT q.term, coalesce(s.docs, 0)::bigint AS df, s.max_tf, s.min_length
             FROM (SELECT DISTINCT t AS term FROM unnest(p_terms) AS t) q
                  LEFT JOIN keyword_terms s ON s.user_id = p_user AND s.term = q.term),
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
