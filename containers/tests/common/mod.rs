//! Shared set-up of the integration tests: a real backend on runc per test, with its own data
//! dir, address pool, port range and uid range, destroyed with everything it made on drop.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_containers::{Backend, Config, ContainerSpec, Limits, ProcessExit, ProcessSpec, Recovery};
use tokio::io::AsyncReadExt;

/// The tiny stack's OCI layout, built once per test binary.
pub fn tiny_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tiny-{}", std::process::id()));
        kiln_rootfs::recipes::build_tiny(&dir).expect("build the tiny stack");
        dir
    })
}

pub fn stacks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stacks")
}

/// A backend of its own for test number `index` (unique per test in the whole suite).
pub struct TestBackend {
    /// Dropped before the clean-up, which needs the data dir's lock.
    pub backend: std::mem::ManuallyDrop<Backend>,
    pub config: Config,
    _dir: tempfile::TempDir,
}

pub fn config_for(index: u8, data_dir: &Path) -> Config {
    assert!(
        unsafe_is_root(),
        "the container integration tests need root (runc, mounts, namespaces, iptables)"
    );
    Config {
        data_dir: data_dir.to_path_buf(),
        stacks_dir: stacks_dir(),
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: 40000 + u16::from(index) * 20,
        port_range_size: 20,
        uid_range_start: (1 << 28) + u32::from(index) * (16 << 16),
        store_size_bytes: 2 << 30,
        max_containers: 16,
        recovery: Recovery::Destroy,
        ..Config::default()
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl TestBackend {
    pub async fn new(index: u8) -> TestBackend {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config_for(index, &dir.path().join("data"));
        let backend = Backend::new(config.clone()).await.expect("backend starts");
        backend
            .import_stack(tiny_layout(), "tiny")
            .await
            .expect("import tiny");
        TestBackend {
            backend: std::mem::ManuallyDrop::new(backend),
            config,
            _dir: dir,
        }
    }

    /// A container on the tiny stack with default limits.
    pub async fn container(&self, handle: &str) -> kiln_containers::ContainerInfo {
        self.backend
            .create(spec(handle))
            .await
            .unwrap_or_else(|e| panic!("create {handle}: {e}"))
    }

    /// Runs `sh -c script` as `user` and returns (exit, stdout, stderr).
    pub async fn sh(
        &self,
        handle: &str,
        user: &str,
        script: &str,
    ) -> (ProcessExit, String, String) {
        run(
            &self.backend,
            handle,
            ProcessSpec::new("/bin/sh", &["-c", script]).user(user),
        )
        .await
    }
}

pub async fn run(
    backend: &Backend,
    handle: &str,
    spec: ProcessSpec,
) -> (ProcessExit, String, String) {
    let mut p = backend.run(handle, spec).await.expect("run");
    let mut out = p.take_stdout().expect("stdout");
    let mut err = p.take_stderr().expect("stderr");
    let (mut o, mut e) = (String::new(), String::new());
    let (r1, r2) = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
    r1.expect("read stdout");
    r2.expect("read stderr");
    let exit = p.wait().await.expect("wait");
    (exit, o, e)
}

pub fn spec(handle: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.to_string(),
        stack: "tiny".to_string(),
        limits: Limits::default(),
        ..ContainerSpec::default()
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        // SAFETY: `backend` is not used after this; drop runs once.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.backend) };
        if let Err(e) = Backend::destroy_all(&self.config) {
            eprintln!("cleaning up {}: {e}", self.config.data_dir.display());
        }
    }
}

/// The address of the host's first non-loopback IPv4 interface, if any.
pub fn host_address() -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let cidr = l.split_whitespace().nth(3)?;
        if l.contains(" kl") {
            return None;
        }
        cidr.split('/').next()?.parse().ok()
    })
}
