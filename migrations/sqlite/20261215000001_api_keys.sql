-- API keys for the HTTP transport. Only a key's SHA-256 is stored (the key
-- itself is shown once, by `engram keys create`); `prefix` is its first
-- characters, to tell keys apart in listings. user_id NULL: an admin key,
-- which may act for any user. A revoked key keeps its row (revoked_at set).
CREATE TABLE api_keys (
    id         TEXT    PRIMARY KEY,              -- UUID
    prefix     TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,          -- sha256 of the whole key, hex
    user_id    TEXT,                             -- NULL: admin
    label      TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
