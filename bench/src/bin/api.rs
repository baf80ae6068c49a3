//! `api`: a real controller (SQLite, blobstore, its own `nats-server`) and a real stager on
//! tiny. Measures, with `CLIENTS` concurrent clients: `GET /v3/apps?per_page=100` over 100
//! apps next to `GET /` (no auth, no database) as the baseline, in alternating rounds; whole
//! pushes (create app, package, upload, build until STAGED); and the controller's resident
//! memory growth while a 500 MiB package is uploaded (it must stream, not buffer). `ratio` is
//! the list p50 over the baseline p50.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use kiln_containers::{Backend, Config, Recovery};
use kiln_testkit::Nats;
use serde_json::{json, Value};

const CLIENTS: usize = 8;
const REQUESTS: usize = 400;
const PUSHES: usize = 8;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).map_or(0.0, |d| ms(*d))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let bus = Nats::start();
    let dir = tempfile::tempdir()?;
    let mut config = kiln_cloud_controller::Config::new(dir.path().join("cc"));
    config.listen = "127.0.0.1:0".parse()?;
    config.nats_url = bus.url.clone();
    config.default_stack = "tiny".into();
    config.max_upload_bytes = 600 << 20;
    let cc = kiln_cloud_controller::start(config).await?;
    let url = format!("http://{}", cc.addr);
    let password = cc.admin_password.clone().context("admin password")?;
    let backend_config = Config {
        data_dir: dir.path().join("stager"),
        stacks_dir: dir.path().join("stacks"),
        network_pool: "10.245.2.0/24".into(),
        port_range_start: 45300,
        port_range_size: 50,
        uid_range_start: (3 << 28) + (2 << 26),
        store_size_bytes: 8 << 30,
        recovery: Recovery::Destroy,
        ..Config::default()
    };
    let result = bench(&url, &password, &bus.url, dir.path(), &backend_config).await;
    cc.server.abort();
    Backend::destroy_all(&backend_config).context("cleaning up the stager's backend")?;
    println!("{}", result?);
    Ok(())
}

