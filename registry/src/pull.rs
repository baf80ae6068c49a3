//! Pulling an image from a registry into an OCI image layout directory.
//!
//! The manifest is fetched raw and stored byte for byte (so the layout's manifest digest is the
//! one the registry serves); an image index or Docker manifest list is resolved to the wanted
//! platform first. Each blob (config, then the layers in order) is streamed into a hidden
//! temporary file in `blobs/sha256/`, hashed and counted on the way, and renamed to its digest
//! only when both its sha256 and its size match the descriptor. `index.json` and `oci-layout`
//! are written last, so a layout that has an `index.json` is complete.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_spec::image::{
    Descriptor, Digest, ImageIndex, ImageIndexBuilder, ImageManifest, MediaType, OciLayoutBuilder,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::connect::Session;
use crate::{Platform, PullOptions, RegistryError};

/// The manifest media types asked for (OCI and Docker, images and indexes).
const ACCEPT: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// An image pulled into a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The reference as given.
    pub reference: String,
    /// `sha256:<hex>` of the image manifest (for the wanted platform).
    pub manifest_digest: String,
    /// `sha256:<hex>` of the image index the reference named, if it named one.
    pub index_digest: Option<String>,
    /// The layout directory (the `out_dir` given).
    pub layout_dir: PathBuf,
}

/// Pulls `reference` (`host:port/repo:tag` or `host:port/repo@sha256:<hex>`) into an OCI
/// image layout in `out_dir` (created if missing; an `index.json` already there is replaced,
/// blobs are added). `index.json` lists the one manifest, annotated with the reference's tag
/// as `org.opencontainers.image.ref.name`.
///
/// Errors name the reference: [`RegistryError::UnknownImage`] (no such repository, tag or
/// digest), [`RegistryError::Unreachable`], [`RegistryError::Unauthorized`],
/// [`RegistryError::DigestMismatch`] / [`RegistryError::SizeMismatch`] (a blob that is not what
/// its descriptor says; nothing is kept under its digest), and
/// [`RegistryError::NoMatchingPlatform`].
pub async fn pull_to_layout(
    reference: &str,
    out_dir: &Path,
    options: &PullOptions,
) -> Result<PulledImage, RegistryError> {
    let s = Session::new(reference, &options.auth, options.allow_http)?;
    let (top, top_digest) = s
        .client
        .pull_manifest_raw(&s.reference, &s.auth, ACCEPT)
        .await
        .map_err(|e| s.error(e))?;
    check_bytes(&s, &top_digest, None, &top)?;

    let (manifest_bytes, manifest_digest, index_digest) = match kind(&top) {
        DocKind::Index => {
            let index: ImageIndex = parse(&s, "image index", &top_digest, &top)?;
            let entry = pick_platform(&s, &index, &options.platform)?;
            let digest = entry.digest().to_string();
            tracing::debug!(reference, %digest, platform = %options.platform, "picked from the index");
            let by_digest = s.reference.clone_with_digest(digest.clone());
            let (bytes, _) = s
                .client
                .pull_manifest_raw(&by_digest, &s.auth, ACCEPT)
                .await
                .map_err(|e| s.error(e))?;
            check_bytes(&s, &digest, Some(entry.size()), &bytes)?;
            if let DocKind::Other(media_type) = kind(&bytes) {
                return Err(unsupported(&s, media_type));
            }
            (bytes, digest, Some(top_digest))
        }
        DocKind::Manifest => (top, top_digest, None),
        DocKind::Other(media_type) => return Err(unsupported(&s, media_type)),
    };
    let manifest: ImageManifest = parse(&s, "manifest", &manifest_digest, &manifest_bytes)?;

    let blobs = out_dir.join("blobs").join("sha256");
    tokio::fs::create_dir_all(&blobs)
        .await
        .map_err(io_error(&blobs))?;
    let manifest_path = blobs.join(hex_of(&s, &manifest_digest)?);
    tokio::fs::write(&manifest_path, &manifest_bytes)
        .await
        .map_err(io_error(&manifest_path))?;
    fetch_blob(&s, &blobs, manifest.config()).await?;
    for layer in manifest.layers() {
        fetch_blob(&s, &blobs, layer).await?;
    }

    let media_type = manifest
        .media_type()
        .clone()
        .unwrap_or(MediaType::ImageManifest);
    write_index(
        &s,
        out_dir,
        media_type,
        manifest_bytes.len() as u64,
        &manifest_digest,
    )
    .await?;
    tracing::info!(reference, digest = %manifest_digest, dir = %out_dir.display(), "pulled");
    Ok(PulledImage {
        reference: reference.to_string(),
        manifest_digest,
        index_digest,
        layout_dir: out_dir.to_path_buf(),
    })
}

enum DocKind {
    Index,
    Manifest,
    Other(String),
}

/// What a manifest document is, from its `mediaType` (or, without one, its fields).
fn kind(bytes: &[u8]) -> DocKind {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return DocKind::Other("not JSON".to_string());
    };
    match doc.get("mediaType").and_then(|m| m.as_str()) {
        Some(OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE) => DocKind::Index,
        Some(OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE) => DocKind::Manifest,
        Some(other) => DocKind::Other(other.to_string()),
        None if doc.get("manifests").is_some() => DocKind::Index,
        None if doc.get("config").is_some() && doc.get("layers").is_some() => DocKind::Manifest,
        None => DocKind::Other("none".to_string()),
    }
}

