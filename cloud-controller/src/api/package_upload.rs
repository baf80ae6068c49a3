//! The work of `POST /v3/packages/:guid/upload`: read the multipart form (`bits` streamed into
//! the blobstore, `resources` the list of files to take from the resource pool), make the
//! package (the bits as sent, or assembled with the pooled files), check it, and pool its new
//! files once it is good.

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::Multipart;
use axum::http::StatusCode;

use super::package_assembly::{assemble, AssemblyError};
use super::resource_matches::{parse_list, Resource, MAX_BODY};
use super::resource_pool::{RemoveOnDrop, ResourcePool};
use crate::blobstore::{Blob, BlobError, Blobstore};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What the form carried.
pub struct Received {
    /// The uploaded bits, stored; none when every file is a resource.
    pub bits: Option<Blob>,
    /// The files to take from the pool.
    pub resources: Vec<Resource>,
}

/// How the package ends.
pub struct Made {
    /// Its blob, when one was made.
    pub blob: Option<Blob>,
    /// Why it is FAILED, or `None`: READY.
    pub refusal: Option<String>,
}

/// Reads the form: `bits` into the blobstore (at most the upload limit), `resources` parsed
/// and checked (a 422 naming the entry otherwise).
pub async fn receive(s: &AppState, form: &mut Multipart) -> ApiResult<Received> {
    let limit = s.config.max_upload_bytes;
    let mut received = Received {
        bits: None,
        resources: Vec::new(),
    };
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| upload_error(&e, limit))?
    {
        match field.name() {
            Some("bits") => {
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
                received.bits = Some(stored);
            }
            Some("resources") => {
                let text = read_small(field, limit).await?;
                let list: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
                    ApiError::Unprocessable(format!("resources must be a JSON list of files: {e}"))
                })?;
                received.resources = parse_list(&list, "resources", true)?;
            }
            _ => {}
        }
    }
    if received.bits.is_none() && received.resources.is_empty() {
        return Err(ApiError::Unprocessable(
            "Bits must be sent in the multipart field `bits` (or every file named in `resources`)"
                .into(),
        ));
    }
    Ok(received)
}

/// A small form field, whole.
async fn read_small(mut field: Field<'_>, limit: u64) -> ApiResult<Vec<u8>> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| upload_error(&e, limit))? {
        if text.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::Unprocessable(format!(
                "resources must be at most {} MiB",
                MAX_BODY >> 20
            )));
        }
        text.extend_from_slice(&chunk);
    }
    Ok(text)
}

pub fn upload_error(e: &MultipartError, limit: u64) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(limit >> 20)
    } else {
        ApiError::BadRequest(format!("reading the upload: {}", e.body_text()))
    }
}

/// Makes and checks the package; a 422 when the request itself is wrong, else READY or the
/// reason it is FAILED. Nothing partial is left in the blobstore either way.
pub async fn make(s: &AppState, received: Received) -> ApiResult<Made> {
    let limit = s.config.max_upload_bytes;
    // The same bound as the check's: what the package may unpack to.
    let max = limit.saturating_mul(4);
    let pool = ResourcePool::of(s);
    let bits_path = match &received.bits {
        Some(b) => Some(
            s.blobs
                .open_verified(&b.sha256)
                .await
                .map_err(|e| ApiError::internal("reading a package back", e))?,
        ),
        None => None,
    };
    let blob = if received.resources.is_empty() {
        received.bits.clone()
    } else {
        let tmp = s
            .config
            .data_dir
            .join("blobs/tmp")
            .join(format!("assembly-{}", uuid::Uuid::new_v4()));
        let _guard = RemoveOnDrop(tmp.clone());
        let (p, bits, out, resources) = (
            pool.clone(),
            bits_path.clone(),
            tmp.clone(),
            received.resources,
        );
        let made = tokio::task::spawn_blocking(move || {
            assemble(&p, bits.as_deref(), &resources, &out, max)
        })
        .await
        .map_err(|e| ApiError::internal("assembling a package", e))?;
        match made {
            Ok(()) => {}
            Err(AssemblyError::Unprocessable(m)) => return Err(ApiError::Unprocessable(m)),
            Err(AssemblyError::Refused(reason)) => {
                return Ok(Made {
                    blob: None,
                    refusal: Some(reason),
                })
            }
            Err(e @ AssemblyError::Internal(_)) => {
                return Err(ApiError::internal("assembling a package", e))
            }
        }
        let file = tokio::fs::File::open(&tmp)
            .await
            .map_err(|e| ApiError::internal("reading an assembled package", e))?;
        let stream = tokio_util::io::ReaderStream::new(file);
        Some(
            s.blobs
                .put(stream, max.saturating_add(limit))
                .await
                .map_err(|e| ApiError::internal("storing a package", e))?,
        )
    };
    let Some(blob) = blob else {
        return Err(ApiError::internal("making a package", "no blob"));
    };
    let path = s
        .blobs
        .open_verified(&blob.sha256)
        .await
        .map_err(|e| ApiError::internal("reading a package back", e))?;
    let checked = tokio::task::spawn_blocking(move || crate::package_check::check(&path, max))
        .await
        .map_err(|e| ApiError::internal("checking a package", e))?;
    if let (Ok(()), Some(bits)) = (&checked, bits_path) {
        // The pool is a cache: a file it could not take is sent again next time.
        let added = tokio::task::spawn_blocking(move || pool.add_package(&bits)).await;
        match added {
            Ok(Ok(n)) => tracing::debug!(files = n, "resource pool: files added"),
            Ok(Err(e)) => tracing::warn!(error = %e, "resource pool: package not pooled"),
            Err(e) => tracing::warn!(error = %e, "resource pool: package not pooled"),
        }
    }
    Ok(Made {
        blob: Some(blob),
        refusal: checked.err(),
    })
}
