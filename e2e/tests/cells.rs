//! Two cells end to end: a controller, NATS, a stager, the router, cell A (an executor in this
//! process) and cell B (the `kiln-executor` binary, a process of its own). A Procfile app on
//! tiny scaled to two runs one instance per cell. Cell B is drained through `POST
//! /v3/cells/{id}/actions/drain` under a steady request loop through the router: its instance
//! is started on A and stopped on B without a failed request, and the binary exits by itself
//! once it has nothing left. B is started again, takes a third instance, and is SIGKILLed:
//! once the controller no longer hears it the instance runs on A and answers through the
//! router. Test indexes 50 (the stager's backend: 10.244.50.0/26, ports 41000-41019), 51
//! (cell A: 10.244.51.0/26, ports 41020-41039) and 52 (cell B: 10.244.52.0/26, ports
//! 41040-41059), each with its own data dir and uid range. Whatever the outcome, the cell
//! process is killed (by its pid) and every backend destroys what it holds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_containers::{Backend, Recovery};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::{json, Value};

const DOMAIN: &str = "apps.cells.test";
const PROCFILE: &str = "web: sh -c 'mkdir -p $HOME/www && echo \"$CF_INSTANCE_INDEX $CF_INSTANCE_GUID\" > $HOME/www/id.txt && exec httpd -f -p 0.0.0.0:$PORT -h $HOME/www'\n";
const STAGER: u32 = 50;
const CELL_A: u32 = 51;
const CELL_B: u32 = 52;

fn port_range(index: u32) -> std::ops::Range<u64> {
    let start = u64::from(40000 + 20 * index);
    start..start + 20
}

fn stager_config(dir: &Path) -> kiln_containers::Config {
    kiln_containers::Config {
        data_dir: dir.join(format!("containers-{STAGER}")),
        stacks_dir: dir.join(format!("stacks-{STAGER}")),
        network_pool: format!("10.244.{STAGER}.0/26"),
        port_range_start: u16::try_from(port_range(STAGER).start).unwrap(),
        port_range_size: 20,
        uid_range_start: (1 << 28) + STAGER * (16 << 16),
        store_size_bytes: 4 << 30,
        max_containers: 6,
        recovery: Recovery::Destroy,
        ..kiln_containers::Config::default()
    }
}

fn cell_config(dir: &Path, index: u32, nats: &str, token: &Path) -> kiln_executor::Config {
    kiln_executor::Config {
        cell_id: format!("e2e-cell-{index}"),
        zone: "z1".into(),
        stacks: vec!["tiny".into()],
        memory_mb: 2048,
        disk_mb: 8192,
        max_containers: 6,
        data_dir: dir.join(format!("cell-{index}")),
        stacks_dir: dir.join(format!("stacks-{index}")),
        nats_url: nats.to_string(),
        internal_url: None,
        internal_token_file: Some(token.to_path_buf()),
        host_ip: "127.0.0.1".into(),
        droplet_cache_mb: 64,
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: u16::try_from(port_range(index).start).unwrap(),
        port_range_size: 20,
        uid_range_start: (1 << 28) + index * (16 << 16),
        store_size_bytes: 4 << 30,
        timings: kiln_executor::Timings {
            starting_probe_interval_ms: 200,
            stop_grace_secs: 2,
            advertise_interval_ms: 500,
            // Long enough for the controller to move an instance; a failed hand-over shows
            // in the cell's log as a timeout rather than as a hung test.
            evacuation_timeout_secs: 40,
            ..kiln_executor::Timings::default()
        },
    }
}

/// The `kiln-executor` binary next to this test's target dir (`target/<profile>/deps/cells-…`
/// → `target/<profile>/kiln-executor`), built first: a dev-dependency builds the library, not
/// the binary, and a binary left from an older build would test old code. When it is fresh
/// the build is a no-op.
fn executor_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "kiln-executor",
            "--bin",
            "kiln-executor",
        ])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(profile) => {
            build.args(["--profile", profile]);
        }
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "building kiln-executor: {status}");
    let binary = profile_dir.join("kiln-executor");
    assert!(binary.exists(), "no {}", binary.display());
    binary
}

