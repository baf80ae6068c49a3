//! Admin buildpacks end to end: a controller (SQLite, blobstore), a NATS server and a stager
//! with a container backend on the tiny stack. A shell buildpack is uploaded, then apps are
//! staged with it named (it runs although its detect says no), detected first among the
//! admin buildpacks, and passed over for the built-in staticfile when it does not apply; the
//! stager downloads it once and stages from its cache after. Test index 57 (address pool
//! 10.244.57.0/26, ports 41140-41159).

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_containers::{Backend, Config, Recovery};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;

const INDEX: u32 = 57;

/// A zip of `files` (name, body, unix mode).
fn zip_of(files: &[(&str, &str, u32)]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body, mode) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(body.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A Heroku-style buildpack: it takes apps with a `kiln-marker` file, and its web process
/// says it made the droplet.
fn marker_buildpack() -> Vec<u8> {
    zip_of(&[
        (
            "bin/detect",
            "#!/bin/sh\nif [ -f \"$1/kiln-marker\" ]; then echo marker-bp; exit 0; fi\necho 'no kiln-marker' >&2\nexit 1\n",
            0o755,
        ),
        (
            "bin/compile",
            "#!/bin/sh\necho '-----> marker-bp compiling'\necho 'made by marker-bp' > \"$1/made-by.txt\"\n",
            0o755,
        ),
        (
            "bin/release",
            "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: cat made-by.txt; sleep 3600\\n'\n",
            0o755,
        ),
    ])
}

async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn uploaded_buildpacks_stage_apps_named_and_detected_on_a_real_stager() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root");
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = kiln_cloud_controller::Config::new(dir.path().join("cc"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.nats_url = nats.url.clone();
    config.default_stack = "tiny".into();
    let cc = kiln_cloud_controller::start(config)
        .await
        .expect("controller starts");
    let internal = kiln_cloud_controller::internal_token(&dir.path().join("cc")).unwrap();

    let backend_config = Config {
        data_dir: dir.path().join("stager"),
        stacks_dir: dir.path().join("stacks"),
        network_pool: format!("10.244.{INDEX}.0/26"),
        port_range_start: u16::try_from(40000 + 20 * INDEX).unwrap(),
        port_range_size: 20,
        uid_range_start: (1 << 28) + INDEX * (16 << 16),
        store_size_bytes: 4 << 30,
        max_containers: 4,
        recovery: Recovery::Destroy,
        ..Config::default()
    };
    let _cleanup = CleanUpOnPanic(&backend_config);
    let backend = Backend::new(backend_config.clone()).await.expect("backend");
    let tiny = kiln_rootfs::recipes::cached("tiny").expect("tiny stack");
    backend.import_stack(&tiny.dir, "tiny").await.expect("tiny");
    let mut settings = kiln_stager::service::Settings::new(
        "e2e-buildpacks",
        vec!["tiny".into()],
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
    );
    settings.token = Some(kiln_stager::service::Token::new(&internal));
    settings.work_dir = dir.path().to_path_buf();
    settings.buildpack_cache = dir.path().join("buildpack-cache");
    let client = async_nats::connect(&nats.url).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stager = tokio::spawn(kiln_stager::service::run(
        client,
        backend,
        settings,
        async {
            let _ = stopped.await;
        },
    ));

    let api = Api::login(&format!("http://{}", cc.addr), &dir.path().join("cc")).await;
    let result = scenario(&api, &dir.path().join("buildpack-cache")).await;

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
        .expect("task")
        .expect("ran");
    assert_eq!((summary.succeeded, summary.failed), (3, 0));
}

async fn scenario(api: &Api, cache: &Path) -> Result<(), String> {
    let (status, bp) = api
        .call(
            Method::POST,
            "/v3/buildpacks",
            json!({"name": "marker-bp", "position": 1}),
        )
        .await;
    if status != 201 {
        return Err(format!("create buildpack: {status} {bp}"));
    }
    let zip = marker_buildpack();
    let form = reqwest::multipart::Form::new().part(
        "bits",
        reqwest::multipart::Part::bytes(zip.clone()).file_name("marker-bp.zip"),
    );
    let guid = bp["guid"].as_str().unwrap_or_default();
    let (status, bp) = send(
        api.req(Method::POST, &format!("/v3/buildpacks/{guid}/upload"))
            .multipart(form),
    )
    .await;
    if bp["state"] != "READY" {
        return Err(format!("upload buildpack: {status} {bp}"));
    }
    let sha = hex::encode(sha2::Sha256::digest(&zip));

    // Named (`cf push -b marker-bp`): it runs although its detect says no and staticfile would.
    let site = [("index.html", "<h1>hi</h1>", 0o644)];
    let (droplet, log) = api.push("named", &site, json!(["marker-bp"])).await?;
    expect_made_by(&droplet, "marker-bp", "cat made-by.txt")?;
    if !log.contains("Downloading buildpack marker-bp") {
        return Err(format!("no download in the staging log:\n{log}"));
    }
    let cached: Vec<String> = std::fs::read_dir(cache)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tmp")
        .collect();
    if cached != [sha.clone()] {
        return Err(format!("the stager's cache holds {cached:?}, not [{sha}]"));
    }

    // Detected: the first admin buildpack (position 1) that accepts the app; from the cache.
    let marked = [("index.html", "x", 0o644), ("kiln-marker", "", 0o644)];
    let (droplet, log) = api.push("detected", &marked, json!([])).await?;
    expect_made_by(&droplet, "marker-bp", "cat made-by.txt")?;
    if log.contains("Downloading buildpack") {
        return Err(format!(
            "downloaded again instead of using the cache:\n{log}"
        ));
    }
    // Passed over when it does not apply: the built-in staticfile further down takes it.
    let (droplet, _) = api.push("static", &site, json!([])).await?;
    expect_made_by(&droplet, "staticfile", "httpd")
}

fn expect_made_by(droplet: &Value, buildpack: &str, web: &str) -> Result<(), String> {
    let ok = droplet["buildpacks"][0]["name"] == buildpack
        && droplet["buildpacks"][0]["detect_output"] == buildpack
        && droplet["process_types"]["web"]
            .as_str()
            .is_some_and(|w| w.contains(web));
    if ok {
        Ok(())
    } else {
        Err(format!("expected a droplet of {buildpack}: {droplet}"))
    }
}

/// A logged-in admin client.
struct Api {
    url: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn login(url: &str, cc_dir: &Path) -> Api {
        let http = reqwest::Client::new();
        let password = std::fs::read_to_string(cc_dir.join("admin-password")).unwrap();
        let (_, tokens) = send(http.post(format!("{url}/oauth/token")).form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password.trim()),
        ]))
        .await;
        let token = tokens["access_token"]
            .as_str()
            .expect("a token")
            .to_string();
        Api {
            url: url.to_string(),
            http,
            token,
        }
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    async fn call(&self, m: Method, path: &str, body: Value) -> (u16, Value) {
        send(self.req(m, path).json(&body)).await
    }

    /// Creates app `name` with lifecycle `buildpacks`, uploads `files`, stages it; returns the
    /// droplet and the app's staging log.
    async fn push(
        &self,
        name: &str,
        files: &[(&str, &str, u32)],
        buildpacks: Value,
    ) -> Result<(Value, String), String> {
        let (_, spaces) = send(self.req(Method::GET, "/v3/spaces")).await;
        let body = json!({"name": name, "relationships": {"space": {"data": {"guid": spaces["resources"][0]["guid"]}}},
            "lifecycle": {"type": "buildpack", "data": {"buildpacks": buildpacks}}});
        let (status, app) = self.call(Method::POST, "/v3/apps", body).await;
        let app = app["guid"]
            .as_str()
            .ok_or(format!("create app: {status} {app}"))?
            .to_string();
        let (_, package) = self
            .call(
                Method::POST,
                "/v3/packages",
                json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}}),
            )
            .await;
        let package = package["guid"].as_str().unwrap_or_default().to_string();
        let form = reqwest::multipart::Form::new().part(
            "bits",
            reqwest::multipart::Part::bytes(zip_of(files)).file_name("app.zip"),
        );
        let path = format!("/v3/packages/{package}/upload");
        let (status, uploaded) = send(self.req(Method::POST, &path).multipart(form)).await;
        if uploaded["state"] != "READY" {
            return Err(format!("upload {name}: {status} {uploaded}"));
        }
        let (status, build) = self
            .call(
                Method::POST,
                "/v3/builds",
                json!({"package": {"guid": package}}),
            )
            .await;
        let build = build["guid"]
            .as_str()
            .ok_or(format!("build {name}: {status} {build}"))?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(90);
        let build = loop {
            let (_, b) = send(self.req(Method::GET, &format!("/v3/builds/{build}"))).await;
            if b["state"] != "STAGING" || Instant::now() > deadline {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The log lines come before the result on the bus, but through another subscription.
        let mut log = String::new();
        for _ in 0..50 {
            let path = format!("/v3/apps/{app}/logs/recent");
            let (_, logs) = send(self.req(Method::GET, &path)).await;
            let lines: Vec<&str> = logs["resources"]
                .as_array()
                .map(|l| l.iter().filter_map(|l| l["message"].as_str()).collect())
                .unwrap_or_default();
            log = lines.join("\n");
            if log.contains("Uploading the droplet") || build["state"] != "STAGED" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let droplet = build["droplet"]["guid"]
            .as_str()
            .ok_or(format!("{name} did not stage: {build}\n{log}"))?;
        let (_, droplet) = send(self.req(Method::GET, &format!("/v3/droplets/{droplet}"))).await;
        Ok((droplet, log))
    }
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
