//! Packages: app bits as uploaded (a zip as the cf CLI sends it, or a tar.gz), streamed into
//! the blobstore, completed from the resource pool, checked, and READY or FAILED.

use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::listing::{self, Filter, Page};
use super::package_upload;
use super::{link, list_body, ApiJson, ApiQuery, PageQuery};
use crate::auth::User;
use crate::blobstore::Blobstore;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now, AppState};

/// A package as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PackageRow {
    pub guid: String,
    pub app_guid: String,
    pub kind: String,
    pub state: String,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub error: Option<String>,
    /// The image reference of a `docker` package.
    pub image: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str =
    "guid, app_guid, kind, state, sha256, size, error, image, created_at, updated_at";

/// The package `guid`, or 404.
pub async fn find(s: &AppState, guid: &str) -> ApiResult<PackageRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM packages WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound("Package"))
}

fn package_json(s: &AppState, p: &PackageRow) -> Value {
    let g = &p.guid;
    let data = match p.kind.as_str() {
        "docker" => json!({"image": p.image, "username": null, "password": null}),
        _ => json!({"checksum": {"type": "sha256", "value": p.sha256}, "error": p.error}),
    };
    json!({
        "guid": g, "type": p.kind, "state": p.state, "created_at": p.created_at, "updated_at": p.updated_at,
        "data": data,
        "relationships": {"app": {"data": {"guid": p.app_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": link(s, &format!("/v3/packages/{g}")),
            "upload": {"href": format!("{}/v3/packages/{g}/upload", s.base_url), "method": "POST"},
            "download": {"href": format!("{}/v3/packages/{g}/download", s.base_url), "method": "GET"},
            "app": link(s, &format!("/v3/apps/{}", p.app_guid)),
        },
    })
}

#[derive(Deserialize)]
pub struct CreatePackage {
    #[serde(rename = "type")]
    kind: String,
    relationships: AppRelationship,
    #[serde(default)]
    data: Option<DockerData>,
}

/// `data` of a `docker` package.
#[derive(Deserialize)]
pub struct DockerData {
    image: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The image reference of a docker package, checked: a name, no spaces or control characters.
fn docker_image(data: Option<DockerData>) -> ApiResult<String> {
    let data = data.ok_or_else(|| ApiError::Unprocessable("Data must have an image".into()))?;
    if data.username.is_some() || data.password.is_some() {
        return Err(ApiError::Unprocessable(
            "Data username and password: registry credentials are not supported yet; use a public image or import it into Kiln's image store".into(),
        ));
    }
    let image = data.image.unwrap_or_default();
    let bad = image.is_empty()
        || image.len() > 4096
        || image.starts_with(['-', '/', ':', '@'])
        || image.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad {
        return Err(ApiError::Unprocessable(format!(
            "Data image must be an image reference such as `registry.example.com/team/app:1.2` (got {image:?})"
        )));
    }
    Ok(image)
}

#[derive(Deserialize)]
pub struct AppRelationship {
    app: super::apps::Relationship,
}

/// `POST /v3/packages`: `bits` (AWAITING_UPLOAD until uploaded) or `docker` with an image
/// reference (READY at once: there is nothing to upload).
pub async fn create(
    user: User,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreatePackage>,
) -> ApiResult<impl IntoResponse> {
    let (state, image) = match body.kind.as_str() {
        "bits" => ("AWAITING_UPLOAD", None),
        "docker" => ("READY", Some(docker_image(body.data)?)),
        other => {
            return Err(ApiError::Unprocessable(format!(
                "Type must be one of 'bits', 'docker' (got `{other}`)"
            )))
        }
    };
    let app_guid = body.relationships.app.data_guid();
    let app = super::apps::find(&s, app_guid)
        .await
        .map_err(|_| ApiError::Unprocessable("App must exist".into()))?;
    let (guid, t) = (new_guid(), now());
    sqlx::query("INSERT INTO packages (guid, app_guid, kind, state, image, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&guid)
        .bind(app_guid)
        .bind(&body.kind)
        .bind(state)
        .bind(&image)
        .bind(&t)
        .bind(&t)
        .execute(&s.db)
        .await?;
    let data = json!({"package_guid": guid, "request": {"type": body.kind, "image": image}});
    let actor = crate::audit::Actor::User(&user);
    let target = crate::audit::app(&app.guid, &app.name);
    crate::audit::record(
        &s,
        "audit.app.package.create",
        actor,
        target,
        Some(&app.space_guid),
        data,
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(package_json(&s, &find(&s, &guid).await?)),
    ))
}

pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(package_json(&s, &find(&s, &guid).await?)))
}

pub async fn app_packages(
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
    let page: Page<PackageRow> =
        listing::page(&s, COLUMNS, "packages", "created_at, guid", &filters, &q).await?;
    let resources = page.rows.iter().map(|p| package_json(&s, p)).collect();
    Ok(Json(list_body(
        &s,
        &format!("/v3/apps/{app}/packages"),
        "",
        &q,
        page.total,
        resources,
    )))
}

async fn set_state(
    s: &AppState,
    guid: &str,
    state: &str,
    sha256: Option<&str>,
    size: Option<i64>,
    error: Option<&str>,
) -> ApiResult<()> {
    sqlx::query("UPDATE packages SET state = $1, sha256 = COALESCE($2, sha256), size = COALESCE($3, size), error = $4, updated_at = $5 WHERE guid = $6")
        .bind(state)
        .bind(sha256)
        .bind(size)
        .bind(error)
        .bind(now())
        .bind(guid)
        .execute(&s.db)
        .await?;
    Ok(())
}

/// `POST /v3/packages/:guid/upload`: multipart with the bits in field `bits` and, as the cf
/// CLI sends it, the files the resource pool already has in field `resources` (see
/// [`super::package_upload`]). Streamed to the blobstore, never held whole.
pub async fn upload(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    mut form: Multipart,
) -> ApiResult<Json<Value>> {
    let package = find(&s, &guid).await?;
    if package.kind != "bits" {
        return Err(ApiError::Unprocessable(format!(
            "A {} package has no bits to upload",
            package.kind
        )));
    }
    if package.state != "AWAITING_UPLOAD" && package.state != "FAILED" {
        return Err(ApiError::Conflict(format!(
            "The package is {}; bits can be uploaded only once",
            package.state
        )));
    }
    set_state(&s, &guid, "PROCESSING_UPLOAD", None, None, None).await?;
    let made = match package_upload::receive(&s, &mut form).await {
        Ok(received) => package_upload::make(&s, received).await,
        Err(e) => Err(e),
    };
    let made = match made {
        Ok(m) => m,
        Err(e) => {
            set_state(&s, &guid, "FAILED", None, None, Some(&e.to_string())).await?;
            return Err(e);
        }
    };
    let sha256 = made.blob.as_ref().map(|b| b.sha256.as_str());
    let size = made
        .blob
        .as_ref()
        .map(|b| i64::try_from(b.size).unwrap_or(i64::MAX));
    match &made.refusal {
        None => set_state(&s, &guid, "READY", sha256, size, None).await?,
        Some(reason) => set_state(&s, &guid, "FAILED", sha256, size, Some(reason)).await?,
    }
    if let Ok(app) = super::apps::find(&s, &package.app_guid).await {
        let data = json!({"package_guid": guid, "sha256": sha256, "refused": made.refusal});
        let actor = crate::audit::Actor::User(&user);
        let target = crate::audit::app(&app.guid, &app.name);
        crate::audit::record(
            &s,
            "audit.app.upload-bits",
            actor,
            target,
            Some(&app.space_guid),
            data,
        )
        .await;
    }
    Ok(Json(package_json(&s, &find(&s, &guid).await?)))
}

/// A response streaming blob file `path`.
pub async fn stream_file(
    path: std::path::PathBuf,
    content_type: &'static str,
) -> ApiResult<Response> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal("opening a blob", e))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// The READY package's blob, verified.
pub async fn ready_blob(s: &AppState, guid: &str) -> ApiResult<std::path::PathBuf> {
    let p = find(s, guid).await?;
    match (p.state.as_str(), p.sha256) {
        ("READY", Some(sha)) => s
            .blobs
            .open_verified(&sha)
            .await
            .map_err(|e| ApiError::internal("reading a package", e)),
        _ => Err(ApiError::Unprocessable(format!(
            "The package is {}, not READY",
            p.state
        ))),
    }
}

pub async fn download(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Response> {
    stream_file(ready_blob(&s, &guid).await?, "application/octet-stream").await
}
