-- Per-user write versions, for caches.
--
-- Invariant: every statement that touches a user's memories moves the user
-- to a version no user has had before (one sequence for all), in the same
-- transaction as the change. A cache entry records the version it was built
-- at and is served only while the user is still at that version, so no entry
-- can outlive a write, whichever process or tool made it (raw SQL included).
-- A user without current memories has no row, hence no version: nothing of
-- theirs is cached, and after a full forget no old version can come back.

CREATE SEQUENCE engram_write_version;

ALTER TABLE memory_users
    ADD COLUMN version bigint NOT NULL DEFAULT nextval('engram_write_version');

CREATE FUNCTION engram_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Runs after memories_count_* (triggers fire in name order), so a row
    -- that statement created or removed is already there or gone.
    IF TG_OP = 'INSERT' THEN
        UPDATE memory_users u SET version = nextval('engram_write_version')
            WHERE u.user_id IN (SELECT user_id FROM added);
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE memory_users u SET version = nextval('engram_write_version')
            WHERE u.user_id IN (SELECT user_id FROM added UNION SELECT user_id FROM removed);
    ELSE
        UPDATE memory_users u SET version = nextval('engram_write_version')
            WHERE u.user_id IN (SELECT user_id FROM removed);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER memories_version_insert AFTER INSERT ON memories
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION engram_bump_version();
CREATE TRIGGER memories_version_update AFTER UPDATE ON memories
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION engram_bump_version();
CREATE TRIGGER memories_version_delete AFTER DELETE ON memories
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION engram_bump_version();
