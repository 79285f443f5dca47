//! A round: several users' new memories in one transaction and one insert
//! ([`super::super::Writes::add_round`]), so remembers of different users
//! that wait for the store share one transaction, one insert statement (its
//! plan start and statement triggers) and one commit with its WAL flush.
//!
//! The whole round is one call of `engram_write_round` (migration
//! 20280201000001), which in order sets the settings (row-level security
//! for the round's users, `engram.round_users`; the duplicate check's
//! settings with every claim), takes each user's write lock in the order of
//! their ids' bytes, records each user's version under it
//! (`engram.round_locked`), inserts every memory (the duplicate trigger
//! checks each row against its own user's memories, trusting a claim only at
//! the version its user was locked at), writes the audit records, and
//! answers each user's version and count after the insert. On a direct
//! connection the call goes alone, outside `BEGIN`: its own transaction, one
//! message and one round trip in all. Behind a transaction pooler it goes
//! inside `BEGIN ... COMMIT`, as every statement there (three messages).
//! Each user's in-process copy is then moved on, as a single user's write
//! moves it (`write::move_copy_on`).
//!
//! Invariants:
//! * all or nothing: a refusal (a duplicate) rolls the whole round back and
//!   it answers `None`; the caller then writes each user alone;
//! * a round takes its users' turns in this instance (`claim_from_copy`) in
//!   the same order as their locks, and all of them before any lock, as a
//!   single user's write takes its turn before its lock: a writer that holds
//!   a lock never waits for a turn, so no wait goes in a circle.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::keyword_copy::{Added, NO_USER, claim_text, locked_text};
use super::rows::now_micros;
use super::session::Pooler;
use super::write::{
    CopyWrite, FIRST_DEDUP_ROUND, PgQuery, Rows, claim_from_copy, is_unique_violation,
    move_copy_on, refused_as_duplicate,
};
use super::{PgStore, db};
use crate::store::{NewMemory, RoundPart, StoreError};

/// A user's memories as the round writes them (each with its claim), and
/// the user's copy's part, when the copy holds vectors.
type UserWrite = (Vec<(NewMemory, Option<u64>)>, Option<CopyWrite>);

/// A user's version and current count after the round's insert, and the
/// version the round locked them at (`engram.round_locked`).
type LeftAt = (i64, i64, Option<String>);

impl PgStore {
    /// [`super::super::Writes::add_round`] on PostgreSQL.
    pub(super) async fn write_round(
        &self,
        mut parts: Vec<RoundPart>,
        dedup_threshold: f32,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        parts.sort_by(|a, b| a.user_id.as_bytes().cmp(b.user_id.as_bytes()));
        if parts.windows(2).any(|w| w[0].user_id == w[1].user_id) {
            return Err(StoreError::Corrupt(
                "a round named one user in two parts".into(),
            ));
        }
        // Turns first, in lock order, and claims from each user's copy.
        let mut writes: Vec<UserWrite> = Vec::with_capacity(parts.len());
        for part in &mut parts {
            let mut news = std::mem::take(&mut part.memories);
            if news
                .iter()
                .any(|(new, _)| new.scope.user_id().as_str() != part.user_id)
            {
                return Err(StoreError::Corrupt(
                    "a round's part held another user's memory".into(),
                ));
            }
            let write = claim_from_copy(self, &part.user_id, &mut news, dedup_threshold).await;
            writes.push((news, write));
        }
        let users: Vec<&str> = parts.iter().map(|p| p.user_id.as_str()).collect();
        let claims: Vec<String> = writes
            .iter()
            .flat_map(|(news, _)| news.iter())
            .filter_map(|(new, at)| at.map(|v| claim_text(new.id.0, v)))
            .collect();
        let now = now_micros();
        let rows: Vec<&NewMemory> = writes
            .iter()
            .flat_map(|(news, _)| news.iter().map(|(new, _)| new))
            .collect();
        let call = Call {
            users: &users,
            claims: claims.join(","),
            dedup_threshold,
            rows: Rows::of(&rows),
            audits: AuditColumns::of(&parts),
            now,
        };
        let Some(left) = self.call_round(&call).await? else {
            return Ok(None);
        };

        for ((news, write), user) in writes.into_iter().zip(&users) {
            let write = write.map(|mut write| {
                write.added = news
                    .into_iter()
                    .map(|(new, _)| Added::of(&new).stored_as(new.stored_at(now)))
                    .collect();
                write
            });
            let left_at = left.iter().find(|(u, _)| u == user).map(|(_, l)| l.clone());
            move_copy_on(self, user, write, true, left_at);
        }
        Ok(Some(now))
    }

