//! The per-machine stack cache (`recipes::cached_in`), exercised with the cheap `tiny` recipe
//! in a temporary cache root: concurrent threads and processes build once and agree, an
//! interrupted build is cleaned up, `$KILN_STACK_CACHE` is honoured; and the bookworm
//! recipe's failures (no debootstrap, an unreachable mirror) are typed and leave nothing behind.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_rootfs::recipes::{self, BookwormOptions, RecipeError, TINY_RECIPE_VERSION};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn cli_cached(root: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-rootfs"))
        .args(["cached", "tiny", "--root"])
        .arg(root)
        .output()
        .expect("run kiln-rootfs cached")
}

fn digest_in(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {text}"))
        .to_string()
}

#[test]
fn concurrent_threads_and_processes_build_once_and_agree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cache");
    let layouts = std::thread::scope(|s| {
        let procs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let out = cli_cached(&root);
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    digest_in(&out.stdout)
                })
            })
            .collect();
        let threads: Vec<_> = (0..3)
            .map(|_| s.spawn(|| recipes::cached_in(&root, "tiny", &mut |_| {}).expect("cached")))
            .collect();
        let digests: Vec<String> = procs
            .into_iter()
            .map(|h| h.join().expect("process thread"))
            .collect();
        let layouts: Vec<_> = threads
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        for d in &digests {
            assert_eq!(d, &layouts[0].manifest_digest);
        }
        layouts
    });
    let dir = root.join(format!("tiny-{TINY_RECIPE_VERSION}"));
    for layout in &layouts {
        assert_eq!(layout, &layouts[0]);
        assert_eq!(layout.dir, dir);
    }
    assert_eq!(
        names(&root),
        [
            format!("tiny-{TINY_RECIPE_VERSION}"),
            "tiny.lock".to_string()
        ]
    );
    kiln_rootfs::layout::read_image(&dir, "tiny").expect("a complete, valid layout");
}

#[test]
fn an_interrupted_build_is_removed_and_never_taken_for_a_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    // What a build killed mid-way leaves: a half layout in its .build directory.
    let stale = root.join(".build-tiny-99999999-0");
    fs::create_dir_all(stale.join("layout/blobs/sha256")).expect("mkdir");
    fs::write(stale.join("layout/index.json"), b"{\"manife").expect("write");

    let mut lines = Vec::new();
    let layout =
        recipes::cached_in(root, "tiny", &mut |l| lines.push(l.to_string())).expect("cached");
    assert!(!stale.exists(), "the interrupted build is removed");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("removing an interrupted build")),
        "{lines:?}"
    );
    kiln_rootfs::layout::read_image(&layout.dir, "tiny").expect("valid layout");

    // The second call finds it without building.
    let mut lines = Vec::new();
    let again =
        recipes::cached_in(root, "tiny", &mut |l| lines.push(l.to_string())).expect("cached again");
    assert_eq!(again, layout);
    assert!(lines.is_empty(), "nothing built: {lines:?}");
}

#[test]
fn unknown_recipes_are_refused_before_touching_the_cache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("cache");
    let err = recipes::cached_in(&root, "huge", &mut |_| {}).expect_err("unknown");
    assert!(matches!(err, RecipeError::UnknownRecipe { .. }), "{err:?}");
    assert!(!root.exists());
}

#[test]
fn the_cache_root_comes_from_kiln_stack_cache() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-rootfs"))
        .args(["cached", "tiny"])
        .env("KILN_STACK_CACHE", tmp.path())
        .output()
        .expect("run kiln-rootfs cached");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = tmp.path().join(format!("tiny-{TINY_RECIPE_VERSION}"));
    assert!(stdout.starts_with(&*expected.to_string_lossy()), "{stdout}");
}

#[test]
fn missing_debootstrap_says_to_install_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = BookwormOptions {
        debootstrap: Some(tmp.path().join("no-debootstrap")),
        ..BookwormOptions::default()
    };
    let err = recipes::build_bookworm_with(&tmp.path().join("out"), &opts, &mut |_| {})
        .expect_err("no debootstrap");
    assert!(
        matches!(
            err,
            RecipeError::ToolMissing {
                program: "debootstrap",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("install debootstrap (deploy/setup)"),
        "{err}"
    );
}

#[test]
fn a_failing_debootstrap_reports_its_log_and_leaves_no_scratch_tree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A loopback port nothing listens on: debootstrap fails fetching the Release file.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let opts = BookwormOptions {
        mirror: format!("http://127.0.0.1:{port}/debian"),
        ..BookwormOptions::default()
    };
    let out = tmp.path().join("out");
    let mut lines = Vec::new();
    let err = recipes::build_bookworm_with(&out, &opts, &mut |l| lines.push(l.to_string()))
        .expect_err("unreachable mirror");
    let RecipeError::Debootstrap {
        ref status,
        ref log_tail,
    } = err
    else {
        panic!("expected a debootstrap error, got {err:?}");
    };
    assert!(!status.is_empty());
    assert!(log_tail.contains("Release"), "{log_tail}");
    assert!(err.to_string().contains("debootstrap failed"), "{err}");
    assert!(lines.iter().any(|l| l.contains("debootstrap")), "{lines:?}");
    // Nothing is left: no scratch tree, no output directory.
    assert!(names(tmp.path()).is_empty(), "{:?}", names(tmp.path()));
    assert!(!out.exists());
}
