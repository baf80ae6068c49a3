//! Shared set-up of the staging integration tests: a real container backend per test (its own
//! data dir, address pool, port range and uid range, indexes 40-59 of the suite), the tiny
//! stack, buildpacks written by the test, and running a droplet to see what it does.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use kiln_containers::{Backend, Config, ContainerSpec, ProcessSpec, Recovery};
use kiln_stager::{LogLine, LogSink, Stager, StagingError, StagingRequest, StagingResult};
use tokio::io::AsyncReadExt;

/// The tiny stack's OCI layout, built once per test binary.
pub fn tiny_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("stager-tiny-{}", std::process::id()));
        kiln_rootfs::recipes::build_tiny(&dir).expect("build the tiny stack");
        dir
    })
}

/// The repository's built-in buildpacks.
pub fn builtin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks")
}

/// A real backend for test number `index` (40..=59), destroyed with what it made on drop.
pub struct Fixture {
    pub backend: std::mem::ManuallyDrop<Backend>,
    pub config: Config,
    /// Removed on drop, unless the clean-up failed: removing it would delete through whatever
    /// is still mounted in it.
    pub dir: std::mem::ManuallyDrop<tempfile::TempDir>,
}

impl Fixture {
    pub async fn new(index: u8) -> Fixture {
        assert!(
            (40..60).contains(&index) || (80..=89).contains(&index),
            "stager tests use indexes 40-59 and 80-89"
        );
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "the staging tests need root (runc, mounts, iptables)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data_dir: dir.path().join("data"),
            stacks_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stacks"),
            network_pool: format!("10.244.{index}.0/26"),
            port_range_start: 40000 + u16::from(index) * 20,
            port_range_size: 20,
            uid_range_start: (1 << 28) + u32::from(index) * (16 << 16),
            store_size_bytes: 4 << 30,
            max_containers: 8,
            recovery: Recovery::Destroy,
            ..Config::default()
        };
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
        // Made before anything else can panic, so that its drop cleans up.
        let fixture = Fixture {
            backend: std::mem::ManuallyDrop::new(backend),
            config,
            dir: std::mem::ManuallyDrop::new(dir),
        };
        fixture
            .backend
            .import_stack(tiny_layout(), "tiny")
            .await
            .expect("import tiny");
        fixture
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn stager(&self, builtin: &Path) -> Stager<'_> {
        Stager::new(&self.backend, builtin)
    }

    /// A staging request for `app` on tiny writing `<name>.tgz` in the fixture's dir.
    pub fn request(&self, name: &str, app: &Path) -> StagingRequest {
        StagingRequest::new(name, app, "tiny", self.path(&format!("{name}.tgz")))
    }

    /// Stages `request`, returning the result and every log line the sink saw.
    pub async fn stage(
        &self,
        builtin: &Path,
        request: StagingRequest,
    ) -> (Result<StagingResult, StagingError>, Vec<LogLine>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = lines.clone();
        let sink: LogSink = Arc::new(move |l: &LogLine| seen.lock().unwrap().push(l.clone()));
        let result = self.stager(builtin).stage(request, sink).await;
        let lines = lines.lock().unwrap().clone();
        (result, lines)
    }

    /// A container `<prefix>-<droplet name>` on `stack` with `droplet` in `/home/vcap`, and
    /// with `forward`, a host port forwarded to 8080: (handle, host port or 0).
    async fn droplet_container(
        &self,
        prefix: &str,
        stack: &str,
        droplet: &Path,
        forward: bool,
    ) -> (String, u16) {
        let name = droplet
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('.', "-");
        let handle = format!("{prefix}-{name}");
        let net_in = forward.then_some(kiln_containers::NetIn {
            host_port: None,
            container_port: 8080,
        });
        let info = self
            .backend
            .create(ContainerSpec {
                handle: handle.clone(),
                stack: stack.to_string(),
                net_in: net_in.into_iter().collect(),
                ..ContainerSpec::default()
            })
            .await
            .expect("create the droplet's container");
        let tgz = fs::File::open(droplet).expect("open droplet");
        self.backend
            .stream_in_with(
                &handle,
                "/home/vcap",
                droplet_options(),
                flate2::read::GzDecoder::new(tgz),
            )
            .await
            .expect("droplet in");
        (handle, info.mapped_ports.first().map_or(0, |m| m.host_port))
    }

    /// Unpacks `droplet` into a fresh container on `stack` and runs `command` through the
    /// launcher; returns (exit code, stdout, stderr). The container is destroyed afterwards.
    pub async fn run_droplet(
        &self,
        stack: &str,
        droplet: &Path,
        command: &str,
    ) -> (i32, String, String) {
        let (handle, _) = self.droplet_container("run", stack, droplet, false).await;
        let args = kiln_droplet::launcher_args(command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut spec = ProcessSpec::new("/bin/sh", &args).user("vcap");
        spec.env = vec![
            "PORT=8080".into(),
            "HOME=/home/vcap/app".into(),
            "DEPS_DIR=/home/vcap/deps".into(),
        ];
        spec.timeout = Some(std::time::Duration::from_secs(60));
        let mut p = self.backend.run(&handle, spec).await.expect("run");
        let mut out = p.take_stdout().unwrap();
        let mut err = p.take_stderr().unwrap();
        let (mut o, mut e) = (String::new(), String::new());
        let _ = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
        let exit = p.wait().await.expect("wait");
        self.backend
            .destroy(&handle)
            .await
            .expect("destroy the run container");
        (exit.code, o, e)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: `backend` is not used after this; drop runs once.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.backend) };
        // SAFETY: `dir` is not used after this; drop runs once.
        let dir = unsafe { std::mem::ManuallyDrop::take(&mut self.dir) };
        if let Err(e) = clean_up(&self.config) {
            let kept = dir.keep();
            fail_clean_up(&self.config, &format!("(dir kept: {kept:?})"), e);
        }
    }
}

