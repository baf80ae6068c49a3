//! The image store (Kiln extension of the V3 API): OCI images uploaded by operators as
//! archives (an OCI image layout or a `docker save` tar, plain or gzip), checked (every blob
//! against its digest) and kept as one blob each, known by the manifest digest and an optional
//! name. They are what `stack.<name>.image` points at; stagers and cells fetch one by digest
//! from the internal endpoint the first time they need it.
//!
//! `POST /v3/images?name=N` (the archive as the body), `GET /v3/images`, `GET /v3/images/:ref`
//! (guid, name or digest), `GET /internal/v1/images/:digest/archive`.

use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{link, list_body, ApiQuery, PageQuery};
use crate::audit::{self, Actor, Target};
use crate::auth::{Internal, User};
use crate::blobstore::{BlobError, Blobstore};
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now, AppState};

/// The largest image archive taken.
const MAX_IMAGE_BYTES: u64 = 16 << 30;

#[derive(sqlx::FromRow)]
pub(crate) struct ImageRow {
    pub(crate) guid: String,
    pub(crate) name: Option<String>,
    pub(crate) digest: Option<String>,
    pub(crate) sha256: String,
    pub(crate) size: i64,
    pub(crate) config: String,
    created_at: String,
    updated_at: String,
}

const COLUMNS: &str = "guid, name, digest, sha256, size, config, created_at, updated_at";

fn image_json(s: &AppState, i: &ImageRow) -> Value {
    json!({
        "guid": i.guid,
        "created_at": i.created_at,
        "updated_at": i.updated_at,
        "name": i.name,
        "digest": i.digest,
        "size": i.size,
        "archive_sha256": i.sha256,
        "config": serde_json::from_str::<Value>(&i.config).unwrap_or(Value::Null),
        "links": {"self": link(s, &format!("/v3/images/{}", i.guid))},
    })
}

/// Image names: like stack names, `[A-Za-z0-9._-]`, 1-128, starting with a letter or digit.
pub(crate) fn check_name(name: &str) -> ApiResult<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "Invalid image name `{name}`: use 1-128 of [A-Za-z0-9._-], starting with a letter or digit"
        )))
    }
}

#[derive(Deserialize)]
pub struct CreateQuery {
    name: Option<String>,
}

/// What the check of an archive found.
struct Checked {
    digest: String,
    config: Value,
}

