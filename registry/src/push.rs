//! Pushing an OCI image layout to a registry: used by the tests (and the benchmark) to put an
//! image where [`crate::pull_to_layout`] can fetch it.
//!
//! The layout is read and every blob verified first ([`kiln_rootfs::layout::read_image`]);
//! blobs the repository already has are not sent again; the manifest goes last, byte for byte,
//! so the image keeps its manifest digest.

use std::path::Path;

use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use oci_spec::image::Descriptor;

use crate::connect::Session;
use crate::pull::io_error;
use crate::{PushOptions, RegistryError};

/// An image pushed to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The reference as given.
    pub reference: String,
    /// `sha256:<hex>` of the manifest pushed.
    pub manifest_digest: String,
}

/// Pushes the image in the OCI layout `layout_dir` to `reference` (`host:port/repo:tag`): its
/// config and layers, then its manifest under the reference's tag (or digest). With several
/// manifests in `index.json`, the one annotated with the reference's tag as ref name is
/// pushed. Blocks while the layout is verified.
pub async fn push_layout(
    layout_dir: &Path,
    reference: &str,
    options: &PushOptions,
) -> Result<PushedImage, RegistryError> {
    let s = Session::new(reference, &options.auth, options.allow_http)?;
    let name = s.reference.tag().unwrap_or("latest").to_string();
    let image = kiln_rootfs::layout::read_image(layout_dir, &name).map_err(|source| {
        RegistryError::Layout {
            dir: layout_dir.to_path_buf(),
            source,
        }
    })?;
    s.client.store_auth_if_needed(&s.registry(), &s.auth).await;
    let blobs: Vec<&Descriptor> = std::iter::once(image.manifest.config())
        .chain(image.manifest.layers())
        .collect();
    for desc in blobs {
        let digest = desc.digest().to_string();
        let present = s
            .client
            .blob_exists(&s.reference, &digest)
            .await
            .map_err(|e| s.error(e))?;
        if present {
            tracing::debug!(reference, %digest, "blob already in the registry");
            continue;
        }
        let path = blob_path(layout_dir, &digest);
        let bytes = tokio::fs::read(&path).await.map_err(io_error(&path))?;
        s.client
            .push_blob(&s.reference, bytes, &digest)
            .await
            .map_err(|e| s.error(e))?;
    }
    let manifest_path = blob_path(layout_dir, &image.manifest_digest);
    let manifest = tokio::fs::read(&manifest_path)
        .await
        .map_err(io_error(&manifest_path))?;
    let media_type = image
        .manifest
        .media_type()
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());
    let content_type = media_type
        .parse()
        .map_err(|_| RegistryError::UnsupportedManifest {
            reference: reference.to_string(),
            media_type: media_type.clone(),
        })?;
    s.client
        .push_manifest_raw(&s.reference, manifest, content_type)
        .await
        .map_err(|e| s.error(e))?;
    tracing::info!(reference, digest = %image.manifest_digest, "pushed");
    Ok(PushedImage {
        reference: reference.to_string(),
        manifest_digest: image.manifest_digest,
    })
}

/// Where a layout keeps the blob `digest` (`sha256:<hex>`, already checked by `read_image`).
fn blob_path(layout_dir: &Path, digest: &str) -> std::path::PathBuf {
    layout_dir
        .join("blobs")
        .join("sha256")
        .join(digest.trim_start_matches("sha256:"))
}
