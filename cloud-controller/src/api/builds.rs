//! Builds (staging a package into a droplet over the bus) and droplets.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::listing::{self, Filter, Page};
use super::{filter_values, link, list_body, ApiJson, ApiQuery, PageQuery};
use crate::auth::User;
use crate::blobstore::Blobstore;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now, AppState};

/// A build as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BuildRow {
    pub guid: String,
    pub app_guid: String,
    pub package_guid: String,
    pub state: String,
    pub error: Option<String>,
    pub stack: String,
    pub buildpacks: String,
    pub droplet_guid: Option<String>,
    pub stager_id: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

const BUILD_COLUMNS: &str = "guid, app_guid, package_guid, state, error, stack, buildpacks, droplet_guid, stager_id, created_by, created_at, updated_at";

/// The build `guid`, or 404.
pub async fn find(s: &AppState, guid: &str) -> ApiResult<BuildRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {BUILD_COLUMNS} FROM builds WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound("Build"))
}

fn build_json(s: &AppState, b: &BuildRow) -> Value {
    let buildpacks: Vec<String> = serde_json::from_str(&b.buildpacks).unwrap_or_default();
    json!({
        "guid": b.guid, "state": b.state, "error": b.error, "created_at": b.created_at, "updated_at": b.updated_at,
        "staging_memory_in_mb": s.config.staging_memory_mb, "staging_disk_in_mb": s.config.staging_disk_mb,
        "lifecycle": {"type": "buildpack", "data": {"buildpacks": buildpacks, "stack": b.stack}},
        "package": {"guid": b.package_guid},
        "droplet": b.droplet_guid.as_ref().map(|g| json!({"guid": g})),
        "created_by": {"guid": b.created_by},
        "relationships": {"app": {"data": {"guid": b.app_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": link(s, &format!("/v3/builds/{}", b.guid)),
            "app": link(s, &format!("/v3/apps/{}", b.app_guid)),
            "droplet": b.droplet_guid.as_ref().map(|g| link(s, &format!("/v3/droplets/{g}"))),
        },
    })
}

#[derive(Deserialize)]
pub struct PackageRef {
    guid: String,
}

#[derive(Deserialize)]
pub struct BuildLifecycle {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: BuildLifecycleData,
}

#[derive(Deserialize, Default)]
pub struct BuildLifecycleData {
    buildpacks: Option<Vec<String>>,
    stack: Option<String>,
}

#[derive(Deserialize)]
pub struct CreateBuild {
    package: PackageRef,
    lifecycle: Option<BuildLifecycle>,
}

/// `POST /v3/builds`: stages a READY package on the app's (or the given) stack.
pub async fn create(
    user: User,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateBuild>,
) -> ApiResult<impl IntoResponse> {
    let package = super::packages::find(&s, &body.package.guid)
        .await
        .map_err(|_| {
            ApiError::Unprocessable(
                "Unable to use package. Ensure that the package exists and you have access to it."
                    .into(),
            )
        })?;
    if package.kind == "docker" {
        let app = super::apps::find(&s, &package.app_guid).await?;
        let guid = super::image_builds::create(&s, &user, &package, &app).await?;
        audit_create(&s, &user, &app, &guid, &package.guid).await;
        return Ok((
            StatusCode::CREATED,
            Json(build_json(&s, &find(&s, &guid).await?)),
        ));
    }
    if package.state != "READY" {
        return Err(ApiError::Unprocessable(format!(
            "Unable to stage the package: it is {}, not READY",
            package.state
        )));
    }
    if let Some(kind) = body.lifecycle.as_ref().and_then(|l| l.kind.as_deref()) {
        if kind != "buildpack" {
            return Err(ApiError::Unprocessable(format!(
                "Lifecycle type must be buildpack (got `{kind}`)"
            )));
        }
    }
    let app = super::apps::find(&s, &package.app_guid).await?;
    let data = body.lifecycle.map(|l| l.data).unwrap_or_default();
    let stack = data.stack.unwrap_or(app.stack.clone());
    super::stacks::check_known(&s, &stack).await?;
    let buildpacks = data.buildpacks.unwrap_or_else(|| app.buildpack_list());
    if stack == kiln_bus::DOCKER_STACK && !buildpacks.is_empty() {
        return Err(ApiError::Unprocessable(format!(
            "Stack '{stack}' builds the app's Dockerfile and runs no buildpacks (got {}): drop -b or choose another stack",
            buildpacks.join(", ")
        )));
    }
    // Refused here, before there is a build, when a named buildpack cannot be used.
    let buildpack_refs = super::buildpacks::refs_for(&s, &buildpacks, &stack).await?;
    let (guid, t) = (new_guid(), now());
    sqlx::query(
        "INSERT INTO builds (guid, app_guid, package_guid, state, error, stack, buildpacks, droplet_guid, stager_id, created_by, created_at, updated_at) VALUES ($1, $2, $3, 'STAGING', NULL, $4, $5, NULL, NULL, $6, $7, $8)",
    )
    .bind(&guid)
    .bind(&app.guid)
    .bind(&package.guid)
    .bind(&stack)
    .bind(serde_json::to_string(&buildpacks).unwrap_or_default())
    .bind(&user.guid)
    .bind(&t)
    .bind(&t)
    .execute(&s.db)
    .await?;
    let build = find(&s, &guid).await?;
    audit_create(&s, &user, &app, &guid, &package.guid).await;
    crate::staging::request(&s, &build, &app, buildpack_refs).await?;
    Ok((
        StatusCode::CREATED,
        Json(build_json(&s, &find(&s, &guid).await?)),
    ))
}

/// The `audit.app.build.create` event of build `guid` of `package`.
async fn audit_create(
    s: &AppState,
    user: &User,
    app: &super::apps::AppRow,
    guid: &str,
    package: &str,
) {
    crate::audit::record(
        s,
        "audit.app.build.create",
        crate::audit::Actor::User(user),
        crate::audit::app(&app.guid, &app.name),
        Some(&app.space_guid),
        serde_json::json!({"build_guid": guid, "package_guid": package}),
    )
    .await;
}

pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(build_json(&s, &find(&s, &guid).await?)))
}