/// `POST /v3/images?name=N`: 201 with the READY image (200 with the existing one when the
/// store has that image already; a name given moves to it). An archive that holds no image,
/// or a corrupt one, is a 422 that keeps nothing.
pub async fn create(
    user: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<CreateQuery>,
    body: Body,
) -> ApiResult<Response> {
    let name = q.name.filter(|n| !n.is_empty());
    if let Some(name) = &name {
        check_name(name)?;
    }
    let blob = s
        .blobs
        .put(body.into_data_stream(), MAX_IMAGE_BYTES)
        .await
        .map_err(|e| match e {
            BlobError::TooLarge { limit } => ApiError::TooLarge(limit >> 20),
            BlobError::Source(m) => ApiError::BadRequest(format!("reading the upload: {m}")),
            other => ApiError::internal("storing an image archive", other),
        })?;
    let (row, created) = register(&s, &blob.sha256, blob.size, name.as_deref()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let digest = row.digest.clone().unwrap_or_default();
    let shown = row.name.clone().unwrap_or_else(|| digest.clone());
    audit::record(
        &s,
        "audit.image.create",
        Actor::User(&user),
        Target {
            kind: "image",
            guid: &row.guid,
            name: &shown,
        },
        None,
        json!({"digest": digest, "size": blob.size}),
    )
    .await;
    Ok((status, Json(image_json(&s, &row))).into_response())
}

/// Records the archive in blob `sha256` (`size` bytes) as an image once it is checked: the
/// READY image, and whether it is new (false: the store had that manifest digest already, and
/// `name`, if given, moves to it). An archive that holds no image, or a corrupt one, is a 422
/// that records nothing.
pub(crate) async fn register(
    s: &AppState,
    sha256: &str,
    size: u64,
    name: Option<&str>,
) -> ApiResult<(ImageRow, bool)> {
    // Recorded at once (the blob collector keeps what a row names), READY once checked.
    let guid = new_guid();
    let t = now();
    sqlx::query(
        "INSERT INTO images (guid, name, digest, sha256, size, config, state, created_at, updated_at) VALUES ($1, NULL, NULL, $2, $3, '{}', 'PROCESSING', $4, $5)",
    )
    .bind(&guid)
    .bind(sha256)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(&t)
    .bind(&t)
    .execute(&s.db)
    .await?;
    let checked = check_archive(s, sha256, name).await;
    let checked = match checked {
        Ok(checked) => checked,
        Err(e) => {
            sqlx::query("DELETE FROM images WHERE guid = $1")
                .bind(&guid)
                .execute(&s.db)
                .await?;
            return Err(e);
        }
    };
    let existing = find_by_digest(s, &checked.digest).await?;
    let (row, created) = match existing {
        Some(old) => {
            sqlx::query("DELETE FROM images WHERE guid = $1")
                .bind(&guid)
                .execute(&s.db)
                .await?;
            if let Some(name) = name {
                set_name(s, &old.guid, name).await?;
            }
            (find(s, &old.guid).await?, false)
        }
        None => {
            if let Some(name) = name {
                release_name(s, name).await?;
            }
            sqlx::query(
                "UPDATE images SET name = $1, digest = $2, config = $3, state = 'READY', updated_at = $4 WHERE guid = $5",
            )
            .bind(name)
            .bind(&checked.digest)
            .bind(checked.config.to_string())
            .bind(now())
            .bind(&guid)
            .execute(&s.db)
            .await?;
            (find(s, &guid).await?, true)
        }
    };
    Ok((row, created))
}

/// A name points at one image: the one it was given last.
async fn release_name(s: &AppState, name: &str) -> ApiResult<()> {
    sqlx::query("UPDATE images SET name = NULL, updated_at = $1 WHERE name = $2")
        .bind(now())
        .bind(name)
        .execute(&s.db)
        .await?;
    Ok(())
}

async fn set_name(s: &AppState, guid: &str, name: &str) -> ApiResult<()> {
    release_name(s, name).await?;
    sqlx::query("UPDATE images SET name = $1, updated_at = $2 WHERE guid = $3")
        .bind(name)
        .bind(now())
        .bind(guid)
        .execute(&s.db)
        .await?;
    Ok(())
}

/// Unpacks the archive's layout into a scratch directory and reads its image (every blob
/// verified): the manifest digest and a summary of the config.
async fn check_archive(s: &AppState, sha256: &str, name: Option<&str>) -> ApiResult<Checked> {
    let path = s
        .blobs
        .open_verified(sha256)
        .await
        .map_err(|e| ApiError::internal("reading an image archive", e))?;
    let scratch = s
        .config
        .data_dir
        .join("tmp")
        .join(format!("image-{}", new_guid()));
    let name = name.unwrap_or_default().to_string();
    let work = scratch.clone();
    let checked = tokio::task::spawn_blocking(move || read_archive(&path, &work, &name))
        .await
        .map_err(|e| ApiError::internal("checking an image archive", e))?;
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    checked
}

fn read_archive(archive: &FsPath, work: &FsPath, name: &str) -> ApiResult<Checked> {
    std::fs::create_dir_all(work).map_err(|e| ApiError::internal("making a scratch dir", e))?;
    let selector = (!name.is_empty()).then_some(name);
    let layout =
        kiln_rootfs::layout::layout_from_archive(archive, work, selector).map_err(|e| {
            ApiError::Unprocessable(format!(
                "The upload is not an image archive: {}",
                error_chain(&e)
            ))
        })?;
    let image = kiln_rootfs::layout::read_image(&layout.dir, name).map_err(|e| {
        ApiError::Unprocessable(format!(
            "The image archive is not valid: {}",
            error_chain(&e)
        ))
    })?;
    let config = image.config.config().as_ref();
    let summary = json!({
        "user": config.and_then(|c| c.user().clone()),
        "env": config.and_then(|c| c.env().clone()).unwrap_or_default(),
        "working_dir": config.and_then(|c| c.working_dir().clone()),
        "entrypoint": config.and_then(|c| c.entrypoint().clone()),
        "cmd": config.and_then(|c| c.cmd().clone()),
        "exposed_ports": config.and_then(|c| c.exposed_ports().clone()).unwrap_or_default(),
        "layers": image.manifest.layers().len(),
    });
    Ok(Checked {
        digest: image.manifest_digest,
        config: summary,
    })
}

/// An error and its sources, for people.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn find(s: &AppState, guid: &str) -> ApiResult<ImageRow> {
    let row: Option<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM images WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&s.db)
    .await?;
    row.ok_or(ApiError::NotFound("Image"))
}

