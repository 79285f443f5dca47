-- engram embedded store (SQLite). Times are Unix milliseconds, UTC.

-- Facts about the store itself: which embedder built the vectors, and dims.
CREATE TABLE store_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE memories (
    pk           INTEGER PRIMARY KEY,            -- rowid; also the FTS rowid
    id           TEXT    NOT NULL UNIQUE,        -- UUID v7, the public id
    user_id      TEXT    NOT NULL,
    agent_id     TEXT,
    run_id       TEXT,
    content      TEXT    NOT NULL,
    content_hash TEXT    NOT NULL,               -- sha256 of the content, hex
    metadata     TEXT    NOT NULL DEFAULT '{}',  -- JSON object
    categories   TEXT    NOT NULL DEFAULT '[]',  -- JSON array of strings
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    valid_from   INTEGER NOT NULL,
    valid_to     INTEGER,                        -- set when superseded; NULL = current
    expires_at   INTEGER
);
-- Vectors live apart from the rows they belong to, so scans of memories
-- (keyword joins, listings) read small rows and never page through blobs.
CREATE TABLE memory_vectors (
    pk        INTEGER PRIMARY KEY REFERENCES memories (pk) ON DELETE CASCADE,
    embedding BLOB NOT NULL                      -- f32 little-endian, the store's dims long
);

CREATE INDEX memories_scope  ON memories (user_id, agent_id, run_id) WHERE valid_to IS NULL;
CREATE INDEX memories_recent ON memories (user_id, updated_at DESC) WHERE valid_to IS NULL;
CREATE INDEX memories_hash   ON memories (user_id, content_hash);

CREATE TABLE memory_history (
    pk          INTEGER PRIMARY KEY,
    memory_id   TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    event       TEXT    NOT NULL CHECK (event IN ('ADD', 'UPDATE', 'SUPERSEDE', 'DELETE')),
    old_content TEXT,
    new_content TEXT,
    actor       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX memory_history_memory ON memory_history (memory_id);
CREATE INDEX memory_history_user   ON memory_history (user_id);

-- Every write bumps the writer's user to the next value of one global sequence,
-- so a generation is never reused, even after the user is forgotten and returns.
CREATE TABLE write_seq (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    value INTEGER NOT NULL
);
INSERT INTO write_seq (one, value) VALUES (1, 0);

CREATE TABLE user_generations (
    user_id    TEXT PRIMARY KEY,
    generation INTEGER NOT NULL
) WITHOUT ROWID;

-- Keyword index over current memories. `scope` holds hashed user/agent/run
-- tokens so MATCH narrows by scope inside the index; rowid = memories.pk.
CREATE VIRTUAL TABLE memories_fts USING fts5 (
    scope,
    content,
    content = '',
    contentless_delete = 1,
    tokenize = 'porter unicode61 remove_diacritics 2'
);
