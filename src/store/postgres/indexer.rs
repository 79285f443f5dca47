//! The vector index's backlog. A user's rows enter the vector index from
//! their `engram_index_from_rows`-th memory on (migration
//! 20270801000001), and even then a new row waits outside it while fewer
//! than `engram_index_tail_rows` of the user's rows do (20271001000001):
//! the index branch of `engram_nearest` scans the waiting rows exactly, so
//! nothing is out of reach, and a remember does not pay the index
//! insertion. The trigger that chooses marks the user's backlog, and this
//! indexer, a task each store runs, moves the waiting rows into the index
//! a batch at a time: an HNSW insertion costs milliseconds, so it is done
//! here rather than on a request.
//!
//! A move changes `indexed` and nothing else, so it runs with
//! `engram.moving_into_index` set for its transaction: the user's version
//! stays, and what is cached of the user (the keyword copy, the recall
//! cache) stays valid.

use std::time::Duration;

use sqlx::PgPool;

use super::background::{self, Background};
use super::{PgStore, StoreError, db};

/// Rows moved into the index per statement (each an index insertion, ~6 ms
/// at 1536 dimensions): short enough that the rows it locks are soon free.
const BATCH: i64 = 64;

/// Moves up to `BATCH` waiting rows of one user with a backlog into the
/// vector index, and clears the user's mark once none waits; returns the
/// rows moved. Rows a writer holds are skipped and taken on a later pass.
async fn step(operator: &PgPool) -> Result<u64, StoreError> {
    const CX: &str = "moving a user's waiting memories into the vector index";
    let mut tx = operator.begin().await.map_err(db(CX))?;
    sqlx::query("SELECT set_config('engram.moving_into_index', 'on', true)")
        .execute(&mut *tx)
        .await
        .map_err(db(CX))?;
    let (user, moved): (Option<String>, i64) = sqlx::query_as(
        "WITH u AS (SELECT user_id FROM memory_users WHERE index_backlog LIMIT 1), \
              waiting AS (SELECT m.id FROM memories m \
                          WHERE m.user_id = (SELECT user_id FROM u) \
                            AND m.valid_to IS NULL AND NOT m.indexed \
                          LIMIT $1 FOR UPDATE SKIP LOCKED), \
              moved AS (UPDATE memories m SET indexed = true FROM waiting \
                        WHERE m.id = waiting.id RETURNING 1) \
         SELECT (SELECT user_id FROM u), (SELECT count(*) FROM moved)",
    )
    .bind(BATCH)
    .fetch_one(&mut *tx)
    .await
    .map_err(db(CX))?;
    tx.commit().await.map_err(db(CX))?;
    if let Some(user) = user
        && moved < BATCH
    {
        // By the count the triggers keep, not by looking for rows: a writer
        // adding a waiting row holds the user's row until it commits, and
        // this statement then rechecks `waiting` on the row it left, where a
        // search for rows would still miss the writer's (not in its snapshot)
        // and clear the mark under it.
        sqlx::query(
            "UPDATE memory_users u SET index_backlog = false \
             WHERE u.user_id = $1 AND u.waiting = 0",
        )
        .bind(&user)
        .execute(operator)
        .await
        .map_err(db("clearing a user's index backlog"))?;
    }
    Ok(moved.max(0) as u64)
}

/// Starts the indexer on `operator`: it works through every backlog, then
/// looks again every `every`.
pub(super) fn spawn(operator: PgPool, every: Duration) -> Background {
    let what = "the vector index's backlog could not be worked on";
    background::repeat(what, every, move || {
        let operator = operator.clone();
        async move {
            let moved = step(&operator).await?;
            if moved > 0 {
                tracing::debug!(moved, "moved waiting memories into the vector index");
            }
            Ok(moved > 0)
        }
    })
}

impl PgStore {
    /// Works through every user's backlog now (tests and benchmarks, which
    /// measure a settled store); returns the rows moved into the index.
    pub async fn index_backlog(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let moved = step(self.operator()).await?;
            if moved == 0 {
                return Ok(total);
            }
            total += moved;
        }
    }
}
