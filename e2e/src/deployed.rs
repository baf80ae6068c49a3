//! What the tests of the deploy scripts (`deploy/up`, `deploy/cluster`) share: where the
//! repository and the platform's binaries are, and what a process of theirs is.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binaries the deploy scripts start, and the CLI.
pub const BINARIES: [&str; 5] = [
    "kiln-cc",
    "kiln-stager",
    "kiln-executor",
    "kiln-router",
    "kiln",
];

/// The workspace's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Where the platform's binaries are: `KILN_BIN_DIR`, else the target dir of the running test
/// (`target/<profile>/deps/<test>-<hash>`), where they are built if missing.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the target dir")
        .to_path_buf();
    if BINARIES.iter().any(|b| !dir.join(b).exists()) {
        let mut build = Command::new(env!("CARGO"));
        build.current_dir(repo()).args([
            "build",
            "-p",
            "kiln-cloud-controller",
            "-p",
            "kiln-stager",
            "-p",
            "kiln-executor",
            "-p",
            "kiln-router",
            "-p",
            "kiln-cli",
        ]);
        if dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build of the platform's binaries");
    }
    dir
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The command name of process `pid` (empty when it is gone).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}
