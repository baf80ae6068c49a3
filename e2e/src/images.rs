//! Stack images for the tests and benchmarks of a stack image swap
//! (`stack.<name>.image`): archives the controller's image store imports.

use std::path::{Path, PathBuf};

use kiln_rootfs::layout::{derive_layout, LayerFile};

/// Tars of two OCI layouts in `dir`: the machine's tiny, and tiny with one more layer
/// (`etc/kiln-release` = `swapped`).
pub fn image_archives(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let tiny = kiln_rootfs::recipes::cached("tiny").map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let original = dir.join("tiny.tar");
    tar_dir(&tiny.dir, &original)?;

    let layout = dir.join("swapped");
    let files: &[LayerFile<'_>] = &[("etc/kiln-release", b"swapped\n", 0o644)];
    derive_layout(&tiny.dir, "tiny", &layout, files, |_| {}).map_err(|e| e.to_string())?;
    let swapped = dir.join("swapped.tar");
    tar_dir(&layout, &swapped)?;
    Ok((original, swapped))
}

/// Tars directory `dir` (its contents at the archive's root) to `to`.
pub fn tar_dir(dir: &Path, to: &Path) -> Result<(), String> {
    let file = std::fs::File::create(to).map_err(|e| e.to_string())?;
    let mut tar = tar::Builder::new(file);
    tar.append_dir_all(".", dir).map_err(|e| e.to_string())?;
    tar.into_inner().map_err(|e| e.to_string())?;
    Ok(())
}
