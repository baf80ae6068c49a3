//! App bits on the host turned into one tar stream for the staging container: a directory is
//! archived (symlinks as symlinks, never followed), a zip is converted entry by entry into a
//! tar (nothing of it is written on the host but that tar), a tar (plain or gzip) is passed
//! through. The backend's extraction inside the container refuses entries and links that
//! would leave the app folder; zip names that do are refused here already.

use std::fs;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::StagingError;

/// An uncompressed tar stream of the app.
pub(crate) type AppTar = Box<dyn Read + Send>;

/// Opens the app at `app` as a tar stream, using `scratch` for intermediate files. A zip may
/// hold at most `max_bytes` uncompressed.
pub(crate) fn app_tar(app: &Path, scratch: &Path, max_bytes: u64) -> Result<AppTar, StagingError> {
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
            Ok(Box::new(
                zip_to_tar(&mut archive, &scratch.join("app.tar"), max_bytes).map_err(invalid)?,
            ))
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

/// Whether a zip entry is a symlink (from its unix mode).
fn is_symlink(mode: Option<u32>) -> bool {
    mode.is_some_and(|m| m & 0o170000 == 0o120000)
}

/// The name of a zip entry inside the folder, or why it is refused.
fn entry_name(raw: &str, enclosed: Option<PathBuf>) -> Result<PathBuf, String> {
    enclosed
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| format!("zip entry `{raw}` points outside the folder; refusing the zip"))
}

/// Converts a zip into the tar file `out` (directories, files with their modes, symlinks as
/// symlinks), refusing names that leave the folder and more than `max_bytes` of content.
fn zip_to_tar<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    out: &Path,
    max_bytes: u64,
) -> Result<fs::File, String> {
    let file = fs::File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut builder = tar::Builder::new(io::BufWriter::new(file));
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("reading zip entry {i}: {e}"))?;
        let raw = entry.name().to_string();
        let name = entry_name(&raw, entry.enclosed_name())?;
        let mode = entry.unix_mode();
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        if entry.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(mode.map_or(0o755, |m| m & 0o7777) | 0o700);
            header.set_size(0);
            builder.append_data(&mut header, &name, io::empty())
        } else if is_symlink(mode) {
            let mut link = String::new();
            entry
                .by_ref()
                .take(4096)
                .read_to_string(&mut link)
                .map_err(|e| format!("reading zip entry `{raw}`: {e}"))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, &name, &link)
        } else {
            total = total.saturating_add(entry.size());
            if total > max_bytes {
                return Err(format!(
                    "the zip holds more than {} MiB uncompressed, more than staging may write",
                    max_bytes >> 20
                ));
            }
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode.map_or(0o644, |m| m & 0o7777));
            let size = entry.size();
            header.set_size(size);
            builder.append_data(&mut header, &name, entry.by_ref().take(size))
        }
        .map_err(|e| format!("converting zip entry `{raw}`: {e}"))?;
    }
    let writer = builder
        .into_inner()
        .map_err(|e| format!("writing {}: {e}", out.display()))?;
    writer
        .into_inner()
        .map_err(|e| format!("writing {}: {}", out.display(), e.error()))?;
    fs::File::open(out).map_err(|e| format!("opening {}: {e}", out.display()))
}

/// Unpacks a buildpack zip into the new directory `target`: names that leave it and symlinks
/// are refused (so nothing written can be redirected), files are created exclusively, and at
/// most `max_bytes` are written.
pub(crate) fn unzip_into<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    target: &Path,
    max_bytes: u64,
) -> Result<(), String> {
    fs::create_dir(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("reading zip entry {i}: {e}"))?;
        let raw = entry.name().to_string();
        let dest = target.join(entry_name(&raw, entry.enclosed_name())?);
        let mode = entry.unix_mode();
        if is_symlink(mode) {
            return Err(format!(
                "zip entry `{raw}` is a symlink; buildpack zips may not hold symlinks"
            ));
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        if entry.is_dir() {
            fs::create_dir_all(&dest).map_err(|e| format!("creating {}: {e}", dest.display()))?;
            continue;
        }
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(format!(
                "the zip holds more than {} MiB uncompressed",
                max_bytes >> 20
            ));
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.map_or(0o644, |m| m & 0o777))
            .open(&dest)
            .map_err(|e| format!("creating {} (duplicate entry?): {e}", dest.display()))?;
        let size = entry.size();
        io::copy(&mut entry.by_ref().take(size), &mut out)
            .map_err(|e| format!("unpacking `{raw}`: {e}"))?;
        fs::set_permissions(
            &dest,
            fs::Permissions::from_mode(mode.map_or(0o644, |m| m & 0o777)),
        )
        .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

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
        let err = app_tar(&zip_path, &scratch, 1 << 30)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("`../escaped.txt` points outside"),
            "{err}"
        );
        assert!(!scratch.join("escaped.txt").exists() && !dir.path().join("escaped.txt").exists());
    }

    #[test]
    fn a_zip_with_a_symlink_then_a_file_through_it_writes_nothing_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let zip_path = dir.path().join("evil.zip");
        let mut w = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
        w.add_symlink(
            "link",
            outside.to_str().unwrap(),
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        w.start_file("link/pwned.txt", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"x").unwrap();
        w.finish().unwrap();
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).unwrap();
        let mut tar = tar::Archive::new(app_tar(&zip_path, &scratch, 1 << 30).unwrap());
        let names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            vec!["link", "link/pwned.txt"],
            "left to the in-container extraction"
        );
        assert!(!outside.join("pwned.txt").exists());
        let err = unzip_into(
            &mut zip::ZipArchive::new(fs::File::open(&zip_path).unwrap()).unwrap(),
            &scratch.join("bp"),
            1 << 30,
        )
        .unwrap_err();
        assert!(
            err.contains("buildpack zips may not hold symlinks"),
            "{err}"
        );
        assert!(!outside.join("pwned.txt").exists());
    }

    #[test]
    fn a_zip_bomb_is_refused_by_its_declared_size() {
        let dir = tempfile::tempdir().unwrap();
        let zip_path = dir.path().join("big.zip");
        let mut w = zip::ZipWriter::new(fs::File::create(&zip_path).unwrap());
        w.start_file("big", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&vec![0u8; 2 << 20]).unwrap();
        w.finish().unwrap();
        let err = app_tar(&zip_path, dir.path(), 1 << 20)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("more than 1 MiB uncompressed"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_becomes_a_tar_with_symlinks_kept_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app");
        fs::create_dir_all(app.join("sub")).unwrap();
        fs::write(app.join("sub/a.txt"), "a").unwrap();
        symlink("/etc/passwd", app.join("passwd")).unwrap();
        let mut tar = tar::Archive::new(app_tar(&app, dir.path(), 1 << 30).unwrap());
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
        let err = app_tar(&f, dir.path(), 1 << 30).err().expect("refused");
        assert!(
            err.to_string().contains("not a directory, a zip, or a tar"),
            "{err}"
        );
    }
}
