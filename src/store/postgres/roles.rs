//! The two-role setup: an owner role migrates the schema, and engram serves
//! requests as a runtime role that owns nothing, so it can neither change
//! the schema nor turn the row-level security policies off.
//!
//! With an owner URL configured, opening the store migrates as the owner and
//! then grants the runtime role what serving needs, and no more:
//! * reading and writing the per-user tables (under their policies);
//! * reading `store_info` and the migration ledger (to check the schema);
//! * appending to `audit_log` and sealing it (its `chain_pos` and `hash`
//!   columns), never deleting or rewriting a row;
//! * the sequences behind those tables;
//! * on PostgreSQL 17 and later, MAINTAIN on the tables the store analyzes
//!   itself when their statistics fall behind (`statistics`). It allows
//!   VACUUM, ANALYZE, REINDEX, CLUSTER and LOCK TABLE on them; no reading or
//!   writing of rows beyond what the grants above allow.
//!
//! Grants are idempotent, so every start repeats them and a table a later
//! migration adds is covered the first time it runs.

use sqlx::PgConnection;

use super::db;
use crate::store::StoreError;

/// The tables the runtime role only reads.
const READ_ONLY: &[&str] = &["store_info", "_sqlx_migrations"];

/// Grants `role` (the runtime role) what serving needs on the schema the
/// owner's connection `conn` is in. A no-op when `role` is the owner itself.
pub(super) async fn grant_runtime_role(
    conn: &mut PgConnection,
    role: &str,
) -> Result<(), StoreError> {
    let (owner, schema): (String, String) =
        sqlx::query_as("SELECT current_user::text, current_schema()::text")
            .fetch_one(&mut *conn)
            .await
            .map_err(db("reading the owner role"))?;
    if owner == role {
        return Ok(());
    }
    let (role, schema) = (quote_ident(role), quote_ident(&schema));
    let mut statements = vec![
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        format!("REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {role}"),
        format!("GRANT UPDATE (chain_pos, hash) ON audit_log TO {role}"),
    ];
    for table in READ_ONLY {
        statements.push(format!(
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {table} FROM {role}"
        ));
    }
    // The store's own ANALYZE of tables that grow faster than autovacuum
    // looks (`statistics`); MAINTAIN exists from PostgreSQL 17 on, and
    // before it only the owner may analyze.
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::integer")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the server's version"))?;
    if version >= 170_000 {
        for table in super::statistics::WATCHED {
            statements.push(format!("GRANT MAINTAIN ON {table} TO {role}"));
        }
    }
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await
            .map_err(db("granting the runtime role its privileges"))?;
    }
    Ok(())
}

/// The role `conn` is logged in as.
pub(super) async fn current_role(conn: &mut PgConnection) -> Result<String, StoreError> {
    sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(db("reading the role engram connects as"))
}

/// Why the row-level security policies do not apply to the role `conn` is
/// logged in as, if they do not: superusers and BYPASSRLS roles skip every policy.
pub(super) async fn policies_bypassed_by(
    conn: &mut PgConnection,
) -> Result<Option<String>, StoreError> {
    let (role, superuser, bypass): (String, bool, bool) = sqlx::query_as(
        "SELECT rolname::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db("reading the role engram connects as"))?;
    Ok(match (superuser, bypass) {
        (true, _) => Some(format!("role {role} is a superuser")),
        (false, true) => Some(format!("role {role} has BYPASSRLS")),
        (false, false) => None,
    })
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted_whole() {
        assert_eq!(quote_ident("engram_app"), "\"engram_app\"");
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }
}
