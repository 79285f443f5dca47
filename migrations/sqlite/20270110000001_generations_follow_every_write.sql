-- Every change to a user's memories or vectors moves the user's generation
-- (its cache version, and what the in-process vector copy is checked
-- against) in the same transaction, whoever makes it: engram, or SQL run by
-- hand on the file, as PostgreSQL's memories_version_* triggers do.
--
-- engram's own writes also move the generation explicitly, last, in their
-- transaction; the value they end at is the one they report. A write made
-- by engram thus takes several steps of write_seq instead of one: a
-- generation is still never reused, and nothing counts the steps.
--
-- Triggers fire for each row: a statement over many rows takes as many steps.

CREATE TRIGGER memories_generation_insert AFTER INSERT ON memories
BEGIN
    UPDATE write_seq SET value = value + 1 WHERE one = 1;
    INSERT INTO user_generations (user_id, generation)
        VALUES (NEW.user_id, (SELECT value FROM write_seq WHERE one = 1))
        ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation;
END;

-- Both users, should the row move from one to another.
CREATE TRIGGER memories_generation_update AFTER UPDATE ON memories
BEGIN
    UPDATE write_seq SET value = value + 1 WHERE one = 1;
    INSERT INTO user_generations (user_id, generation)
        VALUES (OLD.user_id, (SELECT value FROM write_seq WHERE one = 1))
        ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation;
    INSERT INTO user_generations (user_id, generation)
        VALUES (NEW.user_id, (SELECT value FROM write_seq WHERE one = 1))
        ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation;
END;

-- engram's delete_user removes the user's generation row after its memories,
-- in the same transaction, so no trace of the user is left.
CREATE TRIGGER memories_generation_delete AFTER DELETE ON memories
BEGIN
    UPDATE write_seq SET value = value + 1 WHERE one = 1;
    INSERT INTO user_generations (user_id, generation)
        VALUES (OLD.user_id, (SELECT value FROM write_seq WHERE one = 1))
        ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation;
END;

-- A vector changed in place (a new vector for an existing memory; inserts
-- and deletes come with their memory, whose triggers move the generation).
CREATE TRIGGER memory_vectors_generation_update AFTER UPDATE ON memory_vectors
BEGIN
    UPDATE write_seq SET value = value + 1 WHERE one = 1;
    INSERT INTO user_generations (user_id, generation)
        SELECT user_id, (SELECT value FROM write_seq WHERE one = 1)
        FROM memories WHERE pk = NEW.pk
        ON CONFLICT (user_id) DO UPDATE SET generation = excluded.generation;
END;
