//! The `kiln-rootfs` binary as an operator uses it: build, import (under a strict umask),
//! list, and a readable failure for an unknown recipe.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-rootfs"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run kiln-rootfs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn build_import_list_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tmp.path().join("layout");
    let store = tmp.path().join("store");
    let (layout_s, store_s) = (layout.to_string_lossy(), store.to_string_lossy());

    let built = stdout(&run(&["build", "tiny", "--out", &layout_s]));
    let digest = built
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {built}"))
        .to_string();

    let listed = stdout(&run(&["list", "--store", &store_s]));
    assert!(listed.contains("no stacks"), "{listed}");

    // Under umask 077 the unpacked tree must still be traversable by the container user.
    let import = Command::new("sh")
        .arg("-c")
        .arg(r#"umask 077; exec "$0" import --store "$1" tiny "$2""#)
        .arg(env!("CARGO_BIN_EXE_kiln-rootfs"))
        .arg(&store)
        .arg(&layout)
        .output()
        .expect("run import");
    let imported = stdout(&import);
    assert!(imported.contains(&digest), "{imported}");

    let listed = stdout(&run(&["list", "--store", &store_s]));
    let line = listed
        .lines()
        .find(|l| l.starts_with("tiny\t"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains(&digest), "{line}");
    let rootfs = store
        .join("images")
        .join(digest.trim_start_matches("sha256:"))
        .join("rootfs");
    for dir in ["", "home", "home/vcap", "bin", "etc"] {
        let mode = fs::metadata(rootfs.join(dir))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o755, "/{dir}");
    }
}

#[test]
fn unknown_recipe_fails_with_a_readable_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = run(&["build", "huge", "--out", &tmp.path().to_string_lossy()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown recipe `huge` (known: tiny, bookworm)"),
        "{stderr}"
    );
}
