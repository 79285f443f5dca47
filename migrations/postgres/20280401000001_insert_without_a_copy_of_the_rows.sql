-- The insert of new memories reads its arrays where it needs them, instead
-- of copying every row (vector included) into a CTE first.
--
-- Why: `engram_insert_memories` (20280201000001) unnested its arrays once,
-- in a CTE `r` that the memories insert, the history insert and the
-- postings insert all read. A CTE read more than once is materialised:
-- every row, its 6 KB vector at 1536 dimensions with it, was copied into a
-- tuple store, and the history and postings inserts each built a hash
-- table over those copies to join them back to the inserted rows. Replayed
-- with pgbench (4 clients, one memory with 12 postings a call, a fresh
-- database each, three alternations), PostgreSQL's CPU per insert fell
-- from 1.53 / 1.57 / 1.69 ms to 1.39 / 1.36 / 1.54 ms (docs/benchmarks.md,
-- twenty-second run).
--
-- How: the memories insert unnests its columns alone (read once, so not
-- materialised); the history rows come from the ids, users, texts and
-- actors arrays, and each posting takes its memory's id, user and length
-- from the arrays by its row's position.
--
-- Invariants: as before. The memories insert has no ON CONFLICT and its
-- BEFORE triggers return the row or raise, so every row in the arrays is
-- inserted or the statement fails whole, and the rows
-- the history and postings name are exactly the rows inserted (joining
-- them back to the insert's RETURNING, as before, added nothing); the
-- postings still reference their memory (the foreign key is checked at the
-- statement's end, after all three inserts). History rows now go in the
-- arrays' order, where the hash join gave no order.

CREATE OR REPLACE FUNCTION engram_insert_memories(
    new_user_ids text[], new_ids uuid[], new_agent_ids text[], new_run_ids text[],
    new_texts text[], new_hashes bytea[], new_vectors vector[], new_metadata jsonb[],
    new_categories jsonb[], new_lengths integer[], new_expiries timestamptz[],
    new_actors text[], stored_at timestamptz,
    posting_rows bigint[], posting_terms text[], posting_tfs integer[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    WITH m AS (
        INSERT INTO memories (id, user_id, agent_id, run_id, content, content_hash,
                              embedding, metadata, categories, created_at, updated_at,
                              valid_from, keyword_length, expires_at)
        SELECT r.id, r.user_id, r.agent_id, r.run_id, r.content, r.content_hash, r.embedding,
               r.metadata, ARRAY(SELECT jsonb_array_elements_text(r.categories)),
               stored_at, stored_at, stored_at, r.keyword_length, r.expires_at
        FROM unnest(new_user_ids, new_ids, new_agent_ids, new_run_ids, new_texts,
                    new_hashes, new_vectors, new_metadata, new_categories,
                    new_lengths, new_expiries) WITH ORDINALITY
            AS r (user_id, id, agent_id, run_id, content, content_hash, embedding,
                  metadata, categories, keyword_length, expires_at, n)
        ORDER BY r.n),
         h AS (
        INSERT INTO memory_history (memory_id, user_id, event, old_content, new_content,
                                    actor, created_at)
        SELECT a.id, a.user_id, 'ADD', NULL, a.content, a.actor, stored_at
        FROM unnest(new_ids, new_user_ids, new_texts, new_actors) WITH ORDINALITY
            AS a (id, user_id, content, actor, n)
        ORDER BY a.n)
    -- Postings name their row by its position in the arrays (from 1).
    INSERT INTO keyword_postings (user_id, term, memory_id, tf, length)
    SELECT new_user_ids[t.n], t.term, new_ids[t.n], t.tf, new_lengths[t.n]
    FROM unnest(posting_rows, posting_terms, posting_tfs) AS t (n, term, tf);
END $$;
