//! Helpers shared by the integration tests: raw tar building (including names `tar::Builder`
//! would refuse) and snapshots of directory trees to compare before and after.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One tar entry for [`raw_tar`].
#[derive(Clone)]
pub enum Kind {
    File(&'static [u8]),
    Dir,
    Symlink(String),
    Hardlink(String),
    Fifo,
    CharDevice,
}

/// A symlink entry kind.
pub fn symlink_to(target: impl Into<String>) -> Kind {
    Kind::Symlink(target.into())
}

/// A hardlink entry kind.
pub fn hardlink_to(target: impl Into<String>) -> Kind {
    Kind::Hardlink(target.into())
}

/// A tar whose entries carry exactly the given names and link names (no sanitising), mode
/// 0644 (0755 for directories), owner 0:0.
pub fn raw_tar<N: AsRef<str>>(entries: &[(N, Kind)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind) in entries {
        let name = name.as_ref();
        let mut h = tar::Header::new_gnu();
        let (entry_type, data, link): (tar::EntryType, &[u8], &str) = match kind {
            Kind::File(data) => (tar::EntryType::Regular, data, ""),
            Kind::Dir => (tar::EntryType::Directory, b"", ""),
            Kind::Symlink(to) => (tar::EntryType::Symlink, b"", to.as_str()),
            Kind::Hardlink(to) => (tar::EntryType::Link, b"", to.as_str()),
            Kind::Fifo => (tar::EntryType::Fifo, b"", ""),
            Kind::CharDevice => (tar::EntryType::Char, b"", ""),
        };
        h.set_entry_type(entry_type);
        h.set_mode(if matches!(kind, Kind::Dir) {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        builder.append(&h, data).expect("append raw entry");
    }
    builder.into_inner().expect("finish tar")
}

/// Describes every path below `dir` (not following symlinks), skipping `skip` and below:
/// kind, mode, owner, and file content or link target.
pub fn snapshot(dir: &Path, skip: Option<&Path>) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(dir, dir, skip, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, skip: Option<&Path>, out: &mut BTreeMap<PathBuf, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if Some(path.as_path()) == skip {
            continue;
        }
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let rel = path.strip_prefix(base).expect("below base").to_path_buf();
        let owner = format!(
            "{:o} {}:{}",
            meta.permissions().mode() & 0o7777,
            meta.uid(),
            meta.gid()
        );
        let desc = if meta.file_type().is_symlink() {
            format!(
                "link -> {}",
                fs::read_link(&path).expect("readlink").display()
            )
        } else if meta.is_dir() {
            format!("dir {owner}")
        } else {
            let content = fs::read(&path).expect("read file");
            format!("file {owner} {}", String::from_utf8_lossy(&content))
        };
        out.insert(rel, desc);
        if meta.is_dir() && !meta.file_type().is_symlink() {
            walk(base, &path, skip, out);
        }
    }
}

/// A name unique to this test run, from a temp dir's random name.
pub fn unique(tmp: &tempfile::TempDir) -> String {
    tmp.path()
        .file_name()
        .map(|n| n.to_string_lossy().trim_start_matches('.').to_string())
        .unwrap_or_else(|| "x".to_string())
}
