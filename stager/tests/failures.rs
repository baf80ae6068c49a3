//! Every way a staging fails gives its message and exit code, loses nothing on the host, and
//! leaves no container behind.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{app, buildpack, Fixture};
use kiln_stager::StagingError;

/// Stages `src` with buildpack dirs `bps` (or detection among `builtin`) and returns the error.
async fn failing(
    fx: &Fixture,
    name: &str,
    src: &Path,
    bps: &[&Path],
    builtin: &Path,
) -> StagingError {
    let mut req = fx.request(name, src);
    req.buildpacks = bps.iter().map(|b| b.display().to_string()).collect();
    req.limits.timeout = Duration::from_secs(60);
    let (result, _) = fx.stage(builtin, req).await;
    let err = result.expect_err("staging must fail");
    assert!(
        fx.backend.list(&BTreeMap::new()).is_empty(),
        "the staging container is gone after: {err}"
    );
    assert!(
        !fx.path(&format!("{name}.tgz")).exists(),
        "no droplet after a failure"
    );
    err
}

#[tokio::test]
async fn detection_and_buildpack_script_failures_name_the_phase_buildpack_and_code() {
    let fx = Fixture::new(45).await;
    let src = app(&fx.path("app"), &[("x", "1")]);

    // No built-in applies: every one is named with why.
    let builtin = fx.path("builtin");
    buildpack(
        &builtin.join("alpha"),
        &[
            ("detect", "#!/bin/sh\necho 'no alpha.txt' >&2\nexit 1\n"),
            ("compile", "#!/bin/sh\n"),
        ],
    );
    buildpack(
        &builtin.join("beta"),
        &[
            ("detect", "#!/bin/sh\nexit 1\n"),
            ("compile", "#!/bin/sh\n"),
        ],
    );
    let err = failing(&fx, "none", &src, &[], &builtin).await;
    assert_eq!(err.exit_code(), 222);
    let msg = err.to_string();
    assert!(
        msg.starts_with("no buildpack detected: tried alpha, beta"),
        "{msg}"
    );
    assert!(msg.contains("alpha: no alpha.txt"), "{msg}");

    // compile fails: 223 and its last lines.
    let bp = buildpack(
        &fx.path("bad-compile"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            (
                "compile",
                "#!/bin/sh\necho step one\necho 'gcc: not found' >&2\nexit 7\n",
            ),
        ],
    );
    let err = failing(&fx, "compile", &src, &[&bp], &builtin).await;
    assert_eq!(err.exit_code(), 223);
    let msg = err.to_string();
    assert!(
        msg.starts_with("compile failed: buildpack bad-compile exited with status 7"),
        "{msg}"
    );
    assert!(
        msg.contains("step one") && msg.contains("gcc: not found"),
        "{msg}"
    );

    // finalize fails: 226.
    let bp = buildpack(
        &fx.path("bad-finalize"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("finalize", "#!/bin/sh\nexit 1\n"),
        ],
    );
    assert_eq!(
        failing(&fx, "finalize", &src, &[&bp], &builtin)
            .await
            .exit_code(),
        226
    );

    // supply fails: 225.
    let bp = buildpack(
        &fx.path("bad-supply"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("supply", "#!/bin/sh\nexit 3\n"),
        ],
    );
    let last = buildpack(
        &fx.path("ok-last"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("compile", "#!/bin/sh\n"),
        ],
    );
    assert_eq!(
        failing(&fx, "supply", &src, &[&bp, &last], &builtin)
            .await
            .exit_code(),
        225
    );

    // release prints invalid YAML: 224, with what it printed.
    let bp = buildpack(
        &fx.path("bad-release"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("compile", "#!/bin/sh\n"),
            (
                "release",
                "#!/bin/sh\necho 'default_process_types: [web: '\n",
            ),
        ],
    );
    let err = failing(&fx, "release", &src, &[&bp], &builtin).await;
    assert_eq!(err.exit_code(), 224);
    assert!(
        err.to_string()
            .contains("bad-release printed invalid release YAML"),
        "{err}"
    );
    assert!(
        err.to_string().contains("default_process_types: [web:"),
        "{err}"
    );
}

