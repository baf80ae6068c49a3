//! Running apps end to end: a controller, NATS, a stager, an executor cell and the router, all
//! real. A Procfile app on tiny is pushed and started, answers through the router, is scaled
//! to three instances that all answer, restarts rolling under a steady request loop without a
//! failed request, stops (its route goes) and is deleted (its containers go). Test indexes 55
//! (the stager's backend: 10.244.55.0/26, ports 41100-41119) and 56 (the cell's:
//! 10.244.56.0/26, ports 41120-41139).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_containers::{Backend, Config, Recovery};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::{json, Value};

const DOMAIN: &str = "apps.e2e.test";
const PROCFILE: &str = "web: sh -c 'mkdir -p $HOME/www && echo \"$CF_INSTANCE_INDEX $CF_INSTANCE_GUID\" > $HOME/www/id.txt && exec httpd -f -p 0.0.0.0:$PORT -h $HOME/www'\n";

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

/// The platform of the test; everything it started goes when it is dropped.
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

    /// Waits until the web process has `n` RUNNING instances; their instance guids.
    async fn running(
        &self,
        app: &str,
        n: usize,
        within: Duration,
    ) -> Result<BTreeSet<String>, String> {
        let deadline = Instant::now() + within;
        loop {
            let stats = self.stats(app).await;
            let running: BTreeSet<String> = stats
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
}

#[test]
fn a_pushed_app_runs_scales_restarts_rolling_and_goes_away() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let dir = tempfile::tempdir().unwrap();
    let (stager_config, cell_config) = (
        backend_config(dir.path(), 55),
        backend_config(dir.path(), 56),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let nats = Nats::start();
    let result = rt.block_on(scenario(dir.path(), &nats, &stager_config, &cell_config));
    // The runtime first (every task with it), then what the backends still hold.
    drop(rt);
    let mut leaks = Vec::new();
    for c in [&stager_config, &cell_config] {
        if let Err(e) = Backend::destroy_all(c) {
            eprintln!("LEAK: cleaning up {}: {e}", c.data_dir.display());
            leaks.push(format!("{}: {e}", c.data_dir.display()));
        }
    }
    result.unwrap_or_else(|e| panic!("{e}"));
    assert!(leaks.is_empty(), "LEAK: cleaning up failed: {leaks:?}");
}

async fn scenario(
    dir: &std::path::Path,
    nats: &Nats,
    stager_config: &Config,
    cell_config: &Config,
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

    let tiny = kiln_rootfs::recipes::cached("tiny").map_err(|e| e.to_string())?;
    let stager_backend = Backend::new(stager_config.clone())
        .await
        .map_err(|e| e.to_string())?;
    stager_backend
        .import_stack(&tiny.dir, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let mut settings = kiln_stager::service::Settings::new(
        "e2e-run-stager",
        vec!["tiny".into()],
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
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

    let cell_backend = Backend::new(cell_config.clone())
        .await
        .map_err(|e| e.to_string())?;
    kiln_executor::import_stack(&cell_backend, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let token_file = dir.join("internal-token");
    std::fs::write(&token_file, &internal).map_err(|e| e.to_string())?;
    let executor_config = kiln_executor::Config {
        cell_id: "e2e-cell".into(),
        zone: "z1".into(),
        stacks: vec!["tiny".into()],
        memory_mb: 2048,
        disk_mb: 8192,
        max_containers: 6,
        data_dir: dir.join("cell"),
        stacks_dir: cell_config.stacks_dir.clone(),
        nats_url: nats.url.clone(),
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
    let client = async_nats::connect(&nats.url)
        .await
        .map_err(|e| e.to_string())?;
    let executor = kiln_executor::Executor::start(executor_config, cell_backend, client)
        .await
        .map_err(|e| e.to_string())?;

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
    let app = push(&p, "hello").await?;
    let host = format!("hello.{DOMAIN}");

    // Started: the instance becomes RUNNING and answers through the router.
    let first = p.running(&app, 1, Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = p.through_router(&host, "/id.txt").await;
        if status == 200 && body.starts_with("0 ") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the app does not answer through the router: {status} {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Scaled to three: three instances, each answering.
    let (status, body) = send(
        p.call(
            Method::POST,
            &format!("/v3/apps/{app}/processes/web/actions/scale"),
        )
        .json(&json!({"instances": 3})),
    )
    .await;
    if status != 200 {
        return Err(format!("scale: {status} {body}"));
    }
    let three = p.running(&app, 3, Duration::from_secs(60)).await?;
    if !three.is_superset(&first) {
        return Err("scaling up replaced the first instance".into());
    }
    let mut answered = BTreeSet::new();
    for _ in 0..60 {
        let (status, body) = p.through_router(&host, "/id.txt").await;
        if status == 200 {
            answered.insert(body.trim().to_string());
        }
        if answered.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let indexes: BTreeSet<&str> = answered
        .iter()
        .filter_map(|a| a.split(' ').next())
        .collect();
    if indexes != BTreeSet::from(["0", "1", "2"]) {
        return Err(format!(
            "instances answering through the router: {answered:?}"
        ));
    }

    // Restarted rolling under a steady request loop: every instance replaced, no request lost.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looping = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (router, host) = (p.router.clone(), host.clone());
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
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        failures.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };
    let (status, body) =
        send(p.call(Method::POST, &format!("/v3/apps/{app}/actions/restart"))).await;
    if status != 200 {
        return Err(format!("restart: {status} {body}"));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = p.running(&app, 3, Duration::from_secs(60)).await?;
        if now.is_disjoint(&three) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not every instance was replaced: {now:?} (before {three:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let failures = looping.await.map_err(|e| e.to_string())?;
    if failed.load(Ordering::SeqCst) > 0 || ok.load(Ordering::SeqCst) < 10 {
        return Err(format!(
            "rolling restart: {} ok, {} failed: {failures:?}",
            ok.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst)
        ));
    }

    // Stopped: the route goes (the router answers 404 unknown_route), the containers go.
    let (status, body) = send(p.call(Method::POST, &format!("/v3/apps/{app}/actions/stop"))).await;
    if status != 200 {
        return Err(format!("stop: {status} {body}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _) = p.through_router(&host, "/id.txt").await;
        if status == 404 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the stopped app still routes: {status}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = send(p.call(Method::DELETE, &format!("/v3/apps/{app}"))).await;
    if status != 202 {
        return Err(format!("delete: {status}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while executor.cell_state().available_containers != 6 {
        if Instant::now() > deadline {
            return Err(format!(
                "containers left on the cell: {:?}",
                executor.cell_state()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The app's log has its staging, cell and app lines.
    router.shutdown();
    executor.shutdown().await;
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
