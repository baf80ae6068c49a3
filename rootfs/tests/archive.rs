//! Safe tar in and out of a hostile tree: hostile entries are refused by name and nothing
//! outside the target changes; planted symlinks never reach the host; owners are mapped;
//! extract -> archive -> extract round-trips. Needs root (chown).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{hardlink_to, raw_tar, snapshot, symlink_to, unique, Kind};
use kiln_rootfs::archive::{archive_from_root, extract_in_root, ArchiveError, ExtractOptions};

const APP: &str = "/home/vcap/app";

/// A root with `/home/vcap` and a sentinel file beside the (not yet existing) target, plus a
/// sentinel directory outside the root.
struct Fixture {
    tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("home/vcap")).expect("mkdir");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("home/vcap/sentinel"), "keep").expect("write");
        fs::create_dir_all(tmp.path().join("outside")).expect("mkdir");
        fs::write(tmp.path().join("outside/sentinel"), "keep").expect("write");
        Self { tmp, root }
    }

    /// Everything under the temp dir except the target itself.
    fn outside_target(&self) -> std::collections::BTreeMap<PathBuf, String> {
        snapshot(self.tmp.path(), Some(&self.root.join("home/vcap/app")))
    }
}

fn names(tar: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("read entry");
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        out.push((name, entry.header().entry_type(), data));
    }
    out
}

#[test]
fn hostile_entries_are_refused_by_name_and_nothing_outside_changes() {
    // Absolute paths point into each fixture's own `outside` dir (not /etc), so even a
    // regression cannot damage the machine running the tests.
    type Case = (String, Vec<(String, Kind)>);
    let cases = |outside: &str| -> Vec<Case> {
        let evil = format!("{outside}/evil");
        vec![
            ("../evil".into(), vec![("../evil".into(), Kind::File(b"x"))]),
            (evil.clone(), vec![(evil.clone(), Kind::File(b"x"))]),
            (
                "a/../../evil".into(),
                vec![("a/../../evil".into(), Kind::File(b"x"))],
            ),
            (
                "link".into(),
                vec![
                    ("link".into(), symlink_to(outside)),
                    ("link/evil".into(), Kind::File(b"x")),
                ],
            ),
            (
                "link".into(),
                vec![
                    ("link".into(), symlink_to("../../..")),
                    ("link/evil".into(), Kind::File(b"x")),
                ],
            ),
            (
                "d/up".into(),
                vec![
                    ("d/".into(), Kind::Dir),
                    ("d/up".into(), symlink_to("../../x")),
                ],
            ),
            ("hl".into(), vec![("hl".into(), hardlink_to("/etc/shadow"))]),
            (
                "hl".into(),
                vec![("hl".into(), hardlink_to(format!("{outside}/sentinel")))],
            ),
            ("hl".into(), vec![("hl".into(), hardlink_to("../x"))]),
            ("hl".into(), vec![("hl".into(), hardlink_to("sentinel"))]),
        ]
    };
    for index in 0..cases("/x").len() {
        let fx = Fixture::new();
        let outside = fx.tmp.path().join("outside");
        let (expected_entry, entries) = cases(&outside.to_string_lossy()).swap_remove(index);
        let before = fx.outside_target();
        let err = extract_in_root(
            &fx.root,
            Path::new(APP),
            &raw_tar(&entries)[..],
            &ExtractOptions::default(),
        )
        .expect_err(&format!("tar with {expected_entry} must be refused"));
        match &err {
            ArchiveError::HostileEntry { entry, .. } => assert_eq!(entry, &expected_entry),
            other => panic!("{expected_entry}: expected HostileEntry, got {other:?}"),
        }
        assert!(err.to_string().contains(&expected_entry), "{err}");
        assert_eq!(
            fx.outside_target(),
            before,
            "{expected_entry}: something outside changed"
        );
        let app = fx.root.join("home/vcap/app");
        let written = if app.exists() {
            snapshot(&app, None)
        } else {
            Default::default()
        };
        assert!(
            written
                .keys()
                .all(|k| !k.ends_with("evil") && !k.ends_with("hl")),
            "{expected_entry}: {written:?}"
        );
    }
}

