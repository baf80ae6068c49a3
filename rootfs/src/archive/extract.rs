//! Extracting a tar stream into a directory inside a root, one fd-relative step at a time.
//!
//! The target is resolved in the root (`RESOLVE_IN_ROOT`, so it follows the tree's symlinks the
//! way the container would, but can never leave the root). Every entry's parent directory is
//! then resolved with the target fd as the scope, so nothing is created outside `root/target`;
//! the final component is always handled with a `*at` call on that parent fd that does not
//! follow symlinks.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Permissions};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tar::EntryType;

use super::openat2::{
    fstat, lchown_at, link_at, lstat_at, mkdir_at, open_child, open_dir_path, open_in_root,
    read_dir_names, remove_all_at, symlink_at, unlink_at,
};
use super::{check_symlink_target, entry_components, ArchiveError, ExtractOptions, ExtractSummary};

const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Extracts `tar` into `target`, a path INSIDE `root` (e.g. `/home/vcap/app`; a leading `/` is
/// optional, `..` is refused), creating it if missing. `target` is resolved as the container
/// would see it: symlinks along it are followed, but only inside `root`.
///
/// Refused with [`ArchiveError::HostileEntry`] (naming the entry, before anything is written for
/// it): a name with a `..` component; an absolute name (unless
/// [`ExtractOptions::allow_absolute_and_dot_prefix`]); a symlink whose target is absolute (same
/// exception) or climbs above `target`, computed lexically from the link's own directory; a
/// hardlink whose target has `..`, is absolute, or does not resolve to an entry inside
/// `target`; a file or directory that would be written through an existing symlink. Nothing
/// outside `root/target` is ever created, written, chmod'ed or chown'ed.
pub fn extract_in_root(
    root: &Path,
    target: &Path,
    tar: impl Read,
    opts: &ExtractOptions,
) -> Result<ExtractSummary, ArchiveError> {
    let root_fd = open_dir_path(root).map_err(|source| ArchiveError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let target_fd = open_target(root_fd.as_fd(), target, opts.owner).map_err(|source| {
        ArchiveError::Target {
            target: target.to_path_buf(),
            source,
        }
    })?;
    let mut extractor = Extractor {
        target: target_fd,
        opts,
        summary: ExtractSummary::default(),
        created: HashSet::new(),
    };
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|source| ArchiveError::ReadTar { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| ArchiveError::ReadTar { source })?;
        extractor.entry(&mut entry)?;
    }
    Ok(extractor.summary)
}

/// Opens (creating as needed, like `mkdir -p`) `target` inside the root. Directories this
/// creates are mode 0755 and chowned to `owner` when given.
fn open_target(
    root: BorrowedFd<'_>,
    target: &Path,
    owner: Option<(u32, u32)>,
) -> io::Result<OwnedFd> {
    let bytes = target.as_os_str().as_bytes();
    let comps = match bytes {
        b"" => Vec::new(),
        _ => entry_components(bytes, true)
            .map_err(|reason| io::Error::new(io::ErrorKind::InvalidInput, reason))?,
    };
    open_dirs(root, &comps, owner)
}

/// Opens the directory `comps` below `root` (resolved with `root` as `/`), creating missing
/// components like `mkdir -p`.
fn open_dirs(
    root: BorrowedFd<'_>,
    comps: &[OsString],
    owner: Option<(u32, u32)>,
) -> io::Result<OwnedFd> {
    let dir_flags = libc::O_PATH | libc::O_DIRECTORY;
    let full: PathBuf = comps.iter().collect();
    match open_in_root(root, &full, dir_flags, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => return other,
    }
    let mut current = open_in_root(root, Path::new("."), dir_flags, 0)?;
    let mut prefix = PathBuf::new();
    for comp in comps {
        prefix.push(comp);
        current = match open_in_root(root, &prefix, dir_flags, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                make_dir(current.as_fd(), comp, owner)?;
                open_in_root(root, &prefix, dir_flags, 0)?
            }
            other => other?,
        };
    }
    Ok(current)
}

/// `mkdir` of one component, mode 0755 whatever the umask; an existing name is left for the
/// caller's next open to judge.
fn make_dir(parent: BorrowedFd<'_>, name: &OsStr, owner: Option<(u32, u32)>) -> io::Result<()> {
    match mkdir_at(parent, name, 0o700) {
        Ok(()) => {
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            let dir = File::from(open_child(parent, name, flags, 0)?);
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))?;
            }
            // Explicitly, so the process umask cannot leave it untraversable.
            dir.set_permissions(Permissions::from_mode(0o755))
        }
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What an entry asks for, decided (and validated) before anything is written.
enum Plan {
    Dir,
    File,
    Symlink(Vec<u8>),
    Hardlink(Vec<OsString>),
    Skip(&'static str),
}

/// What the slot at an entry's name held, once made ready for the entry.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Empty,
    Dir,
    File,
}

struct Extractor<'a> {
    target: OwnedFd,
    opts: &'a ExtractOptions,
    summary: ExtractSummary,
    /// Paths (relative to the target) this call materialised; opaque whiteouts keep them.
    created: HashSet<PathBuf>,
}

