//! Reading an OCI image layout: picking the manifest from `index.json` and verifying the
//! manifest, config and layer blobs against their descriptors (size and sha256).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, OciLayout};

use super::{LayoutError, VerifyingReader, REF_NAME};

/// Manifests and configs are small JSON documents; anything bigger is refused unread.
const MAX_MANIFEST: u64 = 4 << 20;
const MAX_CONFIG: u64 = 16 << 20;

/// An image read from a layout, with every blob verified.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The manifest's digest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The image config.
    pub config: ImageConfiguration,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerCompression {
    Gzip,
    None,
}

impl LayerCompression {
    /// Decides from the layer's media type (OCI or Docker names).
    pub(crate) fn of(desc: &Descriptor) -> Result<Self, LayoutError> {
        let media_type = desc.media_type().to_string();
        if media_type.ends_with("gzip") {
            Ok(Self::Gzip)
        } else if media_type.ends_with(".tar") {
            Ok(Self::None)
        } else {
            Err(LayoutError::UnsupportedMediaType {
                digest: desc.digest().to_string(),
                media_type,
            })
        }
    }
}

/// Reads the layout in `dir` and picks its image: the manifest annotated with ref name `name`
/// if `index.json` lists several, else the only one. Verifies the size and sha256 of the
/// manifest, the config and every layer blob; a missing or corrupt blob is an error naming it.
pub fn read_image(dir: &Path, name: &str) -> Result<LayoutImage, LayoutError> {
    let _: OciLayout = parse_file(&dir.join("oci-layout"), "oci-layout")?;
    let index: ImageIndex = parse_file(&dir.join("index.json"), "index.json")?;
    let desc = pick_manifest(dir, &index, name)?;
    let manifest_digest = desc.digest().to_string();
    let manifest: ImageManifest = parse_blob(dir, desc, "manifest", MAX_MANIFEST)?;
    let config: ImageConfiguration = parse_blob(dir, manifest.config(), "config", MAX_CONFIG)?;
    for layer in manifest.layers() {
        LayerCompression::of(layer)?;
        open_blob(dir, layer)?.finish()?;
    }
    Ok(LayoutImage {
        manifest_digest,
        manifest,
        config,
    })
}

/// The digest of the manifest `index.json` in `dir` picks for `name` (as [`read_image`] does),
/// without reading or verifying any blob.
pub(crate) fn read_manifest_digest(dir: &Path, name: &str) -> Result<String, LayoutError> {
    let index: ImageIndex = parse_file(&dir.join("index.json"), "index.json")?;
    Ok(pick_manifest(dir, &index, name)?.digest().to_string())
}

fn ref_name(desc: &Descriptor) -> Option<&str> {
    desc.annotations()
        .as_ref()?
        .get(REF_NAME)
        .map(String::as_str)
}

fn pick_manifest<'a>(
    dir: &Path,
    index: &'a ImageIndex,
    name: &str,
) -> Result<&'a Descriptor, LayoutError> {
    match index.manifests().as_slice() {
        [] => Err(LayoutError::NoManifest {
            dir: dir.to_path_buf(),
        }),
        [only] => Ok(only),
        several => several
            .iter()
            .find(|d| ref_name(d) == Some(name))
            .ok_or_else(|| LayoutError::NoMatchingManifest {
                dir: dir.to_path_buf(),
                name: name.to_string(),
                available: several
                    .iter()
                    .filter_map(ref_name)
                    .map(String::from)
                    .collect(),
            }),
    }
}

/// Opens the blob a descriptor names, checking its size up front; the returned reader checks
/// the digest when finished.
pub(crate) fn open_blob(
    dir: &Path,
    desc: &Descriptor,
) -> Result<VerifyingReader<BufReader<File>>, LayoutError> {
    let digest = desc.digest().to_string();
    let hex = desc
        .as_digest_sha256()
        .ok_or_else(|| LayoutError::UnsupportedDigest {
            digest: digest.clone(),
        })?
        .to_string();
    let path: PathBuf = dir.join("blobs").join("sha256").join(&hex);
    let file = File::open(&path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LayoutError::BlobMissing {
            digest: digest.clone(),
            path: path.clone(),
        },
        _ => LayoutError::Io {
            path: path.clone(),
            source,
        },
    })?;
    let actual = file
        .metadata()
        .map_err(|source| LayoutError::Io {
            path: path.clone(),
            source,
        })?
        .len();
    if actual != desc.size() {
        return Err(LayoutError::SizeMismatch {
            digest,
            expected: desc.size(),
            actual,
        });
    }
    Ok(VerifyingReader::new(
        BufReader::new(file),
        &digest,
        &hex,
        desc.size(),
    ))
}

fn parse_blob<T: serde::de::DeserializeOwned>(
    dir: &Path,
    desc: &Descriptor,
    what: &'static str,
    max: u64,
) -> Result<T, LayoutError> {
    let digest = desc.digest().to_string();
    if desc.size() > max {
        return Err(LayoutError::TooLarge {
            digest,
            size: desc.size(),
            what,
        });
    }
    let mut reader = open_blob(dir, desc)?;
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|source| LayoutError::Io {
            path: dir.join("blobs").join(digest.replace(':', "/")),
            source,
        })?;
    reader.finish()?;
    serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
        what: format!("{what} {digest}"),
        source,
    })
}

fn parse_file<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, LayoutError> {
    let bytes = std::fs::read(path).map_err(|source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
        what: format!("{} ({what})", path.display()),
        source,
    })
}
