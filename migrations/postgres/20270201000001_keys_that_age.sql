-- Keys that age: an optional expiry and a read-only scope.
--
-- expires_at NULL: the key never expires; otherwise it is refused from that
-- instant on, like a revoked key (rotation sets it on the old key to end its
-- grace period). read_only: the key may read (recall, context, stats,
-- export, history) but not remember or forget. Keys made before this
-- migration keep no expiry and full access.

ALTER TABLE api_keys
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN read_only  boolean NOT NULL DEFAULT false;

-- Erasing a user deletes their keys: found by user.
CREATE INDEX api_keys_user_id ON api_keys (user_id) WHERE user_id IS NOT NULL;
