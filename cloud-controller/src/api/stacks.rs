//! Stacks: the root filesystems apps stage and run on. They come from the configuration
//! (made or updated at start) and from what stagers advertise on the bus (added when first
//! heard); an operator may point one at an image of the image store (`stack.<name>.image`,
//! see [`super::config`]). An app or build naming a stack nobody knows is refused with the list of those that
//! exist.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::listing::{self, Filter, Page};
use super::{filter_values, link, list_body, ApiQuery, PageQuery};
use crate::auth::User;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now, AppState};

#[derive(sqlx::FromRow)]
struct StackRow {
    guid: String,
    name: String,
    description: String,
    source: String,
    created_at: String,
    updated_at: String,
    image_digest: Option<String>,
    image_since: Option<String>,
}

const COLUMNS: &str =
    "guid, name, description, source, created_at, updated_at, image_digest, image_since";

fn stack_json(s: &AppState, st: &StackRow) -> Value {
    json!({
        "guid": st.guid,
        "created_at": st.created_at,
        "updated_at": st.updated_at,
        "name": st.name,
        "description": st.description,
        "build_rootfs_image": st.image_digest.as_deref().unwrap_or(&st.name),
        "run_rootfs_image": st.image_digest.as_deref().unwrap_or(&st.name),
        // Kiln: the image `stack.<name>.image` set (null: each machine's own copy), and since
        // when.
        "image": st.image_digest.as_ref().map(|d| json!({"digest": d, "since": st.image_since})),
        "default": st.name == s.config.default_stack,
        "source": st.source,
        "metadata": {"labels": {}, "annotations": {}},
        "links": {"self": link(s, &format!("/v3/stacks/{}", st.guid))},
    })
}

/// Makes or updates the configured stacks (`name`, `description`).
pub async fn ensure_configured(db: &Db, stacks: &[(String, String)]) -> Result<(), sqlx::Error> {
    for (name, description) in stacks {
        let t = now();
        sqlx::query(
            "INSERT INTO stacks (guid, name, description, source, created_at, updated_at) VALUES ($1, $2, $3, 'config', $4, $5)
             ON CONFLICT(name) DO UPDATE SET description = excluded.description, source = 'config', updated_at = excluded.updated_at",
        )
        .bind(new_guid())
        .bind(name)
        .bind(description)
        .bind(&t)
        .bind(&t)
        .execute(db)
        .await?;
    }
    Ok(())
}

/// Adds the stacks a stager advertises that are not known yet.
pub async fn record_advertised(
    db: &Db,
    stager: &str,
    stacks: &[String],
) -> Result<(), sqlx::Error> {
    for name in stacks {
        let t = now();
        sqlx::query(
            "INSERT INTO stacks (guid, name, description, source, created_at, updated_at) VALUES ($1, $2, $3, 'advertised', $4, $5) ON CONFLICT(name) DO NOTHING",
        )
        .bind(new_guid())
        .bind(name)
        .bind(format!("advertised by stager {stager}"))
        .bind(&t)
        .bind(&t)
        .execute(db)
        .await?;
    }
    Ok(())
}

/// Ok when `stack` is known; else a 422 naming the stacks there are.
pub async fn check_known(s: &AppState, stack: &str) -> ApiResult<()> {
    let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM stacks ORDER BY name")
        .fetch_all(&s.db)
        .await?;
    if names.iter().any(|(n,)| n == stack) {
        return Ok(());
    }
    let names: Vec<String> = names.into_iter().map(|(n,)| n).collect();
    Err(ApiError::Unprocessable(format!(
        "Stack '{stack}' does not exist. Available stacks: {}",
        if names.is_empty() {
            "none (configure stacks or start a stager)".to_string()
        } else {
            names.join(", ")
        }
    )))
}

#[derive(Deserialize)]
pub struct ListQuery {
    names: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// `GET /v3/stacks` (filter `names`).
pub async fn list(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let paging = PageQuery {
        page: q.page,
        per_page: q.per_page,
    };
    let filters = [Filter {
        sql: "name IN ({})",
        param: "names",
        values: filter_values(&q.names),
    }];
    let page: Page<StackRow> =
        listing::page(&s, COLUMNS, "stacks", "name, guid", &filters, &paging).await?;
    let resources = page.rows.iter().map(|st| stack_json(&s, st)).collect();
    Ok(Json(list_body(
        &s,
        "/v3/stacks",
        &page.query,
        &paging,
        page.total,
        resources,
    )))
}

/// `GET /v3/stacks/:guid`.
pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    let row: Option<StackRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM stacks WHERE guid = $1"
    )))
    .bind(&guid)
    .fetch_optional(&s.db)
    .await?;
    let row = row.ok_or(ApiError::NotFound("Stack"))?;
    Ok(Json(stack_json(&s, &row)))
}
