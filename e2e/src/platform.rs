//! A whole platform in one process, for the end-to-end tests and the benchmarks: the cloud
//! controller (SQLite in the caller's directory), a stager on the stacks the caller names
//! (`tiny` for most), the router, and cells, either in this process
//! (`kiln_executor::Executor`) or as `kiln-executor` processes of their own
//! ([`CellProcess`]), so that losing one can be a real SIGKILL.
//!
//! Test indexes keep concurrent tests and benchmarks apart: index `i` owns the address pool
//! `10.244.<i>.0/26`, the host ports `40000 + 20 i` (20 of them) and the host uids from
//! `2^28 + i · 16 · 65536` (16 containers), each under its own data dir. The end-to-end tests
//! use 50-59, the executor's 60-64, the benchmarks 70-77.
//!
//! Cleaning up is the caller's, through [`Leftovers`]: drop the runtime first (every
//! in-process component with it), then the leftovers (cell processes killed by their pid,
//! then whatever each backend still holds destroyed). Errors are messages (`String`): this
//! is the support code of tests, which only report them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_containers::{Backend, Recovery};
use reqwest::Method;
use serde_json::{json, Value};

/// A Procfile app on `tiny`: busybox `httpd` serving `/id.txt`, which holds the instance's
/// index and guid (`"0 <guid>"`), so an answer through the router names the instance.
pub const ID_PROCFILE: &str = "web: sh -c 'mkdir -p $HOME/www && echo \"$CF_INSTANCE_INDEX $CF_INSTANCE_GUID\" > $HOME/www/id.txt && exec httpd -f -p 0.0.0.0:$PORT -h $HOME/www'\n";

/// Host ports of test index `index` (as `u64`, the type of ports in the API's JSON).
pub fn port_range(index: u32) -> std::ops::Range<u64> {
    let start = u64::from(40000 + 20 * index);
    start..start + 20
}

/// The first host uid of test index `index`.
pub fn uid_range_start(index: u32) -> u32 {
    (1 << 28) + index * (16 << 16)
}

/// A container backend of test index `index` under `dir` (the stager's, or a benchmark's
/// own): 6 containers, a 4 GiB sparse store, what a previous owner left destroyed.
pub fn backend_config(dir: &Path, index: u32) -> kiln_containers::Config {
    kiln_containers::Config {
        data_dir: dir.join(format!("containers-{index}")),
        stacks_dir: dir.join(format!("stacks-{index}")),
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: u16::try_from(port_range(index).start).expect("a port"),
        port_range_size: 20,
        uid_range_start: uid_range_start(index),
        store_size_bytes: 4 << 30,
        max_containers: 6,
        recovery: Recovery::Destroy,
        ..kiln_containers::Config::default()
    }
}

/// Where [`Platform::start`] writes the controller's internal credential, which cells
/// configured by [`cell_config`] send on droplet downloads.
pub fn token_file(dir: &Path) -> PathBuf {
    dir.join("internal-token")
}

