-- Retention: memories expire (`expires_at`, Unix milliseconds) and the
-- purge removes them; superseded memories are removed after the history
-- retention.
--
-- The user's current memories that carry an expiry: searches leave out the
-- expired ones before they cut at a limit (memories without an expiry,
-- the common case, are not in this index at all).
CREATE INDEX memories_expiring ON memories (user_id, expires_at)
    WHERE valid_to IS NULL AND expires_at IS NOT NULL;
-- What the purge looks for across all users: any memory past its expiry,
-- and closed memories by when they were closed.
CREATE INDEX memories_expiry ON memories (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX memories_closed_at ON memories (valid_to) WHERE valid_to IS NOT NULL;
