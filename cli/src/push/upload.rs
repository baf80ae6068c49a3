//! Uploading an app's bits as the cf CLI does: the sha1 of every file, `POST
//! /v3/resource_matches` to learn which the controller already has, a zip of only the others
//! (streamed to a temp file, modes kept), and the upload with the matched ones listed in the
//! `resources` field, with a progress bar.

use std::io::{Read, Write};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use sha1::Digest;

use super::ignore::AppFile;
use crate::api::{ApiError, Client};

/// What an upload did.
#[derive(Debug, Default)]
pub struct Uploaded {
    /// Files the controller already had.
    pub matched: usize,
    /// Files sent in the zip.
    pub sent: usize,
    /// Bytes of the zip.
    pub zip_bytes: u64,
}

/// Errors of the upload.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Reading a file or writing the zip failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The zip could not be written.
    #[error("writing the zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// The API refused.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The package failed its checks.
    #[error("the package failed: {0}")]
    Failed(String),
    /// The upload is bigger than the controller takes.
    #[error(
        "the app's upload comes to {upload_mb} MiB (its files zipped, and the list of those \
         the controller has already), more than the controller's upload limit of {limit_mb} \
         MiB; leave out what the app does not need with a .kilnignore (or .cfignore) file"
    )]
    TooLarge {
        /// The upload's size, MiB (rounded up).
        upload_mb: u64,
        /// The controller's limit, MiB.
        limit_mb: u64,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UploadError {
    let what = what.into();
    move |source| UploadError::Io { what, source }
}

/// The sha1 (hex) of a file.
fn sha1_of(f: &AppFile) -> Result<String, UploadError> {
    let mut file = std::fs::File::open(&f.full).map_err(io(f.full.display().to_string()))?;
    let mut h = sha1::Sha1::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io(f.full.display().to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Asks which regular, non-empty `files` the controller has; their resource entries.
async fn matches(
    client: &mut Client,
    files: &[AppFile],
) -> Result<Vec<(usize, Value)>, UploadError> {
    let mut entries = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (i, f) in files.iter().enumerate() {
        if f.link.is_some() || f.size == 0 {
            continue;
        }
        let sha = sha1_of(f)?;
        index.insert(f.rel.clone(), i);
        entries.push(json!({"checksum": {"value": sha}, "size_in_bytes": f.size, "path": f.rel, "mode": format!("{:o}", f.mode)}));
    }
    let mut found = Vec::new();
    for chunk in entries.chunks(5000) {
        let answer = client
            .post("/v3/resource_matches", &json!({"resources": chunk}))
            .await?;
        for r in answer["resources"].as_array().into_iter().flatten() {
            if let Some(&i) = r["path"].as_str().and_then(|p| index.get(p)) {
                found.push((i, r.clone()));
            }
        }
    }
    Ok(found)
}

/// Writes the zip of `files` to a temp file.
fn zip_files(files: &[&AppFile]) -> Result<tempfile::NamedTempFile, UploadError> {
    let tmp = tempfile::NamedTempFile::new().map_err(io("a temp file for the zip"))?;
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(tmp));
    for f in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(f.mode)
            .large_file(f.size >= u64::from(u32::MAX));
        match &f.link {
            Some(target) => w.add_symlink(f.rel.as_str(), target.to_string_lossy(), opts)?,
            None => {
                w.start_file(f.rel.as_str(), opts)?;
                let mut src =
                    std::fs::File::open(&f.full).map_err(io(f.full.display().to_string()))?;
                std::io::copy(&mut src, &mut w).map_err(io(f.full.display().to_string()))?;
            }
        }
    }
    let mut buf = w.finish()?;
    buf.flush().map_err(io("writing the zip"))?;
    buf.into_inner().map_err(|e| UploadError::Io {
        what: "writing the zip".into(),
        source: e.into_error(),
    })
}

/// Uploads `files` into package `package`, sending only what the controller lacks; waits
/// until the package is READY.
pub async fn upload(
    client: &mut Client,
    package: &str,
    files: &[AppFile],
    progress: bool,
) -> Result<Uploaded, UploadError> {
    let matched = matches(client, files).await?;
    let matched_set: std::collections::HashSet<usize> = matched.iter().map(|(i, _)| *i).collect();
    let to_send: Vec<&AppFile> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| !matched_set.contains(i))
        .map(|(_, f)| f)
        .collect();
    let resources: Vec<Value> = matched.into_iter().map(|(_, r)| r).collect();
    let zip = if to_send.is_empty() {
        None
    } else {
        Some(zip_files(&to_send)?)
    };
    let zip_bytes = match &zip {
        Some(z) => z.as_file().metadata().map_err(io("the zip"))?.len(),
        None => 0,
    };
    let resources_json = serde_json::to_string(&resources).unwrap_or_else(|_| "[]".into());
    if zip_bytes > 0 {
        check_size(client, zip_bytes, resources_json.len() as u64).await?;
    }
    let bar = if progress {
        let b = ProgressBar::new(zip_bytes);
        b.set_style(
            ProgressStyle::with_template(
                "   {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    client.fresh().await?;
    let mut form = reqwest::multipart::Form::new().text("resources", resources_json);
    if let Some(z) = &zip {
        let file = tokio::fs::File::open(z.path())
            .await
            .map_err(io("the zip"))?;
        let b = bar.clone();
        let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
            if let Ok(c) = chunk {
                b.inc(c.len() as u64);
            }
        });
        let part = reqwest::multipart::Part::stream_with_length(
            reqwest::Body::wrap_stream(stream),
            zip_bytes,
        )
        .file_name("application.zip")
        .mime_str("application/zip")
        .map_err(|e| ApiError::Http {
            api: client.api.clone(),
            source: e,
        })?;
        form = form.part("bits", part);
    }
    let resp = client
        .request(
            reqwest::Method::POST,
            &format!("/v3/packages/{package}/upload"),
        )
        .multipart(form)
        .send()
        .await
        .map_err(|e| crate::api::transport(&client.api, e))?;
    bar.finish_and_clear();
    if !resp.status().is_success() {
        return Err(crate::api::error_of(resp).await.into());
    }
    wait_ready(client, package).await?;
    Ok(Uploaded {
        matched: resources.len(),
        sent: to_send.len(),
        zip_bytes,
    })
}

/// Room the controller gives a whole upload request over its limit for the zip: the form's
/// other field (the matched files) and its framing.
const FORM_ALLOWANCE: u64 = 1 << 20;

/// Refuses an upload over the controller's limit before sending any of it: the controller
/// would refuse it only once it had read that much, and closes the connection on the rest.
/// The zip must fit the limit, and the whole form (with `resources_bytes` of matched files)
/// the limit and [`FORM_ALLOWANCE`].
async fn check_size(
    client: &mut Client,
    zip_bytes: u64,
    resources_bytes: u64,
) -> Result<(), UploadError> {
    let root = client.get("/").await?;
    let Some(limit) = root["links"]["cloud_controller_v3"]["meta"]["max_upload_bytes"].as_u64()
    else {
        // An older controller does not say: it answers 413 itself.
        return Ok(());
    };
    // Multipart framing: boundaries and part headers, a few hundred bytes.
    let form = zip_bytes + resources_bytes + 4096;
    if zip_bytes > limit || form > limit.saturating_add(FORM_ALLOWANCE) {
        return Err(UploadError::TooLarge {
            upload_mb: form.div_ceil(1 << 20),
            limit_mb: limit >> 20,
        });
    }
    Ok(())
}

/// Polls the package until it is READY (FAILED: its error).
async fn wait_ready(client: &mut Client, package: &str) -> Result<(), UploadError> {
    loop {
        let p = client.get(&format!("/v3/packages/{package}")).await?;
        match p["state"].as_str() {
            Some("READY") => return Ok(()),
            Some("FAILED") => {
                return Err(UploadError::Failed(
                    p["error"].as_str().unwrap_or("no reason given").to_string(),
                ))
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}
