-- A large user's tail outside the vector index holds up to 2,048 rows by
-- default, not 256 (20271001000001).
--
-- Why: past the tail's bound a writer inserts its row into the HNSW graph
-- itself, under the user's turn (~4-6 ms at 1536 dimensions), and the
-- indexer, one backend, moves at most ~185 rows a second in. With 256 rows
-- of room a burst of one user's writes filled the tail within seconds and
-- then paid the graph's insertion on the acknowledged write. Measured with
-- the setting alone changed (docs/benchmarks.md, twenty-fifth run): one
-- user's remembers from eight clients 397 / 407 a second against 316 / 332;
-- a remember with inference 1.22 / 1.25 ms of engram overhead p50 against
-- 1.59 / 1.59 ms (p95 1.70 / 1.82 against 3.19 / 3.63 ms).
--
-- Cost: while a user's tail is full, every search of theirs in SQL and
-- every duplicate check the in-process copy cannot clear scans it exactly,
-- ~7 ms for 2,048 rows at 1536 dimensions (~0.9 ms for 256), until the
-- indexer has moved it in (~11 s). A user's searches answered from their
-- copy do not read it. `engram.index_tail_rows` still sets the bound.

CREATE OR REPLACE FUNCTION engram_index_tail_rows() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('engram.index_tail_rows', true), '')::bigint, 2048)
$$;
