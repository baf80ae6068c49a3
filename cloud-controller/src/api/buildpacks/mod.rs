//! Admin buildpacks (Cloud Foundry V3 `/v3/buildpacks`): list (filters `names`, `stacks`, in
//! position order), create, get, update, delete, and the upload of their zip; the internal
//! download of their bits for stagers; which ones a build stages with.
//!
//! The stagers' own buildpacks are rows too (`builtin`), made READY at every start for the
//! configured names ([`seed`]): they can be disabled, locked, moved and given a stack, not
//! renamed, deleted or uploaded over. Layout: `store` the rows and their order, `check` the
//! check of an uploaded zip, `upload` the bits in and out, `resolve` the build's buildpacks.

mod check;
mod resolve;
mod store;
mod upload;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

pub use resolve::refs_for;
pub use store::seed;
use store::{BuildpackRow, Changes, NewBuildpack, COLUMNS};
pub use upload::{bits, upload};

use super::listing::{self, Filter, Page};
use super::{filter_values, link, list_body, ApiJson, ApiQuery, PageQuery};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, AppState};

fn buildpack_json(s: &AppState, b: &BuildpackRow) -> Value {
    let g = &b.guid;
    json!({
        "guid": g, "created_at": b.created_at, "updated_at": b.updated_at,
        "name": b.name, "stack": b.stack, "position": b.position,
        "enabled": b.enabled != 0, "locked": b.locked != 0,
        "state": b.state, "filename": b.filename, "lifecycle": "buildpack",
        // Kiln: the sha256 of the uploaded zip (what stagers check and cache it by).
        "checksum": b.sha256.as_ref().map(|v| json!({"type": "sha256", "value": v})),
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": link(s, &format!("/v3/buildpacks/{g}")),
            "upload": {"href": format!("{}/v3/buildpacks/{g}/upload", s.base_url), "method": "POST"},
        },
    })
}

/// Names as Cloud Foundry takes them (they also name files on the stagers).
fn check_name(name: Option<&str>) -> ApiResult<String> {
    let name = name.unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::Unprocessable("Name can't be blank".into()));
    }
    let valid = name.len() <= 250
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(ApiError::Unprocessable(
            "Name can only contain letters, digits, `_` and `-` (at most 250)".into(),
        ));
    }
    Ok(name.to_string())
}

fn check_position(position: Option<i64>) -> ApiResult<()> {
    match position {
        Some(p) if p < 1 => Err(ApiError::Unprocessable(
            "Position must be greater than or equal to 1".into(),
        )),
        _ => Ok(()),
    }
}

async fn check_stack(s: &AppState, stack: Option<&str>) -> ApiResult<()> {
    match stack {
        Some(stack) => super::stacks::check_known(s, stack).await,
        None => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBuildpack {
    name: Option<String>,
    stack: Option<String>,
    position: Option<i64>,
    enabled: Option<bool>,
    locked: Option<bool>,
    lifecycle: Option<String>,
    #[allow(dead_code)]
    metadata: Option<Value>,
}

/// `POST /v3/buildpacks`: a buildpack awaiting its upload, at `position` (default: last).
pub async fn create(
    user: User,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateBuildpack>,
) -> ApiResult<impl IntoResponse> {
    let name = check_name(body.name.as_deref())?;
    check_position(body.position)?;
    if let Some(l) = body.lifecycle.as_deref().filter(|l| *l != "buildpack") {
        return Err(ApiError::Unprocessable(format!(
            "Lifecycle must be buildpack (got `{l}`)"
        )));
    }
    check_stack(&s, body.stack.as_deref()).await?;
    let new = NewBuildpack {
        name,
        stack: body.stack,
        position: body.position,
        enabled: body.enabled.unwrap_or(true),
        locked: body.locked.unwrap_or(false),
    };
    let guid = store::insert(&s.db, new).await?;
    let row = store::find(&s.db, &guid).await?;
    let data = json!({"request": {"name": row.name, "stack": row.stack, "position": row.position}});
    audit_buildpack(&s, &user, "audit.buildpack.create", &row, data).await;
    Ok((StatusCode::CREATED, Json(buildpack_json(&s, &row))))
}

#[derive(Deserialize)]
pub struct ListQuery {
    names: Option<String>,
    stacks: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// `GET /v3/buildpacks`, in position order.
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
            sql: "name IN ({})",
            param: "names",
            values: filter_values(&q.names),
        },
        Filter {
            sql: "stack IN ({})",
            param: "stacks",
            values: filter_values(&q.stacks),
        },
    ];
    let page: Page<BuildpackRow> = listing::page(
        &s,
        COLUMNS,
        "buildpacks",
        "position, guid",
        &filters,
        &paging,
    )
    .await?;
    let resources = page.rows.iter().map(|b| buildpack_json(&s, b)).collect();
    Ok(Json(list_body(
        &s,
        "/v3/buildpacks",
        &page.query,
        &paging,
        page.total,
        resources,
    )))
}

pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(buildpack_json(&s, &store::find(&s.db, &guid).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBuildpack {
    name: Option<String>,
    stack: Option<String>,
    position: Option<i64>,
    enabled: Option<bool>,
    locked: Option<bool>,
    #[allow(dead_code)]
    metadata: Option<Value>,
}

/// `PATCH /v3/buildpacks/:guid`: name, stack (only while it has none), position (the others
/// move to make room), enabled, locked.
pub async fn update(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    ApiJson(body): ApiJson<UpdateBuildpack>,
) -> ApiResult<Json<Value>> {
    store::find(&s.db, &guid).await?;
    let name = match body.name.as_deref() {
        Some(n) => Some(check_name(Some(n))?),
        None => None,
    };
    check_position(body.position)?;
    check_stack(&s, body.stack.as_deref()).await?;
    let changes = Changes {
        name,
        stack: body.stack,
        position: body.position,
        enabled: body.enabled,
        locked: body.locked,
    };
    store::update(&s.db, &guid, changes).await?;
    let row = store::find(&s.db, &guid).await?;
    let data = json!({"request": {"name": row.name, "stack": row.stack, "position": row.position, "enabled": row.enabled, "locked": row.locked}});
    audit_buildpack(&s, &user, "audit.buildpack.update", &row, data).await;
    Ok(Json(buildpack_json(&s, &row)))
}

/// `DELETE /v3/buildpacks/:guid`: 202 with a job (already complete: the buildpack is gone and
/// the others moved up when it answers). Built-in buildpacks are refused.
pub async fn delete(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let row = store::find(&s.db, &guid).await?;
    store::remove(&s.db, &guid).await?;
    audit_buildpack(&s, &user, "audit.buildpack.delete", &row, json!({})).await;
    let location = format!("{}/v3/jobs/{}", s.base_url, new_guid());
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)]))
}

/// Records event `kind` on buildpack `row` by `user`.
pub(crate) async fn audit_buildpack(
    s: &AppState,
    user: &User,
    kind: &str,
    row: &BuildpackRow,
    data: Value,
) {
    let target = crate::audit::Target {
        kind: "buildpack",
        guid: &row.guid,
        name: &row.name,
    };
    crate::audit::record(s, kind, crate::audit::Actor::User(user), target, None, data).await;
}
