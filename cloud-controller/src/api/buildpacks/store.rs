//! Admin buildpacks as stored, and the changes that keep their order: positions are 1..n
//! without gaps, whatever is created, moved or deleted. Every change of the order runs in a
//! transaction that first updates the one row of `buildpack_order`, so concurrent changes
//! (also from another controller on the same PostgreSQL) wait for each other instead of
//! interleaving their shifts.

use sqlx::{Any, Transaction};

use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now};

/// A buildpack as stored. Flags are 0 or 1.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BuildpackRow {
    pub guid: String,
    pub name: String,
    /// None: any stack.
    pub stack: Option<String>,
    pub position: i64,
    pub enabled: i64,
    pub locked: i64,
    /// `AWAITING_UPLOAD` or `READY`.
    pub state: String,
    /// The uploaded file's name.
    pub filename: Option<String>,
    /// The sha256 of the uploaded zip (its blob; the table also keeps its size).
    pub sha256: Option<String>,
    /// One of the stagers' own buildpacks: no bits here, never deleted or renamed.
    pub builtin: i64,
    pub created_at: String,
    pub updated_at: String,
}

pub const COLUMNS: &str = "guid, name, stack, position, enabled, locked, state, filename, sha256, builtin, created_at, updated_at";

type Tx = Transaction<'static, Any>;

/// The buildpack `guid`, or 404.
pub async fn find(db: &Db, guid: &str) -> ApiResult<BuildpackRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM buildpacks WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("Buildpack"))
}

/// A transaction holding the order row: the changes of the order happen one at a time.
async fn begin(db: &Db) -> Result<Tx, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE buildpack_order SET version = version + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn count(tx: &mut Tx) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM buildpacks")
            .fetch_one(&mut **tx)
            .await?
            .0,
    )
}

fn taken(name: &str, stack: Option<&str>) -> ApiError {
    ApiError::Unprocessable(match stack {
        Some(stack) => format!("Buildpack with name '{name}' and stack '{stack}' already exists"),
        None => format!("Buildpack with name '{name}' and an unassigned stack already exists"),
    })
}

/// 422 when a buildpack other than `except` is called `name` on `stack` (the same rule as the
/// unique index, with a message).
async fn check_unique(tx: &mut Tx, name: &str, stack: Option<&str>, except: &str) -> ApiResult<()> {
    let other: Option<(String,)> = sqlx::query_as(
        "SELECT guid FROM buildpacks WHERE name = $1 AND COALESCE(stack, '') = $2 AND guid <> $3",
    )
    .bind(name)
    .bind(stack.unwrap_or(""))
    .bind(except)
    .fetch_optional(&mut **tx)
    .await?;
    match other {
        Some(_) => Err(taken(name, stack)),
        None => Ok(()),
    }
}

/// Commits, answering a unique violation (a race the check lost) like the check.
async fn commit(tx: Tx, name: &str, stack: Option<&str>) -> ApiResult<()> {
    match tx.commit().await {
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Err(taken(name, stack)),
        other => Ok(other?),
    }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

/// What a new buildpack is made with.
pub struct NewBuildpack {
    pub name: String,
    pub stack: Option<String>,
    /// None: last.
    pub position: Option<i64>,
    pub enabled: bool,
    pub locked: bool,
}

/// Creates a buildpack awaiting its upload at its position (past the end: last), shifting the
/// buildpacks from there down. Returns its guid.
pub async fn insert(db: &Db, new: NewBuildpack) -> ApiResult<String> {
    let mut tx = begin(db).await?;
    check_unique(&mut tx, &new.name, new.stack.as_deref(), "").await?;
    let last = count(&mut tx).await? + 1;
    let position = new.position.unwrap_or(last).clamp(1, last);
    sqlx::query("UPDATE buildpacks SET position = position + 1 WHERE position >= $1")
        .bind(position)
        .execute(&mut *tx)
        .await?;
    let (guid, t) = (new_guid(), now());
    let inserted = sqlx::query(
        "INSERT INTO buildpacks (guid, name, stack, position, enabled, locked, state, filename, sha256, size, builtin, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'AWAITING_UPLOAD', NULL, NULL, NULL, 0, $7, $8)",
    )
    .bind(&guid)
    .bind(&new.name)
    .bind(new.stack.as_deref())
    .bind(position)
    .bind(flag(new.enabled))
    .bind(flag(new.locked))
    .bind(&t)
    .bind(&t)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            return Err(taken(&new.name, new.stack.as_deref()))
        }
        other => other?,
    };
    commit(tx, &new.name, new.stack.as_deref()).await?;
    Ok(guid)
}

