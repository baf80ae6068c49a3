//! The package of an upload that named resources: the uploaded zip's entries copied as they
//! are (still compressed, links and modes kept) followed by the named files from the resource
//! pool at their paths with their modes, written as one zip with bounded memory.

use std::collections::HashSet;
use std::io::{self, Read, Seek};
use std::path::Path;

use zip::write::SimpleFileOptions;

use super::resource_matches::Resource;
use super::resource_pool::{PoolError, ResourcePool};

/// Why no package was made.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    /// The request itself is wrong (a 422).
    #[error("{0}")]
    Unprocessable(String),
    /// The package cannot be made from what was sent; it becomes FAILED with this reason.
    #[error("{0}")]
    Refused(String),
    /// Our side (disk).
    #[error("assembling the package: {0}")]
    Internal(String),
}

/// How many missing resources a refusal names.
const NAMED: usize = 5;

/// Writes to `out` the zip `bits` (if any) plus `resources` from `pool`, allowing the
/// resources `max_bytes` in all.
pub fn assemble(
    pool: &ResourcePool,
    bits: Option<&Path>,
    resources: &[Resource],
    out: &Path,
    max_bytes: u64,
) -> Result<(), AssemblyError> {
    let source = bits.map(open_zip).transpose()?;
    let mut taken = HashSet::new();
    if let Some(zip) = &source {
        // Names the check would refuse are left to it; only clean ones can clash.
        taken.extend(
            zip.file_names()
                .filter_map(|n| crate::package_check::clean_path(n).ok()),
        );
    }
    let mut missing = Vec::new();
    let mut total = 0u64;
    for r in resources {
        let path = r.path.as_deref().unwrap_or_default();
        if taken.contains(Path::new(path)) {
            return Err(AssemblyError::Unprocessable(format!(
                "resources: `{path}` is both in the uploaded zip and in the resources; send it once"
            )));
        }
        if !pool.has(&r.sha1, r.size) {
            missing.push(format!("`{path}` (sha1 {}, {} bytes)", r.sha1, r.size));
        }
        total = total.saturating_add(r.size);
    }
    if !missing.is_empty() {
        let more = missing.len().saturating_sub(NAMED);
        missing.truncate(NAMED);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Err(AssemblyError::Refused(format!(
            "the resource pool does not have {}{more}: upload it again with the file included",
            missing.join(", ")
        )));
    }
    if total > max_bytes {
        return Err(AssemblyError::Refused(format!(
            "the package unpacks to more than {} MiB",
            max_bytes >> 20
        )));
    }
    let internal = |e: &dyn std::fmt::Display| AssemblyError::Internal(e.to_string());
    let file = std::fs::File::create(out).map_err(|e| internal(&e))?;
    let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));
    if let Some(source) = source {
        zip.merge_archive(source)
            .map_err(|e| AssemblyError::Refused(format!("the package zip is damaged: {e}")))?;
    }
    for r in resources {
        let path = r.path.as_deref().unwrap_or_default();
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(r.mode);
        zip.start_file(path, options).map_err(|e| internal(&e))?;
        pool.copy_to(&r.sha1, r.size, &mut zip).map_err(|e| match e {
            PoolError::Missing { sha1, .. } => AssemblyError::Refused(format!(
                "the resource pool's copy of `{path}` (sha1 {sha1}) is damaged: upload it again with the file included"
            )),
            other => internal(&other),
        })?;
    }
    let mut w = zip.finish().map_err(|e| internal(&e))?;
    io::Write::flush(&mut w).map_err(|e| internal(&e))?;
    w.into_inner()
        .map_err(|e| internal(&e))?
        .sync_all()
        .map_err(|e| internal(&e))
}

/// The uploaded bits as a zip, or why they cannot be combined with resources.
fn open_zip(path: &Path) -> Result<zip::ZipArchive<std::fs::File>, AssemblyError> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| AssemblyError::Internal(format!("reading the upload: {e}")))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).unwrap_or(0);
    if n == 2 && magic == [0x1f, 0x8b] {
        return Err(AssemblyError::Unprocessable(
            "resources can be named only with zip bits (as the cf CLI sends them); send a tar.gz whole, with `resources` empty".into(),
        ));
    }
    file.rewind()
        .map_err(|e| AssemblyError::Internal(format!("reading the upload: {e}")))?;
    zip::ZipArchive::new(file)
        .map_err(|e| AssemblyError::Refused(format!("the package is not a valid zip: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::Digest;
    use std::io::Write;

    #[test]
    fn zip_entries_and_pooled_files_make_one_zip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let pool = ResourcePool::new(dir.path(), 1, 1 << 20);
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("lib/old.txt", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"pooled").unwrap();
        w.add_symlink("link", "lib", SimpleFileOptions::default())
            .unwrap();
        std::fs::write(
            dir.path().join("first.zip"),
            w.finish().unwrap().into_inner(),
        )
        .unwrap();
        pool.add_package(&dir.path().join("first.zip")).unwrap();

        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("new.txt", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"new").unwrap();
        w.add_symlink("link", "lib", SimpleFileOptions::default())
            .unwrap();
        std::fs::write(
            dir.path().join("bits.zip"),
            w.finish().unwrap().into_inner(),
        )
        .unwrap();
        let sha1 = hex::encode(sha1::Sha1::digest(b"pooled"));
        let res = |path: &str| Resource {
            sha1: sha1.clone(),
            size: 6,
            path: Some(path.into()),
            mode: 0o750,
        };
        let out = dir.path().join("out.zip");
        let bits = dir.path().join("bits.zip");
        assemble(&pool, Some(&bits), &[res("lib/old.txt")], &out, 100).unwrap();
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
        assert!(
            zip.by_name("link").unwrap().is_symlink(),
            "links stay links"
        );
        let mut old = zip.by_name("lib/old.txt").unwrap();
        assert_eq!(old.unix_mode().unwrap() & 0o777, 0o750);
        let mut s = String::new();
        old.read_to_string(&mut s).unwrap();
        assert_eq!(s, "pooled");

        let err = assemble(&pool, Some(&bits), &[res("new.txt")], &out, 100).unwrap_err();
        assert!(matches!(err, AssemblyError::Unprocessable(_)), "{err}");
        let mut unknown = res("gone.txt");
        unknown.size = 7;
        let err = assemble(&pool, None, &[unknown], &out, 100).unwrap_err();
        assert!(err.to_string().contains("`gone.txt` (sha1 "), "{err}");
        let err = assemble(&pool, None, &[res("a")], &out, 5).unwrap_err();
        assert!(err.to_string().contains("unpacks to more than"), "{err}");
    }
}
