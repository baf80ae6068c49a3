//! A buildpack's bits: the upload (multipart field `bits`, a zip, streamed into the
//! blobstore, then checked; READY with its sha256, or a 422 that leaves the buildpack as it
//! was), and the download of stagers (internal credential).

use axum::extract::{Multipart, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{buildpack_json, check, store};
use crate::auth::{Internal, User};
use crate::blobstore::{BlobError, Blobstore};
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, AppState};

/// The uploaded file's name as recorded: its last path part, printable, at most 255
/// characters.
fn filename(given: Option<&str>) -> String {
    let base = given
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.is_empty() {
        "buildpack.zip".into()
    } else {
        clean
    }
}

fn stored(e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge { limit } => ApiError::TooLarge(limit >> 20),
        BlobError::Source(m) => ApiError::BadRequest(format!("reading the upload: {m}")),
        other => ApiError::internal("storing a buildpack", other),
    }
}

/// Records uploaded bits: READY with the zip's name, digest and size. Refused (422) when the
/// buildpack was locked meanwhile.
async fn set_bits(
    db: &crate::db::Db,
    guid: &str,
    filename: &str,
    sha256: &str,
    size: i64,
) -> ApiResult<()> {
    let done = sqlx::query(
        "UPDATE buildpacks SET state = 'READY', filename = $1, sha256 = $2, size = $3, updated_at = $4 WHERE guid = $5 AND locked = 0 AND builtin = 0",
    )
    .bind(filename)
    .bind(sha256)
    .bind(size)
    .bind(crate::state::now())
    .bind(guid)
    .execute(db)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(());
    }
    store::find(db, guid).await?;
    Err(ApiError::Unprocessable(
        "The buildpack is locked: unlock it (\"locked\": false) to upload bits".into(),
    ))
}

/// `POST /v3/buildpacks/:guid/upload`: 202 with a job (already complete) and the READY
/// buildpack. A built-in or locked buildpack, and a zip that is not a buildpack, are 422s.
pub async fn upload(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    mut form: Multipart,
) -> ApiResult<impl IntoResponse> {
    let bp = store::find(&s.db, &guid).await?;
    if bp.builtin != 0 {
        return Err(ApiError::Unprocessable(format!(
            "'{}' is a built-in buildpack: its bits live on the stagers and cannot be uploaded over (create a buildpack of another name)",
            bp.name
        )));
    }
    if bp.locked != 0 {
        return Err(ApiError::Unprocessable(
            "The buildpack is locked: unlock it (\"locked\": false) to upload bits".into(),
        ));
    }
    let limit = s.config.max_upload_bytes;
    let mut blob = None;
    while let Some(field) = form.next_field().await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit >> 20)
        } else {
            ApiError::BadRequest(format!("reading the upload: {}", e.body_text()))
        }
    })? {
        if field.name() != Some("bits") {
            continue;
        }
        let name = filename(field.file_name());
        blob = Some((
            name,
            s.blobs.put(Box::pin(field), limit).await.map_err(stored)?,
        ));
    }
    let (name, blob) = blob.ok_or_else(|| {
        ApiError::Unprocessable("Bits must be sent in the multipart field `bits`".into())
    })?;
    let path = s
        .blobs
        .open_verified(&blob.sha256)
        .await
        .map_err(|e| ApiError::internal("reading a buildpack back", e))?;
    let max = limit.saturating_mul(4);
    tokio::task::spawn_blocking(move || check::check(&path, max))
        .await
        .map_err(|e| ApiError::internal("checking a buildpack", e))?
        .map_err(|reason| {
            ApiError::Unprocessable(format!("The buildpack upload is invalid: {reason}"))
        })?;
    let size = i64::try_from(blob.size).unwrap_or(i64::MAX);
    set_bits(&s.db, &guid, &name, &blob.sha256, size).await?;
    let row = store::find(&s.db, &guid).await?;
    let data = serde_json::json!({"filename": name, "sha256": blob.sha256});
    super::audit_buildpack(&s, &user, "audit.buildpack.upload", &row, data).await;
    let location = format!("{}/v3/jobs/{}", s.base_url, new_guid());
    let body = buildpack_json(&s, &row);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    ))
}

/// `GET /internal/v1/buildpacks/:guid/bits`: the READY buildpack's zip, verified.
pub async fn bits(
    _: Internal,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Response> {
    let bp = store::find(&s.db, &guid).await?;
    let sha = match (bp.state.as_str(), bp.sha256) {
        ("READY", Some(sha)) if bp.builtin == 0 => sha,
        _ => return Err(ApiError::NotFound("Buildpack bits")),
    };
    let path = s
        .blobs
        .open_verified(&sha)
        .await
        .map_err(|e| ApiError::internal("reading a buildpack", e))?;
    super::super::packages::stream_file(path, "application/zip").await
}

#[cfg(test)]
mod tests {
    use super::filename;

    #[test]
    fn uploaded_file_names_are_kept_as_their_last_part() {
        assert_eq!(filename(Some("dir/my-bp.zip")), "my-bp.zip");
        assert_eq!(filename(Some("C:\\x\\bp.zip")), "bp.zip");
        assert_eq!(filename(Some("a\nb.zip")), "ab.zip");
        assert_eq!(filename(None), "buildpack.zip");
    }
}
