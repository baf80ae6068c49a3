//! The database: SQLite in the data dir (WAL), migrations embedded and run at start, and the
//! first-start records (default organization and space).

use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::SqlitePool;

use crate::state::{new_guid, now};

/// The name of the organization made on first start.
pub const DEFAULT_ORG: &str = "default";
/// The name of the space made on first start.
pub const DEFAULT_SPACE: &str = "dev";

/// Opens (creating) the database in `data_dir` and brings its schema up to date.
pub async fn open(data_dir: &Path) -> anyhow::Result<SqlitePool> {
    let url = format!("sqlite://{}", data_dir.join("cc.db").display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    bootstrap(&pool).await?;
    Ok(pool)
}

async fn bootstrap(db: &SqlitePool) -> anyhow::Result<()> {
    let org: Option<(String,)> = sqlx::query_as("SELECT guid FROM organizations WHERE name = ?")
        .bind(DEFAULT_ORG)
        .fetch_optional(db)
        .await?;
    if org.is_some() {
        return Ok(());
    }
    let (org_guid, t) = (new_guid(), now());
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO organizations (guid, name, created_at, updated_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&org_guid)
    .bind(DEFAULT_ORG)
    .bind(&t)
    .bind(&t)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO spaces (guid, name, org_guid, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(new_guid())
    .bind(DEFAULT_SPACE)
    .bind(&org_guid)
    .bind(&t)
    .bind(&t)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