#[test]
fn image_mode_strips_leading_slash_but_still_refuses_dotdot() {
    let fx = Fixture::new();
    let opts = ExtractOptions {
        allow_absolute_and_dot_prefix: true,
        ..ExtractOptions::default()
    };
    let tar = raw_tar(&[
        ("/etc/motd", Kind::File(b"hi")),
        ("./usr/bin/env", symlink_to("/bin/env")),
    ]);
    extract_in_root(&fx.root, Path::new("/"), &tar[..], &opts).expect("extract");
    assert_eq!(fs::read(fx.root.join("etc/motd")).expect("read"), b"hi");
    assert_eq!(
        fs::read_link(fx.root.join("usr/bin/env")).expect("readlink"),
        Path::new("/bin/env")
    );

    let bad = raw_tar(&[("/../etc/evil", Kind::File(b"x"))]);
    let err = extract_in_root(&fx.root, Path::new("/"), &bad[..], &opts).expect_err("refused");
    assert!(matches!(err, ArchiveError::HostileEntry { ref entry, .. } if entry == "/../etc/evil"));
}

#[test]
fn a_target_symlinked_to_a_host_dir_never_writes_there() {
    let fx = Fixture::new();
    let host_dir = tempfile::tempdir().expect("host dir");
    let app = fx.root.join("home/vcap/app");
    symlink(host_dir.path(), &app).expect("plant symlink");
    let tar = raw_tar(&[("f", Kind::File(b"data"))]);

    // The link resolves inside the root, where nothing exists yet: refused.
    let err = extract_in_root(
        &fx.root,
        Path::new(APP),
        &tar[..],
        &ExtractOptions::default(),
    )
    .expect_err("dangling in-root target");
    assert!(matches!(err, ArchiveError::Target { .. }), "{err:?}");
    assert_eq!(fs::read_dir(host_dir.path()).expect("ls").count(), 0);

    // Once the in-root counterpart exists, the data lands there, still not on the host.
    let in_root = fx
        .root
        .join(host_dir.path().strip_prefix("/").expect("absolute"));
    fs::create_dir_all(&in_root).expect("mkdir in root");
    extract_in_root(
        &fx.root,
        Path::new(APP),
        &tar[..],
        &ExtractOptions::default(),
    )
    .expect("extract");
    assert_eq!(fs::read(in_root.join("f")).expect("read"), b"data");
    assert_eq!(fs::read_dir(host_dir.path()).expect("ls").count(), 0);
}

#[test]
fn symlinks_planted_inside_the_target_are_not_followed() {
    let fx = Fixture::new();
    let app = fx.root.join("home/vcap/app");
    fs::create_dir_all(&app).expect("mkdir");
    symlink(fx.tmp.path().join("outside"), app.join("out")).expect("plant dir link");
    symlink("../sentinel", app.join("f")).expect("plant file link");
    let before = fx.outside_target();

    let through_dir = raw_tar(&[("out/passwd", Kind::File(b"pwned"))]);
    extract_in_root(
        &fx.root,
        Path::new(APP),
        &through_dir[..],
        &ExtractOptions::default(),
    )
    .expect_err("writing through a planted dir link fails");
    let over_file = raw_tar(&[("f", Kind::File(b"pwned"))]);
    let err = extract_in_root(
        &fx.root,
        Path::new(APP),
        &over_file[..],
        &ExtractOptions::default(),
    )
    .expect_err("writing through a planted file link is refused");
    assert!(
        matches!(err, ArchiveError::HostileEntry { ref entry, .. } if entry == "f"),
        "{err:?}"
    );

    assert_eq!(fx.outside_target(), before);
    assert!(!fx.tmp.path().join("outside/passwd").exists());
}

