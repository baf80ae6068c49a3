//! Writing an OCI image layout: gzip layers, config, manifest, `index.json`, `oci-layout`.
//! The output is a pure function of the inputs, so identical inputs give identical digests.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    OciLayoutBuilder, Sha256Digest,
};

use super::{sha256_hex, LayoutError, StackLayout, REF_NAME};

/// Writes an image layout to `out_dir` (created if missing) holding one image named `name`:
/// each entry of `layers` is an uncompressed tar, stored gzip-compressed, listed in order
/// (base first); `config`'s `rootfs.diff_ids` are filled in from the layers.
pub fn write_layout(
    out_dir: &Path,
    name: &str,
    mut config: ImageConfiguration,
    layers: &[Vec<u8>],
) -> Result<StackLayout, LayoutError> {
    let blobs = out_dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(|source| LayoutError::Io {
        path: blobs.clone(),
        source,
    })?;
    let mut layer_descs = Vec::with_capacity(layers.len());
    let mut diff_ids = Vec::with_capacity(layers.len());
    for tar in layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
        let gz = gzip(tar).map_err(|source| LayoutError::Io {
            path: out_dir.to_path_buf(),
            source,
        })?;
        layer_descs.push(write_blob(out_dir, MediaType::ImageLayerGzip, &gz)?);
    }
    config.rootfs_mut().set_diff_ids(diff_ids);
    let config_json = to_json(&config, "image config")?;
    let config_desc = write_blob(out_dir, MediaType::ImageConfig, &config_json)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layer_descs)
        .build()
        .map_err(|source| LayoutError::Build {
            what: "manifest",
            source,
        })?;
    let manifest_json = to_json(&manifest, "manifest")?;
    let mut manifest_desc = write_blob(out_dir, MediaType::ImageManifest, &manifest_json)?;
    manifest_desc.set_annotations(Some(HashMap::from([(
        REF_NAME.to_string(),
        name.to_string(),
    )])));
    let manifest_digest = manifest_desc.digest().to_string();

    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()
        .map_err(|source| LayoutError::Build {
            what: "index",
            source,
        })?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(|source| LayoutError::Build {
            what: "oci-layout",
            source,
        })?;
    write_atomic(&out_dir.join("index.json"), &to_json(&index, "index.json")?)?;
    write_atomic(
        &out_dir.join("oci-layout"),
        &to_json(&layout, "oci-layout")?,
    )?;
    Ok(StackLayout {
        dir: out_dir.to_path_buf(),
        manifest_digest,
    })
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    // No file name and a zero mtime in the gzip header, so the output depends only on `bytes`.
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 2), Compression::default());
    enc.write_all(bytes)?;
    enc.finish()
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, LayoutError> {
    serde_json::to_vec(value).map_err(|source| LayoutError::Json {
        what: what.to_string(),
        source,
    })
}

/// Stores `bytes` as `blobs/sha256/<hex>` and returns its descriptor.
fn write_blob(
    out_dir: &Path,
    media_type: MediaType,
    bytes: &[u8],
) -> Result<Descriptor, LayoutError> {
    let hex = sha256_hex(bytes);
    let digest: Sha256Digest = hex.parse().map_err(|source| LayoutError::Build {
        what: "digest",
        source,
    })?;
    let path = out_dir.join("blobs").join("sha256").join(&hex);
    let present = fs::metadata(&path)
        .map(|m| m.len() == bytes.len() as u64)
        .unwrap_or(false);
    if !present {
        write_atomic(&path, bytes)?;
    }
    Ok(Descriptor::new(media_type, bytes.len() as u64, digest))
}

/// Writes through a uniquely named temporary sibling and renames it into place, so readers see
/// the old or the new content, never a mix, even with concurrent writers.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let io_err = |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(io_err)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}