/// `Backend::destroy_all`, tried again for a while if it fails (a task the test started, an
/// abandoned staging's destroy, may still hold a handle on the backend and with it the data
/// dir's lock; a mount may still be busy): on `Err`, things are left on the machine.
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

/// How droplets are copied in: the platform made them, absolute links included.
fn droplet_options() -> kiln_containers::StreamInOptions<'static> {
    kiln_containers::StreamInOptions {
        user: Some("vcap"),
        absolute_links: true,
    }
}

/// Writes a buildpack at `dir` with `bin/<script>` files (mode 0755) and other files.
pub fn buildpack(dir: &Path, scripts: &[(&str, &str)]) -> PathBuf {
    for (name, body) in scripts {
        let path = if name.contains('.') || name.contains('/') {
            dir.join(name)
        } else {
            dir.join("bin").join(name)
        };
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, body).unwrap();
        let mode = if path.starts_with(dir.join("bin")) {
            0o755
        } else {
            0o644
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    dir.to_path_buf()
}

/// Writes an app at `dir` with the given files.
pub fn app(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for (name, body) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, body).unwrap();
    }
    dir.to_path_buf()
}

/// The entry names of a droplet.
pub fn droplet_entries(droplet: &Path) -> Vec<String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(droplet).unwrap(),
    ));
    tar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// The content of one file of a droplet.
pub fn droplet_file(droplet: &Path, name: &str) -> Option<String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
        fs::File::open(droplet).unwrap(),
    ));
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().display().to_string() == name {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            return Some(s);
        }
    }
    None
}

impl Fixture {
    /// Imports stack `name` from the machine's stack cache (built there the first time).
    pub async fn import(&self, name: &str) {
        let n = name.to_string();
        let layout = tokio::task::spawn_blocking(move || kiln_rootfs::recipes::cached(&n))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("building stack {name}: {e}"));
        self.backend
            .import_stack(&layout.dir, name)
            .await
            .expect("import the stack");
    }

    /// Runs the droplet's `command` in a container with a forwarded port, GETs `/` until it
    /// answers (30 s at most), stops it, and returns (status line, body, app output).
    pub async fn http_get_droplet(
        &self,
        stack: &str,
        droplet: &Path,
        command: &str,
    ) -> (String, String, String) {
        let (handle, port) = self.droplet_container("serve", stack, droplet, true).await;
        let args = kiln_droplet::launcher_args(command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut spec = ProcessSpec::new("/bin/sh", &args).user("vcap");
        spec.env = kiln_droplet::instance_env(&kiln_droplet::Instance {
            host_ip: "127.0.0.1".into(),
            host_port: port,
            memory_mib: 256,
            ..Default::default()
        });
        let mut p = self.backend.run(&handle, spec).await.expect("run");
        let mut out = p.take_stdout().unwrap();
        let mut err = p.take_stderr().unwrap();
        let output = tokio::spawn(async move {
            let (mut o, mut e) = (String::new(), String::new());
            let _ = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
            o + &e
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut answer = None;
        while std::time::Instant::now() < deadline {
            if let Some(a) = http_get(port).await {
                answer = Some(a);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = p.signal(libc::SIGKILL).await;
        let _ = p.wait().await;
        self.backend
            .destroy(&handle)
            .await
            .expect("destroy the app container");
        let output = output.await.unwrap_or_default();
        let (status, body) = answer.unwrap_or_else(|| {
            panic!("the app never answered on port {port}; its output:\n{output}")
        });
        (status, body, output)
    }
}

/// GET / on 127.0.0.1:port over HTTP/1.0: (status line, body), None if nothing answers.
pub async fn http_get(port: u16) -> Option<(String, String)> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}
