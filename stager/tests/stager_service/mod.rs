//! The staging service's test fixture: a real `nats-server`, the `kiln-stager` binary on a
//! test index of its own, a fake controller (axum) playing the internal endpoints (packages,
//! files, droplet and cache uploads), and the test's view of the bus. Used by `service.rs`
//! and `service_dockerfile.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use kiln_bus::{StagingAccepted, StagingLogLine, StagingOutcome, StagingRequest, StagingResult};
use kiln_containers::{Backend, Config, Recovery};

/// The internal credential the stagers send and the fake controller wants.
pub const TOKEN: &str = "internal-token-of-the-test";

/// One body PUT to the fake controller: (content type, body).
pub type Upload = (String, Vec<u8>);

/// The fake controller: `/packages/x` (and `/packages/slow`, 2 s late) serve its package,
/// `/files/<name>` whatever the test put in `files`; `uploads` is what it was given:
/// `droplet/<name>` and `cache/<name>` → (content type, body).
#[derive(Clone, Default)]
pub struct Controller {
    package: Arc<Vec<u8>>,
    /// Served at `/files/<name>` (other packages, image archives).
    pub files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    /// What was PUT.
    pub uploads: Arc<Mutex<BTreeMap<String, Upload>>>,
}

async fn get_file(
    State(c): State<Controller>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Vec<u8>, StatusCode> {
    if !authorized(&headers, TOKEN) {
        return Err(StatusCode::FORBIDDEN);
    }
    let files = c.files.lock().unwrap();
    files.get(&name).cloned().ok_or(StatusCode::NOT_FOUND)
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {token}"))
}

async fn get_package(
    State(c): State<Controller>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Vec<u8>, StatusCode> {
    if !authorized(&headers, TOKEN) {
        return Err(StatusCode::FORBIDDEN);
    }
    match name.as_str() {
        "x" => Ok(c.package.to_vec()),
        // Slow enough that the staging is surely running when the stager is told to stop.
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(c.package.to_vec())
        }
        _ => Err(StatusCode::NOT_FOUND),
    }
}

/// A package server that wants another credential than the stager's.
async fn get_locked(headers: HeaderMap) -> Result<Vec<u8>, StatusCode> {
    if !authorized(&headers, "someone-elses-token") {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(Vec::new())
}

async fn get_cache(
    State(c): State<Controller>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Vec<u8>, StatusCode> {
    if !authorized(&headers, TOKEN) {
        return Err(StatusCode::FORBIDDEN);
    }
    let uploads = c.uploads.lock().unwrap();
    match uploads.get(&format!("cache/{name}")) {
        Some((_, body)) => Ok(body.clone()),
        None => Err(StatusCode::NOT_FOUND),
    }
}

async fn put_blob(
    kind: &str,
    c: Controller,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    if !authorized(&headers, TOKEN) {
        return StatusCode::FORBIDDEN;
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    c.uploads
        .lock()
        .unwrap()
        .insert(format!("{kind}/{name}"), (content_type, body.to_vec()));
    StatusCode::CREATED
}

/// Starts the fake controller on a free port of 127.0.0.1, serving `package`.
pub async fn start_controller(package: Vec<u8>) -> (SocketAddr, Controller) {
    let controller = Controller {
        package: Arc::new(package),
        ..Controller::default()
    };
    let app = Router::new()
        .route("/packages/{name}", get(get_package))
        .route("/locked/packages/{name}", get(get_locked))
        .route("/files/{name}", get(get_file))
        .route(
            "/droplets/{name}",
            axum::routing::put(
                |State(c): State<Controller>,
                 UrlPath(n): UrlPath<String>,
                 h: HeaderMap,
                 b: Bytes| { put_blob("droplet", c, n, h, b) },
            ),
        )
        .route(
            "/caches/{name}",
            get(get_cache).put(
                |State(c): State<Controller>,
                 UrlPath(n): UrlPath<String>,
                 h: HeaderMap,
                 b: Bytes| { put_blob("cache", c, n, h, b) },
            ),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(controller.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake controller");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, controller)
}

/// A zip of a static site.
pub fn staticfile_zip() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("index.html", zip::write::SimpleFileOptions::default())
        .expect("zip entry");
    zip.write_all(b"<h1>hello from the stager service</h1>\n")
        .expect("zip body");
    zip.finish().expect("zip").into_inner()
}

/// The backend config the stager of test index `index` is started with (also what the test
/// cleans up with): address pool `10.244.<index>.0/26`, ports `40000 + 20 index` (20), uid
/// range start `(1<<28) + index * (16<<16)`.
pub fn backend_config(dir: &Path, index: u8) -> Config {
    Config {
        data_dir: dir.join("data"),
        stacks_dir: dir.join("stacks"),
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: 40000 + 20 * u16::from(index),
        port_range_size: 20,
        uid_range_start: (1 << 28) + u32::from(index) * (16 << 16),
        max_containers: 2,
        recovery: Recovery::Destroy,
        ..Config::default()
    }
}

/// The `kiln-stager` binary; killed by pid if still running when dropped, then its backend's
/// data dir cleaned. Its log is printed when the test fails.
pub struct StagerProcess {
    /// Its id on the bus: `stager-test-<index>`.
    pub id: String,
    child: Child,
    config: Config,
    log: PathBuf,
}

impl StagerProcess {
    /// Starts the stager with the backend config of test index `index` in `dir` and `extra`
    /// flags; `name` names its log file.
    pub fn start(index: u8, dir: &Path, nats: &str, name: &str, extra: &[&OsStr]) -> StagerProcess {
        let config = backend_config(dir, index);
        let id = format!("stager-test-{index}");
        let token = dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kiln-stager"))
            .args(["--nats", nats, "--id", &id, "--stacks", "tiny"])
            .arg("--data-dir")
            .arg(&config.data_dir)
            .arg("--stacks-dir")
            .arg(&config.stacks_dir)
            .arg("--internal-token-file")
            .arg(&token)
            .args(["--max-stagings", "2"])
            .args(["--network-pool", &config.network_pool])
            .args(["--port-range-start", &config.port_range_start.to_string()])
            .args(["--port-range-size", &config.port_range_size.to_string()])
            .args(["--uid-range-start", &config.uid_range_start.to_string()])
            .args(extra)
            .env("TMPDIR", &work)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("stager log"))
            .spawn()
            .expect("start kiln-stager");
        StagerProcess {
            id,
            child,
            config,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill has no memory preconditions; the pid is our child's, not yet reaped.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "signalling the stager");
    }

    /// Waits for the stager to exit; its exit status.
    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the stager") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the stager did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for StagerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KILN_SHOW_STAGER_LOG").is_some() {
            eprintln!("--- kiln-stager log ---\n{}", self.log());
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.config.data_dir.exists() {
            // Tried again for a while (a mount still busy, the stager's last child exiting);
            // what is left in the end fails the test, unless it is failing already.
            let deadline = Instant::now() + Duration::from_secs(30);
            let cleaned = loop {
                match Backend::destroy_all(&self.config) {
                    Err(e) if Instant::now() < deadline => {
                        eprintln!(
                            "cleaning up {} failed, trying again: {e}",
                            self.config.data_dir.display()
                        );
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    result => break result,
                }
            };
            if let Err(e) = cleaned {
                let message = format!(
                    "LEAK: cleaning up {} failed, it is left on the machine: {e}",
                    self.config.data_dir.display()
                );
                eprintln!("{message}");
                if !std::thread::panicking() {
                    panic!("{message}");
                }
            }
        }
    }
}

/// Every message of the test's one subscription to `kiln.>`, in the order the bus delivered
/// them.
pub struct Bus {
    client: async_nats::Client,
    /// The subscription.
    pub messages: async_nats::Subscriber,
    /// (subject, body) of every message taken from it so far.
    pub seen: Vec<(String, String)>,
}

impl Bus {
    pub async fn connect(url: &str) -> Bus {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let messages = client.subscribe("kiln.>").await.expect("subscribe");
        kiln_bus::round_trip(&client, kiln_bus::ROUND_TRIP_TIMEOUT)
            .await
            .expect("subscribed");
        Bus {
            client,
            messages,
            seen: Vec::new(),
        }
    }

    pub async fn publish(&self, request: &StagingRequest) {
        self.client
            .publish(kiln_bus::STAGING_REQUEST, kiln_bus::encode(request).into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// The next message on `subject` for which `pick` says something, within `within`.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        stager: &StagerProcess,
        mut pick: impl FnMut(&str, &[u8]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.messages.next()).await;
            let Ok(Some(message)) = next else {
                panic!(
                    "waited {within:?} for {what}; the bus carried:\n{}\n--- stager log ---\n{}",
                    self.seen
                        .iter()
                        .map(|(s, b)| format!("{s} {b}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    stager.log()
                );
            };
            let subject = message.subject.to_string();
            self.seen.push((
                subject.clone(),
                String::from_utf8_lossy(&message.payload).into_owned(),
            ));
            if let Some(found) = pick(&subject, &message.payload) {
                return found;
            }
        }
    }

    /// The result of `build`.
    pub async fn result(&mut self, build: &str, stager: &StagerProcess) -> StagingOutcome {
        self.wait_for(
            &format!("the result of {build}"),
            Duration::from_secs(120),
            stager,
            |subject, body| {
                (subject == kiln_bus::STAGING_RESULT)
                    .then(|| kiln_bus::decode::<StagingResult>(subject, body).expect("a result"))
                    .filter(|r| r.build_guid == build)
                    .map(|r| {
                        assert_eq!(r.stager_id, stager.id);
                        r.outcome
                    })
            },
        )
        .await
    }

    pub fn accepted(&self, build: &str) -> bool {
        self.seen.iter().any(|(s, b)| {
            s == kiln_bus::STAGING_ACCEPTED
                && serde_json::from_str::<StagingAccepted>(b).is_ok_and(|a| a.build_guid == build)
        })
    }

    pub fn log_lines(&self, build: &str) -> Vec<StagingLogLine> {
        let subject = kiln_bus::staging_log(build);
        self.seen
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, b)| serde_json::from_str(b).expect("a log line"))
            .collect()
    }
}

/// A request for `build` of app `app-of-<build>` with the package at `<base><package>`.
pub fn request(build: &str, stack: &str, base: &str, package: &str) -> StagingRequest {
    StagingRequest {
        build_guid: build.into(),
        app_guid: format!("app-of-{build}"),
        stack: stack.into(),
        buildpacks: vec![],
        buildpack_refs: vec![],
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        package_url: format!("{base}{package}"),
        droplet_upload_url: format!("{base}/droplets/{build}"),
        cache_download_url: Some(format!("{base}/caches/app")),
        cache_upload_url: format!("{base}/caches/app"),
        memory_mb: 256,
        disk_mb: 512,
        timeout_secs: 120,
        start_command: None,
        egress: vec![],
        stack_image: None,
        images: vec![],
    }
}

/// The reason and exit code of a failed outcome.
pub fn failed(outcome: StagingOutcome) -> (String, i32) {
    match outcome {
        StagingOutcome::Failed { reason, exit_code } => (reason, exit_code),
        StagingOutcome::Staged(s) => panic!("staged, but it should have failed: {s:?}"),
    }
}

/// Mount points below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Whether the droplet `.tgz` holds `name`.
pub fn droplet_has(droplet: &[u8], name: &str) -> bool {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(droplet));
    tar.entries().expect("droplet is a tgz").any(|e| {
        e.ok()
            .and_then(|e| e.path().ok().map(|p| p.display().to_string()))
            .is_some_and(|p| p == name)
    })
}

/// After the stager exited: no container, no machine resource of its backend, no mount under
/// the test's dir, no build or staging temp dir.
pub async fn assert_nothing_left(dir: &Path, index: u8) {
    let audit = Backend::new(Config {
        recovery: Recovery::Adopt,
        ..backend_config(dir, index)
    })
    .await
    .expect("open the stager's backend");
    assert_eq!(audit.list(&BTreeMap::new()), Vec::<String>::new());
    assert_eq!(audit.resources_on_machine(), Vec::<String>::new());
    drop(audit);
    Backend::destroy_all(&backend_config(dir, index)).expect("unmount");
    assert_eq!(mounts_under(dir), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(dir.join("work"))
        .expect("work dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}
