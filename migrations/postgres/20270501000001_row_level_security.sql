-- Row-level security: PostgreSQL itself keeps each user's rows apart, beside
-- the `user_id = $1` of every query engram sends (defence in depth).
--
-- A row of a per-user table is visible to, and may be written by, a
-- transaction only when
-- * `engram.user_id` names its user: engram sets it, transaction-local, from
--   the acting user as the first statement of every per-user transaction
--   (`set_config(..., true)`, so it ends with the transaction and cannot
--   follow a pooled connection to its next use); or
-- * `engram.all_users` is `on`: set for the session on the connections of
--   operator-wide work only (authentication by key hash, the re-extraction
--   queue, the retention purge, key rotation, migrations).
-- A connection that set neither sees no row and can write none.
--
-- FORCE applies the policies to the tables' owner too, so a deployment with
-- one non-superuser role is covered. Superusers and roles with BYPASSRLS are
-- never subject to policies: engram warns at start when it connects as one.
--
-- The settings are read through scalar subqueries so that each is evaluated
-- once per statement (an InitPlan), not once per row scanned.
--
-- audit_log and store_info hold no user's rows (audit rows name users by a
-- keyed pseudonym) and have no policy.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['memories', 'memory_history', 'memory_users',
                             'keyword_postings', 'keyword_terms',
                             'pending_extractions', 'api_keys']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY engram_acting_user ON %I '
            'USING (user_id = (SELECT current_setting(''engram.user_id'', true)) '
            '       OR (SELECT current_setting(''engram.all_users'', true)) = ''on'')',
            t);
    END LOOP;
END $$;