impl Extractor<'_> {
    /// Validates one entry into a [`Plan`], then carries it out.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ArchiveError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.step(entry, &raw, kind)
            .map_err(|e| e.into_archive(&name))
    }

    fn step<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        kind: EntryType,
    ) -> Result<(), StepError> {
        let allow_abs = self.opts.allow_absolute_and_dot_prefix;
        let comps = entry_components(raw, allow_abs).map_err(StepError::hostile)?;
        let is_whiteout = |c: &OsString| c.as_bytes().starts_with(WHITEOUT_PREFIX);
        if self.opts.whiteouts && comps.last().is_some_and(is_whiteout) {
            return self.whiteout(&comps);
        }
        let Some((leaf, parent_comps)) = comps.split_last() else {
            if kind != EntryType::Directory {
                return Err(StepError::hostile(
                    "a non-directory entry cannot replace the target directory",
                ));
            }
            let flags = libc::O_RDONLY | libc::O_DIRECTORY;
            let dir = open_in_root(self.target.as_fd(), Path::new("."), flags, 0)?;
            return self.apply_meta(&File::from(dir), entry.header());
        };
        let plan = match kind {
            EntryType::Directory => Plan::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Plan::File,
            EntryType::Symlink => {
                let link = entry.link_name_bytes().unwrap_or_default().into_owned();
                check_symlink_target(parent_comps.len(), &link, allow_abs)
                    .map_err(StepError::hostile)?;
                Plan::Symlink(link)
            }
            EntryType::Link => {
                let link = entry.link_name_bytes().unwrap_or_default();
                let link_comps = entry_components(&link, allow_abs)
                    .map_err(|r| StepError::hostile(format!("hardlink target: {r}")))?;
                if link_comps.is_empty() || link_comps == comps {
                    return Err(StepError::hostile(
                        "hardlink to the target directory or to itself",
                    ));
                }
                Plan::Hardlink(link_comps)
            }
            EntryType::Char | EntryType::Block => Plan::Skip("device node"),
            EntryType::Fifo => Plan::Skip("fifo"),
            _ => Plan::Skip("unsupported entry type"),
        };
        if let Plan::Skip(what) = plan {
            let name = String::from_utf8_lossy(raw);
            tracing::warn!(entry = %name, "skipping {what} in tar stream");
            self.summary.skipped += 1;
            return Ok(());
        }
        let parent = open_dirs(self.target.as_fd(), parent_comps, self.opts.owner)?;
        let parent = parent.as_fd();
        match plan {
            Plan::Dir => self.write_dir(parent, leaf, entry.header())?,
            Plan::File => self.write_file(parent, leaf, entry)?,
            Plan::Symlink(link) => self.write_symlink(parent, leaf, &link, entry.header())?,
            Plan::Hardlink(source) => self.write_hardlink(parent, leaf, &source)?,
            Plan::Skip(_) => {}
        }
        if self.opts.whiteouts {
            self.created.insert(comps.iter().collect());
        }
        Ok(())
    }

    fn write_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        header: &tar::Header,
    ) -> Result<(), StepError> {
        if self.prepare(parent, leaf, Slot::Dir)? == Slot::Empty {
            mkdir_at(parent, leaf, 0o700)?;
        }
        let dir = open_child(parent, leaf, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        self.apply_meta(&File::from(dir), header)?;
        self.summary.dirs += 1;
        Ok(())
    }

    /// Opens with `O_NOFOLLOW | O_NONBLOCK` (a symlink or fifo swapped in after `prepare` is
    /// refused, never followed or waited on), checks it is a regular file, then writes.
    fn write_file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), StepError> {
        self.prepare(parent, leaf, Slot::File)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = open_child(parent, leaf, flags, 0o600).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => {
                StepError::hostile("refusing to write through an existing symlink")
            }
            _ => StepError::Io(e),
        })?;
        if fstat(fd.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(StepError::hostile("an existing special file is in the way"));
        }
        let mut file = File::from(fd);
        self.summary.bytes += io::copy(entry, &mut file)?;
        self.apply_meta(&file, entry.header())?;
        let mtime = entry.header().mtime()?;
        file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))?;
        self.summary.files += 1;
        Ok(())
    }

    fn write_symlink(
        &mut self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        link: &[u8],
        header: &tar::Header,
    ) -> Result<(), StepError> {
        self.prepare(parent, leaf, Slot::Empty)?;
        symlink_at(link, parent, leaf)?;
        let (uid, gid) = self.owner(header)?;
        lchown_at(parent, leaf, uid, gid)?;
        self.summary.symlinks += 1;
        Ok(())
    }

    /// Links to an existing non-directory whose parent is resolved with the target as `/`.
    fn write_hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        leaf: &OsStr,
        source: &[OsString],
    ) -> Result<(), StepError> {
        const MISSING: &str = "hardlink target does not exist inside the target directory";
        let Some((src_leaf, src_parent)) = source.split_last() else {
            return Err(StepError::hostile(MISSING));
        };
        let src_path: PathBuf = src_parent.iter().collect();
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let src_dir = open_in_root(self.target.as_fd(), &src_path, flags, 0)
            .map_err(|_| StepError::hostile(MISSING))?;
        match lstat_at(src_dir.as_fd(), src_leaf)? {
            Some(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {}
            Some(_) => return Err(StepError::hostile("hardlink to a directory")),
            None => return Err(StepError::hostile(MISSING)),
        }
        self.prepare(parent, leaf, Slot::Empty)?;
        link_at(src_dir.as_fd(), src_leaf, parent, leaf)?;
        self.summary.hardlinks += 1;
        Ok(())
    }

    /// The uid/gid an entry gets: the configured owner, else the tar's.
    fn owner(&self, header: &tar::Header) -> io::Result<(u32, u32)> {
        if let Some(owner) = self.opts.owner {
            return Ok(owner);
        }
        let out_of_range = |_| io::Error::new(io::ErrorKind::InvalidData, "uid/gid out of range");
        let uid = u32::try_from(header.uid()?).map_err(out_of_range)?;
        let gid = u32::try_from(header.gid()?).map_err(out_of_range)?;
        Ok((uid, gid))
    }

    /// fchown then fchmod (chown clears set-id bits, so the mode goes last).
    fn apply_meta(&self, file: &File, header: &tar::Header) -> Result<(), StepError> {
        let (uid, gid) = self.owner(header)?;
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
        file.set_permissions(Permissions::from_mode(header.mode()? & 0o7777))?;
        Ok(())
    }

    /// Makes the slot `name` in `parent` ready for an entry that wants `want` there
    /// (`Slot::Empty` for links, which replace any non-directory). Returns what is left there.
    fn prepare(&self, parent: BorrowedFd<'_>, name: &OsStr, want: Slot) -> Result<Slot, StepError> {
        let Some(st) = lstat_at(parent, name)? else {
            return Ok(Slot::Empty);
        };
        let kind = st.st_mode & libc::S_IFMT;
        if want == Slot::Dir && kind == libc::S_IFDIR {
            return Ok(Slot::Dir);
        }
        if !self.opts.whiteouts {
            let exists = |what| StepError::Io(io::Error::new(io::ErrorKind::AlreadyExists, what));
            match (want, kind) {
                (Slot::File, libc::S_IFREG) => return Ok(Slot::File),
                (Slot::Dir | Slot::File, libc::S_IFLNK) => {
                    return Err(StepError::hostile(
                        "an existing symlink is in the way; refusing to follow it",
                    ))
                }
                (_, libc::S_IFDIR) => {
                    return Err(exists("a directory already exists at this name"))
                }
                (Slot::Dir, _) => {
                    return Err(exists("a non-directory already exists at this name"))
                }
                (Slot::File, _) => {
                    return Err(StepError::hostile("an existing special file is in the way"))
                }
                (Slot::Empty, _) => {}
            }
        }
        if kind == libc::S_IFDIR {
            remove_all_at(parent, name)?;
        } else {
            unlink_at(parent, name, 0)?;
        }
        Ok(Slot::Empty)
    }

    /// Applies a `.wh.<name>` or `.wh..wh..opq` entry (the last of `comps`).
    fn whiteout(&mut self, comps: &[OsString]) -> Result<(), StepError> {
        let Some((leaf, parent_comps)) = comps.split_last() else {
            return Ok(());
        };
        let parent_path: PathBuf = parent_comps.iter().collect();
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        let parent = match open_in_root(self.target.as_fd(), &parent_path, flags, 0) {
            Ok(fd) => fd,
            // Nothing below a missing directory to hide.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                self.summary.whiteouts += 1;
                return Ok(());
            }
            Err(e) => return Err(StepError::Io(e)),
        };
        if leaf.as_bytes() == OPAQUE_WHITEOUT {
            for child in read_dir_names(parent.as_fd())? {
                if !self.created.contains(&parent_path.join(&child)) {
                    remove_all_at(parent.as_fd(), &child)?;
                }
            }
        } else {
            let victim = OsStr::from_bytes(&leaf.as_bytes()[WHITEOUT_PREFIX.len()..]);
            if matches!(victim.as_bytes(), b"" | b"." | b"..") {
                return Err(StepError::hostile("malformed whiteout name"));
            }
            remove_all_at(parent.as_fd(), victim)?;
        }
        self.summary.whiteouts += 1;
        Ok(())
    }
}

/// Why one entry failed: it is hostile (refused), or an I/O error.
enum StepError {
    Hostile(String),
    Io(io::Error),
}

impl StepError {
    fn hostile(reason: impl Into<String>) -> Self {
        StepError::Hostile(reason.into())
    }

    fn into_archive(self, entry: &str) -> ArchiveError {
        match self {
            StepError::Hostile(reason) => ArchiveError::HostileEntry {
                entry: entry.to_string(),
                reason,
            },
            StepError::Io(source) => ArchiveError::Entry {
                entry: entry.to_string(),
                source,
            },
        }
    }
}

impl From<io::Error> for StepError {
    fn from(e: io::Error) -> Self {
        StepError::Io(e)
    }
}
