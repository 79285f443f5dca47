//! The database as an operator with a SQL client sees it: every row of
//! every table, for tests that search what is stored for what must not be.

/// Every row of every table of the database at `url` (tables listed from
/// its schema: `sqlite_master`, or `information_schema` on PostgreSQL), each
/// as one line of text with its table's name.
pub async fn every_row(url: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&pool)
                .await
                .unwrap();
        for table in tables {
            let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_table_info('{table}')"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            let line = columns
                .iter()
                .map(|c| format!("quote(\"{c}\")"))
                .collect::<Vec<_>>()
                .join(" || '|' || ");
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT {line} FROM \"{table}\""
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            out.extend(rows.into_iter().map(|r| (table.clone(), r)));
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for table in tables {
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT t::text FROM \"{table}\" t"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            out.extend(rows.into_iter().map(|r| (table.clone(), r)));
        }
        pool.close().await;
    }
    out
}
