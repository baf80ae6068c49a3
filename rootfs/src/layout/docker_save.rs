//! Converting an unpacked `docker save` archive into an OCI image layout.
//!
//! A `docker save` archive (Docker 1.10 and later) holds `manifest.json`, a list of images each
//! with `Config` (the path of its image config, named by its sha256, which is Docker's image
//! id), `RepoTags` (`["busybox:latest"]`, or null for an untagged image) and `Layers` (the
//! paths of its layers, base first, each an uncompressed tar), plus the legacy `repositories`
//! file, which is not needed and not read. Docker 25 and later also write `index.json` and
//! `oci-layout`; such archives are read as layouts and never reach this module.
//!
//! What the converted layout holds, and why:
//!
//! - **Media types are OCI's**: the manifest is `application/vnd.oci.image.manifest.v1+json`,
//!   the config `application/vnd.oci.image.config.v1+json`, and the layers
//!   `application/vnd.oci.image.layer.v1.tar` (or `...tar+gzip` for the rare gzip layer).
//!   That is what Docker itself writes in its OCI exports.
//! - **The config is kept byte for byte** (Docker's extra fields such as `container_config`
//!   included), so its digest stays Docker's image id; it must still parse as an OCI image
//!   config.
//! - **Layers are kept as they are** (hard-linked into `blobs/sha256/`, copied if that
//!   fails), not recompressed: the layer digest is the sha256 of the file in the archive.
//! - **Every layer is verified**: its uncompressed content must hash to the config's
//!   `rootfs.diff_ids` entry, the only digest a `docker save` archive promises; a config named
//!   by its digest must hash to it. A mismatch is an error naming the file.
//! - The manifest descriptor in `index.json` is annotated with the image's first repo tag as
//!   `org.opencontainers.image.ref.name`. The conversion is deterministic: one archive always
//!   gives one manifest digest.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use oci_spec::image::{
    Descriptor, ImageConfiguration, ImageIndexBuilder, ImageManifestBuilder, MediaType,
    OciLayoutBuilder, Sha256Digest,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::from_archive::{io_error, ImageArchiveError};
use super::write::{write_atomic, write_blob};
use super::{sha256_hex, LayoutError, StackLayout, REF_NAME};

/// `manifest.json` lists a few images; anything bigger is refused unread.
const MAX_MANIFEST_JSON: u64 = 4 << 20;
/// As [`super::read`] allows for a config.
const MAX_CONFIG: u64 = 16 << 20;

/// One image of `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    /// Path of the image config inside the archive.
    config: String,
    /// `name:tag` references; null for an untagged image.
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, base first.
    layers: Vec<String>,
}

impl SavedImage {
    fn tags(&self) -> &[String] {
        self.repo_tags.as_deref().unwrap_or_default()
    }

    /// How error messages name the image: its tags, or its config if it has none.
    fn describe(&self) -> String {
        match self.tags() {
            [] => format!("untagged image {}", self.config),
            tags => tags.join(","),
        }
    }
}

/// The layout [`convert`] wrote.
pub(super) struct Converted {
    pub(super) layout: StackLayout,
    /// The converted image's repo tags.
    pub(super) repo_tags: Vec<String>,
}

