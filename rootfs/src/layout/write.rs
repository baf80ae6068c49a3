//! Writing an OCI image layout: gzip layers, config, manifest, `index.json`, `oci-layout`.
//! The output is a pure function of the inputs, so identical inputs give identical digests
//! (JSON documents are written with their object keys sorted, so even the maps of an image
//! config, such as its labels, serialise the same way every time).

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

/// A layer already stored in a layout's `blobs/sha256/`: what [`write_layout_with_layers`]
/// lists in the manifest and the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerBlob {
    /// The stored (compressed) blob: media type, size and digest.
    pub descriptor: Descriptor,
    /// `sha256:<hex>` of the uncompressed tar, for the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

/// Writes an image layout to `out_dir` (created if missing) holding one image named `name`:
/// each entry of `layers` is an uncompressed tar, stored gzip-compressed, listed in order
/// (base first); `config`'s `rootfs.diff_ids` are filled in from the layers.
pub fn write_layout(
    out_dir: &Path,
    name: &str,
    config: ImageConfiguration,
    layers: &[Vec<u8>],
) -> Result<StackLayout, LayoutError> {
    create_blobs_dir(out_dir)?;
    let mut blobs = Vec::with_capacity(layers.len());
    for tar in layers {
        blobs.push(write_layer(out_dir, tar)?);
    }
    write_layout_with_layers(out_dir, name, config, &blobs)
}

/// Stores the uncompressed tar `tar` gzip-compressed as a layer blob of the layout in
/// `out_dir` (created if missing).
pub fn write_layer(out_dir: &Path, tar: &[u8]) -> Result<LayerBlob, LayoutError> {
    create_blobs_dir(out_dir)?;
    let diff_id = format!("sha256:{}", sha256_hex(tar));
    let gz = gzip(tar).map_err(|source| LayoutError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let descriptor = write_blob(out_dir, MediaType::ImageLayerGzip, &gz)?;
    Ok(LayerBlob {
        descriptor,
        diff_id,
    })
}

/// Completes an image layout in `out_dir` whose layer blobs are already stored (by
/// [`write_layer`] or [`super::write_tree_layer`]): writes the config (with `rootfs.diff_ids`
/// filled in from `layers`, base first), the manifest, `index.json` (the manifest annotated
/// with ref name `name`) and `oci-layout`. `index.json` is written last, atomically, so a
/// reader never sees it point at a missing blob.
pub fn write_layout_with_layers(
    out_dir: &Path,
    name: &str,
    mut config: ImageConfiguration,
    layers: &[LayerBlob],
) -> Result<StackLayout, LayoutError> {
    create_blobs_dir(out_dir)?;
    let layer_descs: Vec<Descriptor> = layers.iter().map(|l| l.descriptor.clone()).collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
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
    write_atomic(
        &out_dir.join("oci-layout"),
        &to_json(&layout, "oci-layout")?,
    )?;
    write_atomic(&out_dir.join("index.json"), &to_json(&index, "index.json")?)?;
    Ok(StackLayout {
        dir: out_dir.to_path_buf(),
        manifest_digest,
    })
}

fn create_blobs_dir(out_dir: &Path) -> Result<(), LayoutError> {
    let blobs = out_dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(|source| LayoutError::Io {
        path: blobs,
        source,
    })
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    // No file name and a zero mtime in the gzip header, so the output depends only on `bytes`.
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 2), Compression::default());
    enc.write_all(bytes)?;
    enc.finish()
}

/// Serialises through a `serde_json::Value` with every object's keys sorted, so a `HashMap`
/// field (labels, annotations) comes out in the same order every time.
fn to_json<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>, LayoutError> {
    let json_err = |source| LayoutError::Json {
        what: what.to_string(),
        source,
    };
    let mut value = serde_json::to_value(value).map_err(json_err)?;
    value.sort_all_objects();
    serde_json::to_vec(&value).map_err(json_err)
}

/// Stores `bytes` as `blobs/sha256/<hex>` and returns its descriptor.
pub(super) fn write_blob(
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
    let tmp = path.with_file_name(temp_name(&file_name));
    let mut file = fs::File::create(&tmp).map_err(io_err)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

/// A hidden name for a temporary sibling of `file_name`, unique to this process and call.
pub(super) fn temp_name(file_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{file_name}.tmp-{}-{n}", std::process::id())
}
