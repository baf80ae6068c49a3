//! The `tiny` stack: the host's static busybox, an applet symlink per command, a `vcap` user
//! (2000:2000) with its home, and the usual empty top-level directories, in one gzip layer.
//!
//! The layer is deterministic (sorted entries, fixed mtimes, root-owned except `/home/vcap`),
//! so two builds on one host give the same manifest digest.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use oci_spec::image::{Arch, ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder, Os};
use tar::{EntryType, Header};

use super::{RecipeError, StackLayout};
use crate::layout::write_layout;

/// Bump whenever the recipe's output changes, so [`super::cached`] builds it again.
pub const RECIPE_VERSION: u32 = 1;

/// Where [`build_tiny`] takes busybox from (Debian's `busybox-static`).
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// Applets the stack promises; the build fails if the host's busybox lacks one.
pub const REQUIRED_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "true", "false", "sleep", "id", "mkdir", "rm", "tar", "wget", "nc",
    "ip", "mount", "unshare", "nsenter", "env", "dd", "head", "kill", "ps", "yes", "cp", "mv",
    "touch", "grep", "sed", "awk", "httpd", "hostname",
];

/// Every entry's mtime: 2024-01-01T00:00:00Z.
const MTIME: u64 = 1_704_067_200;
const VCAP: u32 = 2000;
const PATH_ENV: &str = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
vcap:x:2000:2000::/home/vcap:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nvcap:x:2000:\nnobody:x:65534:\n";
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";

/// Directories of the layer, in order: (path, mode, owner uid = gid).
const DIRS: &[(&str, u32, u32)] = &[
    ("bin", 0o755, 0),
    ("dev", 0o755, 0),
    ("etc", 0o755, 0),
    ("home", 0o755, 0),
    ("home/vcap", 0o755, VCAP),
    ("proc", 0o555, 0),
    ("root", 0o700, 0),
    ("sys", 0o555, 0),
    ("tmp", 0o1777, 0),
    ("usr", 0o755, 0),
    ("usr/bin", 0o755, 0),
    ("var", 0o755, 0),
    ("var/tmp", 0o1777, 0),
];

/// Builds the `tiny` stack into `out_dir` from the host's [`HOST_BUSYBOX`].
pub fn build_tiny(out_dir: &Path) -> Result<StackLayout, RecipeError> {
    build_tiny_with(Path::new(HOST_BUSYBOX), out_dir)
}

/// Builds the `tiny` stack into `out_dir` (created if missing) from the static busybox at
/// `busybox`. Returns the layout and its manifest digest.
pub fn build_tiny_with(busybox: &Path, out_dir: &Path) -> Result<StackLayout, RecipeError> {
    let binary = fs::read(busybox).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => RecipeError::BusyboxMissing {
            path: busybox.to_path_buf(),
        },
        _ => RecipeError::Io {
            path: busybox.to_path_buf(),
            source,
        },
    })?;
    if !is_static_elf(&binary) {
        return Err(RecipeError::BusyboxNotStatic {
            path: busybox.to_path_buf(),
        });
    }
    let applets = list_applets(busybox)?;
    let missing: Vec<String> = REQUIRED_APPLETS
        .iter()
        .filter(|a| applets.binary_search_by(|x| x.as_str().cmp(a)).is_err())
        .map(|a| a.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(RecipeError::MissingApplets {
            path: busybox.to_path_buf(),
            missing,
        });
    }
    let layer = layer_tar(&binary, &applets).map_err(|source| RecipeError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    Ok(write_layout(out_dir, "tiny", image_config()?, &[layer])?)
}

/// The applet names `busybox --list` prints, sorted, without `busybox` itself.
fn list_applets(busybox: &Path) -> Result<Vec<String>, RecipeError> {
    let fail = |reason: String| RecipeError::BusyboxList {
        path: busybox.to_path_buf(),
        reason,
    };
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && !matches!(*a, "." | ".." | "busybox"))
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// True for an ELF64 little-endian executable without a `PT_INTERP` program header.
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !bytes.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        i.checked_mul(usize::from(phentsize))
            .and_then(|rel| rel.checked_add(phoff))
            .and_then(u32_at)
            .is_some_and(|p_type| p_type != PT_INTERP)
    })
}

fn header(kind: EntryType, mode: u32, owner: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(u64::from(owner));
    h.set_gid(u64::from(owner));
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// The uncompressed layer: directories, files, then symlinks, each group in a fixed order.
fn layer_tar(busybox: &[u8], applets: &[String]) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::with_capacity(busybox.len() + 64 * 1024));
    for (path, mode, owner) in DIRS {
        let mut h = header(EntryType::Directory, *mode, *owner, 0);
        b.append_data(&mut h, format!("{path}/"), io::empty())?;
    }
    let files: [(&str, u32, &[u8]); 5] = [
        ("bin/busybox", 0o755, busybox),
        ("etc/group", 0o644, GROUP.as_bytes()),
        ("etc/hosts", 0o644, HOSTS.as_bytes()),
        ("etc/passwd", 0o644, PASSWD.as_bytes()),
        ("etc/resolv.conf", 0o644, b""),
    ];
    for (path, mode, data) in files {
        let mut h = header(EntryType::Regular, mode, 0, data.len() as u64);
        b.append_data(&mut h, path, data)?;
    }
    for applet in applets {
        let mut h = header(EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let mut h = header(EntryType::Symlink, 0o777, 0, 0);
    b.append_link(&mut h, "usr/bin/env", "/bin/env")?;
    b.into_inner()
}

fn image_config() -> Result<ImageConfiguration, RecipeError> {
    let build_err = |source| {
        RecipeError::Layout(crate::layout::LayoutError::Build {
            what: "image config",
            source,
        })
    };
    let config = ConfigBuilder::default()
        .user("vcap")
        .env(vec![PATH_ENV.to_string()])
        .working_dir("/home/vcap")
        .build()
        .map_err(build_err)?;
    ImageConfigurationBuilder::default()
        .architecture(Arch::default())
        .os(Os::Linux)
        .config(config)
        .build()
        .map_err(build_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_busybox_is_static_and_ls_is_not() {
        let busybox = fs::read(HOST_BUSYBOX).expect("busybox-static is installed (deploy/setup)");
        assert!(is_static_elf(&busybox));
        let ls = fs::read("/bin/ls").expect("read /bin/ls");
        assert!(
            !is_static_elf(&ls),
            "/bin/ls is dynamically linked on Debian"
        );
        assert!(!is_static_elf(b"#!/bin/sh\necho hi\n"));
        assert!(!is_static_elf(b"\x7fELF\x02\x01"));
    }
}
