-- Keys that age: an optional expiry and a read-only scope. expires_at NULL
-- (integer milliseconds otherwise): the key never expires; from that instant
-- on it is refused like a revoked key (rotation sets it on the old key to
-- end its grace period). read_only 1: the key may read (recall, context,
-- stats, export, history) but not remember or forget. Keys made before this
-- migration keep no expiry and full access.
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
ALTER TABLE api_keys ADD COLUMN read_only INTEGER NOT NULL DEFAULT 0 CHECK (read_only IN (0, 1));

-- Erasing a user deletes their keys: found by user.
CREATE INDEX api_keys_user_id ON api_keys (user_id) WHERE user_id IS NOT NULL;