    /// Sends `call`: alone on a direct connection (its own transaction),
    /// inside `BEGIN ... COMMIT` behind a transaction pooler. Answers each
    /// user's [`LeftAt`], or `None` when the round was refused (a duplicate)
    /// and rolled back whole.
    async fn call_round(
        &self,
        call: &Call<'_>,
    ) -> Result<Option<Vec<(String, LeftAt)>>, StoreError> {
        const CX: &str = "writing a round of remembers";
        let (names, values) = self.settings.names_and_values();
        let query = sqlx::query(
            "SELECT round_user, left_version, left_current, locked_version \
             FROM engram_write_round($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, \
                 $29, $30, $31, $32, $33)",
        )
        .bind(names)
        .bind(values)
        .bind(call.users)
        .bind(call.dedup_threshold)
        .bind(i32::try_from(FIRST_DEDUP_ROUND).unwrap_or(i32::MAX))
        .bind(&call.claims);
        let query = call.audits.bind_to(call.rows.bind_to(query, call.now));
        // PostgreSQL commits or rolls back all of the call: the last point
        // at which the process can die with none of it written is before
        // it is sent.
        crate::failpoint::crash_point("remember-before-commit");
        let answered = match self.settings.pooler() {
            Pooler::None => {
                let mut conn = self.acquire_request(CX).await?;
                query.fetch_all(&mut *conn).await
            }
            Pooler::Transaction => {
                let begin = self.settings.begin("BEGIN", None);
                let mut tx = self.begin_with_sql(begin, CX).await?;
                match query.fetch_all(&mut *tx).await {
                    // Dropped on an error, the transaction rolls back.
                    Ok(rows) => tx.commit().await.map(|()| rows),
                    Err(e) => Err(e),
                }
            }
        };
        let rows = match answered {
            Ok(rows) => rows,
            Err(e) if refused_as_duplicate(&e).is_some() || is_unique_violation(&e) => {
                return Ok(None);
            }
            Err(e) => return Err(db(CX)(e)),
        };
        let cx = "reading back a round's users";
        rows.iter()
            .map(|row| {
                let user: String = row.try_get("round_user").map_err(db(cx))?;
                // A user with no row when the round locked them is absent
                // from `engram.round_locked`: the duplicate trigger reads
                // that as `none` (no memories), and so does the copy of a
                // user who had none (`locked_text(NO_USER)`), which this
                // round then moves on like any other.
                let locked: Option<String> = row.try_get("locked_version").map_err(db(cx))?;
                let left = (
                    row.try_get("left_version").map_err(db(cx))?,
                    row.try_get("left_current").map_err(db(cx))?,
                    Some(locked.unwrap_or_else(|| locked_text(NO_USER))),
                );
                Ok((user, left))
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

/// A round as `engram_write_round` takes it.
struct Call<'a> {
    /// Sorted by their ids' bytes: the order of their locks.
    users: &'a [&'a str],
    /// `<memory id>@<version>` for each claim, comma-separated.
    claims: String,
    dedup_threshold: f32,
    rows: Rows<'a>,
    audits: AuditColumns<'a>,
    now: DateTime<Utc>,
}

/// Every part's audit records, one array per column.
#[derive(Default)]
struct AuditColumns<'a> {
    at: Vec<DateTime<Utc>>,
    principal: Vec<&'a str>,
    key_id: Vec<Option<uuid::Uuid>>,
    user_ref: Vec<Option<&'a str>>,
    transport: Vec<&'a str>,
    client_addr: Vec<Option<&'a str>>,
    operation: Vec<&'a str>,
    /// A uuid[] literal per record: arrays of arrays must be rectangular.
    memory_ids: Vec<String>,
    memory_count: Vec<i64>,
    outcome: Vec<&'a str>,
    query: Vec<Option<&'a str>>,
}

impl<'a> AuditColumns<'a> {
    fn of(parts: &'a [RoundPart]) -> Self {
        let mut columns = Self::default();
        for r in parts.iter().flat_map(|p| p.audits.iter()) {
            columns.at.push(r.at);
            columns.principal.push(r.principal.as_str());
            columns.key_id.push(r.key_id);
            columns.user_ref.push(r.user_ref.as_deref());
            columns.transport.push(r.transport.as_str());
            columns.client_addr.push(r.client_addr.as_deref());
            columns.operation.push(r.operation.as_str());
            let ids: Vec<String> = r.memory_ids.iter().map(|id| id.0.to_string()).collect();
            columns.memory_ids.push(format!("{{{}}}", ids.join(",")));
            columns
                .memory_count
                .push(i64::try_from(r.memory_count).unwrap_or(i64::MAX));
            columns.outcome.push(r.outcome.as_str());
            columns.query.push(r.query.as_deref());
        }
        columns
    }

    /// Binds `engram_write_round`'s eleven audit arguments, in its order.
    fn bind_to<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.at)
            .bind(&self.principal)
            .bind(&self.key_id)
            .bind(&self.user_ref)
            .bind(&self.transport)
            .bind(&self.client_addr)
            .bind(&self.operation)
            .bind(&self.memory_ids)
            .bind(&self.memory_count)
            .bind(&self.outcome)
            .bind(&self.query)
    }
}