#[tokio::test]
async fn buildpack_author_mistakes_are_refused_before_anything_runs() {
    let fx = Fixture::new(46).await;
    let src = app(&fx.path("app"), &[("x", "1")]);
    let builtin = fx.path("builtin");
    std::fs::create_dir_all(&builtin).unwrap();

    let bp = buildpack(&fx.path("no-detect"), &[("compile", "#!/bin/sh\n")]);
    let err = failing(&fx, "nodetect", &src, &[&bp], &builtin).await;
    assert!(
        err.to_string()
            .contains("buildpack no-detect: has no bin/detect"),
        "{err}"
    );

    let bp = buildpack(
        &fx.path("noexec"),
        &[("detect", "#!/bin/sh\n"), ("compile", "#!/bin/sh\n")],
    );
    std::fs::set_permissions(
        bp.join("bin/detect"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = failing(&fx, "noexec", &src, &[&bp], &builtin).await;
    assert!(
        err.to_string()
            .contains("bin/detect is not executable (chmod +x bin/detect)"),
        "{err}"
    );

    let bp = buildpack(
        &fx.path("cnb-no-toml"),
        &[("detect", "#!/bin/sh\n"), ("build", "#!/bin/sh\n")],
    );
    let err = failing(&fx, "notoml", &src, &[&bp], &builtin).await;
    assert!(
        err.to_string()
            .contains("has bin/build but no buildpack.toml"),
        "{err}"
    );

    let bp = buildpack(
        &fx.path("only-compile"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("compile", "#!/bin/sh\n"),
        ],
    );
    let last = buildpack(
        &fx.path("last"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("compile", "#!/bin/sh\n"),
        ],
    );
    let err = failing(&fx, "order", &src, &[&bp, &last], &builtin).await;
    assert!(
        err.to_string()
            .contains("has no bin/supply, so it can only be the last buildpack"),
        "{err}"
    );

    let mut req = fx.request("unknown", &src);
    req.buildpacks = vec!["no-such-buildpack".into()];
    let err = fx
        .stage(&builtin, req)
        .await
        .0
        .expect_err("unknown buildpack");
    assert!(
        err.to_string()
            .starts_with("unknown buildpack `no-such-buildpack`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_staging_past_its_time_limit_is_stopped_and_says_so() {
    let fx = Fixture::new(47).await;
    let src = app(&fx.path("app"), &[("x", "1")]);
    let bp = buildpack(
        &fx.path("sleepy"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("compile", "#!/bin/sh\necho working\nsleep 60\n"),
        ],
    );
    let mut req = fx.request("slow", &src);
    req.buildpacks = vec![bp.display().to_string()];
    req.limits.timeout = Duration::from_secs(3);
    let err = fx
        .stage(&fx.path("none"), req)
        .await
        .0
        .expect_err("times out");
    let msg = err.to_string();
    assert!(
        msg.starts_with("staging timed out after 3 s in compile of buildpack sleepy"),
        "{msg}"
    );
    assert!(msg.contains("working"), "{msg}");
    assert_eq!(err.exit_code(), 223);
    assert!(fx.backend.list(&BTreeMap::new()).is_empty());
}

#[tokio::test]
async fn hostile_apps_stage_nothing_outside_the_sandbox() {
    let fx = Fixture::new(48).await;
    let builtin = fx.path("none");
    let bp = buildpack(
        &fx.path("reader"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            (
                "compile",
                "#!/bin/sh\ncat \"$1/passwd-link\" > \"$1/seen\" 2>&1; true\n",
            ),
        ],
    );

    // A tar with a `..` entry.
    let tar_path = fx.path("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let name = b"../../escaped-by-tar";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, &b"evil"[..]).unwrap();
        b.finish().unwrap();
    }
    let err = failing(&fx, "eviltar", &tar_path, &[&bp], &builtin).await;
    assert!(
        err.to_string()
            .starts_with("invalid app: refusing tar entry `../../escaped-by-tar`"),
        "{err}"
    );
    assert!(!Path::new("/escaped-by-tar").exists() && !Path::new("/home/escaped-by-tar").exists());

    // A zip with a `..` entry.
    let zip_path = fx.path("evil.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    w.start_file(
        "../escaped-by-zip",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    w.write_all(b"evil").unwrap();
    w.finish().unwrap();
    let err = failing(&fx, "evilzip", &zip_path, &[&bp], &builtin).await;
    assert!(
        err.to_string()
            .contains("`../escaped-by-zip` points outside"),
        "{err}"
    );
    assert!(!fx.dir.path().join("escaped-by-zip").exists());

    // A symlink to a host path is refused by name: app links must stay inside the app.
    let src = app(&fx.path("app"), &[("x", "1")]);
    std::os::unix::fs::symlink("/etc/passwd", src.join("passwd-link")).unwrap();
    let err = failing(&fx, "links", &src, &[&bp], &builtin).await;
    assert!(
        err.to_string().starts_with(
            "invalid app: refusing tar entry `passwd-link`: symlink target is absolute"
        ),
        "{err}"
    );
    std::fs::remove_file(src.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/passwd", src.join("passwd-link")).unwrap();
    let err = failing(&fx, "links2", &src, &[&bp], &builtin).await;
    assert!(
        err.to_string().contains("refusing tar entry `passwd-link`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_buildpack_over_the_staging_memory_limit_is_named_with_the_limit() {
    let fx = Fixture::new(49).await;
    let src = app(&fx.path("app"), &[("x", "1")]);
    let bp = buildpack(
        &fx.path("hungry"),
        &[
            ("detect", "#!/bin/sh\necho x\n"),
            ("compile", "#!/bin/sh\nset -e\necho allocating\nhead -c 300000000 /dev/zero | tr '\\0' a | sort > /dev/null\n"),
        ],
    );
    let mut req = fx.request("oom", &src);
    req.buildpacks = vec![bp.display().to_string()];
    req.limits.memory_bytes = 64 << 20;
    let err = fx
        .stage(&fx.path("none"), req)
        .await
        .0
        .expect_err("runs out of memory");
    let msg = err.to_string();
    assert!(
        msg.starts_with("compile of buildpack hungry ran out of memory: staging may use 64 MiB"),
        "{msg}"
    );
    assert!(fx.backend.list(&BTreeMap::new()).is_empty());
}

#[tokio::test]
async fn background_processes_and_endless_lines_neither_hang_staging_nor_flood_the_log() {
    let fx = Fixture::new(55).await;
    let src = app(&fx.path("app"), &[("x", "1")]);
    let bp = buildpack(
        &fx.path("noisy"),
        &[
            ("detect", "#!/bin/sh\necho noisy\n"),
            (
                "compile",
                "#!/bin/sh\n(sleep 120; echo late) &\nhead -c 3000000 /dev/zero | tr '\\0' x\necho\necho done\n",
            ),
        ],
    );
    let mut req = fx.request("noisy", &src);
    req.buildpacks = vec![bp.display().to_string()];
    // Were the background sleep waited for, the time limit would fail the staging.
    req.limits.timeout = Duration::from_secs(60);
    let (result, lines) = fx.stage(&fx.path("none"), req).await;
    result.unwrap_or_else(|e| panic!("staging failed: {e}"));
    assert!(
        lines.iter().all(|l| l.text.len() <= 8192),
        "lines are cut at 8 KiB"
    );
    assert!(lines.iter().any(|l| l.text == "done"));
    assert!(
        lines
            .iter()
            .any(|l| l.text.contains("left processes running in the background")),
        "{:?}",
        lines
            .iter()
            .map(|l| &l.text[..l.text.len().min(80)])
            .collect::<Vec<_>>()
    );
    assert!(!lines.iter().any(|l| l.text == "late"));
}

// Multi-threaded: the background destroy must be able to finish while the fixture's drop
// waits for the data dir's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_staging_destroys_its_container() {
    let fx = Fixture::new(56).await;
    let src = app(&fx.path("app"), &[("x", "1")]);
    let bp = buildpack(
        &fx.path("slow"),
        &[
            ("detect", "#!/bin/sh\necho slow\n"),
            ("compile", "#!/bin/sh\nsleep 60\n"),
        ],
    );
    let mut req = fx.request("abandoned", &src);
    req.buildpacks = vec![bp.display().to_string()];
    let stager = fx.stager(&fx.path("none"));
    let staging = stager.stage(req, kiln_stager::log::discard());
    assert!(
        tokio::time::timeout(Duration::from_secs(3), staging)
            .await
            .is_err(),
        "still compiling"
    );
    let mut left = fx.backend.list(&BTreeMap::new());
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = fx.backend.list(&BTreeMap::new());
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}
