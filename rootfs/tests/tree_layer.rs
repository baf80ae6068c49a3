//! Layers written from a directory tree (`layout::write_tree_layer`): owners, setuid/setgid and
//! sticky bits, hard links, symlinks and long names survive a round trip through the store;
//! device nodes and fifos are left out; mtimes are clamped; the output is deterministic and
//! its entries sorted. Needs root (chown, mknod).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use flate2::read::GzDecoder;
use kiln_rootfs::layout::{write_layout_with_layers, write_tree_layer};
use kiln_rootfs::StackStore;
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

const CLAMP: u64 = 1_704_067_200; // 2024-01-01
const OLD: u64 = 1_600_000_000; // 2020-09-13

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn run(cmd: &mut Command) {
    let status = cmd.status().expect("run");
    assert!(status.success(), "{cmd:?}: {status}");
}

/// A tree with every kind of entry the walk handles.
fn make_tree(root: &Path) -> String {
    fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    fs::create_dir_all(root.join("home/app")).expect("mkdir");
    fs::create_dir_all(root.join("var/mail")).expect("mkdir");
    fs::create_dir_all(root.join("tmp")).expect("mkdir");
    fs::create_dir_all(root.join("dev")).expect("mkdir");
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").expect("write");
    set_mode(&root.join("usr/bin/tool"), 0o4755);
    fs::write(root.join("usr/bin/grp"), b"grp").expect("write");
    std::os::unix::fs::chown(root.join("usr/bin/grp"), Some(0), Some(42)).expect("chown");
    set_mode(&root.join("usr/bin/grp"), 0o2755);
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-again")).expect("link");
    symlink("usr/bin", root.join("bin")).expect("symlink");
    symlink("/usr/bin/tool", root.join("usr/bin/abs-tool")).expect("symlink");
    std::os::unix::fs::chown(root.join("home/app"), Some(2000), Some(2001)).expect("chown");
    set_mode(&root.join("home/app"), 0o750);
    std::os::unix::fs::chown(root.join("var/mail"), Some(0), Some(8)).expect("chown");
    set_mode(&root.join("var/mail"), 0o2775);
    set_mode(&root.join("tmp"), 0o1777);
    let long = format!("home/app/{}/{}.txt", "d".repeat(90), "f".repeat(80));
    fs::create_dir_all(root.join(&long).parent().expect("parent")).expect("mkdir");
    fs::write(root.join(&long), b"long").expect("write");
    for (name, secs) in [
        ("home/app/old", OLD),
        ("home/app/new", CLAMP + 86_400 * 365),
    ] {
        let f = fs::File::create(root.join(name)).expect("create");
        f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .expect("set mtime");
    }
    run(Command::new("mkfifo").arg(root.join("tmp/fifo")));
    run(Command::new("mknod")
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"]));
    long
}

fn config() -> oci_spec::image::ImageConfiguration {
    ImageConfigurationBuilder::default()
        .config(ConfigBuilder::default().build().expect("config"))
        .build()
        .expect("image config")
}

#[test]
fn tree_layer_round_trips_owners_modes_and_links_and_skips_devices() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    let long = make_tree(&tree);

    let layout_dir = tmp.path().join("layout");
    let layer = write_tree_layer(&layout_dir, &tree, CLAMP).expect("write layer");
    let s = &layer.summary;
    assert_eq!((s.hardlinks, s.skipped), (1, 2), "{s:?}");
    assert_eq!(s.symlinks, 2, "{s:?}");
    let layout = write_layout_with_layers(
        &layout_dir,
        "t",
        config(),
        std::slice::from_ref(&layer.blob),
    )
    .expect("write layout");

    // Deterministic: the same tree gives the same blobs.
    let again = write_tree_layer(&tmp.path().join("layout2"), &tree, CLAMP).expect("again");
    assert_eq!(again.blob, layer.blob);

    let store = StackStore::open(tmp.path().join("store")).expect("open store");
    let image = store.import(&layout.dir, "t").expect("import");
    let r = &image.rootfs;
    let meta = |p: &str| fs::symlink_metadata(r.join(p)).expect(p);
    let mode = |p: &str| meta(p).permissions().mode() & 0o7777;

    assert_eq!(mode("usr/bin/tool"), 0o4755);
    assert_eq!(
        (mode("usr/bin/grp"), meta("usr/bin/grp").gid()),
        (0o2755, 42)
    );
    assert_eq!(meta("usr/bin/tool").ino(), meta("usr/bin/tool-again").ino());
    assert_eq!(
        fs::read_link(r.join("bin")).expect("readlink"),
        Path::new("usr/bin")
    );
    assert_eq!(
        fs::read_link(r.join("usr/bin/abs-tool")).expect("readlink"),
        Path::new("/usr/bin/tool")
    );
    let home = meta("home/app");
    assert_eq!(
        (home.uid(), home.gid(), mode("home/app")),
        (2000, 2001, 0o750)
    );
    assert_eq!((meta("var/mail").gid(), mode("var/mail")), (8, 0o2775));
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(fs::read(r.join(&long)).expect("long name"), b"long");
    assert!(
        fs::symlink_metadata(r.join("tmp/fifo")).is_err(),
        "fifo left out"
    );
    assert!(
        fs::symlink_metadata(r.join("dev/null")).is_err(),
        "device left out"
    );
    assert_eq!(
        meta("home/app/old").mtime(),
        OLD as i64,
        "older mtimes kept"
    );
    assert_eq!(
        meta("home/app/new").mtime(),
        CLAMP as i64,
        "newer ones clamped"
    );

    // The tar's entries are depth first, each directory's children sorted by name.
    let hex = layer
        .blob
        .descriptor
        .digest()
        .to_string()
        .trim_start_matches("sha256:")
        .to_string();
    let gz = fs::read(layout.dir.join("blobs/sha256").join(hex)).expect("blob");
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(GzDecoder::new(&gz[..]));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        assert!(
            entry.header().username_bytes().is_none_or(|u| u.is_empty()),
            "no user names"
        );
        entry.read_to_end(&mut Vec::new()).expect("read");
        names.push(name.trim_end_matches('/').to_string());
    }
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    assert_eq!(names, sorted);
    assert_eq!(names.first().map(String::as_str), Some("bin"));
}
