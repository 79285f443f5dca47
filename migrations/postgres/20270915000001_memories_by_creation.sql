-- Listing a user's current memories page by page (`GET /api/v1/memory`):
-- oldest first by (created_at, id), each page a range scan of this index
-- that starts right after the previous page's last memory. Row-level
-- security needs nothing new: the listing reads `memories` as every read
-- does, inside the user's transaction.
CREATE INDEX memories_by_creation ON memories (user_id, created_at, id) WHERE valid_to IS NULL;