/// What a PATCH changes (None: unchanged).
#[derive(Default)]
pub struct Changes {
    pub name: Option<String>,
    pub stack: Option<String>,
    pub position: Option<i64>,
    pub enabled: Option<bool>,
    pub locked: Option<bool>,
}

/// Moves the buildpack at `from` to `to`, shifting those in between by one.
async fn shift(tx: &mut Tx, from: i64, to: i64) -> Result<(), sqlx::Error> {
    let sql = if to < from {
        "UPDATE buildpacks SET position = position + 1 WHERE position >= $1 AND position < $2"
    } else {
        "UPDATE buildpacks SET position = position - 1 WHERE position > $2 AND position <= $1"
    };
    if to != from {
        sqlx::query(sql)
            .bind(to)
            .bind(from)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Applies `ch` to buildpack `guid`: a built-in keeps its name; a stack, once set, stays (as
/// in Cloud Foundry); a position past the end means last.
pub async fn update(db: &Db, guid: &str, ch: Changes) -> ApiResult<()> {
    let mut tx = begin(db).await?;
    let row: BuildpackRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM buildpacks WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("Buildpack"))?;
    let name = ch.name.unwrap_or_else(|| row.name.clone());
    if row.builtin != 0 && name != row.name {
        return Err(ApiError::Unprocessable(format!(
            "Name: '{}' is a built-in buildpack (it lives on the stagers) and cannot be renamed",
            row.name
        )));
    }
    let stack = match (ch.stack, &row.stack) {
        (Some(new), Some(old)) if &new != old => {
            return Err(ApiError::Unprocessable(format!(
                "Stack: the buildpack's stack is '{old}' and cannot be changed once set"
            )))
        }
        (new, old) => new.or_else(|| old.clone()),
    };
    check_unique(&mut tx, &name, stack.as_deref(), guid).await?;
    let position = match ch.position {
        Some(p) => {
            let to = p.clamp(1, count(&mut tx).await?);
            shift(&mut tx, row.position, to).await?;
            to
        }
        None => row.position,
    };
    sqlx::query(
        "UPDATE buildpacks SET name = $1, stack = $2, position = $3, enabled = $4, locked = $5, updated_at = $6 WHERE guid = $7",
    )
    .bind(&name)
    .bind(stack.as_deref())
    .bind(position)
    .bind(ch.enabled.map_or(row.enabled, flag))
    .bind(ch.locked.map_or(row.locked, flag))
    .bind(now())
    .bind(guid)
    .execute(&mut *tx)
    .await?;
    commit(tx, &name, stack.as_deref()).await
}

/// Deletes buildpack `guid` (not a built-in) and closes the gap it leaves.
pub async fn remove(db: &Db, guid: &str) -> ApiResult<BuildpackRow> {
    let mut tx = begin(db).await?;
    let row: BuildpackRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM buildpacks WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("Buildpack"))?;
    if row.builtin != 0 {
        return Err(ApiError::Unprocessable(format!(
            "'{}' is a built-in buildpack and cannot be deleted: disable it instead (\"enabled\": false)",
            row.name
        )));
    }
    sqlx::query("DELETE FROM buildpacks WHERE guid = $1")
        .bind(guid)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE buildpacks SET position = position - 1 WHERE position > $1")
        .bind(row.position)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}

/// Makes a READY built-in row for each of `names` that has none, at the end of the order, in
/// the order given. Run at every start: what is there already is left as it is (an admin may
/// have disabled or moved it).
pub async fn seed(db: &Db, names: &[String]) -> Result<(), sqlx::Error> {
    let mut tx = begin(db).await?;
    for name in names {
        let have: Option<(String,)> =
            sqlx::query_as("SELECT guid FROM buildpacks WHERE name = $1 AND stack IS NULL")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if have.is_some() {
            continue;
        }
        let position = count(&mut tx).await? + 1;
        let t = now();
        sqlx::query(
            "INSERT INTO buildpacks (guid, name, stack, position, enabled, locked, state, filename, sha256, size, builtin, created_at, updated_at)
             VALUES ($1, $2, NULL, $3, 1, 0, 'READY', NULL, NULL, NULL, 1, $4, $5)",
        )
        .bind(new_guid())
        .bind(name)
        .bind(position)
        .bind(&t)
        .bind(&t)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
