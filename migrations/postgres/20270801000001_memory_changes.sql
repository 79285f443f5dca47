-- Which memories each write changed, for in-process copies of a user's
-- vectors (src/store/postgres/vectors.rs): a copy at version v catches up by
-- re-reading the memories logged after v, instead of every row of the user.
--
-- Invariant: for every user in memory_users, memory_changes holds every
-- memory changed at a version above the user's `changes_from`, logged at the
-- version that write moved the user to (the memories_version_* triggers take
-- the user's row lock before drawing it, so one user's versions follow
-- commit order). A copy at a version below `changes_from` cannot catch up
-- and reloads.
--
-- A user whose row goes (no current memory left) loses the log; a row made
-- again draws a fresh `changes_from`, above every version of before, so no
-- copy of the user as they were can catch up across the gap.
--
-- The log is pruned by the same triggers: a write whose new version is a
-- multiple of 64 drops its user's entries more than 1,000,000 versions old
-- and raises `changes_from` to match (a copy that far behind reloads).

CREATE TABLE memory_changes (
    user_id   text   NOT NULL,
    version   bigint NOT NULL,
    memory_id uuid   NOT NULL,
    PRIMARY KEY (user_id, version, memory_id)
);

ALTER TABLE memory_users
    ADD COLUMN changes_from bigint NOT NULL DEFAULT nextval('engram_write_version');
-- Nothing was logged before now: existing rows' logs start at their version.
UPDATE memory_users SET changes_from = version;

ALTER TABLE memory_changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_changes FORCE ROW LEVEL SECURITY;
CREATE POLICY engram_acting_user ON memory_changes
    USING (user_id = (SELECT current_setting('engram.user_id', true))
           OR (SELECT current_setting('engram.all_users', true)) = 'on');

CREATE OR REPLACE FUNCTION engram_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    users text[];
    versions bigint[];
BEGIN
    -- Runs after memories_count_* (triggers fire in name order), so a row
    -- that statement created or removed is already there or gone. The
    -- version is drawn by the UPDATE, after it holds the user's row lock.
    IF TG_OP = 'INSERT' THEN
        WITH bumped AS (
                UPDATE memory_users u SET version = nextval('engram_write_version')
                    WHERE u.user_id IN (SELECT user_id FROM added)
                    RETURNING u.user_id, u.version),
             logged AS (
                INSERT INTO memory_changes (user_id, version, memory_id)
                    SELECT DISTINCT b.user_id, b.version, a.id
                    FROM added a JOIN bumped b ON b.user_id = a.user_id)
        SELECT array_agg(user_id), array_agg(version) INTO users, versions FROM bumped;
    ELSIF TG_OP = 'UPDATE' THEN
        WITH touched AS (SELECT user_id, id FROM added UNION SELECT user_id, id FROM removed),
             bumped AS (
                UPDATE memory_users u SET version = nextval('engram_write_version')
                    WHERE u.user_id IN (SELECT user_id FROM touched)
                    RETURNING u.user_id, u.version),
             logged AS (
                INSERT INTO memory_changes (user_id, version, memory_id)
                    SELECT b.user_id, b.version, t.id
                    FROM touched t JOIN bumped b ON b.user_id = t.user_id)
        SELECT array_agg(user_id), array_agg(version) INTO users, versions FROM bumped;
    ELSE
        WITH bumped AS (
                UPDATE memory_users u SET version = nextval('engram_write_version')
                    WHERE u.user_id IN (SELECT user_id FROM removed)
                    RETURNING u.user_id, u.version),
             logged AS (
                INSERT INTO memory_changes (user_id, version, memory_id)
                    SELECT DISTINCT b.user_id, b.version, r.id
                    FROM removed r JOIN bumped b ON b.user_id = r.user_id)
        SELECT array_agg(user_id), array_agg(version) INTO users, versions FROM bumped;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        -- A user left without a row keeps no log.
        DELETE FROM memory_changes c
            WHERE c.user_id IN (SELECT DISTINCT user_id FROM removed)
              AND NOT EXISTS (SELECT 1 FROM memory_users u WHERE u.user_id = c.user_id);
    END IF;
    -- Pruning, for the users moved to a multiple of 64.
    FOR i IN 1 .. coalesce(cardinality(users), 0) LOOP
        CONTINUE WHEN versions[i] % 64 <> 0;
        DELETE FROM memory_changes
            WHERE user_id = users[i] AND version <= versions[i] - 1000000;
        UPDATE memory_users SET changes_from = versions[i] - 1000000
            WHERE user_id = users[i] AND changes_from < versions[i] - 1000000;
    END LOOP;
    RETURN NULL;
END $$;
