//! The database: SQLite in the data dir (WAL) by default, PostgreSQL when given a URL; the same
//! migrations, embedded and run at start, for both; and the first-start records (default
//! organization and space). Queries are written once, with `$n` placeholders, which both
//! drivers accept.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor};

use crate::state::{new_guid, now};

/// The name of the organization made on first start.
pub const DEFAULT_ORG: &str = "default";
/// The name of the space made on first start.
pub const DEFAULT_SPACE: &str = "dev";

/// The database pool every handler uses.
pub type Db = AnyPool;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not one of `sqlite://…`, `postgres://…`, `postgresql://…`.
    #[error("unsupported database URL {0:?}: use postgres://user:password@host:port/database, or none for SQLite in the data dir")]
    UnsupportedUrl(String),
    /// The server or file could not be reached or opened.
    #[error("connecting to the database at {url}: {source}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("migrating the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query of the first start failed.
    #[error("preparing the database: {0}")]
    Query(#[from] sqlx::Error),
}

/// Opens the database (`url`, or SQLite in `data_dir/cc.db` when none), brings its schema up to
/// date and makes the first-start records.
pub async fn open(url: Option<&str>, data_dir: &Path) -> Result<Db, DbError> {
    sqlx::any::install_default_drivers();
    let (url, sqlite) = match url {
        None => (
            format!("sqlite://{}", data_dir.join("cc.db").display()),
            true,
        ),
        Some(u) if u.starts_with("sqlite:") => (u.to_string(), true),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            (u.to_string(), false)
        }
        Some(u) => return Err(DbError::UnsupportedUrl(redact(u))),
    };
    let connect = |source| DbError::Connect {
        url: redact(&url),
        source,
    };
    if sqlite {
        // WAL is a property of the file: set it once, with the file made if missing; every
        // later connection (through the Any driver) finds it.
        let mut conn = SqliteConnectOptions::from_str(&url)
            .map_err(connect)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .connect()
            .await
            .map_err(connect)?;
        conn.ping().await.map_err(connect)?;
        conn.close().await.map_err(connect)?;
    }
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    conn.execute("PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON")
                        .await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(connect)?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    bootstrap(&pool).await?;
    Ok(pool)
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

async fn bootstrap(db: &Db) -> Result<(), sqlx::Error> {
    let org: Option<(String,)> = sqlx::query_as("SELECT guid FROM organizations WHERE name = $1")
        .bind(DEFAULT_ORG)
        .fetch_optional(db)
        .await?;
    if org.is_some() {
        return Ok(());
    }
    let (org_guid, t) = (new_guid(), now());
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO organizations (guid, name, created_at, updated_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&org_guid)
    .bind(DEFAULT_ORG)
    .bind(&t)
    .bind(&t)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO spaces (guid, name, org_guid, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
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
