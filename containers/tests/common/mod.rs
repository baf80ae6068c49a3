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
    /// Whether `backend` is dropped already (a failed `reopen`).
    dropped: bool,
    /// `None` once kept because the clean-up failed.
    dir: Option<tempfile::TempDir>,
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
        let backend = match Backend::new(config.clone()).await {
            Ok(backend) => backend,
            Err(e) => {
                // It may have mounted its store before failing.
                if let Err(c) = clean_up(&config) {
                    let kept = dir.keep();
                    fail_clean_up(&config, &format!("(dir kept: {kept:?})"), c);
                }
                panic!("backend starts: {e}");
            }
        };
        // Made before anything else can fail, so that its drop cleans up.
        let t = TestBackend {
            backend: std::mem::ManuallyDrop::new(backend),
            config,
            dropped: false,
            dir: Some(dir),
        };
        t.backend
            .import_stack(tiny_layout(), "tiny")
            .await
            .expect("import tiny");
        t
    }

    /// Drops the backend now (the clean-up still comes on drop). `backend` must not be used
    /// afterwards, until `reopen`.
    pub fn drop_backend(&mut self) {
        if !self.dropped {
            // SAFETY: `dropped` records that it is gone, so it is dropped once; the caller
            // does not use it any more.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.backend) };
            self.dropped = true;
        }
    }

    /// Drops the backend and opens a new one on the same data dir (which recovers what the
    /// first left, per `config.recovery`).
    pub async fn reopen(&mut self) {
        self.drop_backend();
        let backend = Backend::new(self.config.clone())
            .await
            .unwrap_or_else(|e| panic!("reopen the backend: {e}"));
        self.backend = std::mem::ManuallyDrop::new(backend);
        self.dropped = false;
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

/// `Backend::destroy_all`, tried again for a while if it fails (a backend of the test still
/// being dropped by a task, a mount still busy): on `Err`, things are left on the machine.
pub fn clean_up(config: &Config) -> Result<(), kiln_containers::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Backend::destroy_all(config) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!(
                    "cleaning up {} failed, trying again: {e}",
                    config.data_dir.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.drop_backend();
        if let Err(e) = clean_up(&self.config) {
            // Removing the dir would delete through whatever is still mounted in it: keep it.
            let kept = self.dir.take().map(tempfile::TempDir::keep);
            fail_clean_up(&self.config, &format!("(dir kept: {kept:?})"), e);
        }
    }
}

/// Reports a failed clean-up loudly: on stderr, and as a panic that fails the test unless it
/// is failing already (a panic while unwinding would abort the whole test binary).
pub fn fail_clean_up(config: &Config, note: &str, e: kiln_containers::Error) {
    let message = format!(
        "LEAK: cleaning up {} failed, it is left on the machine {note}: {e}",
        config.data_dir.display()
    );
    eprintln!("{message}");
    if !std::thread::panicking() {
        panic!("{message}");
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
