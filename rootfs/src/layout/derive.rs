//! An image derived from another: the base image's layers (blobs copied), one more layer of
//! files, and a changed config. What tests and benchmarks use to make app images and stack
//! variants without a Dockerfile build.

use std::path::Path;

use oci_spec::image::{Config, ImageConfiguration};

use super::LayoutError;
use super::{read_image, write_layer, write_layout_with_layers, LayerBlob, StackLayout};

/// A file of the added layer: its path in the image (no leading `/`), contents and mode.
/// Parent directories are added (mode 0755); everything is owned by root.
pub type LayerFile<'a> = (&'a str, &'a [u8], u32);

/// Writes to `out_dir` the image `name` of layout `base` with one more layer holding `files`,
/// its config changed by `edit`, named `name` in the new `index.json`.
pub fn derive_layout(
    base: &Path,
    name: &str,
    out_dir: &Path,
    files: &[LayerFile<'_>],
    edit: impl FnOnce(&mut Config),
) -> Result<StackLayout, LayoutError> {
    let image = read_image(base, name)?;
    let blobs = out_dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|source| LayoutError::Io {
        path: blobs.clone(),
        source,
    })?;
    let diff_ids = image.config.rootfs().diff_ids().clone();
    let mut layers = Vec::new();
    for (desc, diff_id) in image.manifest.layers().iter().zip(diff_ids) {
        let digest = desc.digest().to_string();
        let hex = digest.trim_start_matches("sha256:");
        let from = base.join("blobs").join("sha256").join(hex);
        std::fs::copy(&from, blobs.join(hex))
            .map_err(|source| LayoutError::Io { path: from, source })?;
        layers.push(LayerBlob {
            descriptor: desc.clone(),
            diff_id,
        });
    }
    let tar = layer_tar(files).map_err(|source| LayoutError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    layers.push(write_layer(out_dir, &tar)?);
    let mut config: ImageConfiguration = image.config;
    let mut settings = config.config().clone().unwrap_or_default();
    edit(&mut settings);
    config.set_config(Some(settings));
    write_layout_with_layers(out_dir, name, config, &layers)
}

/// A tar of `files` with their parent directories, deterministic (mtime 0, root-owned).
fn layer_tar(files: &[LayerFile<'_>]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in files {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_path_buf());
            parent = p.parent();
        }
    }
    for dir in dirs {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut header, format!("{}/", dir.display()), std::io::empty())?;
    }
    for (path, contents, mode) in files {
        let size = u64::try_from(contents.len()).unwrap_or(u64::MAX);
        let mut header = header(tar::EntryType::Regular, *mode, size);
        tar.append_data(&mut header, path, *contents)?;
    }
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::write_layout;

    #[test]
    fn a_derived_image_has_the_base_layers_the_new_files_and_the_config_change() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0o644, 3);
        tar.append_data(&mut h, "etc/base", &b"one"[..]).unwrap();
        let config = oci_spec::image::ImageConfigurationBuilder::default()
            .build()
            .unwrap();
        write_layout(&base, "img", config, &[tar.into_inner().unwrap()]).unwrap();
        let out = dir.path().join("out");
        let files: &[LayerFile<'_>] = &[("srv/www/index.html", b"hello\n", 0o644)];
        let derived = derive_layout(&base, "img", &out, files, |c| {
            c.set_cmd(Some(vec!["httpd".into()]));
            c.set_exposed_ports(Some(vec!["5000/tcp".into()]));
        })
        .unwrap();
        let image = read_image(&out, "img").unwrap();
        assert_eq!(image.manifest_digest, derived.manifest_digest);
        assert_eq!(image.manifest.layers().len(), 2);
        let config = image.config.config().clone().unwrap();
        assert_eq!(config.cmd().clone(), Some(vec!["httpd".to_string()]));
        assert_eq!(
            config.exposed_ports().clone(),
            Some(vec!["5000/tcp".to_string()])
        );
    }
}
