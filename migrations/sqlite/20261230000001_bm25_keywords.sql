-- Keyword search becomes BM25 over each user's own memories (src/keywords.rs).
-- Terms are made in Rust (stemmed words), so both stores index the same terms;
-- the FTS5 index, whose statistics spanned every user, goes.
DROP TABLE memories_fts;

-- The memory's number of terms (keywords::DocumentTerms::length).
ALTER TABLE memories ADD COLUMN keyword_length INTEGER NOT NULL DEFAULT 0;

-- One row per distinct term of each current memory, clustered by (user,
-- term): a query reads the postings of its terms for one user, nothing else.
-- `length` repeats the memory's keyword_length so scoring reads no memories rows.
CREATE TABLE keyword_postings (
    user_id TEXT    NOT NULL,
    term    TEXT    NOT NULL,
    pk      INTEGER NOT NULL,
    tf      INTEGER NOT NULL,
    length  INTEGER NOT NULL,
    PRIMARY KEY (user_id, term, pk)
) WITHOUT ROWID;
CREATE INDEX keyword_postings_memory ON keyword_postings (pk);

-- Per user: current memories and the sum of their keyword lengths (BM25's
-- N and average length). Kept by the triggers below; the store writes the
-- postings and keyword_length of new text itself.
CREATE TABLE keyword_users (
    user_id      TEXT    PRIMARY KEY,
    docs         INTEGER NOT NULL,
    total_length INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO keyword_users (user_id, docs, total_length)
    SELECT user_id, count(*), 0 FROM memories WHERE valid_to IS NULL GROUP BY user_id;

CREATE TRIGGER memories_keywords_insert AFTER INSERT ON memories WHEN NEW.valid_to IS NULL
BEGIN
    INSERT INTO keyword_users (user_id, docs, total_length)
        VALUES (NEW.user_id, 1, NEW.keyword_length)
        ON CONFLICT (user_id) DO UPDATE SET docs = docs + 1,
            total_length = total_length + excluded.total_length;
END;

-- A memory that stops being current, or whose text changes, leaves the index;
-- the store indexes new text after this fires.
CREATE TRIGGER memories_keywords_update
    AFTER UPDATE OF user_id, content, keyword_length, valid_to ON memories
BEGIN
    UPDATE keyword_users SET docs = docs - 1, total_length = total_length - OLD.keyword_length
        WHERE user_id = OLD.user_id AND OLD.valid_to IS NULL;
    INSERT INTO keyword_users (user_id, docs, total_length)
        SELECT NEW.user_id, 1, NEW.keyword_length WHERE NEW.valid_to IS NULL
        ON CONFLICT (user_id) DO UPDATE SET docs = docs + 1,
            total_length = total_length + excluded.total_length;
    DELETE FROM keyword_postings WHERE pk = OLD.pk
        AND (NEW.valid_to IS NOT NULL OR NEW.content IS NOT OLD.content
             OR NEW.user_id IS NOT OLD.user_id);
END;

CREATE TRIGGER memories_keywords_delete AFTER DELETE ON memories
BEGIN
    UPDATE keyword_users SET docs = docs - 1, total_length = total_length - OLD.keyword_length
        WHERE user_id = OLD.user_id AND OLD.valid_to IS NULL;
    DELETE FROM keyword_postings WHERE pk = OLD.pk;
END;
