//! A round: several users' new memories in one transaction and one insert
//! ([`super::super::Writes::add_round`]), so remembers of different users
//! that wait for the store share one `BEGIN`, one statement (its plan start
//! and statement triggers) and one commit with its WAL flush.
//!
//! Four messages, whatever the number of users:
//! 1. `BEGIN`, the settings (row-level security for the round's users,
//!    `engram.round_users`; the duplicate check's settings with every
//!    claim), each user's write lock in the order of their ids' bytes, and
//!    each user's version under it (`engram.round_locked`);
//! 2. the insert of every memory ([`PgStore::insert_in`]): the duplicate
//!    trigger checks each row against its own user's memories, trusting a
//!    claim only at the version its user was locked at;
//! 3. the audit records, and each user's version and count after the insert;
//! 4. `COMMIT`; then each user's in-process copy is moved on, as a single
//!    user's write moves it (`write::move_copy_on`).
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

use super::keyword_copy::Added;
use super::rows::now_micros;
use super::scope::text_literal;
use super::write::{
    CopyWrite, claim_from_copy, is_unique_violation, move_copy_on, refused_as_duplicate,
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
        const CX: &str = "writing a round of remembers";
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
            .filter_map(|(new, at)| at.map(|v| format!("{}@{v}", new.id.0)))
            .collect();
        let mut tx = self.begin_round(&users, &claims, dedup_threshold).await?;

        let now = now_micros();
        let rows: Vec<&NewMemory> = writes
            .iter()
            .flat_map(|(news, _)| news.iter().map(|(new, _)| new))
            .collect();
        match PgStore::insert_in(&mut tx, &rows, now).await {
            Ok(()) => {}
            Err(e) if refused_as_duplicate(&e).is_some() || is_unique_violation(&e) => {
                // Dropped, the transaction rolls back (the pool sends it).
                return Ok(None);
            }
            Err(e) => {
                return Err(StoreError::Database {
                    context: "storing a round's memories",
                    source: e,
                });
            }
        }
        let left = audit_and_read_back(&mut tx, &parts, &users).await?;
        tx.commit().await.map_err(db(CX))?;

        for ((news, write), user) in writes.into_iter().zip(&users) {
            let write = write.map(|mut write| {
                write.added = news.iter().map(|(new, _)| Added::of(new)).collect();
                write
            });
            let left_at = left.iter().find(|(u, _)| u == user).map(|(_, l)| l.clone());
            move_copy_on(self, user, write, true, left_at);
        }
        Ok(Some(now))
    }

    /// Message 1: the round's transaction, its users' locks taken and
    /// their versions recorded.
    async fn begin_round(
        &self,
        users: &[&str],
        claims: &[String],
        dedup_threshold: f32,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        // The ids reach the SQL as hex only.
        let array = users
            .iter()
            .map(|u| text_literal(u))
            .collect::<Vec<_>>()
            .join(", ");
        // Uuids and numbers, written by this code.
        let more = format!(
            "set_config('engram.round_users', (ARRAY[{array}]::text[])::text, true), \
             set_config('engram.dedup_threshold', '{dedup_threshold}', true), \
             set_config('engram.dedup_allow', '{{}}', true), \
             set_config('engram.dedup_k', '{k}', true), \
             set_config('engram.dedup_searched', '{claims}', true)",
            k = super::write::FIRST_DEDUP_ROUND,
            claims = claims.join(","),
        );
        let begin = self.settings.begin("BEGIN", Some(&more));
        // The locks in the array's order (a function scan's), then the
        // versions under them, read through the round's own row security.
        let sql = format!(
            "{begin}; \
             SELECT count(pg_advisory_xact_lock(hashtextextended('engram.user:' || u, 0))) \
             FROM unnest(current_setting('engram.round_users')::text[]) AS u; \
             SELECT set_config('engram.round_locked', coalesce( \
                 (SELECT jsonb_object_agg(user_id, version::text) FROM memory_users \
                  WHERE user_id = ANY (current_setting('engram.round_users')::text[])), \
                 '{{}}')::text, true)"
        );
        self.begin_with_sql(sql, "starting a round of remembers")
            .await
    }
}

/// Message 3: every part's audit records, and each user's version and count
/// as the round leaves them, with the version it locked them at.
async fn audit_and_read_back(
    tx: &mut sqlx::PgConnection,
    parts: &[RoundPart],
    users: &[&str],
) -> Result<Vec<(String, LeftAt)>, StoreError> {
    let records: Vec<&crate::store::AuditRecord> =
        parts.iter().flat_map(|p| p.audits.iter()).collect();
    let mut at = Vec::new();
    let mut principal = Vec::new();
    let mut key_id = Vec::new();
    let mut user_ref = Vec::new();
    let mut transport = Vec::new();
    let mut client_addr = Vec::new();
    let mut operation = Vec::new();
    let mut memory_ids = Vec::new();
    let mut memory_count = Vec::new();
    let mut outcome = Vec::new();
    let mut query = Vec::new();
    for r in &records {
        at.push(r.at);
        principal.push(r.principal.as_str());
        key_id.push(r.key_id);
        user_ref.push(r.user_ref.as_deref());
        transport.push(r.transport.as_str());
        client_addr.push(r.client_addr.as_deref());
        operation.push(r.operation.as_str());
        // A uuid[] literal per record: arrays of arrays must be rectangular.
        let ids: Vec<String> = r.memory_ids.iter().map(|id| id.0.to_string()).collect();
        memory_ids.push(format!("{{{}}}", ids.join(",")));
        memory_count.push(i64::try_from(r.memory_count).unwrap_or(i64::MAX));
        outcome.push(r.outcome.as_str());
        query.push(r.query.as_deref());
    }
    let sql = "WITH audited AS (INSERT INTO audit_log (at, principal, key_id, user_ref, transport, \
                 client_addr, operation, memory_ids, memory_count, outcome, query) \
             SELECT a.at, a.principal, a.key_id, a.user_ref, a.transport, a.client_addr, \
                 a.operation, a.memory_ids::uuid[], a.memory_count, a.outcome, a.query \
             FROM unnest($1::timestamptz[], $2::text[], $3::uuid[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[]) \
                 WITH ORDINALITY AS a (at, principal, key_id, user_ref, transport, \
                     client_addr, operation, memory_ids, memory_count, outcome, query, n) \
             ORDER BY a.n) \
         SELECT user_id, version, current, \
             current_setting('engram.round_locked', true)::jsonb ->> user_id AS locked \
         FROM memory_users WHERE user_id = ANY ($12::text[])";
    let rows = sqlx::query(sql)
        .bind(at)
        .bind(principal)
        .bind(key_id)
        .bind(user_ref)
        .bind(transport)
        .bind(client_addr)
        .bind(operation)
        .bind(memory_ids)
        .bind(memory_count)
        .bind(outcome)
        .bind(query)
        .bind(users)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("auditing a round of remembers"))?;
    let cx = "reading back a round's users";
    rows.iter()
        .map(|row| {
            let user: String = row.try_get("user_id").map_err(db(cx))?;
            let left = (
                row.try_get("version").map_err(db(cx))?,
                row.try_get("current").map_err(db(cx))?,
                row.try_get("locked").map_err(db(cx))?,
            );
            Ok((user, left))
        })
        .collect()
}