/// Cell B's process: SIGKILLed by its pid if still running when dropped.
struct CellProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl CellProcess {
    fn start(binary: &Path, config_file: &Path, log: PathBuf) -> CellProcess {
        let child = Command::new(binary)
            .arg("--config")
            .arg(config_file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting kiln-executor");
        CellProcess {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (our own child, by its pid) and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for it to exit on its own.
    async fn exited(&mut self, within: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().ok_or("not running")?;
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "cell B did not exit within {within:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for CellProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What must go whatever happens: cell B's process (killed by its pid), then what every
/// backend holds (containers, mounts, network namespaces, loop devices).
struct Leftovers {
    cell_b: Option<CellProcess>,
    backends: Vec<kiln_containers::Config>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(mut p) = self.cell_b.take() {
            if std::thread::panicking() {
                eprintln!("--- cell B's log ---\n{}", p.log());
            }
            p.kill();
        }
        for c in &self.backends {
            if c.data_dir.exists() {
                if let Err(e) = Backend::destroy_all(c) {
                    eprintln!("cleaning up {}: {e}", c.data_dir.display());
                }
            }
        }
    }
}

fn app_zip() -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("Procfile", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(PROCFILE.as_bytes()).unwrap();
    w.finish().unwrap().into_inner()
}

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    match r.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

struct Platform {
    cc_url: String,
    router: String,
    token: String,
    http: reqwest::Client,
}

impl Platform {
    fn call(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.cc_url))
            .bearer_auth(&self.token)
    }

    async fn through_router(&self, host: &str, path: &str) -> (u16, String) {
        match self
            .http
            .get(format!("{}{path}", self.router))
            .header("host", host)
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    async fn stats(&self, app: &str) -> Vec<Value> {
        let (_, process) =
            send(self.call(Method::GET, &format!("/v3/apps/{app}/processes/web"))).await;
        let guid = process["guid"].as_str().unwrap_or_default().to_string();
        let (_, stats) = send(self.call(Method::GET, &format!("/v3/processes/{guid}/stats"))).await;
        stats["resources"].as_array().cloned().unwrap_or_default()
    }

    /// The cells as `GET /v3/cells` shows them, by id.
    async fn cells(&self) -> Result<std::collections::BTreeMap<String, Value>, String> {
        let (status, body) = send(self.call(Method::GET, "/v3/cells")).await;
        if status != 200 {
            return Err(format!("GET /v3/cells: {status} {body}"));
        }
        Ok(body["resources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c["id"].as_str().unwrap_or_default().to_string(), c))
            .collect())
    }

    /// Waits until `GET /v3/cells` satisfies `ok`.
    async fn cells_until(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&std::collections::BTreeMap<String, Value>) -> bool,
    ) -> Result<std::collections::BTreeMap<String, Value>, String> {
        let deadline = Instant::now() + within;
        loop {
            let cells = self.cells().await?;
            if ok(&cells) {
                return Ok(cells);
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: cells {cells:#?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the web process has `n` instances, every one RUNNING with its port on
    /// cell `index` if given; index → (instance guid, port).
    async fn running(
        &self,
        app: &str,
        n: usize,
        on: Option<u32>,
        within: Duration,
    ) -> Result<Vec<(String, u64)>, String> {
        let deadline = Instant::now() + within;
        loop {
            let stats = self.stats(app).await;
            let running: Vec<(String, u64)> = stats
                .iter()
                .filter(|s| s["state"] == "RUNNING")
                .filter_map(|s| {
                    Some((
                        s["instance_guid"].as_str()?.to_string(),
                        s["instance_ports"][0]["external"].as_u64()?,
                    ))
                })
                .filter(|(_, port)| on.is_none_or(|i| port_range(i).contains(port)))
                .collect();
            if stats.len() == n && running.len() == n {
                return Ok(running);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not {n} RUNNING instances{}: {}",
                    on.map(|i| format!(" on cell {i}")).unwrap_or_default(),
                    Value::Array(stats)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn scale(&self, app: &str, instances: u32) -> Result<(), String> {
        let (status, body) = send(
            self.call(
                Method::POST,
                &format!("/v3/apps/{app}/processes/web/actions/scale"),
            )
            .json(&json!({ "instances": instances })),
        )
        .await;
        if status != 200 {
            return Err(format!("scale to {instances}: {status} {body}"));
        }
        Ok(())
    }
}

/// GETs `/id.txt` through the router every 20 ms until stopped; (ok, failures).
struct RequestLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl RequestLoop {
    fn start(router: &str, host: &str) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let task = {
            let (stop, ok) = (stop.clone(), ok.clone());
            let (router, host) = (router.to_string(), host.to_string());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let r = http
                        .get(format!("{router}/id.txt"))
                        .header("host", &host)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                failures
            })
        };
        RequestLoop { stop, ok, task }
    }

    async fn finish(self) -> Result<(usize, Vec<String>), String> {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.task.await.map_err(|e| e.to_string())?;
        Ok((self.ok.load(Ordering::SeqCst), failures))
    }
}

#[test]
fn instances_spread_a_drained_cell_hands_over_without_a_failed_request_a_lost_one_is_replaced() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let binary = executor_binary();
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    let token = dir.path().join("internal-token");
    let (a, b) = (
        cell_config(dir.path(), CELL_A, &nats.url, &token),
        cell_config(dir.path(), CELL_B, &nats.url, &token),
    );
    let mut leftovers = Leftovers {
        cell_b: None,
        backends: vec![
            stager_config(dir.path()),
            a.backend_config(),
            b.backend_config(),
        ],
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(scenario(
        dir.path(),
        &nats,
        &binary,
        &a,
        &b,
        &mut leftovers.cell_b,
    ));
    // The runtime first (every task with it: cell A, the stager), then cell B's process and
    // what the backends still hold.
    drop(rt);
    if result.is_err() {
        if let Some(p) = &leftovers.cell_b {
            eprintln!("--- cell B's log ---\n{}", p.log());
        }
    }
    drop(leftovers);
    result.unwrap_or_else(|e| panic!("{e}"));
}

async fn scenario(
    dir: &Path,
    nats: &Nats,
    binary: &Path,
    a: &kiln_executor::Config,
    b: &kiln_executor::Config,
    cell_b: &mut Option<CellProcess>,
) -> Result<(), String> {
    let mut config = kiln_cloud_controller::Config::new(dir.join("cc"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.nats_url = nats.url.clone();
    config.default_stack = "tiny".into();
    config.default_domain = DOMAIN.into();
    config.converge_settle_ms = 0;
    let cc = kiln_cloud_controller::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let cc_url = format!("http://{}", cc.addr);
    let internal =
        kiln_cloud_controller::internal_token(&dir.join("cc")).map_err(|e| e.to_string())?;
    std::fs::write(a.internal_token_file.as_ref().unwrap(), &internal)
        .map_err(|e| e.to_string())?;

    // The stager.
    let tiny = kiln_rootfs::recipes::cached("tiny").map_err(|e| e.to_string())?;
    let stager_backend = Backend::new(stager_config(dir))
        .await
        .map_err(|e| e.to_string())?;
    stager_backend
        .import_stack(&tiny.dir, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let mut settings = kiln_stager::service::Settings::new(
        "e2e-cells-stager",
        vec!["tiny".into()],
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
    );
    settings.token = Some(kiln_stager::service::Token::new(&internal));
    settings.work_dir = dir.join("stager");
    std::fs::create_dir_all(&settings.work_dir).map_err(|e| e.to_string())?;
    let client = async_nats::connect(&nats.url)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(kiln_stager::service::run(
        client,
        stager_backend,
        settings,
        std::future::pending::<()>(),
    ));

    // Cell A in this process; cell B as the binary with a TOML configuration.
    let a_backend = Backend::new(a.backend_config())
        .await
        .map_err(|e| e.to_string())?;
    kiln_executor::import_stack(&a_backend, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let client = async_nats::connect(&nats.url)
        .await
        .map_err(|e| e.to_string())?;
    let executor_a = kiln_executor::Executor::start(a.clone(), a_backend, client)
        .await
        .map_err(|e| e.to_string())?;
    let b_file = dir.join("cell-b.toml");
    std::fs::write(&b_file, toml::to_string(b).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    *cell_b = Some(CellProcess::start(
        binary,
        &b_file,
        dir.join("cell-b-1.log"),
    ));

    let router = kiln_router::start(kiln_router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        status_listen: "127.0.0.1:0".parse().unwrap(),
        nats_url: nats.url.clone(),
        ..kiln_router::Config::default()
    })
    .await
    .map_err(|e| e.to_string())?;

    let http = reqwest::Client::new();
    let password =
        std::fs::read_to_string(dir.join("cc/admin-password")).map_err(|e| e.to_string())?;
    let (_, tokens) = send(http.post(format!("{cc_url}/oauth/token")).form(&[
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", password.trim()),
    ]))
    .await;
    let p = Platform {
        cc_url,
        router: format!("http://{}", router.addr),
        token: tokens["access_token"]
            .as_str()
            .ok_or("no token")?
            .to_string(),
        http,
    };
    let (id_a, id_b) = (a.cell_id.clone(), b.cell_id.clone());

    // Both cells are heard, with what they offer.
    let cells = p
        .cells_until("both cells heard", Duration::from_secs(60), |c| {
            c.contains_key(&id_a) && c.contains_key(&id_b)
        })
        .await?;
    let cb = &cells[&id_b];
    if cb["stacks"] != json!(["tiny"])
        || cb["evacuating"] != false
        || cb["memory_mb"]["total"] != 2048
        || cb["containers"]["total"] != 6
        || cb["instances"] != 0
        || cb["last_heard_ms_ago"]
            .as_u64()
            .is_none_or(|ms| ms > 10_000)
    {
        return Err(format!("cell B as listed: {cb:#}"));
    }
    let (status, body) = send(p.call(Method::GET, &format!("/v3/cells/{id_b}"))).await;
    if status != 200 || body["id"] != id_b.as_str() || body["zone"] != "z1" {
        return Err(format!("GET cell B: {status} {body}"));
    }
    let (status, body) = send(p.call(Method::GET, "/v3/cells/no-such-cell")).await;
    if status != 404 {
        return Err(format!("an unknown cell: {status} {body}"));
    }
    let (status, body) = send(p.call(Method::POST, "/v3/cells/no-such-cell/actions/drain")).await;
    if status != 404 {
        return Err(format!("draining an unknown cell: {status} {body}"));
    }
    let (status, _) = send(p.http.get(format!("{}/v3/cells", p.cc_url))).await;
    if status != 401 {
        return Err(format!("listing cells without a token: {status}"));
    }

    // Two instances: one on each cell.
    let app = push(&p, "spread").await?;
    let host = format!("spread.{DOMAIN}");
    p.running(&app, 1, None, Duration::from_secs(60)).await?;
    p.scale(&app, 2).await?;
    let two = p.running(&app, 2, None, Duration::from_secs(60)).await?;
    let on_cells: BTreeSet<u32> = two
        .iter()
        .filter_map(|(_, port)| {
            [CELL_A, CELL_B]
                .into_iter()
                .find(|i| port_range(*i).contains(port))
        })
        .collect();
    if on_cells != BTreeSet::from([CELL_A, CELL_B]) {
        return Err(format!("two instances not spread over both cells: {two:?}"));
    }
    p.cells_until(
        "one instance of the app on each cell",
        Duration::from_secs(10),
        |c| {
            [&id_a, &id_b].iter().all(|id| {
                c.get(*id)
                    .is_some_and(|c| c["instances_per_app"][&app] == 1)
            })
        },
    )
    .await?;
    wait_for_answers(&p, &host, 2).await?;

    // Drain B under a steady request loop: its instance starts on A, then stops on B; the
    // binary exits once it has nothing left; not one request fails.
    let requests = RequestLoop::start(&p.router, &host);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) =
        send(p.call(Method::POST, &format!("/v3/cells/{id_b}/actions/drain"))).await;
    if status != 202 || body["id"] != id_b.as_str() {
        return Err(format!("drain: {status} {body}"));
    }
    let drained_at = Instant::now();
    p.cells_until("B evacuating", Duration::from_secs(5), |c| {
        c.get(&id_b).is_some_and(|c| c["evacuating"] == true)
    })
    .await?;
    let moved = p
        .running(&app, 2, Some(CELL_A), Duration::from_secs(60))
        .await?;
    let process = cell_b.as_mut().ok_or("no cell B")?;
    let status = process.exited(Duration::from_secs(30)).await?;
    let evacuation = drained_at.elapsed();
    let log = process.log();
    if !status.success() || !log.contains("executor.evacuated") || log.contains("timed-out") {
        return Err(format!(
            "cell B did not evacuate and exit cleanly ({status}):\n{log}"
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failures) = requests.finish().await?;
    if !failures.is_empty() || ok < 20 {
        return Err(format!(
            "during the drain: {ok} ok, {} failed: {failures:?}",
            failures.len()
        ));
    }
    let (_, events) = send(p.call(Method::GET, "/v3/audit_events?types=audit.cell.drain")).await;
    if events["resources"][0]["target"]["guid"] != id_b.as_str() {
        return Err(format!("no audit event of the drain: {events}"));
    }
    let evacuation_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("evacuat") || l.contains("drain") || l.contains("stopped"))
        .collect();
    eprintln!(
        "drain: B exited {:.1} s after the drain request; {ok} requests, none failed; now on A: {moved:?}; B's log:\n{}",
        evacuation.as_secs_f64(),
        evacuation_lines.join("\n")
    );

    // B again, a third instance on it (A has two), then B is lost (SIGKILL).
    *cell_b = Some(CellProcess::start(
        binary,
        &b_file,
        dir.join("cell-b-2.log"),
    ));
    p.cells_until("B back", Duration::from_secs(60), |c| {
        c.get(&id_b).is_some_and(|c| c["evacuating"] == false)
    })
    .await?;
    p.scale(&app, 3).await?;
    let three = p.running(&app, 3, None, Duration::from_secs(60)).await?;
    let on_b: Vec<&(String, u64)> = three
        .iter()
        .filter(|(_, port)| port_range(CELL_B).contains(port))
        .collect();
    let [(lost, _)] = on_b[..] else {
        return Err(format!("not one instance on B: {three:?}"));
    };
    let lost = lost.clone();
    cell_b.as_mut().ok_or("no cell B")?.kill();
    let killed = Instant::now();
    let after = p
        .running(&app, 3, Some(CELL_A), Duration::from_secs(30))
        .await?;
    let replaced = killed.elapsed();
    let index_2: Vec<&String> = after
        .iter()
        .map(|(g, _)| g)
        .filter(|g| !moved.iter().any(|(m, _)| m == *g))
        .collect();
    let [new] = index_2[..] else {
        return Err(format!("not one replacement: {after:?} (before {moved:?})"));
    };
    if *new == lost {
        return Err("the lost instance is still counted".into());
    }
    // The replacement answers through the router (the lost cell's container may still
    // answer too: a SIGKILLed cell leaves its containers running until they are cleaned).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = p.through_router(&host, "/id.txt").await;
        if status == 200 && body.trim() == format!("2 {new}") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the replacement of the lost instance does not answer: {status} {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = killed.elapsed();
    eprintln!(
        "cell loss: the instance RUNNING on A {:.1} s after the SIGKILL, answering through the router after {:.1} s",
        replaced.as_secs_f64(),
        answered.as_secs_f64()
    );
    if replaced > Duration::from_secs(20) {
        return Err(format!("the lost instance came back after {replaced:?}"));
    }

    router.shutdown();
    executor_a.shutdown().await;
    Ok(())
}

/// Waits until `n` different instances answered through the router.
async fn wait_for_answers(p: &Platform, host: &str, n: usize) -> Result<(), String> {
    let mut answered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.len() < n {
        let (status, body) = p.through_router(host, "/id.txt").await;
        if status == 200 {
            answered.insert(body.trim().to_string());
        }
        if Instant::now() > deadline {
            return Err(format!("answering through the router: {answered:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Creates app `name`, uploads the Procfile app, stages it, sets the droplet, starts it.
async fn push(p: &Platform, name: &str) -> Result<String, String> {
    let (_, spaces) = send(p.call(Method::GET, "/v3/spaces")).await;
    let space = spaces["resources"][0]["guid"].clone();
    let (status, app) = send(
        p.call(Method::POST, "/v3/apps")
            .json(&json!({"name": name, "relationships": {"space": {"data": {"guid": space}}}})),
    )
    .await;
    if status != 201 {
        return Err(format!("create app: {status} {app}"));
    }
    let app = app["guid"].as_str().unwrap_or_default().to_string();
    let (_, package) = send(
        p.call(Method::POST, "/v3/packages")
            .json(&json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}})),
    )
    .await;
    let package = package["guid"].as_str().unwrap_or_default().to_string();
    let form = reqwest::multipart::Form::new().part(
        "bits",
        reqwest::multipart::Part::bytes(app_zip()).file_name("app.zip"),
    );
    let (status, body) = send(
        p.call(Method::POST, &format!("/v3/packages/{package}/upload"))
            .multipart(form),
    )
    .await;
    if body["state"] != "READY" {
        return Err(format!("upload: {status} {body}"));
    }
    let (status, build) = send(
        p.call(Method::POST, "/v3/builds")
            .json(&json!({"package": {"guid": package}})),
    )
    .await;
    if status != 201 {
        return Err(format!("build: {status} {build}"));
    }
    let build_guid = build["guid"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let build = loop {
        let (_, b) = send(p.call(Method::GET, &format!("/v3/builds/{build_guid}"))).await;
        if b["state"] != "STAGING" || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if build["state"] != "STAGED" {
        return Err(format!("the build did not stage: {build}"));
    }
    let droplet = build["droplet"]["guid"].as_str().ok_or("no droplet")?;
    let (status, body) = send(
        p.call(
            Method::PATCH,
            &format!("/v3/apps/{app}/relationships/current_droplet"),
        )
        .json(&json!({"data": {"guid": droplet}})),
    )
    .await;
    if status != 200 {
        return Err(format!("set droplet: {status} {body}"));
    }
    let (status, body) = send(p.call(Method::POST, &format!("/v3/apps/{app}/actions/start"))).await;
    if status != 200 {
        return Err(format!("start: {status} {body}"));
    }
    Ok(app)
}
