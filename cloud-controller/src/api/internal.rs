//! The internal endpoints of stagers and cells, behind the internal credential (never given
//! to a container): package bits, droplet upload and download, build caches.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::auth::Internal;
use crate::blobstore::{BlobError, Blobstore};
use crate::error::{ApiError, ApiResult};
use crate::state::{now, AppState};

pub async fn package_bits(
    _: Internal,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Response> {
    super::packages::stream_file(
        super::packages::ready_blob(&s, &guid).await?,
        "application/octet-stream",
    )
    .await
}

fn stored(e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge { limit } => ApiError::TooLarge(limit >> 20),
        BlobError::Source(m) => ApiError::BadRequest(format!("reading the upload: {m}")),
        other => ApiError::internal("storing an upload", other),
    }
}

/// `PUT /internal/v1/builds/:guid/droplet`: the stager's droplet, recorded as the build's
/// droplet (still STAGING until the result arrives on the bus).
pub async fn upload_droplet(
    _: Internal,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let build = super::builds::find(&s, &guid).await?;
    if build.state != "STAGING" {
        return Err(ApiError::Conflict(format!(
            "The build is {}, not STAGING",
            build.state
        )));
    }
    let blob = s
        .blobs
        .put(body.into_data_stream(), s.config.max_upload_bytes)
        .await
        .map_err(stored)?;
    let t = now();
    let mut tx = s.db.begin().await?;
    // Still STAGING now that the upload is complete (the watchdog may have failed it).
    let still =
        sqlx::query("UPDATE builds SET updated_at = $1 WHERE guid = $2 AND state = 'STAGING'")
            .bind(&t)
            .bind(&guid)
            .execute(&mut *tx)
            .await?;
    if still.rows_affected() != 1 {
        return Err(ApiError::Conflict("The build is no longer STAGING".into()));
    }
    // One droplet per build: a second upload replaces the bits of the first.
    sqlx::query(
        "INSERT INTO droplets (guid, app_guid, build_guid, package_guid, state, sha256, size, detected_buildpack, buildpacks, process_types, start_command, stack, error, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'STAGING', $5, $6, NULL, '[]', '{}', NULL, $7, NULL, $8, $9)
         ON CONFLICT(build_guid) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, updated_at = excluded.updated_at",
    )
    .bind(crate::state::new_guid())
    .bind(&build.app_guid)
    .bind(&build.guid)
    .bind(&build.package_guid)
    .bind(&blob.sha256)
    .bind(i64::try_from(blob.size).unwrap_or(i64::MAX))
    .bind(&build.stack)
    .bind(&t)
    .bind(&t)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE builds SET droplet_guid = (SELECT guid FROM droplets WHERE build_guid = $1) WHERE guid = $2")
        .bind(&guid)
        .bind(&guid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::CREATED)
}

/// `GET /internal/v1/droplets/:guid/download`: for cells.
pub async fn download_droplet(
    _: Internal,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Response> {
    super::packages::stream_file(
        super::builds::staged_blob(&s, &guid).await?,
        "application/gzip",
    )
    .await
}

pub async fn download_cache(
    _: Internal,
    State(s): State<AppState>,
    Path((app, stack)): Path<(String, String)>,
) -> ApiResult<Response> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT sha256 FROM app_caches WHERE app_guid = $1 AND stack = $2")
            .bind(&app)
            .bind(&stack)
            .fetch_optional(&s.db)
            .await?;
    let sha = row.ok_or(ApiError::NotFound("Build cache"))?.0;
    let path = s
        .blobs
        .open_verified(&sha)
        .await
        .map_err(|_| ApiError::NotFound("Build cache"))?;
    super::packages::stream_file(path, "application/gzip").await
}

pub async fn upload_cache(
    _: Internal,
    State(s): State<AppState>,
    Path((app, stack)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    super::apps::find(&s, &app).await?;
    let blob = s
        .blobs
        .put(body.into_data_stream(), s.config.max_upload_bytes)
        .await
        .map_err(stored)?;
    sqlx::query(
        "INSERT INTO app_caches (app_guid, stack, sha256, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT(app_guid, stack) DO UPDATE SET sha256 = excluded.sha256, updated_at = excluded.updated_at",
    )
    .bind(&app)
    .bind(&stack)
    .bind(&blob.sha256)
    .bind(now())
    .execute(&s.db)
    .await?;
    Ok(StatusCode::CREATED)
}