#[derive(Deserialize)]
pub struct BuildListQuery {
    app_guids: Option<String>,
    states: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

pub async fn list(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<BuildListQuery>,
) -> ApiResult<Json<Value>> {
    let paging = PageQuery {
        page: q.page,
        per_page: q.per_page,
    };
    let filters = [
        Filter {
            sql: "app_guid IN ({})",
            param: "app_guids",
            values: filter_values(&q.app_guids),
        },
        Filter {
            sql: "state IN ({})",
            param: "states",
            values: filter_values(&q.states),
        },
    ];
    let page: Page<BuildRow> = listing::page(
        &s,
        BUILD_COLUMNS,
        "builds",
        "created_at, guid",
        &filters,
        &paging,
    )
    .await?;
    let resources = page.rows.iter().map(|b| build_json(&s, b)).collect();
    Ok(Json(list_body(
        &s,
        "/v3/builds",
        &page.query,
        &paging,
        page.total,
        resources,
    )))
}

/// A droplet as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DropletRow {
    pub guid: String,
    pub app_guid: String,
    pub package_guid: String,
    pub state: String,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub detected_buildpack: Option<String>,
    pub buildpacks: String,
    pub process_types: String,
    pub start_command: Option<String>,
    pub stack: String,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// An image droplet's manifest digest (an image of the store); None: a buildpack droplet.
    pub image_digest: Option<String>,
}

const DROPLET_COLUMNS: &str = "guid, app_guid, package_guid, state, sha256, size, detected_buildpack, buildpacks, process_types, start_command, stack, error, created_at, updated_at, image_digest";

/// The droplet `guid`, or 404.
pub async fn find_droplet(s: &AppState, guid: &str) -> ApiResult<DropletRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DROPLET_COLUMNS} FROM droplets WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound("Droplet"))
}

fn droplet_json(s: &AppState, d: &DropletRow) -> Value {
    let process_types: BTreeMap<String, String> =
        serde_json::from_str(&d.process_types).unwrap_or_default();
    let buildpacks: Vec<String> = serde_json::from_str(&d.buildpacks).unwrap_or_default();
    let g = &d.guid;
    json!({
        "guid": g, "state": d.state, "error": d.error, "created_at": d.created_at, "updated_at": d.updated_at,
        "lifecycle": {"type": if d.image_digest.is_some() { "docker" } else { "buildpack" }, "data": {}},
        "execution_metadata": "",
        "process_types": process_types,
        "checksum": d.sha256.as_ref().map(|v| json!({"type": "sha256", "value": v})),
        "buildpacks": buildpacks.iter().map(|b| json!({"name": b, "buildpack_name": b, "detect_output": d.detected_buildpack, "version": null})).collect::<Vec<_>>(),
        "stack": d.stack,
        "image": d.image_digest,
        "relationships": {"app": {"data": {"guid": d.app_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": link(s, &format!("/v3/droplets/{g}")),
            "package": link(s, &format!("/v3/packages/{}", d.package_guid)),
            "app": link(s, &format!("/v3/apps/{}", d.app_guid)),
            "download": link(s, &format!("/v3/droplets/{g}/download")),
            "assign_current_droplet": {"href": format!("{}/v3/apps/{}/relationships/current_droplet", s.base_url, d.app_guid), "method": "PATCH"},
        },
    })
}

pub async fn get_droplet(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(droplet_json(&s, &find_droplet(&s, &guid).await?)))
}

pub async fn app_droplets(
    _: User,
    State(s): State<AppState>,
    Path(app): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    super::apps::find(&s, &app).await?;
    let filters = [Filter {
        sql: "app_guid IN ({})",
        param: "",
        values: vec![app.clone()],
    }];
    let page: Page<DropletRow> = listing::page(
        &s,
        DROPLET_COLUMNS,
        "droplets",
        "created_at, guid",
        &filters,
        &q,
    )
    .await?;
    let resources = page.rows.iter().map(|d| droplet_json(&s, d)).collect();
    Ok(Json(list_body(
        &s,
        &format!("/v3/apps/{app}/droplets"),
        "",
        &q,
        page.total,
        resources,
    )))
}

pub async fn current_droplet(
    _: User,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = super::apps::find(&s, &app).await?;
    let guid = app.droplet_guid.ok_or(ApiError::NotFound("Droplet"))?;
    Ok(Json(droplet_json(&s, &find_droplet(&s, &guid).await?)))
}

/// The STAGED droplet's blob, verified.
pub async fn staged_blob(s: &AppState, guid: &str) -> ApiResult<std::path::PathBuf> {
    let d = find_droplet(s, guid).await?;
    match (d.state.as_str(), d.sha256) {
        ("STAGED", Some(sha)) => s
            .blobs
            .open_verified(&sha)
            .await
            .map_err(|e| ApiError::internal("reading a droplet", e)),
        _ => Err(ApiError::Unprocessable(format!(
            "The droplet is {}, not STAGED",
            d.state
        ))),
    }
}

pub async fn download_droplet(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Response> {
    super::packages::stream_file(staged_blob(&s, &guid).await?, "application/gzip").await
}