/// Converts the image `wanted` picks (see [`super::layout_from_archive`]) of the `docker save`
/// archive unpacked in `save_dir` into an OCI image layout in `out_dir` (created). `archive`
/// only names the archive in errors.
pub(super) fn convert(
    archive: &Path,
    save_dir: &Path,
    out_dir: &Path,
    wanted: Option<&str>,
) -> Result<Converted, LayoutError> {
    let saved = SavedArchive {
        archive,
        root: fs::canonicalize(save_dir).map_err(io_error(save_dir))?,
    };
    let manifest_json = saved.read_small("manifest.json", MAX_MANIFEST_JSON)?;
    let images: Vec<SavedImage> = serde_json::from_slice(&manifest_json).map_err(|source| {
        ImageArchiveError::DockerManifest {
            archive: archive.to_path_buf(),
            source,
        }
    })?;
    let image = pick(archive, &images, wanted)?;

    let config_bytes = saved.read_small(&image.config, MAX_CONFIG)?;
    saved.check_named_digest(&image.config, &config_bytes)?;
    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|source| ImageArchiveError::Config {
            archive: archive.to_path_buf(),
            path: image.config.clone(),
            source,
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != image.layers.len() {
        return Err(ImageArchiveError::LayerCount {
            archive: archive.to_path_buf(),
            config: image.config.clone(),
            layers: image.layers.len(),
            diff_ids: diff_ids.len(),
        }
        .into());
    }

    let blobs = out_dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;
    let mut layers = Vec::with_capacity(image.layers.len());
    for (layer, diff_id) in image.layers.iter().zip(diff_ids) {
        layers.push(saved.store_layer(layer, diff_id, &blobs)?);
    }
    let config_desc = write_blob(out_dir, MediaType::ImageConfig, &config_bytes)?;
    let layout = write_manifest(out_dir, config_desc, layers, image.tags().first())?;
    Ok(Converted {
        layout,
        repo_tags: image.tags().to_vec(),
    })
}

/// Picks the image: the only one, else the one whose tags match `wanted`.
fn pick<'a>(
    archive: &Path,
    images: &'a [SavedImage],
    wanted: Option<&str>,
) -> Result<&'a SavedImage, ImageArchiveError> {
    let available = || images.iter().map(SavedImage::describe).collect();
    match (images, wanted) {
        ([], _) => Err(ImageArchiveError::NoImages {
            archive: archive.to_path_buf(),
        }),
        ([only], _) => Ok(only),
        (_, None) => Err(ImageArchiveError::SeveralImages {
            archive: archive.to_path_buf(),
            available: available(),
        }),
        (several, Some(wanted)) => {
            let matches: Vec<&SavedImage> = several
                .iter()
                .filter(|i| i.tags().iter().any(|t| tag_matches(t, wanted)))
                .collect();
            match matches.as_slice() {
                [one] => Ok(one),
                [] => Err(ImageArchiveError::NoMatchingImage {
                    archive: archive.to_path_buf(),
                    wanted: wanted.to_string(),
                    available: available(),
                }),
                many => Err(ImageArchiveError::AmbiguousImage {
                    archive: archive.to_path_buf(),
                    wanted: wanted.to_string(),
                    matches: many.iter().map(|i| i.describe()).collect(),
                }),
            }
        }
    }
}

/// Whether the repo tag `tag` (`registry/repo/name:tag`) is what `wanted` names: the whole
/// tag or its last path component, with or without a `:latest` suffix.
fn tag_matches(tag: &str, wanted: &str) -> bool {
    let short = tag.rsplit('/').next().unwrap_or(tag);
    [tag, short]
        .into_iter()
        .any(|t| t == wanted || t.strip_suffix(":latest") == Some(wanted))
}

/// The unpacked archive, for reading the files `manifest.json` names without leaving it.
struct SavedArchive<'a> {
    archive: &'a Path,
    /// The canonical path of the directory holding `manifest.json`.
    root: PathBuf,
}