fn unsupported(s: &Session, media_type: String) -> RegistryError {
    RegistryError::UnsupportedManifest {
        reference: s.text.clone(),
        media_type,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    s: &Session,
    what: &str,
    digest: &str,
    bytes: &[u8],
) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::InvalidDocument {
        reference: s.text.clone(),
        what: format!("{what} {digest}"),
        source,
    })
}

/// The first manifest of `index` for `wanted`.
fn pick_platform<'a>(
    s: &Session,
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<&'a Descriptor, RegistryError> {
    let platform_of = |d: &Descriptor| {
        d.platform()
            .as_ref()
            .map(|p| format!("{}/{}", p.os(), p.architecture()))
    };
    let wanted_text = wanted.to_string();
    index
        .manifests()
        .iter()
        .find(|d| platform_of(d).as_deref() == Some(wanted_text.as_str()))
        .ok_or_else(|| RegistryError::NoMatchingPlatform {
            reference: s.text.clone(),
            wanted: wanted_text.clone(),
            available: index
                .manifests()
                .iter()
                .map(|d| platform_of(d).unwrap_or_else(|| "unknown".to_string()))
                .collect(),
        })
}

/// The hex of a `sha256:<hex>` digest; other algorithms are not supported.
fn hex_of(s: &Session, digest: &str) -> Result<String, RegistryError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .map(str::to_string)
        .ok_or_else(|| RegistryError::UnsupportedManifest {
            reference: s.text.clone(),
            media_type: format!("a blob digest `{digest}` that is not sha256"),
        })
}

/// Checks a document fetched whole against its digest (and size, when a descriptor gave one).
fn check_bytes(
    s: &Session,
    digest: &str,
    size: Option<u64>,
    bytes: &[u8],
) -> Result<(), RegistryError> {
    let hex = hex_of(s, digest)?;
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != hex {
        return Err(RegistryError::DigestMismatch {
            reference: s.text.clone(),
            digest: digest.to_string(),
            actual: format!("sha256:{actual}"),
        });
    }
    match size {
        Some(expected) if expected != bytes.len() as u64 => Err(RegistryError::SizeMismatch {
            reference: s.text.clone(),
            digest: digest.to_string(),
            expected,
            actual: bytes.len() as u64,
        }),
        _ => Ok(()),
    }
}

/// Streams the blob `desc` names into `blobs/<hex>`, through a temporary file that is removed
/// unless size and digest match.
async fn fetch_blob(s: &Session, blobs: &Path, desc: &Descriptor) -> Result<(), RegistryError> {
    let digest = desc.digest().to_string();
    let hex = hex_of(s, &digest)?;
    let partial = blobs.join(format!(".{hex}.partial"));
    let result = download(s, &partial, &digest, &hex, desc.size()).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
        return result;
    }
    let dest = blobs.join(&hex);
    tokio::fs::rename(&partial, &dest)
        .await
        .map_err(io_error(&dest))
}

async fn download(
    s: &Session,
    partial: &Path,
    digest: &str,
    hex: &str,
    expected_size: u64,
) -> Result<(), RegistryError> {
    let file = tokio::fs::File::create(partial)
        .await
        .map_err(io_error(partial))?;
    let mut out = HashingFile {
        file,
        hasher: Sha256::new(),
        count: 0,
    };
    s.client
        .pull_blob(&s.reference, digest, &mut out)
        .await
        .map_err(|e| s.error(e))?;
    out.flush().await.map_err(io_error(partial))?;
    out.file.sync_all().await.map_err(io_error(partial))?;
    if out.count != expected_size {
        return Err(RegistryError::SizeMismatch {
            reference: s.text.clone(),
            digest: digest.to_string(),
            expected: expected_size,
            actual: out.count,
        });
    }
    let actual = hex::encode(out.hasher.finalize());
    if actual != hex {
        return Err(RegistryError::DigestMismatch {
            reference: s.text.clone(),
            digest: digest.to_string(),
            actual: format!("sha256:{actual}"),
        });
    }
    Ok(())
}

/// Writes `index.json` (the one manifest, annotated with the reference's tag) and `oci-layout`.
async fn write_index(
    s: &Session,
    out_dir: &Path,
    media_type: MediaType,
    size: u64,
    digest: &str,
) -> Result<(), RegistryError> {
    let parsed: Digest = digest
        .parse()
        .map_err(|_| RegistryError::UnsupportedManifest {
            reference: s.text.clone(),
            media_type: format!("a manifest digest `{digest}` that does not parse"),
        })?;
    let mut desc = Descriptor::new(media_type, size, parsed);
    if let Some(tag) = s.reference.tag() {
        desc.set_annotations(Some(
            [(kiln_rootfs::layout::REF_NAME.to_string(), tag.to_string())].into(),
        ));
    }
    let build_err = |e: oci_spec::OciSpecError| RegistryError::Io {
        path: out_dir.to_path_buf(),
        source: io::Error::other(e),
    };
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![desc])
        .build()
        .map_err(build_err)?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(build_err)?;
    for (name, json) in [
        ("oci-layout", serde_json::to_vec(&layout)),
        ("index.json", serde_json::to_vec(&index)),
    ] {
        let path = out_dir.join(name);
        let json = json.map_err(|e| RegistryError::Io {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        tokio::fs::write(&path, json)
            .await
            .map_err(io_error(&path))?;
    }
    Ok(())
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A file that hashes and counts what is written to it.
struct HashingFile {
    file: tokio::fs::File,
    hasher: Sha256,
    count: u64,
}

impl AsyncWrite for HashingFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.count += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}
