-- A user's closed memories (superseded, or retired without a successor).
--
-- Every other index on memories holds current rows only, so a read of a
-- user's closed rows (stats, export) scanned the whole table. This one holds
-- only closed rows, so the index searches and writes never touch it; a
-- row enters it once, when it is closed.

CREATE INDEX memories_closed ON memories (user_id) WHERE valid_to IS NOT NULL;
