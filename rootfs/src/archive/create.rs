//! Writing a tar of a file or directory that lives inside a (possibly hostile) root.
//!
//! The requested path is resolved in the root with `RESOLVE_IN_ROOT`, so a symlink in the tree
//! such as `/tmp/x -> /etc/shadow` means `root/etc/shadow`, never the host's file. Below that,
//! the walk goes fd by fd: each child is `fstatat`'ed without following, opened with
//! `O_NOFOLLOW`, and symlinks are archived as symlinks.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::openat2::{
    fstat, lstat_at, open_child, open_dir_path, open_in_root, read_dir_names, read_link_at, reopen,
};
use super::ArchiveError;

/// Writes a tar of `path` (inside `root`, resolved IN the root) to `out`.
///
/// A directory is archived recursively with plain relative names (`a`, `a/b/`, no entry for
/// the directory itself); a single file is one entry named by the basename of `path`. Symlinks
/// inside a directory are archived as symlinks, never followed; device nodes, fifos and sockets
/// are skipped with a warning. Hardlinked files are archived as separate copies.
/// A missing path is [`ArchiveError::NotFound`].
pub fn archive_from_root(root: &Path, path: &Path, out: impl Write) -> Result<(), ArchiveError> {
    let root_fd = open_dir_path(root).map_err(|source| ArchiveError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let fail = |source| ArchiveError::Archive {
        path: path.to_path_buf(),
        source,
    };
    let fd = match open_in_root(root_fd.as_fd(), path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Err(ArchiveError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(fail(e)),
    };
    let st = fstat(fd.as_fd()).map_err(fail)?;
    let mut builder = tar::Builder::new(out);
    match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            let dir = reopen(fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(fail)?;
            walk(&mut builder, dir.as_fd(), Path::new(""), path)?;
        }
        libc::S_IFREG => {
            let file = File::from(reopen(fd.as_fd(), libc::O_RDONLY).map_err(fail)?);
            let name = path.file_name().unwrap_or(OsStr::new("file"));
            append_file(&mut builder, Path::new(name), file).map_err(fail)?;
        }
        _ => {
            return Err(fail(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or directory",
            )))
        }
    }
    builder
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(fail)
}

/// Appends every entry below `dir` with names under `prefix`.
fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: BorrowedFd<'_>,
    prefix: &Path,
    requested: &Path,
) -> Result<(), ArchiveError> {
    let names = read_dir_names(dir).map_err(|source| ArchiveError::Archive {
        path: requested.join(prefix),
        source,
    })?;
    for name in names {
        let rel = prefix.join(&name);
        let fail = |source| ArchiveError::Archive {
            path: requested.join(&rel),
            source,
        };
        // A name that vanished since readdir is simply no longer part of the tree.
        let Some(st) = lstat_at(dir, &name).map_err(fail)? else {
            continue;
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let child =
                    open_child(dir, &name, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(fail)?;
                let st = fstat(child.as_fd()).map_err(fail)?;
                let mut header = header_for(&st, EntryType::Directory, 0);
                let mut dir_name = OsString::from(rel.as_os_str());
                dir_name.push("/");
                builder
                    .append_data(&mut header, Path::new(&dir_name), io::empty())
                    .map_err(fail)?;
                walk(builder, child.as_fd(), &rel, requested)?;
            }
            libc::S_IFREG => {
                let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
                let file = File::from(open_child(dir, &name, flags, 0).map_err(fail)?);
                append_file(builder, &rel, file).map_err(fail)?;
            }
            libc::S_IFLNK => {
                let target = read_link_at(dir, &name).map_err(fail)?;
                let mut header = header_for(&st, EntryType::Symlink, 0);
                let target = PathBuf::from(OsString::from_vec(target));
                builder
                    .append_link(&mut header, &rel, &target)
                    .map_err(fail)?;
            }
            _ => tracing::warn!(path = %rel.display(), "skipping special file while archiving"),
        }
    }
    Ok(())
}

/// Appends an open regular file, with its header taken from the open fd. The data written is
/// exactly the header's size even if the file changes meanwhile (cut or zero-padded).
fn append_file<W: Write>(builder: &mut tar::Builder<W>, name: &Path, file: File) -> io::Result<()> {
    let st = fstat(file.as_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let mut header = header_for(&st, EntryType::Regular, size);
    let data = file.take(size).chain(io::repeat(0)).take(size);
    builder.append_data(&mut header, name, data)
}

fn header_for(st: &libc::stat, kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(st.st_mode & 0o7777);
    header.set_uid(u64::from(st.st_uid));
    header.set_gid(u64::from(st.st_gid));
    header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    header.set_size(size);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_nested_dirs_end_with_a_slash() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("d/e")).expect("mkdir");
        std::fs::write(tmp.path().join("d/e/f"), b"x").expect("write");
        let mut out = Vec::new();
        archive_from_root(tmp.path(), Path::new("/d"), &mut out).expect("archive");
        let mut archive = tar::Archive::new(&out[..]);
        let names: Vec<String> = archive
            .entries()
            .expect("entries")
            .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
            .collect();
        assert_eq!(names, vec!["e/".to_string(), "e/f".to_string()]);
    }
}
