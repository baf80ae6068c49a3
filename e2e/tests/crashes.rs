//! Crashes and a bus outage end to end: a controller, NATS, a stager, an executor cell and the
//! router, all real, on tiny.
//!
//! - An app that boots, sleeps a second and exits 3 is restarted at once three times and then
//!   held back (Diego's back-off): its stats say CRASHED with the exit status and "restarting
//!   in N s" (N about 30), there are four `audit.app.process.crash` events, and its log has
//!   the app's own lines, the cell's and the controller's `API` crash lines.
//! - An app given 32 MB that reads 100 MB into a shell variable is killed by the kernel's
//!   OOM killer in its container: the crash events, the log and the stats say so.
//! - NATS is killed under a running app and started again on the same port 9 s later: the
//!   router keeps its table, so the app answers through it all along. async-nats clients
//!   reconnect on their own, waiting 0, 2, 4, ... ms up to 4 s between attempts (so here
//!   about 12 s after the kill: longer than the 10 s after which a silent cell is lost),
//!   subscribe again and send what was published meanwhile. The controller does not count
//!   its own disconnection against the cell: its instance is not started a second time. Once
//!   every client is back, a scale to two starts an instance whose route registers: both
//!   answer through the router.
//!
//! Test indexes 53 (the stager's backend: 10.244.53.0/26, ports 41060-41079) and 54 (the
//! cell's: 10.244.54.0/26, ports 41080-41099).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_containers::{Backend, Config, Recovery};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::{json, Value};

const DOMAIN: &str = "apps.e2e.test";
const CRASHER: &str = "web: sh -c 'echo booting; sleep 1; echo leaving >&2; exit 3'\n";
const HOG: &str = "web: sh -c 'echo hogging; x=$(head -c 100000000 /dev/zero | tr \"\\0\" a); echo survived; sleep 100'\n";
const STEADY: &str = "web: sh -c 'mkdir -p $HOME/www && echo \"$CF_INSTANCE_INDEX $CF_INSTANCE_GUID\" > $HOME/www/id.txt && exec httpd -f -p 0.0.0.0:$PORT -h $HOME/www'\n";

fn backend_config(dir: &std::path::Path, index: u32) -> Config {
    Config {
        data_dir: dir.join(format!("containers-{index}")),
        stacks_dir: dir.join(format!("stacks-{index}")),
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: u16::try_from(40000 + 20 * index).unwrap(),
        port_range_size: 20,
        uid_range_start: (1 << 28) + index * (16 << 16),
        store_size_bytes: 4 << 30,
        max_containers: 6,
        recovery: Recovery::Destroy,
        ..Config::default()
    }
}

