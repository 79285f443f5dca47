-- A large user's new rows wait outside the vector index, and the indexer
-- moves them in: the index insertion leaves the acknowledged write.
--
-- Why: from a user's 1,000th memory (engram_index_from_rows) every insert
-- paid an HNSW insertion under the user's lock, ~6 ms at 1536 dimensions
-- against ~0.3 ms for the same row outside the index (20270801000001), so
-- one user's remembers were capped near 1 / 6 ms whatever else engram did.
--
-- How:
-- * memory_users.waiting counts each user's current rows outside the index,
--   kept by engram_count_current beside `current`.
-- * A new current row of a large user goes outside the index while fewer
--   than engram_index_tail_rows() (default 256, setting
--   engram.index_tail_rows) wait, and into it directly once that many do: the
--   tail is bounded, and with it the exact scan that every search of the user
--   and every dedup check adds (engram_nearest's index branch reads the rows
--   outside the index exactly, so what was just written is found exactly).
--   256 rows absorb an agent's bursts; at 1536 dimensions their scan costs
--   ~0.9 ms, a full 1,000 ~3.4 ms (docs/benchmarks.md).
-- * While a large user has rows waiting, the user's backlog is marked (by
--   engram_count_current, beside the count), and the store's indexer
--   (store/postgres/indexer.rs) moves the waiting rows in, in the background.
-- * The indexer's move changes nothing a reader sees, so it does not move the
--   user's version (20261201000001): it runs with engram.moving_into_index
--   set for its transaction alone, and no other statement sets it.
--
-- Lock order: the choice takes the user's advisory lock (the dedup trigger,
-- which fires next, takes it again) before any memory_users row is written,
-- the order every writer follows; the indexer takes row locks only, never
-- the advisory lock.

ALTER TABLE memory_users ADD COLUMN waiting bigint NOT NULL DEFAULT 0;
UPDATE memory_users u SET waiting = w.n
    FROM (SELECT user_id, count(*) AS n FROM memories
          WHERE valid_to IS NULL AND NOT indexed GROUP BY user_id) w
    WHERE u.user_id = w.user_id;

CREATE FUNCTION engram_index_tail_rows() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('engram.index_tail_rows', true), '')::bigint, 256)
$$;

-- As before (20261230000001), with the rows outside the index counted too,
-- and the backlog marked where a large user has rows waiting. The mark is
-- written in the statement that counts the rows, so the writer holds the
-- user's row until it commits: the indexer clears a mark only where
-- `waiting` is 0, which PostgreSQL rechecks on the row the writer leaves.
CREATE OR REPLACE FUNCTION engram_count_current() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO memory_users AS u (user_id, current, keyword_length, waiting)
            SELECT user_id, count(*), sum(keyword_length), count(*) FILTER (WHERE NOT indexed)
            FROM added WHERE valid_to IS NULL
            GROUP BY user_id
            ON CONFLICT (user_id) DO UPDATE SET current = u.current + excluded.current,
                keyword_length = u.keyword_length + excluded.keyword_length,
                waiting = u.waiting + excluded.waiting,
                index_backlog = u.index_backlog OR (u.waiting + excluded.waiting > 0
                    AND u.current >= engram_index_from_rows());
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE memory_users u SET current = u.current - g.n,
                                  keyword_length = u.keyword_length - g.length,
                                  waiting = u.waiting - g.waiting
            FROM (SELECT user_id, count(*) AS n, sum(keyword_length) AS length,
                         count(*) FILTER (WHERE NOT indexed) AS waiting
                  FROM removed WHERE valid_to IS NULL GROUP BY user_id) g
            WHERE u.user_id = g.user_id;
        DELETE FROM memory_users u
            WHERE u.current <= 0 AND u.user_id IN (SELECT user_id FROM removed);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION engram_choose_indexed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    user_current bigint;
    user_waiting bigint;
BEGIN
    -- A closed row is in no vector index (they are partial on valid_to).
    IF NEW.valid_to IS NOT NULL THEN
        NEW.indexed := false;
        RETURN NEW;
    END IF;
    -- Under the user's lock (the dedup trigger, next, takes it again), so
    -- the tail's bound holds exactly.
    PERFORM pg_advisory_xact_lock(hashtextextended('engram.user:' || NEW.user_id, 0));
    SELECT u.current, u.waiting INTO user_current, user_waiting
        FROM memory_users u WHERE u.user_id = NEW.user_id;
    IF coalesce(user_current, 0) < engram_index_from_rows() THEN
        -- Searched by exact scans alone: the index would not be read.
        NEW.indexed := false;
        RETURN NEW;
    END IF;
    -- The waiting rows are the indexer's to move (engram_count_current
    -- marks the user's backlog).
    NEW.indexed := coalesce(user_waiting, 0) >= engram_index_tail_rows();
    RETURN NEW;
END $$;

-- As before (20261201000001), except for the indexer's moves.
CREATE OR REPLACE FUNCTION engram_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Runs after memories_count_* (triggers fire in name order), so a row
    -- that statement created or removed is already there or gone.
    IF TG_OP = 'INSERT' THEN
        UPDATE memory_users u SET version = nextval('engram_write_version')
            WHERE u.user_id IN (SELECT user_id FROM added);
    ELSIF TG_OP = 'UPDATE' THEN
        -- Only the indexer sets this, for a statement that changes `indexed`
        -- and nothing else: what the user's memories say is unchanged.
        IF current_setting('engram.moving_into_index', true) = 'on' THEN
            RETURN NULL;
        END IF;
        UPDATE memory_users u SET version = nextval('engram_write_version')
            WHERE u.user_id IN (SELECT user_id FROM added UNION SELECT user_id FROM removed);
    ELSE
        UPDATE memory_users u SET version = nextval('engram_write_version')
            WHERE u.user_id IN (SELECT user_id FROM removed);
    END IF;
    RETURN NULL;
END $$;
