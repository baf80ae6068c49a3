//! The stack store: import, verify, unpack once, resolve by name/digest/prefix, refuse corrupt
//! blobs without leaving anything behind, apply whiteouts across layers. Needs root (chown).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{raw_tar, symlink_to, Kind};
use kiln_rootfs::layout::{write_layout, LayoutError, StackLayout};
use kiln_rootfs::{recipes, StackStore, StoreError};
use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

struct Setup {
    tmp: tempfile::TempDir,
    layout: StackLayout,
    store: StackStore,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = recipes::build_tiny(&tmp.path().join("layout")).expect("build tiny");
    let store = StackStore::open(tmp.path().join("store")).expect("open store");
    Setup { tmp, layout, store }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn manifest(layout: &StackLayout) -> serde_json::Value {
    let hex = layout.manifest_digest.trim_start_matches("sha256:");
    let bytes = fs::read(layout.dir.join("blobs/sha256").join(hex)).expect("manifest blob");
    serde_json::from_slice(&bytes).expect("manifest JSON")
}

fn blob_path(layout: &StackLayout, digest: &str) -> PathBuf {
    layout
        .dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[test]
fn tiny_imports_and_resolves_by_name_digest_and_prefix() {
    let s = setup();
    let image = s.store.import(&s.layout.dir, "tiny").expect("import");
    assert_eq!(image.name.as_deref(), Some("tiny"));
    assert_eq!(image.digest, s.layout.manifest_digest);
    assert_eq!(image.user.as_deref(), Some("vcap"));
    assert_eq!(image.working_dir.as_deref(), Some("/home/vcap"));
    assert!(
        image.env.iter().any(|e| e.starts_with("PATH=")),
        "{:?}",
        image.env
    );
    assert!(
        image.imported_at.ends_with('Z') && image.imported_at.len() == 20,
        "{}",
        image.imported_at
    );

    let rootfs = &image.rootfs;
    assert!(rootfs.join("bin/sh").exists(), "bin/sh resolves to busybox");
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).expect("readlink"),
        Path::new("busybox")
    );
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(
        passwd.contains("vcap:x:2000:2000::/home/vcap:/bin/sh"),
        "{passwd}"
    );
    let home = fs::metadata(rootfs.join("home/vcap")).expect("home");
    assert_eq!(
        (home.uid(), home.gid(), home.permissions().mode() & 0o7777),
        (2000, 2000, 0o755)
    );
    assert_eq!(
        fs::metadata(rootfs.join("tmp"))
            .expect("tmp")
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(rootfs.join("bin/busybox"))
            .expect("busybox")
            .uid(),
        0
    );

    let hex = image.digest.trim_start_matches("sha256:").to_string();
    assert_eq!(s.store.resolve("tiny").expect("by name"), image);
    assert_eq!(s.store.resolve(&image.digest).expect("by digest"), image);
    assert_eq!(s.store.resolve(&hex[..12]).expect("by prefix"), image);
    assert_eq!(
        s.store
            .resolve(&format!("sha256:{}", &hex[..20]))
            .expect("by prefix"),
        image
    );
    assert_eq!(s.store.list().expect("list"), vec![image.clone()]);
    assert_eq!(
        rootfs,
        &s.store.root().join("images").join(&hex).join("rootfs")
    );
}

#[test]
fn tiny_rootfs_runs_a_shell_as_vcap() {
    let s = setup();
    let image = s.store.import(&s.layout.dir, "tiny").expect("import");
    let out = Command::new("chroot")
        .arg("--userspec=2000:2000")
        .arg(&image.rootfs)
        .args(["/usr/bin/env", "-i", "HOME=/home/vcap", "PATH=/bin"])
        .args(["sh", "-c", "whoami; cd && pwd && echo hi > ok && cat ok"])
        .output()
        .expect("run chroot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "vcap\n/home/vcap\nhi\n"
    );
}

#[test]
fn importing_twice_does_not_unpack_twice() {
    let s = setup();
    let first = s.store.import(&s.layout.dir, "tiny").expect("import");
    let marker = first.rootfs.join("marker");
    fs::write(&marker, "still here").expect("write marker");
    // With no scratch space left, only an import that skips the unpack can succeed.
    let scratch = s.store.root().join("tmp");
    fs::remove_dir(&scratch).expect("remove tmp");
    fs::write(&scratch, "not a directory").expect("block tmp");
    let second = s.store.import(&s.layout.dir, "tiny").expect("import again");
    fs::remove_file(&scratch).expect("unblock tmp");
    fs::create_dir(&scratch).expect("restore tmp");
    assert_eq!(second, first, "same image, same import time");
    assert_eq!(fs::read_to_string(&marker).expect("marker"), "still here");
    assert_eq!(entries(&s.store.root().join("images")).len(), 1);
    assert!(entries(&s.store.root().join("tmp")).is_empty());
}

