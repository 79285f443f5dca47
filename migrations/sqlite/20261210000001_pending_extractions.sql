-- Deferred remembers: requests whose model work (LLM or embedder) failed
-- while on_llm_error = "verbatim", kept until `engram reextract` finishes
-- them. They are not memories: writing them moves no user's generation.
-- Forgetting a memory they list, or their user, deletes them.

CREATE TABLE pending_extractions (
    id         TEXT    PRIMARY KEY,              -- UUID
    user_id    TEXT    NOT NULL,
    agent_id   TEXT,
    run_id     TEXT,
    input      TEXT    NOT NULL,                 -- JSON: {"text": ...} or {"messages": [...]}
    metadata   TEXT    NOT NULL DEFAULT '{}',    -- JSON object
    infer      INTEGER NOT NULL,                 -- boolean; 0: store the text as given
    memory_ids TEXT    NOT NULL DEFAULT '[]',    -- JSON array of the verbatim memories' ids
    error      TEXT    NOT NULL,                 -- why it was deferred (or last failed)
    attempts   INTEGER NOT NULL DEFAULT 0,       -- re-extractions that failed
    created_at INTEGER NOT NULL
);
-- Oldest first for `engram reextract`; per user for forgetting.
CREATE INDEX pending_extractions_created ON pending_extractions (created_at, id);
CREATE INDEX pending_extractions_user    ON pending_extractions (user_id);
