-- Document frequencies are counted at search for users with few memories,
-- and kept in `keyword_terms` by the write path only for users with many.
--
-- Why: the statement trigger on keyword_postings upserted one keyword_terms
-- row per distinct term of every new memory (~8 for a short memory), each
-- an index probe, a row lock and a new row version in the WAL, under the
-- writer's transaction. On shape a of the side-by-side benchmark (10 users
-- of 1,000 memories, 8 clients, 1536 dimensions; docs/benchmarks.md,
-- twenty-eighth run) that was ~0.15 ms of PostgreSQL's CPU a remember, the
-- largest single share of it, to save the SQL keyword search a count of a
-- few hundred postings. For a user of 100,000 memories the trade is the
-- other way: counting a 4-term query's postings took 5.3 ms p50 (16 ms
-- p95) against 0.8 ms for the probes, on every narrowed recall (agent, run
-- or metadata) and whenever the user's copy is stale, while their writes
-- pay an HNSW insertion that dwarfs the upserts.
--
-- How: `memory_users.keeps_term_counts` says which users have their counts
-- kept. A user starts without; the first write of postings that finds
-- memory_users counting them at `engram_term_counts_from()` current
-- memories or more (10,000, or the setting `engram.term_counts_from`; the
-- count may not hold that write's own memories yet, by the order the
-- statement's triggers fire in) counts all their postings once into
-- keyword_terms and sets the flag; from then on the trigger keeps them as
-- before, also when the user shrinks again. `engram_keyword_weights` probes
-- keyword_terms for a user with the flag and counts the postings (through
-- the primary key, an index range per term, as before keyword_terms) for
-- one without. Its results are the same either way, so engram_keyword_search
-- and engram_keyword_scores are unchanged. Users below the line lose their
-- kept counts here.
--
-- Invariants:
-- * a user with keeps_term_counts has, for every term of theirs, a
--   keyword_terms row whose docs is exactly their postings of it, and
--   bounds (max_tf, min_length) that hold every one of those postings; a
--   user without it has no keyword_terms row;
-- * the flag is set, and the counts made, under the user's advisory lock
--   (the trigger takes it first, as every writer of the user does), in the
--   transaction whose postings they count, so no write of the user's falls
--   between the count and the flag;
-- * a memory_users row goes when the user's last current memory does, and
--   with it the flag; the user's postings, and so their counts, are gone
--   by then.

ALTER TABLE memory_users ADD COLUMN keeps_term_counts boolean NOT NULL DEFAULT false;

-- The number of current memories from which a user's document frequencies
-- are kept by their writes rather than counted by their searches.
CREATE FUNCTION engram_term_counts_from() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('engram.term_counts_from', true), '')::bigint, 10000)
$$;

UPDATE memory_users SET keeps_term_counts = true WHERE current >= engram_term_counts_from();
DELETE FROM keyword_terms t
    WHERE NOT EXISTS (SELECT 1 FROM memory_users u
                      WHERE u.user_id = t.user_id AND u.keeps_term_counts);

