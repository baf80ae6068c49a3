//! `GET /v3/audit_events`: the audit trail, oldest first, filtered by type, target and space.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::listing::{self, Filter, Page};
use super::{filter_values, link, list_body, ApiQuery, PageQuery};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(sqlx::FromRow)]
struct EventRow {
    guid: String,
    #[sqlx(rename = "type")]
    kind: String,
    actor_guid: String,
    actor_type: String,
    actor_name: String,
    target_guid: String,
    target_type: String,
    target_name: String,
    space_guid: Option<String>,
    data: String,
    created_at: String,
}

const COLUMNS: &str = "guid, type, actor_guid, actor_type, actor_name, target_guid, target_type, target_name, space_guid, data, created_at";

fn event_json(s: &AppState, e: &EventRow) -> Value {
    json!({
        "guid": e.guid,
        "created_at": e.created_at,
        "updated_at": e.created_at,
        "type": e.kind,
        "actor": {"guid": e.actor_guid, "type": e.actor_type, "name": e.actor_name},
        "target": {"guid": e.target_guid, "type": e.target_type, "name": e.target_name},
        "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
        "space": e.space_guid.as_ref().map(|g| json!({"guid": g})),
        "organization": Value::Null,
        "links": {"self": link(s, &format!("/v3/audit_events/{}", e.guid))},
    })
}

#[derive(Deserialize)]
pub struct ListQuery {
    types: Option<String>,
    target_guids: Option<String>,
    space_guids: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// `GET /v3/audit_events` (filters `types`, `target_guids`, `space_guids`).
pub async fn list(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let paging = PageQuery {
        page: q.page,
        per_page: q.per_page,
    };
    let filters = [
        Filter {
            sql: "type IN ({})",
            param: "types",
            values: filter_values(&q.types),
        },
        Filter {
            sql: "target_guid IN ({})",
            param: "target_guids",
            values: filter_values(&q.target_guids),
        },
        Filter {
            sql: "space_guid IN ({})",
            param: "space_guids",
            values: filter_values(&q.space_guids),
        },
    ];
    let page: Page<EventRow> =
        listing::page(&s, COLUMNS, "audit_events", "seq, guid", &filters, &paging).await?;
    let resources = page.rows.iter().map(|e| event_json(&s, e)).collect();
    Ok(Json(list_body(
        &s,
        "/v3/audit_events",
        &page.query,
        &paging,
        page.total,
        resources,
    )))
}

/// `GET /v3/audit_events/:guid`.
pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    let row: Option<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_events WHERE guid = $1"
    )))
    .bind(&guid)
    .fetch_optional(&s.db)
    .await?;
    let row = row.ok_or(ApiError::NotFound("Event"))?;
    Ok(Json(event_json(&s, &row)))
}
