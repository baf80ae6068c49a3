//! Hostile packages over HTTP: traversal, links leaving the app, links walked through, and a
//! zip bomb are FAILED with the reason, and nothing is written outside the blobstore. Each
//! test once on SQLite and once on PostgreSQL.

mod common;

use std::io::Write;

use common::{Controller, Db};
use zip::write::SimpleFileOptions;

fn zip_with(build: impl FnOnce(&mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    build(&mut w);
    w.finish().unwrap().into_inner()
}

async fn hostile_packages_fail_with_the_reason_and_write_nothing_outside(db: Db) {
    let cc = Controller::start_with(db, |c| c.max_upload_bytes = 1 << 20).await;
    let app = cc.app("hostile").await;
    let before = list_tree(&cc.data_dir);

    let link_out = zip_with(|w| {
        w.add_symlink(
            "shadow",
            "../../../../etc/shadow",
            SimpleFileOptions::default(),
        )
        .unwrap();
    });
    let through_link = zip_with(|w| {
        w.add_symlink("d", "sub", SimpleFileOptions::default())
            .unwrap();
        w.add_directory("sub", SimpleFileOptions::default())
            .unwrap();
        w.start_file("d/x", SimpleFileOptions::default()).unwrap();
        w.write_all(b"x").unwrap();
    });
    let absolute = zip_with(|w| {
        w.start_file("/tmp/kiln-hostile-absolute", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"x").unwrap();
    });
    // 16 MiB of zeros deflates to a few KiB: far over 4x the 1 MiB upload limit unpacked.
    let bomb = zip_with(|w| {
        let deflated =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file("zeros", deflated).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..16 {
            w.write_all(&zeros).unwrap();
        }
    });
    assert!(
        bomb.len() < 1 << 20,
        "the bomb itself fits the upload limit"
    );

    for (what, bits, reason) in [
        ("a link leaving the app", link_out, "outside the app folder"),
        (
            "an entry through a link",
            through_link,
            "goes through the link",
        ),
        ("an absolute name", absolute, "kiln-hostile-absolute"),
        ("a zip bomb", bomb, "unpacks to more than"),
    ] {
        let (status, package) = cc.upload(&app, bits).await;
        assert_eq!(status, 200, "{what}: {package}");
        assert_eq!(package["state"], "FAILED", "{what}: {package}");
        let error = package["data"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{what}: {error}");
    }
    assert!(!std::path::Path::new("/tmp/kiln-hostile-absolute").exists());
    let after = list_tree(&cc.data_dir);
    let outside: Vec<_> = after
        .difference(&before)
        .filter(|p| !p.starts_with(cc.data_dir.join("blobs")))
        .collect();
    assert!(
        outside.is_empty(),
        "written outside the blobstore: {outside:?}"
    );
}

/// Every path under `root`, except the database's own files.
fn list_tree(root: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cc.db"))
            {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

both!(hostile_packages_fail_with_the_reason_and_write_nothing_outside);
