//! The push sequence against the real parts: a controller (blobstore; SQLite in one test,
//! PostgreSQL in the other), a NATS server, and a stager with a container backend on the tiny
//! stack. Test indexes 59 (SQLite: address pool 10.244.59.0/26, ports 41180-41199) and 49
//! (PostgreSQL: 10.244.49.0/26, ports 40980-40999).

use std::time::{Duration, Instant};

use kiln_containers::{Backend, Config, Recovery};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null),
    )
}

fn staticfile_zip() -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("index.html", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(b"<h1>Hello from a push</h1>").unwrap();
    w.finish().unwrap().into_inner()
}

#[tokio::test]
async fn push_stages_on_a_real_stager_and_the_droplet_is_downloadable_and_correct() {
    push_on(59, None).await;
}

#[tokio::test]
async fn push_with_postgresql_stages_and_the_droplet_is_downloadable_and_correct() {
    push_on(49, Some(kiln_testkit::postgres_database())).await;
}

/// The push sequence with a stager backend of test index `index`, and the controller on
/// `database_url` (None: SQLite).
async fn push_on(index: u32, database_url: Option<String>) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();

    // The controller.
    let mut config = kiln_cloud_controller::Config::new(dir.path().join("cc"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.nats_url = nats.url.clone();
    config.default_stack = "tiny".into();
    config.database_url = database_url;
    let cc = kiln_cloud_controller::start(config)
        .await
        .expect("controller starts");
    let url = format!("http://{}", cc.addr);
    let internal = kiln_cloud_controller::internal_token(&dir.path().join("cc")).unwrap();

    // A stager on its own backend with the tiny stack.
    let backend_config = Config {
        data_dir: dir.path().join("stager"),
        stacks_dir: dir.path().join("stacks"),
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: u16::try_from(40000 + 20 * index).unwrap(),
        port_range_size: 20,
        uid_range_start: (1 << 28) + index * (16 << 16),
        store_size_bytes: 4 << 30,
        max_containers: 4,
        recovery: Recovery::Destroy,
        ..Config::default()
    };
    let _cleanup = CleanUpOnPanic(&backend_config);
    let backend = Backend::new(backend_config.clone()).await.expect("backend");
    let tiny = kiln_rootfs::recipes::cached("tiny").expect("tiny stack");
    backend
        .import_stack(&tiny.dir, "tiny")
        .await
        .expect("import tiny");
    let client = async_nats::connect(&nats.url).await.unwrap();
    let mut settings = kiln_stager::service::Settings::new(
        "e2e-stager",
        vec!["tiny".into()],
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
    );
    settings.token = Some(kiln_stager::service::Token::new(&internal));
    settings.work_dir = dir.path().to_path_buf();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stager = tokio::spawn(kiln_stager::service::run(
        client,
        backend,
        settings,
        async {
            let _ = stopped.await;
        },
    ));

    let result = push(&url, &dir.path().join("cc")).await;

    let _ = stop.send(());
    let summary = tokio::time::timeout(Duration::from_secs(60), &mut stager).await;
    if summary.is_err() {
        // Still running: end it, so that it drops the backend before the clean-up.
        stager.abort();
        let _ = (&mut stager).await;
    }
    cc.server.abort();
    let cleaned = Backend::destroy_all(&backend_config);
    if let Err(e) = &cleaned {
        eprintln!("LEAK: cleaning up the stager's backend: {e}");
    }
    result.unwrap_or_else(|e| panic!("{e}"));
    cleaned.unwrap_or_else(|e| panic!("LEAK: cleaning up the stager's backend: {e}"));
    let summary = summary
        .expect("the stager stops")
        .expect("stager task")
        .expect("stager ran");
    assert_eq!(summary.succeeded, 1);
}

/// create app -> package -> upload -> build -> STAGED -> droplet -> current droplet -> start.
async fn push(url: &str, cc_dir: &std::path::Path) -> Result<(), String> {
    let http = reqwest::Client::new();
    let password =
        std::fs::read_to_string(cc_dir.join("admin-password")).map_err(|e| e.to_string())?;
    let (_, tokens) = send(http.post(format!("{url}/oauth/token")).form(&[
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", password.trim()),
    ]))
    .await;
    let token = tokens["access_token"]
        .as_str()
        .ok_or("no token")?
        .to_string();
    let call = |m: Method, p: &str| http.request(m, format!("{url}{p}")).bearer_auth(&token);
    let (_, spaces) = send(call(Method::GET, "/v3/spaces")).await;
    let space = spaces["resources"][0]["guid"].clone();
    let (status, app) = send(
        call(Method::POST, "/v3/apps")
            .json(&json!({"name": "hello", "relationships": {"space": {"data": {"guid": space}}}})),
    )
    .await;
    if status != 201 {
        return Err(format!("create app: {status} {app}"));
    }
    let app_guid = app["guid"].as_str().unwrap_or_default().to_string();
    let (_, package) = send(
        call(Method::POST, "/v3/packages")
            .json(&json!({"type": "bits", "relationships": {"app": {"data": {"guid": app_guid}}}})),
    )
    .await;
    let package_guid = package["guid"].as_str().unwrap_or_default().to_string();
    let form = reqwest::multipart::Form::new().part(
        "bits",
        reqwest::multipart::Part::bytes(staticfile_zip()).file_name("app.zip"),
    );
    let (status, package) =
        send(call(Method::POST, &format!("/v3/packages/{package_guid}/upload")).multipart(form))
            .await;
    if package["state"] != "READY" {
        return Err(format!("upload: {status} {package}"));
    }
    let (status, build) =
        send(call(Method::POST, "/v3/builds").json(&json!({"package": {"guid": package_guid}})))
            .await;
    if status != 201 {
        return Err(format!("create build: {status} {build}"));
    }
    let build_guid = build["guid"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let build = loop {
        let (_, b) = send(call(Method::GET, &format!("/v3/builds/{build_guid}"))).await;
        if b["state"] != "STAGING" || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if build["state"] != "STAGED" {
        return Err(format!("the build did not stage: {build}"));
    }
    let droplet_guid = build["droplet"]["guid"]
        .as_str()
        .ok_or("no droplet")?
        .to_string();
    let (_, droplet) = send(call(Method::GET, &format!("/v3/droplets/{droplet_guid}"))).await;
    if droplet["process_types"]["web"]
        .as_str()
        .is_none_or(|w| !w.contains("httpd"))
    {
        return Err(format!("droplet process types: {droplet}"));
    }
    let bytes = call(
        Method::GET,
        &format!("/v3/droplets/{droplet_guid}/download"),
    )
    .send()
    .await
    .map_err(|e| e.to_string())?
    .bytes()
    .await
    .map_err(|e| e.to_string())?;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    if droplet["checksum"]["value"] != sha.as_str() {
        return Err(format!(
            "downloaded droplet sha256 {sha} != {}",
            droplet["checksum"]
        ));
    }
    let (status, rel) = send(
        call(
            Method::PATCH,
            &format!("/v3/apps/{app_guid}/relationships/current_droplet"),
        )
        .json(&json!({"data": {"guid": droplet_guid}})),
    )
    .await;
    if status != 200 {
        return Err(format!("set current droplet: {status} {rel}"));
    }
    let (status, started) = send(call(
        Method::POST,
        &format!("/v3/apps/{app_guid}/actions/start"),
    ))
    .await;
    if started["state"] != "STARTED" {
        return Err(format!("start: {status} {started}"));
    }
    Ok(())
}

/// Destroys what the stager's backend made if the test panics before its own clean-up (the
/// backend may have mounted its store).
struct CleanUpOnPanic<'a>(&'a Config);

impl Drop for CleanUpOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Err(e) = Backend::destroy_all(self.0) {
                eprintln!("LEAK: cleaning up {}: {e}", self.0.data_dir.display());
            }
        }
    }
}