#[test]
fn owner_mapping_applies_to_every_entry_and_the_created_target() {
    let fx = Fixture::new();
    let tar = raw_tar(&[
        ("d/", Kind::Dir),
        ("d/f", Kind::File(b"x")),
        ("d/l", symlink_to("f")),
        ("top", Kind::File(b"y")),
        ("implicit/parents/file", Kind::File(b"z")),
    ]);
    let opts = ExtractOptions {
        owner: Some((1234, 5678)),
        ..ExtractOptions::default()
    };
    let summary = extract_in_root(&fx.root, Path::new(APP), &tar[..], &opts).expect("extract");
    assert_eq!((summary.files, summary.dirs, summary.symlinks), (3, 1, 1));
    let app = fx.root.join("home/vcap/app");
    let implicit = [
        app.clone(),
        app.join("implicit"),
        app.join("implicit/parents"),
    ];
    for path in &implicit {
        let mode = fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755, "created directory {}", path.display());
    }
    let entries = ["d", "d/f", "d/l", "top", "implicit/parents/file"].map(|p| app.join(p));
    for path in implicit.iter().chain(&entries) {
        let meta = fs::symlink_metadata(path).expect("lstat");
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678), "{}", path.display());
    }
    // /home/vcap existed already: it keeps its owner.
    assert_eq!(
        fs::metadata(fx.root.join("home/vcap")).expect("stat").uid(),
        0
    );
}

#[test]
fn device_nodes_and_fifos_are_skipped() {
    let fx = Fixture::new();
    let tar = raw_tar(&[
        ("fifo", Kind::Fifo),
        ("tty", Kind::CharDevice),
        ("ok", Kind::File(b"1")),
    ]);
    let summary = extract_in_root(
        &fx.root,
        Path::new(APP),
        &tar[..],
        &ExtractOptions::default(),
    )
    .expect("extract");
    assert_eq!((summary.skipped, summary.files), (2, 1));
    let app = fx.root.join("home/vcap/app");
    assert!(!app.join("fifo").exists() && !app.join("tty").exists());
    assert!(app.join("ok").exists());
}

#[test]
fn round_trip_preserves_contents_modes_and_symlinks() {
    let fx = Fixture::new();
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(2000);
        h.set_gid(2000);
        h.set_size(data.len() as u64);
        match link {
            Some(to) => builder.append_link(&mut h, name, to).expect("link"),
            None => builder.append_data(&mut h, name, data).expect("append"),
        }
    };
    add("d/", tar::EntryType::Directory, 0o750, b"", None);
    add("d/e/", tar::EntryType::Directory, 0o700, b"", None);
    add("top.txt", tar::EntryType::Regular, 0o644, b"hello\n", None);
    add("empty", tar::EntryType::Regular, 0o600, b"", None);
    add(
        "d/run.sh",
        tar::EntryType::Regular,
        0o755,
        b"#!/bin/sh\necho hi\n",
        None,
    );
    add("d/setuid", tar::EntryType::Regular, 0o4755, b"suid", None);
    add(
        "d/e/secret",
        tar::EntryType::Regular,
        0o600,
        b"s3cret",
        None,
    );
    add(
        "d/link",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("run.sh"),
    );
    add(
        "d/e/up",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("../run.sh"),
    );
    let tar = builder.into_inner().expect("finish");

    extract_in_root(
        &fx.root,
        Path::new(APP),
        &tar[..],
        &ExtractOptions::default(),
    )
    .expect("extract");
    let app = fx.root.join("home/vcap/app");
    let mode = |p: &str| {
        fs::symlink_metadata(app.join(p))
            .expect("lstat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        (mode("d"), mode("d/e"), mode("d/setuid"), mode("empty")),
        (0o750, 0o700, 0o4755, 0o600)
    );
    assert_eq!(
        fs::read(app.join("d/e/up")).expect("via link"),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::metadata(app.join("d/e/secret")).expect("stat").uid(),
        2000
    );

    let mut out = Vec::new();
    archive_from_root(&fx.root, Path::new(APP), &mut out).expect("archive");
    let other = tempfile::tempdir().expect("tempdir");
    extract_in_root(
        other.path(),
        Path::new("/copy"),
        &out[..],
        &ExtractOptions::default(),
    )
    .expect("extract copy");
    assert_eq!(
        snapshot(&other.path().join("copy"), None),
        snapshot(&app, None)
    );
    assert_eq!(snapshot(&app, None).len(), 9);
}

