//! App bits on the host turned into one tar stream for the staging container: a directory is
//! archived (symlinks as symlinks, never followed), a zip is unpacked with every entry checked,
//! a tar (plain or gzip) is passed through. Entries that would leave the app folder are
//! refused here for zips, and by the backend's extraction for tars.

use std::fs;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::StagingError;

/// An uncompressed tar stream of the app.
pub(crate) type AppTar = Box<dyn Read + Send>;

/// Opens the app at `app` as a tar stream, using `scratch` for intermediate files.
pub(crate) fn app_tar(app: &Path, scratch: &Path) -> Result<AppTar, StagingError> {
    let invalid = |reason: String| StagingError::InvalidApp { reason };
    let meta =
        fs::metadata(app).map_err(|e| invalid(format!("cannot read {}: {e}", app.display())))?;
    if meta.is_dir() {
        return Ok(Box::new(dir_tar(app, scratch)?));
    }
    let mut file = fs::File::open(app).map_err(StagingError::io("opening", app))?;
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .map_err(StagingError::io("reading", app))?;
    file.rewind().map_err(StagingError::io("reading", app))?;
    match &magic[..n] {
        [0x50, 0x4b, 3, 4] | [0x50, 0x4b, 5, 6] => {
            let mut archive = zip::ZipArchive::new(file)
                .map_err(|e| invalid(format!("{} is not a valid zip: {e}", app.display())))?;
            let unpacked = scratch.join("app-unzipped");
            unzip_into(&mut archive, &unpacked).map_err(invalid)?;
            Ok(Box::new(dir_tar(&unpacked, scratch)?))
        }
        [0x1f, 0x8b, ..] => Ok(Box::new(GzDecoder::new(BufReader::new(file)))),
        _ if is_tar(app)? => Ok(Box::new(BufReader::new(file))),
        _ => Err(invalid(format!(
            "{} is not a directory, a zip, or a tar file",
            app.display()
        ))),
    }
}

fn is_tar(path: &Path) -> Result<bool, StagingError> {
    let mut file = fs::File::open(path).map_err(StagingError::io("opening", path))?;
    let mut header = [0u8; 512];
    match file.read_exact(&mut header) {
        Ok(()) => Ok(&header[257..262] == b"ustar"),
        Err(_) => Ok(false),
    }
}

/// Archives `dir` into `scratch/app.tar` and opens it.
fn dir_tar(dir: &Path, scratch: &Path) -> Result<fs::File, StagingError> {
    dir_tar_at(dir, &scratch.join("app.tar"))
}

/// Archives `dir` into the tar file `path` and opens it.
pub(crate) fn dir_tar_at(dir: &Path, path: &Path) -> Result<fs::File, StagingError> {
    let file = fs::File::create(path).map_err(StagingError::io("creating", path))?;
    let mut builder = tar::Builder::new(io::BufWriter::new(file));
    builder.follow_symlinks(false);
    walk(&mut builder, dir, Path::new(""))
        .map_err(StagingError::io("archiving the app in", dir))?;
    builder
        .into_inner()
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .map_err(StagingError::io("writing", path))?;
    fs::File::open(path).map_err(StagingError::io("opening", path))
}

fn walk(builder: &mut tar::Builder<impl io::Write>, dir: &Path, rel: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let full = entry.path();
        let name = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            builder.append_path_with_name(&full, &name)?;
            walk(builder, &full, &name)?;
        } else if kind.is_file() || kind.is_symlink() {
            builder.append_path_with_name(&full, &name)?;
        }
        // Sockets, fifos and devices are not app bits.
    }
    Ok(())
}

/// Unpacks a zip into `target`, refusing entries whose names leave it. Unix modes and
/// symlinks recorded in the zip are kept; the links themselves are never followed here.
pub(crate) fn unzip_into<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    target: &Path,
) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("reading zip entry {i}: {e}"))?;
        let raw = entry.name().to_string();
        let rel: PathBuf = entry.enclosed_name().ok_or_else(|| {
            format!("zip entry `{raw}` points outside the folder; refusing the zip")
        })?;
        let dest = target.join(&rel);
        let mode = entry.unix_mode();
        let is_link = mode.is_some_and(|m| m & 0o170000 == 0o120000);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if entry.is_dir() {
            fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
        } else if is_link {
            let mut link = String::new();
            entry
                .read_to_string(&mut link)
                .map_err(|e| format!("reading zip entry `{raw}`: {e}"))?;
            symlink(&link, &dest).map_err(|e| format!("creating link {}: {e}", dest.display()))?;
        } else {
            let mut out =
                fs::File::create(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
            io::copy(&mut entry, &mut out).map_err(|e| format!("unpacking `{raw}`: {e}"))?;
            let perm = mode.map_or(0o644, |m| m & 0o777);
            fs::set_permissions(&dest, fs::Permissions::from_mode(perm))
                .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn zip_entries_outside_the_folder_are_refused_and_nothing_is_written_outside() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("evil.zip");
        let mut w = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("ok.txt", opts).unwrap();
        w.write_all(b"ok").unwrap();
        w.start_file("../escaped.txt", opts).unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        let err = app_tar(&zip_path, &scratch).err().expect("refused");
        assert!(
            err.to_string().contains("`../escaped.txt` points outside"),
            "{err}"
        );
        assert!(!scratch.join("escaped.txt").exists() && !dir.path().join("escaped.txt").exists());
    }

    #[test]
    fn a_directory_becomes_a_tar_with_symlinks_kept_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        fs::create_dir_all(app.join("sub")).unwrap();
        fs::write(app.join("sub/a.txt"), "a").unwrap();
        symlink("/etc/passwd", app.join("passwd")).unwrap();
        let mut tar = tar::Archive::new(app_tar(&app, dir.path()).unwrap());
        let mut seen = Vec::new();
        for e in tar.entries().unwrap() {
            let e = e.unwrap();
            let kind = e.header().entry_type();
            seen.push((e.path().unwrap().display().to_string(), kind.is_symlink()));
        }
        assert_eq!(
            seen,
            vec![
                ("passwd".to_string(), true),
                ("sub".to_string(), false),
                ("sub/a.txt".to_string(), false)
            ]
        );
    }

    #[test]
    fn something_else_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.txt");
        fs::write(&f, "hello").unwrap();
        let err = app_tar(&f, dir.path()).err().expect("refused");
        assert!(
            err.to_string().contains("not a directory, a zip, or a tar"),
            "{err}"
        );
    }
}