#[test]
fn parallel_imports_of_one_image_agree() {
    let s = setup();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (root, dir) = (s.store.root().to_path_buf(), s.layout.dir.clone());
                scope.spawn(move || {
                    let store = StackStore::open(root).expect("open");
                    store.import(&dir, if i % 2 == 0 { "tiny" } else { "tiny-too" })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for result in &results {
        let image = result.as_ref().expect("import");
        assert_eq!(image.digest, s.layout.manifest_digest);
        assert!(image.rootfs.join("bin/busybox").is_file());
    }
    assert_eq!(entries(&s.store.root().join("images")).len(), 1);
    assert!(entries(&s.store.root().join("tmp")).is_empty());
    assert_eq!(
        entries(&s.store.root().join("names")),
        vec!["tiny-too.json", "tiny.json"]
    );
    assert_eq!(s.store.list().expect("list").len(), 2);
}

#[test]
fn corrupt_layer_is_refused_naming_its_digest_and_leaves_no_image() {
    let s = setup();
    let layer = manifest(&s.layout)["layers"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let path = blob_path(&s.layout, &layer);
    let mut bytes = fs::read(&path).expect("read layer");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&path, &bytes).expect("write corrupt layer");

    let err = s
        .store
        .import(&s.layout.dir, "tiny")
        .expect_err("corrupt layer refused");
    assert!(
        matches!(err, StoreError::Layout(LayoutError::DigestMismatch { ref digest, .. }) if digest == &layer),
        "{err:?}"
    );
    assert!(err.to_string().contains(&layer), "{err}");
    assert!(entries(&s.store.root().join("images")).is_empty());
    assert!(entries(&s.store.root().join("names")).is_empty());
    assert!(entries(&s.store.root().join("tmp")).is_empty());
    assert!(s.store.list().expect("list").is_empty());
    assert!(matches!(
        s.store.resolve("tiny"),
        Err(StoreError::UnknownStack { .. })
    ));
}

#[test]
fn missing_or_truncated_blobs_are_refused_naming_them() {
    let s = setup();
    let m = manifest(&s.layout);
    let config = m["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string();
    let layer = m["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string();
    let layer_bytes = fs::read(blob_path(&s.layout, &layer)).expect("layer");
    fs::write(
        blob_path(&s.layout, &layer),
        &layer_bytes[..layer_bytes.len() - 1],
    )
    .expect("truncate");
    let err = s
        .store
        .import(&s.layout.dir, "tiny")
        .expect_err("short layer");
    assert!(
        matches!(err, StoreError::Layout(LayoutError::SizeMismatch { ref digest, .. }) if digest == &layer),
        "{err:?}"
    );

    fs::remove_file(blob_path(&s.layout, &config)).expect("remove config");
    let err = s
        .store
        .import(&s.layout.dir, "tiny")
        .expect_err("missing config");
    assert!(
        matches!(err, StoreError::Layout(LayoutError::BlobMissing { ref digest, .. }) if digest == &config),
        "{err:?}"
    );
    assert!(err.to_string().contains(&config), "{err}");
    assert!(s.store.list().expect("list").is_empty());
}

#[test]
fn unknown_stacks_and_bad_names_are_clear_errors() {
    let s = setup();
    let err = s.store.resolve("cflinuxfs4").expect_err("nothing imported");
    assert!(matches!(err, StoreError::UnknownStack { ref name } if name == "cflinuxfs4"));
    assert!(err.to_string().contains("kiln-rootfs import"), "{err}");
    s.store.import(&s.layout.dir, "tiny").expect("import");
    let hex = s.layout.manifest_digest.trim_start_matches("sha256:");
    assert!(
        matches!(
            s.store.resolve(&hex[..8]),
            Err(StoreError::UnknownStack { .. })
        ),
        "short prefix"
    );
    assert!(matches!(
        s.store.resolve("sha256:0000000000000000"),
        Err(StoreError::UnknownStack { .. })
    ));
    for bad in ["", "../escape", "a/b", ".hidden", "sha256:abc"] {
        let err = s.store.import(&s.layout.dir, bad).expect_err("bad name");
        assert!(
            matches!(err, StoreError::InvalidName { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn whiteouts_apply_across_layers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = raw_tar(&[
        ("a/", Kind::Dir),
        ("a/keep", Kind::File(b"keep")),
        ("a/gone", Kind::File(b"gone")),
        ("a/gonedir/", Kind::Dir),
        ("a/gonedir/deep", Kind::File(b"deep")),
        ("opq/", Kind::Dir),
        ("opq/old1", Kind::File(b"1")),
        ("opq/olddir/", Kind::Dir),
        ("top", symlink_to("a/keep")),
    ]);
    let upper = raw_tar(&[
        ("a/.wh.gone", Kind::File(b"")),
        ("./a/.wh.gonedir", Kind::File(b"")),
        ("a/.wh.never-existed", Kind::File(b"")),
        ("opq/new", Kind::File(b"new")),
        ("opq/.wh..wh..opq", Kind::File(b"")),
        ("top", Kind::File(b"now a file")),
    ]);
    let config = ImageConfigurationBuilder::default()
        .config(
            ConfigBuilder::default()
                .user("1000")
                .build()
                .expect("config"),
        )
        .build()
        .expect("image config");
    let layout = write_layout(&tmp.path().join("layout"), "two", config, &[base, upper])
        .expect("write layout");
    let store = StackStore::open(tmp.path().join("store")).expect("store");
    let image = store.import(&layout.dir, "two").expect("import");
    let root = &image.rootfs;
    assert_eq!(image.user.as_deref(), Some("1000"));
    assert_eq!(fs::read(root.join("a/keep")).expect("keep"), b"keep");
    assert!(!root.join("a/gone").exists());
    assert!(!root.join("a/gonedir").exists());
    assert_eq!(entries(&root.join("opq")), vec!["new"]);
    let top = fs::symlink_metadata(root.join("top")).expect("top");
    assert!(top.is_file(), "the upper layer's file replaced the symlink");
    assert_eq!(fs::read(root.join("top")).expect("top"), b"now a file");
    let all = common::snapshot(root, None);
    assert!(
        all.keys().all(|k| !k.to_string_lossy().contains(".wh.")),
        "{all:?}"
    );
}

#[test]
fn several_manifests_are_picked_by_ref_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("layout");
    let config = || {
        ImageConfigurationBuilder::default()
            .build()
            .expect("config")
    };
    let a = write_layout(
        &dir,
        "a",
        config(),
        &[raw_tar(&[("which", Kind::File(b"a"))])],
    )
    .expect("a");
    let index_a: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).expect("index")).expect("json");
    let b = write_layout(
        &dir,
        "b",
        config(),
        &[raw_tar(&[("which", Kind::File(b"b"))])],
    )
    .expect("b");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).expect("index")).expect("json");
    let both = vec![
        index_a["manifests"][0].clone(),
        index["manifests"][0].clone(),
    ];
    index["manifests"] = serde_json::Value::Array(both);
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("write index");

    let store = StackStore::open(tmp.path().join("store")).expect("store");
    let image_a = store.import(&dir, "a").expect("import a");
    let image_b = store.import(&dir, "b").expect("import b");
    assert_eq!(
        (image_a.digest.as_str(), image_b.digest.as_str()),
        (a.manifest_digest.as_str(), b.manifest_digest.as_str())
    );
    assert_eq!(fs::read(image_a.rootfs.join("which")).expect("a"), b"a");
    assert_eq!(fs::read(image_b.rootfs.join("which")).expect("b"), b"b");
    let err = store.import(&dir, "c").expect_err("no c");
    assert!(
        matches!(err, StoreError::Layout(LayoutError::NoMatchingManifest { ref available, .. }) if available.len() == 2),
        "{err:?}"
    );
}

#[test]
fn import_archive_accepts_a_tar_of_a_layout() {
    let s = setup();
    let archive = s.tmp.path().join("tiny.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).expect("create tar"));
    builder
        .append_dir_all("tiny-layout", &s.layout.dir)
        .expect("tar layout");
    builder.into_inner().expect("finish tar");
    let image = s
        .store
        .import_archive(&archive, "tiny")
        .expect("import archive");
    assert_eq!(image.digest, s.layout.manifest_digest);
    assert!(image.rootfs.join("bin/busybox").is_file());
    assert!(entries(&s.store.root().join("tmp")).is_empty());

    let not_layout = s.tmp.path().join("junk.tar");
    fs::write(&not_layout, raw_tar(&[("hello.txt", Kind::File(b"hi"))])).expect("write junk tar");
    let err = s
        .store
        .import_archive(&not_layout, "junk")
        .expect_err("no layout inside");
    assert!(matches!(err, StoreError::NotALayout { .. }), "{err:?}");
    assert!(entries(&s.store.root().join("tmp")).is_empty());
}