CREATE OR REPLACE FUNCTION engram_count_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- The usual case, users below the line: nothing to keep, in one
        -- statement (what this trigger costs them, beside its firing). The
        -- flag is read before the user's lock is taken here, but not before
        -- engram's writer took it (the duplicate check's, or the update's),
        -- so no flag can be set between this read and the postings' commit.
        IF NOT EXISTS (SELECT 1 FROM memory_users u
                       WHERE u.user_id IN (SELECT a.user_id FROM added a)
                         AND (u.keeps_term_counts
                              OR u.current >= engram_term_counts_from())) THEN
            RETURN NULL;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || u.user_id, 0))
            FROM (SELECT DISTINCT user_id FROM added ORDER BY user_id) u;
        -- Users whose counts are kept: this statement's postings added.
        INSERT INTO keyword_terms AS t (user_id, term, docs, max_tf, min_length)
            SELECT a.user_id, a.term, count(*), max(a.tf), min(a.length)
            FROM added a JOIN memory_users u ON u.user_id = a.user_id AND u.keeps_term_counts
            GROUP BY a.user_id, a.term ORDER BY a.user_id, a.term
            ON CONFLICT (user_id, term) DO UPDATE
                SET docs = t.docs + excluded.docs,
                    max_tf = greatest(t.max_tf, excluded.max_tf),
                    min_length = least(t.min_length, excluded.min_length);
        -- Then users who reach the line: every posting of theirs (this
        -- statement's included) counted once, and the flag set. (After the
        -- statement above, which saw them without it: nothing is counted
        -- twice. A row left by a user's earlier life is overwritten.)
        WITH reached AS (
                 UPDATE memory_users u SET keeps_term_counts = true
                 WHERE u.user_id IN (SELECT DISTINCT user_id FROM added)
                   AND NOT u.keeps_term_counts
                   AND u.current >= engram_term_counts_from()
                 RETURNING u.user_id)
        INSERT INTO keyword_terms AS t (user_id, term, docs, max_tf, min_length)
            SELECT p.user_id, p.term, count(*), max(p.tf), min(p.length)
            FROM keyword_postings p
            WHERE p.user_id IN (SELECT user_id FROM reached)
            GROUP BY p.user_id, p.term
            ON CONFLICT (user_id, term) DO UPDATE
                SET docs = excluded.docs, max_tf = excluded.max_tf,
                    min_length = excluded.min_length;
    ELSE
        PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || u.user_id, 0))
            FROM (SELECT DISTINCT user_id FROM removed ORDER BY user_id) u;
        -- Whatever rows the users have lose these postings, flag or not:
        -- their memory_users row (and flag) may be gone already, when the
        -- statement removed their last current memory.
        UPDATE keyword_terms t SET docs = t.docs - r.n
            FROM (SELECT user_id, term, count(*) AS n FROM removed
                  GROUP BY user_id, term) r
            WHERE t.user_id = r.user_id AND t.term = r.term;
        DELETE FROM keyword_terms t
            USING (SELECT DISTINCT user_id, term FROM removed) r
            WHERE t.user_id = r.user_id AND t.term = r.term AND t.docs <= 0;
    END IF;
    RETURN NULL;
END $$;

-- As in 20261230000002, with each term's df, largest tf and shortest
-- length probed in keyword_terms for a user whose counts are kept, and
-- counted from their postings for one whose are not (the aggregate row
-- only then: HAVING, since an aggregate without GROUP BY always answers).
CREATE OR REPLACE FUNCTION engram_keyword_weights(p_user text, p_terms text[])
RETURNS TABLE (rank bigint, term text, df bigint, idf float8, bound float8, outside float8,
               scale float8, avgdl float8)
LANGUAGE sql STABLE AS $$
    WITH corpus AS (
             SELECT coalesce(u.current, 0)::float8 AS n,
                    CASE WHEN coalesce(u.current, 0) <= 0 THEN 1::float8
                         ELSE greatest(u.keyword_length::float8 / u.current::float8, 1::float8)
                    END AS avgdl,
                    coalesce(u.keeps_term_counts, false) AS kept
             FROM (SELECT) AS one LEFT JOIN memory_users u ON u.user_id = p_user),
         postings AS (
             SELECT q.term, coalesce(s.df, 0)::bigint AS df, s.max_tf, s.min_length
             FROM corpus c
                  CROSS JOIN (SELECT DISTINCT t AS term FROM unnest(p_terms) AS t) q
                  LEFT JOIN LATERAL (
                      SELECT k.docs::bigint AS df, k.max_tf, k.min_length
                      FROM keyword_terms k
                      WHERE c.kept AND k.user_id = p_user AND k.term = q.term
                      UNION ALL
                      SELECT count(*), max(p.tf), min(p.length)
                      FROM keyword_postings p
                      WHERE NOT c.kept AND p.user_id = p_user AND p.term = q.term
                      HAVING NOT c.kept) s ON true),
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
