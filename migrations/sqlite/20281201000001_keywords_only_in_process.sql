-- Keyword search on SQLite scores BM25 over each user's in-process copy,
-- whose postings are cut from the memories' texts when the copy loads
-- (src/store/keyword_copy.rs, src/store/sqlite/vectors.rs). The postings
-- table, the per-user statistics and the memories' keyword lengths that
-- every write kept beside the rows were read by nothing, and cost each
-- remember about ten B-tree inserts (a posting per distinct term, in the
-- table and its index by memory) and an upsert of the user's statistics.
--
-- What stays: store_info's 'keyword_index' marker, which still moves every
-- user's generation when a build cuts text into terms differently, so a
-- cache does not serve recalls ranked the old way.

DROP TRIGGER memories_keywords_insert;
DROP TRIGGER memories_keywords_update;
DROP TRIGGER memories_keywords_delete;
DROP TABLE keyword_postings;
DROP TABLE keyword_users;
ALTER TABLE memories DROP COLUMN keyword_length;