/// Cell `e2e-cell-<index>` of test index `index` under `dir`, on `tiny`: 2 GiB and 6
/// containers offered, quick probes, advertisements and stops, so that tests do not wait.
pub fn cell_config(dir: &Path, index: u32, nats_url: &str) -> kiln_executor::Config {
    kiln_executor::Config {
        cell_id: format!("e2e-cell-{index}"),
        zone: "z1".into(),
        stacks: vec!["tiny".into()],
        memory_mb: 2048,
        disk_mb: 8192,
        max_containers: 6,
        data_dir: dir.join(format!("cell-{index}")),
        stacks_dir: dir.join(format!("stacks-{index}")),
        nats_url: nats_url.to_string(),
        internal_url: None,
        internal_token_file: Some(token_file(dir)),
        host_ip: "127.0.0.1".into(),
        droplet_cache_mb: 64,
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: u16::try_from(port_range(index).start).expect("a port"),
        port_range_size: 20,
        uid_range_start: uid_range_start(index),
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

/// A cell in this process: its backend (with the tiny stack) and its executor on the bus.
pub async fn start_executor(
    config: &kiln_executor::Config,
) -> Result<kiln_executor::Executor, String> {
    let backend = Backend::new(config.backend_config())
        .await
        .map_err(|e| e.to_string())?;
    kiln_executor::import_stack(&backend, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let client = async_nats::connect(&config.nats_url)
        .await
        .map_err(|e| e.to_string())?;
    kiln_executor::Executor::start(config.clone(), backend, client)
        .await
        .map_err(|e| e.to_string())
}

/// Writes `config` as the TOML file a `kiln-executor` process reads (`--config`).
pub fn write_cell_config(path: &Path, config: &kiln_executor::Config) -> Result<(), String> {
    let text = toml::to_string(config).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The `kiln-executor` binary of the caller's build profile ([`workspace_binary`]).
pub fn executor_binary() -> Result<PathBuf, String> {
    workspace_binary("kiln-executor", "kiln-executor")
}

/// The `kiln` CLI of the caller's build profile ([`workspace_binary`]).
pub fn kiln_binary() -> Result<PathBuf, String> {
    workspace_binary("kiln-cli", "kiln")
}

/// Binary `bin` of workspace package `package` in the caller's build profile, built first (a
/// no-op when it is fresh): a dependency builds a component's library, not its binary, and a
/// binary left from an older build would run old code. The profile is read from where the
/// caller runs: `target/<profile>/deps/<test>` for a test, `target/<profile>/<bench>` for a
/// benchmark.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the running binary: {e}"))?;
    let mut profile_dir = exe
        .parent()
        .ok_or("the running binary has no directory")?
        .to_path_buf();
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir.pop();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", package, "--bin", bin])
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
    let status = build
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("building {bin}: {status}"));
    }
    let binary = profile_dir.join(bin);
    if !binary.exists() {
        return Err(format!("no {}", binary.display()));
    }
    Ok(binary)
}

/// A `kiln-executor` process, its stderr in a log file; SIGKILLed (by its pid) and reaped if
/// still running when dropped.
#[derive(Debug)]
pub struct CellProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl CellProcess {
    /// Starts `binary --config <config_file>` with `RUST_LOG=info`, its stderr to `log`.
    pub fn start(binary: &Path, config_file: &Path, log: PathBuf) -> Result<CellProcess, String> {
        let stderr =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(config_file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        Ok(CellProcess {
            child: Some(child),
            log,
        })
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log holds `needle` (`executor.started`: it serves its commands).
    pub async fn logged(&self, needle: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the cell did not log {needle:?} within {within:?}:\n{log}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL (our own child, by its pid) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for it to exit on its own.
    pub async fn exited(&mut self, within: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().ok_or("not running")?;
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the cell did not exit within {within:?}:\n{}",
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

/// What must go whatever happens: the cell processes (killed by their pids), then what every
/// backend still holds (containers, mounts, network namespaces, loop devices). Drop it after
/// the runtime, so that in-process backends are gone first.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Cell processes by name; a new one under a taken name replaces (kills) the old one.
    pub cells: BTreeMap<String, CellProcess>,
    /// Backends whose data dirs are cleaned with `Backend::destroy_all`.
    pub backends: Vec<kiln_containers::Config>,
}

impl Leftovers {
    /// Leftovers of these backends (none is made yet).
    pub fn new(backends: Vec<kiln_containers::Config>) -> Leftovers {
        Leftovers {
            cells: BTreeMap::new(),
            backends,
        }
    }

    /// Kills the cell processes and destroys what the backends hold; what could not be
    /// cleaned, one message each (nothing left: empty).
    pub fn clean(&mut self) -> Vec<String> {
        for (name, mut p) in std::mem::take(&mut self.cells) {
            if std::thread::panicking() {
                eprintln!("--- {name}'s log ---\n{}", p.log());
            }
            p.kill();
        }
        let mut failures = Vec::new();
        for c in std::mem::take(&mut self.backends) {
            if c.data_dir.exists() {
                if let Err(e) = Backend::destroy_all(&c) {
                    eprintln!("cleaning up {}: {e}", c.data_dir.display());
                    failures.push(format!("{}: {e}", c.data_dir.display()));
                }
            }
        }
        failures
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Resolves on SIGINT or SIGTERM (a benchmark then stops and cleans up); its name.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// A zip holding only `Procfile`.
pub fn procfile_zip(procfile: &str) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("Procfile", zip::write::SimpleFileOptions::default())
        .expect("a zip entry in memory");
    w.write_all(procfile.as_bytes()).expect("writing to memory");
    w.finish().expect("a zip in memory").into_inner()
}

/// Sends `r`: (status, body as JSON, or as a JSON string when it is not JSON); status 0 and
/// the error when nothing answered.
pub async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
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

/// What [`Platform::start`] needs.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// Where everything keeps its data (the controller's under `cc/`).
    pub dir: &'a Path,
    /// The NATS server.
    pub nats_url: &'a str,
    /// Names the stager (`<name>-stager`).
    pub name: &'a str,
    /// Apps get routes `<app>.<domain>`.
    pub domain: &'a str,
    /// The stager backend's test index ([`backend_config`]).
    pub stager: u32,
    /// The stacks the stager imports and stages on (`&["tiny"]` for most).
    pub stager_stacks: &'a [&'a str],
    /// The controller's lost-cell timeout, ms (none: its default).
    pub cell_ttl_ms: Option<u64>,
}

/// The controller, a stager and the router in this process, and an admin token. The cells
/// are the caller's. Everything stops with the runtime; [`Platform::stop`] stops the router
/// first.
#[derive(Debug)]
pub struct Platform {
    /// The controller's API, `http://127.0.0.1:<port>`.
    pub cc_url: String,
    /// The router's HTTP listener, `http://127.0.0.1:<port>`.
    pub router: String,
    /// An admin's access token.
    pub token: String,
    /// The client everything is asked with.
    pub http: reqwest::Client,
    /// Apps' routes are `<app>.<domain>`.
    pub domain: String,
    /// The stager's backend (idle between builds), for a benchmark's baseline on the same
    /// stacks.
    pub stager_backend: Backend,
    router_server: kiln_router::Started,
}

impl Platform {
    /// Starts the controller (SQLite, convergence without its settle delay), writes its
    /// internal credential to [`token_file`], starts a stager on the stacks of
    /// `stager_stacks` (the backend of [`backend_config`]`(dir, stager)`; each stack built
    /// once per machine) and the router, and logs in as admin.
    pub async fn start(setup: Setup<'_>) -> Result<Platform, String> {
        Self::start_with(setup, Vec::new()).await
    }

    /// [`Platform::start`] with a controller that may pull images from `registries`.
    pub async fn start_with(
        setup: Setup<'_>,
        registries: Vec<kiln_cloud_controller::config::RegistryAccess>,
    ) -> Result<Platform, String> {
        let dir = setup.dir;
        let mut config = kiln_cloud_controller::Config::new(dir.join("cc"));
        config.listen = "127.0.0.1:0".parse().expect("an address");
        config.nats_url = setup.nats_url.to_string();
        config.default_stack = "tiny".into();
        config.default_domain = setup.domain.into();
        config.converge_settle_ms = 0;
        config.cell_ttl_ms = setup.cell_ttl_ms;
        config.registries = registries;
        let cc = kiln_cloud_controller::start(config)
            .await
            .map_err(|e| format!("starting the controller: {e}"))?;
        let cc_url = format!("http://{}", cc.addr);
        let internal =
            kiln_cloud_controller::internal_token(&dir.join("cc")).map_err(|e| e.to_string())?;
        std::fs::write(token_file(dir), &internal).map_err(|e| e.to_string())?;

        let stager_backend = Backend::new(backend_config(dir, setup.stager))
            .await
            .map_err(|e| format!("the stager's backend: {e}"))?;
        for &stack in setup.stager_stacks {
            let name = stack.to_string();
            let layout = tokio::task::spawn_blocking(move || kiln_rootfs::recipes::cached(&name))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("the {stack} stack: {e}"))?;
            stager_backend
                .import_stack(&layout.dir, stack)
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut settings = kiln_stager::service::Settings::new(
            &format!("{}-stager", setup.name),
            setup.stager_stacks.iter().map(|s| s.to_string()).collect(),
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
        );
        settings.token = Some(kiln_stager::service::Token::new(&internal));
        settings.work_dir = dir.join("stager");
        std::fs::create_dir_all(&settings.work_dir).map_err(|e| e.to_string())?;
        let client = async_nats::connect(setup.nats_url)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(kiln_stager::service::run(
            client,
            stager_backend.clone(),
            settings,
            std::future::pending::<()>(),
        ));

        let router_server = kiln_router::start(kiln_router::Config {
            listen: "127.0.0.1:0".parse().expect("an address"),
            status_listen: "127.0.0.1:0".parse().expect("an address"),
            nats_url: setup.nats_url.to_string(),
            ..kiln_router::Config::default()
        })
        .await
        .map_err(|e| format!("starting the router: {e}"))?;

        let http = reqwest::Client::new();
        let password =
            std::fs::read_to_string(dir.join("cc/admin-password")).map_err(|e| e.to_string())?;
        let (_, tokens) = send(http.post(format!("{cc_url}/oauth/token")).form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password.trim()),
        ]))
        .await;
        Ok(Platform {
            cc_url,
            router: format!("http://{}", router_server.addr),
            token: tokens["access_token"]
                .as_str()
                .ok_or("no token")?
                .to_string(),
            http,
            domain: setup.domain.to_string(),
            stager_backend,
            router_server,
        })
    }

    /// Stops the router (the controller and the stager go with the runtime).
    pub fn stop(&self) {
        self.router_server.shutdown();
    }

    /// The route of app `name`: `<name>.<domain>`.
    pub fn host(&self, name: &str) -> String {
        format!("{name}.{}", self.domain)
    }

    /// A request to the controller's API, with the admin token.
    pub fn call(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.cc_url))
            .bearer_auth(&self.token)
    }

    /// GET `path` of app host `host` through the router: (status, body); 0 and the error when
    /// nothing answered within 5 s.
    pub async fn through_router(&self, host: &str, path: &str) -> (u16, String) {
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

    /// The web process's instances as `GET /v3/processes/{guid}/stats` lists them.
    pub async fn stats(&self, app: &str) -> Vec<Value> {
        let (_, process) =
            send(self.call(Method::GET, &format!("/v3/apps/{app}/processes/web"))).await;
        let guid = process["guid"].as_str().unwrap_or_default().to_string();
        let (_, stats) = send(self.call(Method::GET, &format!("/v3/processes/{guid}/stats"))).await;
        stats["resources"].as_array().cloned().unwrap_or_default()
    }

    /// The cells as `GET /v3/cells` shows them, by id.
    pub async fn cells(&self) -> Result<BTreeMap<String, Value>, String> {
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
    pub async fn cells_until(
        &self,
        what: &str,
        within: Duration,
        ok: impl Fn(&BTreeMap<String, Value>) -> bool,
    ) -> Result<BTreeMap<String, Value>, String> {
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

    /// Waits until the web process has `n` instances, every one RUNNING with its port in
    /// the range of test index `on` if given; (instance guid, port) of each.
    pub async fn running(
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

    /// Scales the web process to `instances`.
    pub async fn scale(&self, app: &str, instances: u32) -> Result<(), String> {
        self.scale_process(app, json!({ "instances": instances }))
            .await
    }

    /// Sets the web process's memory and disk limits, MiB.
    pub async fn set_limits(&self, app: &str, memory_mb: u64, disk_mb: u64) -> Result<(), String> {
        self.scale_process(
            app,
            json!({ "memory_in_mb": memory_mb, "disk_in_mb": disk_mb }),
        )
        .await
    }

    async fn scale_process(&self, app: &str, body: Value) -> Result<(), String> {
        let (status, answer) = send(
            self.call(
                Method::POST,
                &format!("/v3/apps/{app}/processes/web/actions/scale"),
            )
            .json(&body),
        )
        .await;
        if status != 200 {
            return Err(format!("scale {body}: {status} {answer}"));
        }
        Ok(())
    }

    /// `POST /v3/apps/{app}/actions/<action>` (`start`, `stop`, `restart`).
    pub async fn app_action(&self, app: &str, action: &str) -> Result<(), String> {
        let (status, body) =
            send(self.call(Method::POST, &format!("/v3/apps/{app}/actions/{action}"))).await;
        if status != 200 {
            return Err(format!("{action}: {status} {body}"));
        }
        Ok(())
    }

    /// Creates app `name` in the first space, uploads a Procfile app, stages it and sets its
    /// droplet; the app's guid. It is not started.
    pub async fn create_and_stage(&self, name: &str, procfile: &str) -> Result<String, String> {
        let (_, spaces) = send(self.call(Method::GET, "/v3/spaces")).await;
        let space = spaces["resources"][0]["guid"].clone();
        let (status, app) =
            send(self.call(Method::POST, "/v3/apps").json(
                &json!({"name": name, "relationships": {"space": {"data": {"guid": space}}}}),
            ))
            .await;
        if status != 201 {
            return Err(format!("create app: {status} {app}"));
        }
        let app = app["guid"].as_str().unwrap_or_default().to_string();
        let (_, package) = send(
            self.call(Method::POST, "/v3/packages")
                .json(&json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}})),
        )
        .await;
        let package = package["guid"].as_str().unwrap_or_default().to_string();
        let form = reqwest::multipart::Form::new().part(
            "bits",
            reqwest::multipart::Part::bytes(procfile_zip(procfile)).file_name("app.zip"),
        );
        let (status, body) = send(
            self.call(Method::POST, &format!("/v3/packages/{package}/upload"))
                .multipart(form),
        )
        .await;
        if body["state"] != "READY" {
            return Err(format!("upload: {status} {body}"));
        }
        let (status, build) = send(
            self.call(Method::POST, "/v3/builds")
                .json(&json!({"package": {"guid": package}})),
        )
        .await;
        if status != 201 {
            return Err(format!("build: {status} {build}"));
        }
        let build_guid = build["guid"].as_str().unwrap_or_default().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let build = loop {
            let (_, b) = send(self.call(Method::GET, &format!("/v3/builds/{build_guid}"))).await;
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
            self.call(
                Method::PATCH,
                &format!("/v3/apps/{app}/relationships/current_droplet"),
            )
            .json(&json!({"data": {"guid": droplet}})),
        )
        .await;
        if status != 200 {
            return Err(format!("set droplet: {status} {body}"));
        }
        Ok(app)
    }

    /// [`Platform::create_and_stage`], then starts the app; its guid.
    pub async fn push(&self, name: &str, procfile: &str) -> Result<String, String> {
        let app = self.create_and_stage(name, procfile).await?;
        self.app_action(&app, "start").await?;
        Ok(app)
    }

    /// Waits until `n` different answers to `/id.txt` came through the router for `host`;
    /// the answers.
    pub async fn wait_for_answers(
        &self,
        host: &str,
        n: usize,
        within: Duration,
    ) -> Result<BTreeSet<String>, String> {
        let mut answered = BTreeSet::new();
        let deadline = Instant::now() + within;
        while answered.len() < n {
            let (status, body) = self.through_router(host, "/id.txt").await;
            if status == 200 {
                answered.insert(body.trim().to_string());
            }
            if Instant::now() > deadline {
                return Err(format!("answering through the router: {answered:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(answered)
    }
}

/// GETs `/id.txt` through the router every 20 ms until finished; (ok, failures).
#[derive(Debug)]
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl RequestLoop {
    /// Starts asking `router` for app host `host`.
    pub fn start(router: &str, host: &str) -> RequestLoop {
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

    /// Stops it: (requests answered 200, the failures).
    pub async fn finish(self) -> Result<(usize, Vec<String>), String> {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.task.await.map_err(|e| e.to_string())?;
        Ok((self.ok.load(Ordering::SeqCst), failures))
    }
}