#[test]
fn archiving_a_symlink_to_a_host_file_never_reads_the_host_file() {
    let fx = Fixture::new();
    let secret = format!("HOST-SECRET-{}", unique(&fx.tmp));
    let host_file = fx.tmp.path().join("outside/secret");
    fs::write(&host_file, &secret).expect("write host secret");
    fs::create_dir_all(fx.root.join("tmp")).expect("mkdir");
    symlink(&host_file, fx.root.join("tmp/x")).expect("plant x");
    symlink("/etc/shadow", fx.root.join("tmp/y")).expect("plant y");
    fs::write(fx.root.join("etc/shadow"), "root-internal").expect("write");

    let err = archive_from_root(&fx.root, Path::new("/tmp/x"), Vec::new()).expect_err("x");
    assert!(matches!(err, ArchiveError::NotFound { ref path } if path == Path::new("/tmp/x")));
    let climbing = PathBuf::from("/../../..").join(host_file.strip_prefix("/").expect("abs"));
    let err = archive_from_root(&fx.root, &climbing, Vec::new()).expect_err("climb");
    assert!(matches!(err, ArchiveError::NotFound { .. }), "{err:?}");

    let mut out = Vec::new();
    archive_from_root(&fx.root, Path::new("/tmp/y"), &mut out).expect("archive y");
    let entries = names(&out);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, "y");
    assert_eq!(entries[0].2, b"root-internal");

    let mut out = Vec::new();
    archive_from_root(&fx.root, Path::new("/tmp"), &mut out).expect("archive dir");
    let entries = names(&out);
    let kinds: Vec<_> = entries.iter().map(|(n, k, _)| (n.as_str(), *k)).collect();
    assert_eq!(
        kinds,
        vec![
            ("x", tar::EntryType::Symlink),
            ("y", tar::EntryType::Symlink)
        ]
    );
    assert!(!out.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[test]
fn archiving_a_missing_path_is_not_found() {
    let fx = Fixture::new();
    let err =
        archive_from_root(&fx.root, Path::new("/nope/nothing"), Vec::new()).expect_err("missing");
    assert!(
        matches!(err, ArchiveError::NotFound { ref path } if path == Path::new("/nope/nothing"))
    );
    assert!(err.to_string().contains("/nope/nothing"));
}

#[test]
fn hardlinks_inside_the_target_share_the_inode_and_links_replace_files() {
    let fx = Fixture::new();
    let tar = raw_tar(&[
        ("d/f", Kind::File(b"shared")),
        ("d/hl", hardlink_to("./d/f")),
        ("old", Kind::File(b"replaced by a link")),
        ("old", symlink_to("d/f")),
    ]);
    let summary = extract_in_root(
        &fx.root,
        Path::new(APP),
        &tar[..],
        &ExtractOptions::default(),
    )
    .expect("extract");
    assert_eq!(summary.hardlinks, 1);
    let app = fx.root.join("home/vcap/app");
    let (f, hl) = (
        fs::metadata(app.join("d/f")).expect("f"),
        fs::metadata(app.join("d/hl")).expect("hl"),
    );
    assert_eq!((f.ino(), f.nlink()), (hl.ino(), 2));
    assert_eq!(
        fs::read_link(app.join("old")).expect("readlink"),
        Path::new("d/f")
    );
}