fn app_zip(procfile: &str) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("Procfile", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(procfile.as_bytes()).unwrap();
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

/// The platform of the test.
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

    /// GET `path` of app host `host` through the router: (status, body).
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

    /// Waits until the web process has `n` RUNNING instances; their guids by index.
    async fn running(&self, app: &str, n: usize, within: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + within;
        loop {
            let stats = self.stats(app).await;
            let running: Vec<String> = stats
                .iter()
                .filter(|s| s["state"] == "RUNNING")
                .filter_map(|s| s["instance_guid"].as_str().map(str::to_string))
                .collect();
            if stats.len() == n && running.len() == n {
                return Ok(running);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not {n} RUNNING instances: {}",
                    Value::Array(stats)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The app's `audit.app.process.crash` events, oldest first.
    async fn crash_events(&self, app: &str) -> Vec<Value> {
        let (_, events) = send(self.call(
            Method::GET,
            &format!(
                "/v3/audit_events?types=audit.app.process.crash&target_guids={app}&per_page=100"
            ),
        ))
        .await;
        events["resources"].as_array().cloned().unwrap_or_default()
    }

    /// The app's recent log lines as `SOURCE message`.
    async fn log(&self, app: &str) -> Vec<String> {
        let (_, lines) = send(self.call(Method::GET, &format!("/v3/apps/{app}/logs/recent"))).await;
        lines["resources"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|l| {
                        format!(
                            "{} {}",
                            l["source"].as_str().unwrap_or_default(),
                            l["message"].as_str().unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until index 0 of `app` is CRASHED and held back: 4 crashes, the next restart
    /// in about 30 s. Its stats entry.
    async fn held_back(&self, app: &str, within: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + within;
        loop {
            let stats = self.stats(app).await;
            if let Some(s) = stats.first() {
                let details = s["details"].as_str().unwrap_or_default();
                if s["state"] == "CRASHED" && details.contains("(4 crashes;") {
                    return Ok(s.clone());
                }
                if details.contains("(5 crashes;") {
                    return Err(format!("restarted too soon after 4 crashes: {s}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{app} not CRASHED after 4 crashes: {}",
                    Value::Array(stats)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// "… restarting in N s)": N.
fn restart_in(details: &str) -> Option<u64> {
    let rest = details.split("restarting in ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

#[test]
fn crashes_back_off_an_oom_says_so_and_a_nats_restart_keeps_routes() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let dir = tempfile::tempdir().unwrap();
    let (stager_config, cell_config) = (
        backend_config(dir.path(), 53),
        backend_config(dir.path(), 54),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut nats = Some(Nats::start());
    let result = rt.block_on(scenario(
        dir.path(),
        &mut nats,
        &stager_config,
        &cell_config,
    ));
    // The runtime first (every task with it), then what the backends still hold, then NATS.
    drop(rt);
    let mut leaks = Vec::new();
    for c in [&stager_config, &cell_config] {
        if let Err(e) = Backend::destroy_all(c) {
            eprintln!("LEAK: cleaning up {}: {e}", c.data_dir.display());
            leaks.push(format!("{}: {e}", c.data_dir.display()));
        }
    }
    drop(nats);
    result.unwrap_or_else(|e| panic!("{e}"));
    assert!(leaks.is_empty(), "LEAK: cleaning up failed: {leaks:?}");
}

async fn scenario(
    dir: &std::path::Path,
    nats: &mut Option<Nats>,
    stager_config: &Config,
    cell_config: &Config,
) -> Result<(), String> {
    let nats_url = nats.as_ref().ok_or("no NATS")?.url.clone();
    let mut config = kiln_cloud_controller::Config::new(dir.join("cc"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.nats_url = nats_url.clone();
    config.default_stack = "tiny".into();
    config.default_domain = DOMAIN.into();
    config.converge_settle_ms = 0;
    let cc = kiln_cloud_controller::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let cc_url = format!("http://{}", cc.addr);
    let internal =
        kiln_cloud_controller::internal_token(&dir.join("cc")).map_err(|e| e.to_string())?;

    let tiny = kiln_rootfs::recipes::cached("tiny").map_err(|e| e.to_string())?;
    let stager_backend = Backend::new(stager_config.clone())
        .await
        .map_err(|e| e.to_string())?;
    stager_backend
        .import_stack(&tiny.dir, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let mut settings = kiln_stager::service::Settings::new(
        "e2e-crashes-stager",
        vec!["tiny".into()],
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
    );
    settings.token = Some(kiln_stager::service::Token::new(&internal));
    settings.work_dir = dir.join("stager");
    std::fs::create_dir_all(&settings.work_dir).map_err(|e| e.to_string())?;
    let client = async_nats::connect(&nats_url)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(kiln_stager::service::run(
        client,
        stager_backend,
        settings,
        std::future::pending::<()>(),
    ));

    let cell_backend = Backend::new(cell_config.clone())
        .await
        .map_err(|e| e.to_string())?;
    kiln_executor::import_stack(&cell_backend, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let token_file = dir.join("internal-token");
    std::fs::write(&token_file, &internal).map_err(|e| e.to_string())?;
    let executor_config = kiln_executor::Config {
        cell_id: "e2e-crash-cell".into(),
        zone: "z1".into(),
        stacks: vec!["tiny".into()],
        memory_mb: 2048,
        disk_mb: 8192,
        max_containers: 6,
        data_dir: dir.join("cell"),
        stacks_dir: cell_config.stacks_dir.clone(),
        nats_url: nats_url.clone(),
        internal_url: None,
        internal_token_file: Some(token_file),
        host_ip: "127.0.0.1".into(),
        droplet_cache_mb: 64,
        network_pool: cell_config.network_pool.clone(),
        port_range_start: cell_config.port_range_start,
        port_range_size: cell_config.port_range_size,
        uid_range_start: cell_config.uid_range_start,
        store_size_bytes: cell_config.store_size_bytes,
        timings: kiln_executor::Timings {
            starting_probe_interval_ms: 200,
            stop_grace_secs: 2,
            ..kiln_executor::Timings::default()
        },
    };
    let client = async_nats::connect(&nats_url)
        .await
        .map_err(|e| e.to_string())?;
    let executor = kiln_executor::Executor::start(executor_config, cell_backend, client)
        .await
        .map_err(|e| e.to_string())?;

    let router = kiln_router::start(kiln_router::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        status_listen: "127.0.0.1:0".parse().unwrap(),
        nats_url: nats_url.clone(),
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

    // Both crashing apps at once: their crash loops overlap.
    let (crasher, hog) = tokio::join!(
        push(&p, "crasher", CRASHER, None),
        push(&p, "hog", HOG, Some(32))
    );
    let (crasher, hog) = (crasher?, hog?);
    let (crashed, oomed) = tokio::join!(
        p.held_back(&crasher, Duration::from_secs(90)),
        p.held_back(&hog, Duration::from_secs(90))
    );
    let (crashed, oomed) = (crashed?, oomed?);
    check_crasher(&p, &crasher, &crashed).await?;
    check_hog(&p, &hog, &oomed).await?;
    for app in [&crasher, &hog] {
        let (status, _) = send(p.call(Method::DELETE, &format!("/v3/apps/{app}"))).await;
        if status != 202 {
            return Err(format!("delete: {status}"));
        }
    }

    nats_restart(&p, nats).await?;

    router.shutdown();
    executor.shutdown().await;
    Ok(())
}

/// Retries `check` for up to 5 s (audit events are written, and log lines arrive, a moment
/// after the stats show the crash); its last error.
async fn eventually<F, Fut>(mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The crasher, held back after 4 crashes: stats, events and log.
async fn check_crasher(p: &Platform, app: &str, stat: &Value) -> Result<(), String> {
    let details = stat["details"].as_str().unwrap_or_default();
    if !details.contains("exited with status 3") {
        return Err(format!("the crash reason is not in the stats: {stat}"));
    }
    match restart_in(details) {
        Some(n) if (25..=30).contains(&n) => {}
        _ => return Err(format!("not restarting in about 30 s: {stat}")),
    }
    eventually(|| crasher_events(p, app)).await?;
    eventually(|| crasher_log(p, app)).await?;
    // Held back: no fifth start for now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = p.stats(app).await;
    if stats.first().is_none_or(|s| s["state"] != "CRASHED") || p.crash_events(app).await.len() != 4
    {
        return Err(format!(
            "restarted during its back-off: {}",
            Value::Array(stats)
        ));
    }
    Ok(())
}

/// Four crash events, one per instance, each saying what happened.
async fn crasher_events(p: &Platform, app: &str) -> Result<(), String> {
    let events = p.crash_events(app).await;
    if events.len() != 4 {
        return Err(format!("not 4 crash events: {}", Value::Array(events)));
    }
    for (n, e) in events.iter().enumerate() {
        let d = &e["data"];
        let expected = [
            d["process_type"] == "web",
            d["index"] == 0,
            d["reason"] == "CRASHED",
            d["crash_reason"] == "exit",
            d["exit_status"] == 3,
            d["crash_count"] == n + 1,
            e["actor"]["type"] == "system" && e["actor"]["name"] == "cell",
            e["target"]["guid"] == app,
            d["instance"].as_str().is_some_and(|i| !i.is_empty()),
            d["exit_description"]
                .as_str()
                .is_some_and(|s| s.contains("exited with status 3")),
        ];
        if expected.contains(&false) {
            return Err(format!("crash event {n} ({expected:?}): {e}"));
        }
    }
    let instances: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["data"]["instance"].as_str())
        .collect();
    if instances.len() != 4 {
        return Err(format!(
            "each crash is a new instance: {}",
            Value::Array(events)
        ));
    }
    Ok(())
}

/// The app's own lines, the cell's and the controller's, four times over.
async fn crasher_log(p: &Platform, app: &str) -> Result<(), String> {
    let log = p.log(app).await;
    let has = |prefix: &str, text: &str, n: usize| {
        log.iter()
            .filter(|l| l.starts_with(prefix) && l.contains(text))
            .count()
            >= n
    };
    let wanted = [
        has("APP/PROC/WEB/0 booting", "", 4),
        has("APP/PROC/WEB/0 leaving", "", 4),
        has("CELL ", "exited with status 3", 4),
        has("CELL ", "creating container", 4),
        has(
            "API Process has crashed with type: web, index 0",
            "exited with status 3",
            4,
        ),
        has("API ", "crash_count: 4 (restarting in 30 s)", 1),
    ];
    if wanted.contains(&false) {
        return Err(format!("the crasher's log ({wanted:?}): {log:#?}"));
    }
    Ok(())
}

/// The hog, held back after 4 OOM kills: stats, events and log.
async fn check_hog(p: &Platform, app: &str, stat: &Value) -> Result<(), String> {
    let details = stat["details"].as_str().unwrap_or_default();
    if !details.contains("out of memory") || stat["mem_quota"] != 32 << 20 {
        return Err(format!("no OOM in the stats: {stat}"));
    }
    eventually(|| async {
        let events = p.crash_events(app).await;
        let oom = |e: &Value| {
            e["data"]["crash_reason"] == "oom"
                && e["data"]["exit_status"] == 137
                && e["data"]["exit_description"]
                    .as_str()
                    .is_some_and(|s| s.contains("out of memory"))
        };
        if events.len() != 4 || !events.iter().all(oom) {
            return Err(format!("not 4 OOM crash events: {}", Value::Array(events)));
        }
        Ok(())
    })
    .await?;
    eventually(|| async {
        let log = p.log(app).await;
        let hogging = log
            .iter()
            .filter(|l| *l == "APP/PROC/WEB/0 hogging")
            .count();
        let survived = log.iter().any(|l| l == "APP/PROC/WEB/0 survived");
        let api = log
            .iter()
            .filter(|l| l.starts_with("API Process has crashed") && l.contains("(oom)"))
            .count();
        let cell = log
            .iter()
            .filter(|l| *l == "CELL APP/PROC/WEB/0 exited with status 137 (out of memory)")
            .count();
        if hogging < 4 || survived || api < 4 || cell < 4 {
            return Err(format!("the hog's log: {log:#?}"));
        }
        Ok(())
    })
    .await
}

/// NATS killed and started again under a running app.
async fn nats_restart(p: &Platform, nats: &mut Option<Nats>) -> Result<(), String> {
    let app = push(p, "steady", STEADY, None).await?;
    let host = format!("steady.{DOMAIN}");
    let before = p.running(&app, 1, Duration::from_secs(60)).await?;
    answers(p, &host, &["0"]).await?;

    // The bus goes away (its server killed by its pid); the router keeps its table.
    let port = nats.as_ref().ok_or("no NATS")?.port();
    drop(nats.take());
    let outage = Instant::now() + Duration::from_secs(9);
    let mut served = 0;
    while Instant::now() < outage {
        let (status, body) = p.through_router(&host, "/id.txt").await;
        if status != 200 || !body.starts_with("0 ") {
            return Err(format!(
                "the route failed during the NATS outage: {status} {body}"
            ));
        }
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = tokio::task::spawn_blocking(move || Nats::start_on(port))
        .await
        .map_err(|e| e.to_string())?;
    let url = restarted.url.clone();
    *nats = Some(restarted);

    // Every client is back once the cell advertises and the router says hello again.
    let observer = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
    let mut adverts = observer
        .subscribe(kiln_bus::cell::CELL_ADVERTISE)
        .await
        .map_err(|e| e.to_string())?;
    let mut hellos = observer
        .subscribe(kiln_bus::router::ROUTER_START)
        .await
        .map_err(|e| e.to_string())?;
    let back = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(adverts.next(), hellos.next())
    })
    .await;
    if !matches!(back, Ok((Some(_), Some(_)))) {
        return Err("the cell or the router did not come back to NATS within 20 s".into());
    }
    // The controller reconnects on the same schedule; a moment for it to subscribe again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = p.through_router(&host, "/id.txt").await;
    if status != 200 {
        return Err(format!(
            "the route failed after the NATS restart: {status} {body}"
        ));
    }

    // Registrations go on: a second instance answers through the router too.
    let (status, body) = send(
        p.call(
            Method::POST,
            &format!("/v3/apps/{app}/processes/web/actions/scale"),
        )
        .json(&json!({"instances": 2})),
    )
    .await;
    if status != 200 {
        return Err(format!("scale: {status} {body}"));
    }
    let two = p.running(&app, 2, Duration::from_secs(60)).await?;
    if two[0] != before[0] {
        return Err(format!(
            "the outage replaced the first instance: {before:?} -> {two:?} ({served} requests served during it)"
        ));
    }
    answers(p, &host, &["0", "1"]).await?;
    // Two containers in all: nothing was started twice for the silence of the outage.
    let log = p.log(&app).await;
    let created = log
        .iter()
        .filter(|l| l.starts_with("CELL ") && l.contains("creating container"))
        .count();
    if created != 2 {
        return Err(format!("{created} containers for 2 instances: {log:#?}"));
    }
    let (status, _) = send(p.call(Method::DELETE, &format!("/v3/apps/{app}"))).await;
    if status != 202 {
        return Err(format!("delete: {status}"));
    }
    Ok(())
}

/// Waits until instances of exactly `indexes` answered through the router.
async fn answers(p: &Platform, host: &str, indexes: &[&str]) -> Result<(), String> {
    let wanted: BTreeSet<&str> = indexes.iter().copied().collect();
    let mut answered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = p.through_router(host, "/id.txt").await;
        if status == 200 {
            if let Some(index) = body.split(' ').next() {
                answered.insert(index.to_string());
            }
        }
        let seen: BTreeSet<&str> = answered.iter().map(String::as_str).collect();
        if seen == wanted {
            return Ok(());
        }
        if !seen.is_subset(&wanted) || Instant::now() > deadline {
            return Err(format!(
                "instances answering through the router: {seen:?}, wanted {wanted:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates app `name` with `procfile`, stages it, sets the droplet, gives the web process
/// `memory_mb` if set, and starts it.
async fn push(
    p: &Platform,
    name: &str,
    procfile: &str,
    memory_mb: Option<u32>,
) -> Result<String, String> {
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
        reqwest::multipart::Part::bytes(app_zip(procfile)).file_name("app.zip"),
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
    if let Some(memory) = memory_mb {
        let (status, body) = send(
            p.call(
                Method::POST,
                &format!("/v3/apps/{app}/processes/web/actions/scale"),
            )
            .json(&json!({"memory_in_mb": memory})),
        )
        .await;
        if status != 200 {
            return Err(format!("scale memory: {status} {body}"));
        }
    }
    let (status, body) = send(p.call(Method::POST, &format!("/v3/apps/{app}/actions/start"))).await;
    if status != 200 {
        return Err(format!("start: {status} {body}"));
    }
    Ok(app)
}
