-- Postings carry their memory's agent and run, so a keyword search narrowed
-- to an agent or a run reads and scores only that scope's postings (BM25's
-- statistics stay the whole user's) instead of scoring every posting of
-- the user's and dropping the other scopes' afterwards.
--
-- A memory's scope never changes while it is current; should a writer other
-- than engram change it, the memory leaves the keyword index, as for a new
-- text (the trigger below), rather than be found under its old scope.
ALTER TABLE keyword_postings ADD COLUMN agent_id TEXT;
ALTER TABLE keyword_postings ADD COLUMN run_id TEXT;
UPDATE keyword_postings
    SET (agent_id, run_id) = (SELECT m.agent_id, m.run_id FROM memories m
                              WHERE m.pk = keyword_postings.pk);

DROP TRIGGER memories_keywords_update;
CREATE TRIGGER memories_keywords_update
    AFTER UPDATE OF user_id, agent_id, run_id, content, keyword_length, valid_to ON memories
BEGIN
    UPDATE keyword_users SET docs = docs - 1, total_length = total_length - OLD.keyword_length
        WHERE user_id = OLD.user_id AND OLD.valid_to IS NULL;
    INSERT INTO keyword_users (user_id, docs, total_length)
        SELECT NEW.user_id, 1, NEW.keyword_length WHERE NEW.valid_to IS NULL
        ON CONFLICT (user_id) DO UPDATE SET docs = docs + 1,
            total_length = total_length + excluded.total_length;
    DELETE FROM keyword_postings WHERE pk = OLD.pk
        AND (NEW.valid_to IS NOT NULL OR NEW.content IS NOT OLD.content
             OR NEW.user_id IS NOT OLD.user_id OR NEW.agent_id IS NOT OLD.agent_id
             OR NEW.run_id IS NOT OLD.run_id);
END;