impl SavedArchive<'_> {
    /// The regular file `rel` names inside the archive. Refuses absolute paths, `..`, and
    /// symlinks that lead out of the archive (`docker save` links duplicate layers to each
    /// other, so links inside it are followed).
    fn resolve(&self, rel: &str) -> Result<PathBuf, ImageArchiveError> {
        let bad = || ImageArchiveError::BadPath {
            archive: self.archive.to_path_buf(),
            path: rel.to_string(),
        };
        let lexical_ok = !rel.is_empty()
            && Path::new(rel)
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !lexical_ok {
            return Err(bad());
        }
        let path = fs::canonicalize(self.root.join(rel)).map_err(|_| bad())?;
        let is_file = fs::metadata(&path).is_ok_and(|m| m.is_file());
        if path.starts_with(&self.root) && is_file {
            Ok(path)
        } else {
            Err(bad())
        }
    }

    /// Reads a small document (`manifest.json`, a config), refusing one over `max` bytes.
    fn read_small(&self, rel: &str, max: u64) -> Result<Vec<u8>, LayoutError> {
        let path = self.resolve(rel)?;
        let file = File::open(&path).map_err(io_error(&path))?;
        let size = file.metadata().map_err(io_error(&path))?.len();
        if size > max {
            return Err(ImageArchiveError::TooLarge {
                archive: self.archive.to_path_buf(),
                file: rel.to_string(),
                size,
            }
            .into());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(io_error(&path))?;
        Ok(bytes)
    }

    /// If the file name of `rel` is a sha256 (`<hex>.json`, or `blobs/sha256/<hex>`), checks
    /// that `bytes` hash to it.
    fn check_named_digest(&self, rel: &str, bytes: &[u8]) -> Result<(), ImageArchiveError> {
        let name = Path::new(rel)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stem = name.strip_suffix(".json").unwrap_or(name);
        let is_digest =
            stem.len() == 64 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let actual = sha256_hex(bytes);
        if is_digest && actual != stem {
            return Err(ImageArchiveError::ConfigCorrupt {
                archive: self.archive.to_path_buf(),
                path: rel.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// Verifies the layer `rel` against `diff_id` and links it into `blobs` (the layout's
    /// `blobs/sha256`) under its digest. Reads the file once, hashing both what is stored and,
    /// for a gzip layer, what it decompresses to.
    fn store_layer(
        &self,
        rel: &str,
        diff_id: &str,
        blobs: &Path,
    ) -> Result<Descriptor, LayoutError> {
        let path = self.resolve(rel)?;
        let mut reader = BufReader::new(File::open(&path).map_err(io_error(&path))?);
        let gzip = reader
            .fill_buf()
            .map_err(io_error(&path))?
            .starts_with(&[0x1f, 0x8b]);
        let mut blob = HashingReader::new(reader);
        let diff_hex = if gzip {
            let mut tar = HashingWriter::default();
            io::copy(&mut MultiGzDecoder::new(&mut blob), &mut tar).map_err(io_error(&path))?;
            // Whatever follows the gzip members is part of the blob all the same.
            io::copy(&mut blob, &mut io::sink()).map_err(io_error(&path))?;
            hex::encode(tar.0.finalize())
        } else {
            io::copy(&mut blob, &mut io::sink()).map_err(io_error(&path))?;
            hex::encode(blob.hasher.clone().finalize())
        };
        let actual = format!("sha256:{diff_hex}");
        if actual != diff_id {
            return Err(ImageArchiveError::LayerCorrupt {
                archive: self.archive.to_path_buf(),
                layer: rel.to_string(),
                expected: diff_id.to_string(),
                actual,
            }
            .into());
        }
        let size = blob.count;
        let hex = hex::encode(blob.hasher.finalize());
        let stored = blobs.join(&hex);
        if !stored.exists() && fs::hard_link(&path, &stored).is_err() {
            fs::copy(&path, &stored).map_err(io_error(&stored))?;
        }
        let digest: Sha256Digest = hex.parse().map_err(|source| LayoutError::Build {
            what: "digest",
            source,
        })?;
        let media_type = if gzip {
            MediaType::ImageLayerGzip
        } else {
            MediaType::ImageLayer
        };
        Ok(Descriptor::new(media_type, size, digest))
    }
}

/// Writes the manifest, `index.json` (annotated with `ref_name`, if any) and `oci-layout`.
fn write_manifest(
    out_dir: &Path,
    config: Descriptor,
    layers: Vec<Descriptor>,
    ref_name: Option<&String>,
) -> Result<StackLayout, LayoutError> {
    let json_err = |what: &str| {
        let what = what.to_string();
        move |source| LayoutError::Json { what, source }
    };
    let build_err = |what: &'static str| move |source| LayoutError::Build { what, source };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .map_err(build_err("manifest"))?;
    let manifest_json = serde_json::to_vec(&manifest).map_err(json_err("manifest"))?;
    let mut manifest_desc = write_blob(out_dir, MediaType::ImageManifest, &manifest_json)?;
    if let Some(name) = ref_name {
        manifest_desc.set_annotations(Some(HashMap::from([(REF_NAME.to_string(), name.clone())])));
    }
    let manifest_digest = manifest_desc.digest().to_string();
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()
        .map_err(build_err("index"))?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(build_err("oci-layout"))?;
    let layout_json = serde_json::to_vec(&layout).map_err(json_err("oci-layout"))?;
    write_atomic(&out_dir.join("oci-layout"), &layout_json)?;
    let index_json = serde_json::to_vec(&index).map_err(json_err("index.json"))?;
    write_atomic(&out_dir.join("index.json"), &index_json)?;
    Ok(StackLayout {
        dir: out_dir.to_path_buf(),
        manifest_digest,
    })
}

/// Hashes and counts the bytes read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A sink that hashes what is written to it.
#[derive(Default)]
struct HashingWriter(Sha256);

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::tag_matches;

    #[test]
    fn tags_match_by_full_name_short_name_and_latest() {
        assert!(tag_matches("kiln/tiny:latest", "kiln/tiny:latest"));
        assert!(tag_matches("kiln/tiny:latest", "kiln/tiny"));
        assert!(tag_matches("kiln/tiny:latest", "tiny"));
        assert!(tag_matches("127.0.0.1:5000/kiln/tiny:v1", "tiny:v1"));
        assert!(!tag_matches("kiln/tiny:v1", "tiny"));
        assert!(!tag_matches("kiln/tinyx:latest", "tiny"));
    }
}
