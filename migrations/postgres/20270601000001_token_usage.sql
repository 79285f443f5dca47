-- Token budgets: each user's model tokens (prompt + completion, as the
-- model reports them) per UTC day, added to by every remember and
-- re-extraction that called the model (ENGRAM_TOKEN_BUDGET_DAILY). Kept in
-- the database so that every engram instance counts against one total.
CREATE TABLE token_usage (
    user_id text NOT NULL,
    day date NOT NULL,
    tokens bigint NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    PRIMARY KEY (user_id, day)
);
-- The retention purge drops days long past, across users.
CREATE INDEX token_usage_day ON token_usage (day);

-- A per-user table: the row-level security policy every such table has
-- (migration row_level_security says why and how).
ALTER TABLE token_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE token_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY engram_acting_user ON token_usage
    USING (user_id = (SELECT current_setting('engram.user_id', true))
           OR (SELECT current_setting('engram.all_users', true)) = 'on');
