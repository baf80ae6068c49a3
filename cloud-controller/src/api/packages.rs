//! Packages: app bits as uploaded (a zip as the cf CLI sends it, or a tar.gz), streamed into
//! the blobstore, checked, and READY or FAILED.

use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::listing::{self, Filter, Page};
use super::{link, list_body, ApiJson, ApiQuery, PageQuery};
use crate::auth::User;
use crate::blobstore::{BlobError, Blobstore};
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
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "guid, app_guid, kind, state, sha256, size, error, created_at, updated_at";

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
    json!({
        "guid": g, "type": p.kind, "state": p.state, "created_at": p.created_at, "updated_at": p.updated_at,
        "data": {"checksum": {"type": "sha256", "value": p.sha256}, "error": p.error},
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
}

#[derive(Deserialize)]
pub struct AppRelationship {
    app: super::apps::Relationship,
}

pub async fn create(
    _: User,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreatePackage>,
) -> ApiResult<impl IntoResponse> {
    if body.kind != "bits" {
        return Err(ApiError::Unprocessable(format!(
            "Type must be bits (`{}` packages are not supported yet)",
            body.kind
        )));
    }
    let app = body.relationships.app.data_guid();
    super::apps::find(&s, app)
        .await
        .map_err(|_| ApiError::Unprocessable("App must exist".into()))?;
    let (guid, t) = (new_guid(), now());
    sqlx::query("INSERT INTO packages (guid, app_guid, kind, state, created_at, updated_at) VALUES ($1, $2, 'bits', 'AWAITING_UPLOAD', $3, $4)")
        .bind(&guid)
        .bind(app)
        .bind(&t)
        .bind(&t)
        .execute(&s.db)
        .await?;
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

/// `POST /v3/packages/:guid/upload`: multipart with the bits in field `bits` (the cf CLI's
/// `resources` field is accepted and ignored). Streamed to the blobstore, never held whole.
pub async fn upload(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    mut form: Multipart,
) -> ApiResult<Json<Value>> {
    let package = find(&s, &guid).await?;
    if package.state != "AWAITING_UPLOAD" && package.state != "FAILED" {
        return Err(ApiError::Conflict(format!(
            "The package is {}; bits can be uploaded only once",
            package.state
        )));
    }
    set_state(&s, &guid, "PROCESSING_UPLOAD", None, None, None).await?;
    let limit = s.config.max_upload_bytes;
    let mut blob = None;
    let result = async {
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| upload_error(&e, limit))?
        {
            if field.name() != Some("bits") {
                continue;
            }
            let stored = s
                .blobs
                .put(Box::pin(field), limit)
                .await
                .map_err(|e| match e {
                    BlobError::TooLarge { limit } => ApiError::TooLarge(limit >> 20),
                    BlobError::Source(m) => {
                        ApiError::BadRequest(format!("reading the upload: {m}"))
                    }
                    other => ApiError::internal("storing a package", other),
                })?;
            blob = Some(stored);
        }
        blob.clone().ok_or_else(|| {
            ApiError::Unprocessable("Bits must be sent in the multipart field `bits`".into())
        })
    }
    .await;
    let blob = match result {
        Ok(b) => b,
        Err(e) => {
            set_state(&s, &guid, "FAILED", None, None, Some(&e.to_string())).await?;
            return Err(e);
        }
    };
    let path = s
        .blobs
        .open_verified(&blob.sha256)
        .await
        .map_err(|e| ApiError::internal("reading a package back", e))?;
    let max = limit.saturating_mul(4);
    let checked = tokio::task::spawn_blocking(move || crate::package_check::check(&path, max))
        .await
        .map_err(|e| ApiError::internal("checking a package", e))?;
    let size = i64::try_from(blob.size).unwrap_or(i64::MAX);
    match checked {
        Ok(()) => set_state(&s, &guid, "READY", Some(&blob.sha256), Some(size), None).await?,
        Err(reason) => {
            set_state(
                &s,
                &guid,
                "FAILED",
                Some(&blob.sha256),
                Some(size),
                Some(&reason),
            )
            .await?
        }
    }
    Ok(Json(package_json(&s, &find(&s, &guid).await?)))
}

fn upload_error(e: &axum::extract::multipart::MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(limit >> 20)
    } else {
        ApiError::BadRequest(format!("reading the upload: {}", e.body_text()))
    }
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
