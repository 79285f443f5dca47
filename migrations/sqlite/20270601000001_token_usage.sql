-- Token budgets: each user's model tokens (prompt + completion, as the
-- model reports them) per UTC day (`day`: YYYY-MM-DD), added to by every
-- remember and re-extraction that called the model
-- (ENGRAM_TOKEN_BUDGET_DAILY). In the file, so every process on it counts
-- against one total.
CREATE TABLE token_usage (
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    PRIMARY KEY (user_id, day)
) WITHOUT ROWID;
-- The retention purge drops days long past, across users.
CREATE INDEX token_usage_day ON token_usage (day);
