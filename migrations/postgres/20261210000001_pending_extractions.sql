-- Deferred remembers.
--
-- A remember whose model work (LLM or embedder) failed while
-- on_llm_error = "verbatim" is kept here until `engram reextract` finishes
-- it. These rows are not memories: no trigger watches this table, so
-- writing them moves no user's version. Forgetting a memory listed in
-- memory_ids, or the user, deletes the entry (the store does it in the
-- forget's own statement).

CREATE TABLE pending_extractions (
    id         uuid        PRIMARY KEY,
    user_id    text        NOT NULL,
    agent_id   text,
    run_id     text,
    input      jsonb       NOT NULL,                 -- {"text": ...} or {"messages": [...]}
    metadata   jsonb       NOT NULL DEFAULT '{}',
    infer      boolean     NOT NULL,                 -- false: store the text as given
    memory_ids uuid[]      NOT NULL DEFAULT '{}',    -- the verbatim memories stored meanwhile
    error      text        NOT NULL,                 -- why it was deferred (or last failed)
    attempts   integer     NOT NULL DEFAULT 0,       -- re-extractions that failed
    created_at timestamptz NOT NULL,
    CHECK (jsonb_typeof(metadata) = 'object')
);
-- Oldest first for `engram reextract`; per user for forgetting.
CREATE INDEX pending_extractions_created ON pending_extractions (created_at, id);
CREATE INDEX pending_extractions_user    ON pending_extractions (user_id);