async fn bench(
    url: &str,
    password: &str,
    nats_url: &str,
    scratch: &std::path::Path,
    backend_config: &Config,
) -> Result<Value> {
    let http = reqwest::Client::new();
    let tokens: Value = http
        .post(format!("{url}/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = tokens["access_token"]
        .as_str()
        .context("token")?
        .to_string();
    let spaces: Value = http
        .get(format!("{url}/v3/spaces"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let space = spaces["resources"][0]["guid"].clone();
    eprintln!("creating 100 apps");
    for i in 0..100 {
        http.post(format!("{url}/v3/apps"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("app-{i}"), "relationships": {"space": {"data": {"guid": space}}}}))
            .send()
            .await?
            .error_for_status()?;
    }

    eprintln!("{REQUESTS} requests of each kind, {CLIENTS} clients, alternating rounds");
    let mut list = Vec::new();
    let mut root = Vec::new();
    let (mut list_wall, mut root_wall) = (Duration::ZERO, Duration::ZERO);
    for round in 0..10 {
        for kind in if round % 2 == 0 {
            ["list", "root"]
        } else {
            ["root", "list"]
        } {
            let path = if kind == "list" {
                "/v3/apps?per_page=100"
            } else {
                "/"
            };
            let t = Instant::now();
            let clients = (0..CLIENTS).map(|_| {
                let (http, token, target) = (http.clone(), token.clone(), format!("{url}{path}"));
                async move {
                    let mut times = Vec::new();
                    for _ in 0..REQUESTS / CLIENTS / 10 {
                        let t = Instant::now();
                        let r = http.get(&target).bearer_auth(&token).send().await?;
                        let status = r.status();
                        r.bytes().await?;
                        if !status.is_success() {
                            bail!("{target}: {status}");
                        }
                        times.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>(times)
                }
            });
            let all: Vec<Duration> = join_all(clients)
                .await
                .into_iter()
                .collect::<Result<Vec<_>>>()?
                .concat();
            if kind == "list" {
                list.extend(all);
                list_wall += t.elapsed();
            } else {
                root.extend(all);
                root_wall += t.elapsed();
            }
        }
    }

    eprintln!(
        "{PUSHES} pushes of a static site through a stager on tiny, {} at a time",
        CLIENTS / 2
    );
    let backend = Backend::new(backend_config.clone()).await?;
    let tiny = tokio::task::spawn_blocking(|| kiln_rootfs::recipes::cached("tiny")).await??;
    backend.import_stack(&tiny.dir, "tiny").await?;
    let internal = kiln_cloud_controller::internal_token(&scratch.join("cc"))?;
    let mut settings = kiln_stager::service::Settings::new(
        "bench-stager",
        vec!["tiny".into()],
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
    );
    settings.token = Some(kiln_stager::service::Token::new(&internal));
    settings.work_dir = scratch.to_path_buf();
    settings.max_stagings = 2;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = async_nats::connect(nats_url).await?;
    let stager = tokio::spawn(kiln_stager::service::run(
        client,
        backend,
        settings,
        async {
            let _ = stopped.await;
        },
    ));
    let t = Instant::now();
    let mut pushes = Vec::new();
    for wave in 0..PUSHES / (CLIENTS / 2) {
        let runs =
            (0..CLIENTS / 2).map(|i| push(&http, url, &token, &space, format!("push-{wave}-{i}")));
        pushes.extend(
            join_all(runs)
                .await
                .into_iter()
                .collect::<Result<Vec<_>>>()?,
        );
    }
    let push_wall = t.elapsed();
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(60), stager).await;

    eprintln!("uploading 500 MiB");
    let app = create_app(&http, url, &token, &space, "big").await?;
    let package = create_package(&http, url, &token, &app).await?;
    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        (0..500).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ));
    let part = reqwest::multipart::Part::stream_with_length(body, 500 << 20).file_name("big.zip");
    let t = Instant::now();
    let r = http
        .post(format!("{url}/v3/packages/{package}/upload"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("bits", part))
        .send()
        .await?;
    let upload_status = r.status().as_u16();
    r.bytes().await?;
    let upload_s = t.elapsed().as_secs_f64();
    sampler.abort();
    let growth_mib = (peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before)) as f64
        / 1024.0;

    let list_p50 = pct(&mut list, 0.5);
    let root_p50 = pct(&mut root, 0.5);
    Ok(json!({
        "bench": "api",
        "clients": CLIENTS,
        "requests": list.len(),
        "baseline": "GET / (no auth, no database), same clients, alternating rounds",
        "baseline_p50_ms": root_p50,
        "baseline_p99_ms": pct(&mut root, 0.99),
        "baseline_rps": (root.len() as f64 / root_wall.as_secs_f64()).round(),
        "list_100_apps_p50_ms": list_p50,
        "list_100_apps_p99_ms": pct(&mut list, 0.99),
        "list_100_apps_rps": (list.len() as f64 / list_wall.as_secs_f64()).round(),
        "ratio": (list_p50 / root_p50.max(0.001) * 100.0).round() / 100.0,
        "push_staticfile_p50_ms": pct(&mut pushes, 0.5),
        "push_staticfile_p99_ms": pct(&mut pushes, 0.99),
        "pushes_per_s": ((PUSHES as f64) / push_wall.as_secs_f64() * 100.0).round() / 100.0,
        "upload_500mib_status": upload_status,
        "upload_500mib_s": (upload_s * 100.0).round() / 100.0,
        "upload_500mib_rss_growth_mib": (growth_mib * 10.0).round() / 10.0,
    }))
}

async fn create_app(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    space: &Value,
    name: &str,
) -> Result<String> {
    let app: Value = http
        .post(format!("{url}/v3/apps"))
        .bearer_auth(token)
        .json(&json!({"name": name, "relationships": {"space": {"data": {"guid": space}}}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(app["guid"].as_str().context("app guid")?.to_string())
}

async fn create_package(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    app: &str,
) -> Result<String> {
    let package: Value = http
        .post(format!("{url}/v3/packages"))
        .bearer_auth(token)
        .json(&json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(package["guid"]
        .as_str()
        .context("package guid")?
        .to_string())
}

/// One push: app, package, upload, build until STAGED; its wall time.
async fn push(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    space: &Value,
    name: String,
) -> Result<Duration> {
    use std::io::Write;
    let t = Instant::now();
    let app = create_app(http, url, token, space, &name).await?;
    let package = create_package(http, url, token, &app).await?;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("index.html", zip::write::SimpleFileOptions::default())?;
    w.write_all(b"<h1>bench</h1>")?;
    let zip = w.finish()?.into_inner();
    http.post(format!("{url}/v3/packages/{package}/upload"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part(
            "bits",
            reqwest::multipart::Part::bytes(zip).file_name("app.zip"),
        ))
        .send()
        .await?
        .error_for_status()?;
    let build: Value = http
        .post(format!("{url}/v3/builds"))
        .bearer_auth(token)
        .json(&json!({"package": {"guid": package}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let guid = build["guid"].as_str().context("build guid")?.to_string();
    loop {
        let b: Value = http
            .get(format!("{url}/v3/builds/{guid}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        match b["state"].as_str() {
            Some("STAGED") => return Ok(t.elapsed()),
            Some("STAGING") => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => bail!("build {guid} of {name}: {b}"),
        }
    }
}
