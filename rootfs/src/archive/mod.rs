//! Safe tar in and out of a directory tree that may be hostile, such as a container's rootfs.
//!
//! Every lookup inside the tree is made by the kernel with `openat2(2)` and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` on a directory fd, never by joining paths on the
//! host side, so symlinks planted in the tree (`app -> /etc`, `x -> ../../..`) and races against
//! the walk cannot reach host files (the CVE-2018-15664 class). On top of that, tar entries are
//! checked lexically before anything is written for them: `..` components, absolute names and
//! links that would leave the target are refused with [`ArchiveError::HostileEntry`].

mod create;
mod extract;
mod openat2;

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub use create::archive_from_root;
pub use extract::extract_in_root;

/// How [`extract_in_root`] treats the entries of a tar stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Chown every entry (and every directory created for the target) to this host uid/gid
    /// instead of the uid/gid recorded in the tar.
    pub owner: Option<(u32, u32)>,
    /// Image-layer mode for names: strip a leading `/` from entry and hardlink names, and accept
    /// absolute symlink targets (they resolve against the root the layer is unpacked into, as in
    /// the container). `..` is refused either way.
    pub allow_absolute_and_dot_prefix: bool,
    /// OCI layer semantics: apply `.wh.<name>` and `.wh..wh..opq` whiteouts, and let an entry
    /// replace whatever non-directory (including a symlink) already sits at its name, as a
    /// later layer does. Without it an existing symlink where a file or directory is to be
    /// written is refused, never followed.
    pub whiteouts: bool,
}

/// What one [`extract_in_root`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Whiteout entries applied.
    pub whiteouts: u64,
    /// Entries skipped (device nodes, fifos, unknown types), each logged as a warning.
    pub skipped: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Errors from extracting or creating tar archives inside a root.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The entry was refused before anything was written for it.
    #[error("refusing tar entry `{entry}`: {reason}")]
    HostileEntry {
        /// The entry's name as written in the tar.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// The path to archive does not exist inside the root.
    #[error("`{}` does not exist inside the root", path.display())]
    NotFound {
        /// The path as requested (inside the root).
        path: PathBuf,
    },
    /// The root directory itself could not be opened.
    #[error("cannot open root directory {}", root.display())]
    Root {
        /// The host path of the root.
        root: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The target directory could not be opened or created inside the root.
    #[error("cannot open or create target `{}` inside the root", target.display())]
    Target {
        /// The target as requested (inside the root).
        target: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing one entry failed.
    #[error("writing tar entry `{entry}`")]
    Entry {
        /// The entry's name as written in the tar.
        entry: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The tar stream itself could not be read (truncated, corrupt, bad compression).
    #[error("reading the tar stream")]
    ReadTar {
        /// The underlying error.
        source: io::Error,
    },
    /// Reading from the tree or writing the tar out failed.
    #[error("archiving `{}`", path.display())]
    Archive {
        /// The path inside the root being archived.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Splits a tar entry (or hardlink) name into its normal components, refusing `..` anywhere and
/// an absolute name unless `allow_absolute`. `.` components and a leading `./` are dropped; an
/// empty result names the target directory itself.
pub(crate) fn entry_components(
    raw: &[u8],
    allow_absolute: bool,
) -> Result<Vec<OsString>, &'static str> {
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.starts_with(b"/") && !allow_absolute {
        return Err("absolute name");
    }
    let mut out = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("name has a `..` component"),
            c => out.push(std::ffi::OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// Checks a symlink target lexically, from the directory holding the link (`depth` components
/// below the target): refused if it is empty, absolute (unless `allow_absolute`) or climbs
/// above the target with `..`.
pub(crate) fn check_symlink_target(
    depth: usize,
    target: &[u8],
    allow_absolute: bool,
) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("symlink has an empty target");
    }
    let mut depth = depth;
    if target.starts_with(b"/") {
        if !allow_absolute {
            return Err("symlink target is absolute");
        }
        depth = 0;
    }
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("symlink target climbs above the target directory")?;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(raw: &str, abs: bool) -> Result<Vec<String>, &'static str> {
        entry_components(raw.as_bytes(), abs)
            .map(|v| v.iter().map(|c| c.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn names_are_split_and_checked() {
        assert_eq!(comps("./a/b/", false), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(comps("./", false), Ok(vec![]));
        assert_eq!(comps("/etc/x", true), Ok(vec!["etc".into(), "x".into()]));
        assert_eq!(comps("/etc/x", false), Err("absolute name"));
        assert!(comps("a/../../evil", false).is_err());
        assert!(comps("/a/..", true).is_err());
        assert!(comps("..", false).is_err());
        assert_eq!(
            comps("a..b/c..", false),
            Ok(vec!["a..b".into(), "c..".into()])
        );
    }

    #[test]
    fn symlink_targets_may_not_climb_out() {
        assert!(check_symlink_target(0, b"busybox", false).is_ok());
        assert!(check_symlink_target(1, b"../x", false).is_ok());
        assert!(check_symlink_target(1, b"../../x", false).is_err());
        assert!(check_symlink_target(2, b"a/../../..", false).is_ok());
        assert!(check_symlink_target(1, b"a/../../..", false).is_err());
        assert!(check_symlink_target(0, b"/etc", false).is_err());
        assert!(check_symlink_target(3, b"/bin/env", true).is_ok());
        assert!(check_symlink_target(3, b"/../etc", true).is_err());
        assert!(check_symlink_target(0, b"", true).is_err());
    }
}
