//! The staging service end to end: a real `nats-server`, the `kiln-stager` binary, a fake
//! controller (axum) playing the internal endpoints (package, droplet and cache), real
//! containers on the tiny stack. Test index 58: address pool 10.244.58.0/26, ports
//! 41160-41179, uid range start (1<<28) + 58 * (16<<16).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
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
use kiln_bus::{
    StagerAdvertise, StagingAccepted, StagingLogLine, StagingOutcome, StagingRequest, StagingResult,
};
use kiln_containers::{Backend, Config, Recovery};
use kiln_testkit::Nats;
use sha2::{Digest, Sha256};

const INDEX: u8 = 58;
const STAGER_ID: &str = "stager-test-58";
const TOKEN: &str = "internal-token-of-the-test";

/// One body PUT to the fake controller: (content type, body).
type Upload = (String, Vec<u8>);

/// What the fake controller was given: `droplet/<name>` and `cache/<name>` → (content type,
/// body).
#[derive(Clone, Default)]
struct Controller {
    package: Arc<Vec<u8>>,
    uploads: Arc<Mutex<BTreeMap<String, Upload>>>,
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

async fn start_controller(package: Vec<u8>) -> (SocketAddr, Controller) {
    let controller = Controller {
        package: Arc::new(package),
        ..Controller::default()
    };
    let app = Router::new()
        .route("/packages/{name}", get(get_package))
        .route("/locked/packages/{name}", get(get_locked))
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
fn staticfile_zip() -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("index.html", zip::write::SimpleFileOptions::default())
        .expect("zip entry");
    zip.write_all(b"<h1>hello from the stager service</h1>\n")
        .expect("zip body");
    zip.finish().expect("zip").into_inner()
}

/// The backend config the stager is started with (also what the test cleans up with).
fn backend_config(dir: &Path) -> Config {
    Config {
        data_dir: dir.join("data"),
        stacks_dir: dir.join("stacks"),
        network_pool: format!("10.244.{INDEX}.0/26"),
        port_range_start: 41160,
        port_range_size: 20,
        uid_range_start: (1 << 28) + u32::from(INDEX) * (16 << 16),
        max_containers: 2,
        recovery: Recovery::Destroy,
        ..Config::default()
    }
}

/// The `kiln-stager` binary; killed by pid if still running when dropped, then its backend's
/// data dir cleaned. Its log is printed when the test fails.
struct StagerProcess {
    child: Child,
    config: Config,
    log: PathBuf,
}

impl StagerProcess {
    /// Starts the stager with the test's backend config and `extra` flags; `name` names its
    /// log file.
    fn start(dir: &Path, nats: &str, name: &str, extra: &[&OsStr]) -> StagerProcess {
        let config = backend_config(dir);
        let token = dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kiln-stager"))
            .args(["--nats", nats, "--id", STAGER_ID, "--stacks", "tiny"])
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
        StagerProcess { child, config, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill has no memory preconditions; the pid is our child's, not yet reaped.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "signalling the stager");
    }

    /// Waits for the stager to exit; its exit status.
    async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
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
struct Bus {
    client: async_nats::Client,
    messages: async_nats::Subscriber,
    seen: Vec<(String, String)>,
}

impl Bus {
    async fn connect(url: &str) -> Bus {
        let client = async_nats::connect(url).await.expect("connect to nats");
        let messages = client.subscribe("kiln.>").await.expect("subscribe");
        client.flush().await.expect("flush");
        Bus {
            client,
            messages,
            seen: Vec::new(),
        }
    }

    async fn publish(&self, request: &StagingRequest) {
        self.client
            .publish(kiln_bus::STAGING_REQUEST, kiln_bus::encode(request).into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }

    /// The next message on `subject` for which `pick` says something, within `within`.
    async fn wait_for<T>(
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
    async fn result(&mut self, build: &str, stager: &StagerProcess) -> StagingOutcome {
        self.wait_for(
            &format!("the result of {build}"),
            Duration::from_secs(120),
            stager,
            |subject, body| {
                (subject == kiln_bus::STAGING_RESULT)
                    .then(|| kiln_bus::decode::<StagingResult>(subject, body).expect("a result"))
                    .filter(|r| r.build_guid == build)
                    .map(|r| {
                        assert_eq!(r.stager_id, STAGER_ID);
                        r.outcome
                    })
            },
        )
        .await
    }

    fn accepted(&self, build: &str) -> bool {
        self.seen.iter().any(|(s, b)| {
            s == kiln_bus::STAGING_ACCEPTED
                && serde_json::from_str::<StagingAccepted>(b).is_ok_and(|a| a.build_guid == build)
        })
    }

    fn log_lines(&self, build: &str) -> Vec<StagingLogLine> {
        let subject = kiln_bus::staging_log(build);
        self.seen
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, b)| serde_json::from_str(b).expect("a log line"))
            .collect()
    }
}

fn request(build: &str, stack: &str, base: &str, package: &str) -> StagingRequest {
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
    }
}

fn failed(outcome: StagingOutcome) -> (String, i32) {
    match outcome {
        StagingOutcome::Failed { reason, exit_code } => (reason, exit_code),
        StagingOutcome::Staged(s) => panic!("staged, but it should have failed: {s:?}"),
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn droplet_has(droplet: &[u8], name: &str) -> bool {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(droplet));
    tar.entries().expect("droplet is a tgz").any(|e| {
        e.ok()
            .and_then(|e| e.path().ok().map(|p| p.display().to_string()))
            .is_some_and(|p| p == name)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stager_service_stages_from_the_bus_and_stops_gracefully() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the service test needs root (runc, mounts, iptables)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = Nats::start();
    let (addr, controller) = start_controller(staticfile_zip()).await;
    let base = format!("http://{addr}");
    let mut bus = Bus::connect(&nats.url).await;
    let mut stager = StagerProcess::start(dir.path(), &nats.url, "stager", &[]);

    // It advertises itself once it holds its stacks and listens.
    let ad = bus
        .wait_for(
            "the stager's advertisement",
            Duration::from_secs(300),
            &stager,
            |subject, body| {
                (subject == kiln_bus::STAGER_ADVERTISE)
                    .then(|| kiln_bus::decode::<StagerAdvertise>(subject, body).expect("an ad"))
                    .filter(|a| a.id == STAGER_ID)
            },
        )
        .await;
    assert_eq!(ad.stacks, vec!["tiny".to_string()]);
    assert_eq!((ad.available, ad.building.len()), (2, 0));

    // A stack it lacks: refused with the stacks it has, never accepted.
    bus.publish(&request("on-nope", "nope", &base, "/packages/x"))
        .await;
    let (reason, code) = failed(bus.result("on-nope", &stager).await);
    assert_eq!(
        reason,
        format!("stager {STAGER_ID} cannot stage on stack `nope`: it has tiny")
    );
    assert_eq!(code, 1);
    assert!(!bus.accepted("on-nope"));

    // A package server that refuses the stager's credential, and a package that is not there.
    bus.publish(&request("locked", "tiny", &base, "/locked/packages/x"))
        .await;
    let (reason, code) = failed(bus.result("locked", &stager).await);
    assert_eq!(
        reason,
        format!("downloading the package from {base}/locked/packages/x: 403 Forbidden")
    );
    assert_eq!(code, 1);
    assert!(bus.accepted("locked"));
    assert!(
        bus.log_lines("locked")
            .iter()
            .any(|l| l.stream == "ERR" && l.line.starts_with("Staging failed: downloading")),
        "{:?}",
        bus.log_lines("locked")
    );
    bus.publish(&request("missing", "tiny", &base, "/packages/missing"))
        .await;
    let (reason, _) = failed(bus.result("missing", &stager).await);
    assert_eq!(
        reason,
        format!("downloading the package from {base}/packages/missing: 404 Not Found")
    );

    // A static site: accepted, its log streamed, the droplet uploaded and described.
    bus.publish(&request("site", "tiny", &base, "/packages/x"))
        .await;
    let outcome = bus.result("site", &stager).await;
    assert!(bus.accepted("site"));
    let staged = match outcome {
        StagingOutcome::Staged(s) => s,
        StagingOutcome::Failed { reason, .. } => panic!("staging failed: {reason}"),
    };
    let lines = bus.log_lines("site");
    assert!(
        lines.iter().any(|l| l.line.contains("staticfile")),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .all(|l| l.source == "STG" && l.app_guid == "app-of-site"));
    assert_eq!(
        lines.last().map(|l| l.line.as_str()),
        Some("-----> Uploading the droplet"),
        "every line comes before the result"
    );
    let (content_type, droplet) = controller
        .uploads
        .lock()
        .unwrap()
        .get("droplet/site")
        .cloned()
        .expect("the droplet was uploaded");
    assert_eq!(content_type, "application/gzip");
    assert_eq!(staged.sha256, hex::encode(Sha256::digest(&droplet)));
    assert_eq!(staged.size, droplet.len() as u64);
    assert_eq!(staged.detected_buildpack, "staticfile");
    assert!(droplet_has(&droplet, "app/index.html"));
    assert!(
        controller.uploads.lock().unwrap().contains_key("cache/app"),
        "the new cache was uploaded"
    );

    // A droplet the controller does not take.
    let mut nowhere = request("nowhere", "tiny", &base, "/packages/x");
    nowhere.droplet_upload_url = format!("{base}/nowhere/droplet?signature=secret");
    bus.publish(&nowhere).await;
    let (reason, code) = failed(bus.result("nowhere", &stager).await);
    assert_eq!(
        reason,
        format!("uploading the droplet to {base}/nowhere/droplet: 404 Not Found")
    );
    assert_eq!(code, 1);

    // Stopping: the running staging (with the cache of the first) finishes and reports,
    // nothing new is taken, and the process exits cleanly.
    bus.publish(&request("last", "tiny", &base, "/packages/slow"))
        .await;
    bus.wait_for(
        "the acceptance of `last`",
        Duration::from_secs(30),
        &stager,
        |subject, body| {
            (subject == kiln_bus::STAGING_ACCEPTED
                && kiln_bus::decode::<StagingAccepted>(subject, body)
                    .is_ok_and(|a| a.build_guid == "last"))
            .then_some(())
        },
    )
    .await;
    stager.signal(libc::SIGTERM);
    let draining = bus
        .wait_for(
            "the stopping stager's advertisement",
            Duration::from_secs(30),
            &stager,
            |subject, body| {
                (subject == kiln_bus::STAGER_ADVERTISE)
                    .then(|| kiln_bus::decode::<StagerAdvertise>(subject, body).expect("an ad"))
                    .filter(|a| a.id == STAGER_ID && a.available == 0)
            },
        )
        .await;
    assert_eq!(draining.building, vec!["last".to_string()]);
    bus.publish(&request("too-late", "tiny", &base, "/packages/x"))
        .await;
    let outcome = bus.result("last", &stager).await;
    assert!(
        matches!(outcome, StagingOutcome::Staged(_)),
        "{outcome:?}\n{}",
        stager.log()
    );
    assert!(bus
        .log_lines("last")
        .iter()
        .any(|l| l.line.contains("Restoring the build cache")));
    let status = stager.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}\n{}", stager.log());
    // Whatever was still in flight on the bus has arrived by now.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(m) = bus.messages.next().await {
            bus.seen.push((
                m.subject.to_string(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            ));
        }
    })
    .await;
    assert!(!bus.accepted("too-late"), "{:?}", bus.seen);

    assert_nothing_left(dir.path()).await;

    // A staging still running when the grace is over is abandoned: a failed result, its
    // container destroyed, and again nothing left.
    let buildpacks = sleeper_buildpacks(dir.path());
    let mut stager = StagerProcess::start(
        dir.path(),
        &nats.url,
        "stager-2",
        &[
            OsStr::new("--buildpacks"),
            buildpacks.as_os_str(),
            OsStr::new("--shutdown-grace"),
            OsStr::new("1"),
        ],
    );
    bus.wait_for(
        "the second stager's advertisement",
        Duration::from_secs(120),
        &stager,
        |subject, body| {
            (subject == kiln_bus::STAGER_ADVERTISE)
                .then(|| kiln_bus::decode::<StagerAdvertise>(subject, body).expect("an ad"))
                .filter(|a| a.id == STAGER_ID && a.available == 2)
        },
    )
    .await;
    let mut sleepy = request("sleepy", "tiny", &base, "/packages/x");
    sleepy.buildpacks = vec!["sleeper".into()];
    bus.publish(&sleepy).await;
    let sleeping_subject = kiln_bus::staging_log("sleepy");
    bus.wait_for(
        "the sleeper buildpack to sleep",
        Duration::from_secs(60),
        &stager,
        |subject, body| {
            (subject == sleeping_subject
                && kiln_bus::decode::<StagingLogLine>(subject, body)
                    .is_ok_and(|l| l.line == "sleeping"))
            .then_some(())
        },
    )
    .await;
    stager.signal(libc::SIGINT);
    let (reason, code) = failed(bus.result("sleepy", &stager).await);
    assert_eq!(
        reason,
        format!("the stager {STAGER_ID} stopped and gave up this staging after a 1 s grace; stage again")
    );
    assert_eq!(code, 1);
    let status = stager.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}\n{}", stager.log());
    assert_nothing_left(dir.path()).await;
    drop(stager);
    drop(nats);
}

/// A buildpacks folder with one buildpack that sleeps in its compile.
fn sleeper_buildpacks(dir: &Path) -> PathBuf {
    let root = dir.join("buildpacks");
    let bin = root.join("sleeper/bin");
    std::fs::create_dir_all(&bin).expect("buildpack dir");
    for (name, body) in [
        ("detect", "#!/bin/sh\necho sleeper\n"),
        ("compile", "#!/bin/sh\necho sleeping\nexec sleep 600\n"),
        ("release", "#!/bin/sh\necho '--- {}'\n"),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, body).expect("buildpack script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root
}

/// After the stager exited: no container, no machine resource of its backend, no mount under
/// the test's dir, no build or staging temp dir.
async fn assert_nothing_left(dir: &Path) {
    let audit = Backend::new(Config {
        recovery: Recovery::Adopt,
        ..backend_config(dir)
    })
    .await
    .expect("open the stager's backend");
    assert_eq!(audit.list(&BTreeMap::new()), Vec::<String>::new());
    assert_eq!(audit.resources_on_machine(), Vec::<String>::new());
    drop(audit);
    Backend::destroy_all(&backend_config(dir)).expect("unmount");
    assert_eq!(mounts_under(dir), Vec::<String>::new());
    let left: Vec<_> = std::fs::read_dir(dir.join("work"))
        .expect("work dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "temp files left: {left:?}");
}