async fn find_by_digest(s: &AppState, digest: &str) -> ApiResult<Option<ImageRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM images WHERE digest = $1 AND state = 'READY'"
    )))
    .bind(digest)
    .fetch_optional(&s.db)
    .await?)
}

/// The READY image `reference` names: a guid, a name, a digest (`sha256:<hex>`), or a unique
/// hex prefix of at least 12 digits of one.
pub(crate) async fn resolve(s: &AppState, reference: &str) -> ApiResult<ImageRow> {
    let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM images WHERE state = 'READY' AND (guid = $1 OR name = $1 OR digest = $1)"
    )))
    .bind(reference)
    .fetch_all(&s.db)
    .await?;
    if let Some(row) = rows.into_iter().next() {
        return Ok(row);
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM images WHERE state = 'READY' AND digest LIKE $1"
        )))
        .bind(format!("sha256:{}%", hex.to_ascii_lowercase()))
        .fetch_all(&s.db)
        .await?;
        match rows.len() {
            1 => return Ok(rows.into_iter().next().expect("one row")),
            0 => {}
            _ => {
                return Err(ApiError::Unprocessable(format!(
                    "Image digest prefix `{reference}` is ambiguous: it matches {}",
                    rows.iter()
                        .filter_map(|r| r.digest.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    }
    Err(ApiError::Unprocessable(format!(
        "Image `{reference}` is not in the image store: import it with `kiln admin image import ARCHIVE --name NAME` (see `kiln admin images`)"
    )))
}

/// `GET /v3/images` (`page`, `per_page`), newest first.
pub async fn list(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = q.limits()?;
    let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM images WHERE state = 'READY'")
        .fetch_one(&s.db)
        .await?;
    let rows: Vec<ImageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM images WHERE state = 'READY' ORDER BY created_at DESC, guid LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.db)
    .await?;
    let resources = rows.iter().map(|i| image_json(&s, i)).collect();
    Ok(Json(list_body(&s, "/v3/images", "", &q, total, resources)))
}

/// `GET /v3/images/:ref` (guid, name, digest or digest prefix).
pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(reference): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = resolve(&s, &reference)
        .await
        .map_err(|_| ApiError::NotFound("Image"))?;
    Ok(Json(image_json(&s, &row)))
}

/// `GET /internal/v1/images/:digest/archive`: the archive, for stagers and cells.
pub async fn archive(
    _: Internal,
    State(s): State<AppState>,
    Path(digest): Path<String>,
) -> ApiResult<Response> {
    let row = find_by_digest(&s, &digest)
        .await?
        .ok_or(ApiError::NotFound("Image"))?;
    let path: PathBuf = s
        .blobs
        .open_verified(&row.sha256)
        .await
        .map_err(|_| ApiError::NotFound("Image"))?;
    super::packages::stream_file(path, "application/x-tar").await
}
