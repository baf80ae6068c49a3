//! Organizations and spaces (read-only for now: the default ones are made on first start).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::{link, list_body, ApiQuery, PageQuery};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

type OrgRow = (String, String, String, String);
type SpaceRow = (String, String, String, String, String);

fn org_json(s: &AppState, (guid, name, created, updated): OrgRow) -> Value {
    json!({
        "guid": guid, "name": name, "suspended": false, "created_at": created, "updated_at": updated,
        "relationships": {"quota": {"data": null}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {"self": link(s, &format!("/v3/organizations/{guid}"))},
    })
}

fn space_json(s: &AppState, (guid, name, org, created, updated): SpaceRow) -> Value {
    json!({
        "guid": guid, "name": name, "created_at": created, "updated_at": updated,
        "relationships": {"organization": {"data": {"guid": org}}, "quota": {"data": null}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {"self": link(s, &format!("/v3/spaces/{guid}")), "organization": link(s, &format!("/v3/organizations/{org}"))},
    })
}

pub async fn list_orgs(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = q.limits()?;
    let total: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM organizations")
        .fetch_one(&s.db)
        .await?;
    let rows: Vec<OrgRow> = sqlx::query_as("SELECT guid, name, created_at, updated_at FROM organizations ORDER BY created_at, guid LIMIT $1 OFFSET $2")
        .bind(limit)
        .bind(offset)
        .fetch_all(&s.db)
        .await?;
    let resources = rows.into_iter().map(|r| org_json(&s, r)).collect();
    Ok(Json(list_body(
        &s,
        "/v3/organizations",
        "",
        &q,
        total.0,
        resources,
    )))
}

pub async fn get_org(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    let row: Option<OrgRow> = sqlx::query_as(
        "SELECT guid, name, created_at, updated_at FROM organizations WHERE guid = $1",
    )
    .bind(&guid)
    .fetch_optional(&s.db)
    .await?;
    Ok(Json(org_json(
        &s,
        row.ok_or(ApiError::NotFound("Organization"))?,
    )))
}

pub async fn list_spaces(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = q.limits()?;
    let total: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM spaces")
        .fetch_one(&s.db)
        .await?;
    let rows: Vec<SpaceRow> = sqlx::query_as("SELECT guid, name, org_guid, created_at, updated_at FROM spaces ORDER BY created_at, guid LIMIT $1 OFFSET $2")
        .bind(limit)
        .bind(offset)
        .fetch_all(&s.db)
        .await?;
    let resources = rows.into_iter().map(|r| space_json(&s, r)).collect();
    Ok(Json(list_body(
        &s,
        "/v3/spaces",
        "",
        &q,
        total.0,
        resources,
    )))
}

pub async fn get_space(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    let row: Option<SpaceRow> = sqlx::query_as(
        "SELECT guid, name, org_guid, created_at, updated_at FROM spaces WHERE guid = $1",
    )
    .bind(&guid)
    .fetch_optional(&s.db)
    .await?;
    Ok(Json(space_json(
        &s,
        row.ok_or(ApiError::NotFound("Space"))?,
    )))
}
