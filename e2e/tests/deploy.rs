//! `deploy/up` and `deploy/down` for real (as root): a whole platform of the binaries (NATS,
//! controller, stager, executor, router) on a data dir of the test's own, with ports and
//! container pools apart from the default platform's and every other test's: NATS, API, router
//! and router status on 31420-31423 (below the ephemeral range), the cell on test index 38
//! (10.244.38.0/26, host ports 40760-40779) and the stager on 39 (10.244.39.0/26,
//! 40780-40799). An app pushed through the API answers through the router; then the user's
//! journey of `kiln_e2e::suite` runs with the CLI deploy/up logged in (the examples on tiny
//! and bookworm, a manifest, scale, crash, restage, logs, ssh, bad input, delete); a second
//! `deploy/up` leaves everything running as it was; `deploy/down` leaves no process,
//! container, mount, interface, iptables chain or cgroup of the data dir behind, and `--purge`
//! removes it. Whatever fails, the platform is taken down when the test ends.
//!
//! The binaries are those of `KILN_BIN_DIR`, else of the target dir this test was built into
//! (`cargo test --workspace` builds them before any test runs, since their packages have
//! integration tests; missing ones are built here). `deploy/setup` is not run
//! (`KILN_SKIP_SETUP=1`: `.ci/run` ran it; the tiny stack is in the machine's stack cache).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::deployed::{alive, bin_dir, comm, repo};
use reqwest::Method;
use serde_json::{json, Value};

const NATS_PORT: u16 = 31420;
const API_PORT: u16 = 31421;
const ROUTER_PORT: u16 = 31422;
const ROUTER_STATUS_PORT: u16 = 31423;
const CELL_INDEX: u32 = 38;
const STAGER_INDEX: u32 = 39;
const DOMAIN: &str = "apps.kiln.localhost";
/// The controller's upload limit here, MiB: small, so that the suite can exceed it.
const MAX_UPLOAD_MB: u64 = 8;
const COMPONENTS: [(&str, &str); 5] = [
    ("nats", "nats-server"),
    ("cc", "kiln-cc"),
    ("stager", "kiln-stager"),
    ("executor", "kiln-executor"),
    ("router", "kiln-router"),
];
const PROCFILE: &str =
    "web: sh -c 'mkdir -p $HOME/www && echo deployed > $HOME/www/id.txt && exec httpd -f -p 0.0.0.0:$PORT -h $HOME/www'\n";

/// The platform of the test: `deploy/down --purge` runs when it is dropped, unless the test
/// did it.
struct Platform {
    data: PathBuf,
    home: PathBuf,
    env: Vec<(String, String)>,
    down: bool,
}

impl Platform {
    fn new(dir: &Path, bins: &Path) -> Platform {
        let data = dir.join("platform");
        let home = dir.join("home");
        let uids = |index: u32| ((1u32 << 28) + index * (16 << 16)).to_string();
        let ports = |index: u32| format!("{}-{}", 40000 + 20 * index, 40000 + 20 * index + 19);
        let env = [
            ("KILN_DATA", data.display().to_string()),
            ("KILN_HOME", home.display().to_string()),
            ("KILN_BIN_DIR", bins.display().to_string()),
            ("KILN_SKIP_SETUP", "1".into()),
            ("KILN_NATS_PORT", NATS_PORT.to_string()),
            ("KILN_API_PORT", API_PORT.to_string()),
            ("KILN_ROUTER_PORT", ROUTER_PORT.to_string()),
            ("KILN_ROUTER_STATUS_PORT", ROUTER_STATUS_PORT.to_string()),
            ("KILN_ROUTER_BIND", "127.0.0.1".into()),
            ("KILN_APPS_DOMAIN", DOMAIN.into()),
            ("KILN_STACKS", "tiny,bookworm".into()),
            ("KILN_DEFAULT_STACK", "tiny".into()),
            ("KILN_MAX_UPLOAD_MB", MAX_UPLOAD_MB.to_string()),
            ("KILN_CELL_ID", "deploy-test-cell".into()),
            ("KILN_STAGER_ID", "deploy-test-stager".into()),
            ("KILN_CELL_POOL", format!("10.244.{CELL_INDEX}.0/26")),
            ("KILN_CELL_PORTS", ports(CELL_INDEX)),
            ("KILN_CELL_UIDS", uids(CELL_INDEX)),
            ("KILN_CELL_MAX_CONTAINERS", "16".into()),
            ("KILN_CELL_MEMORY_MB", "8192".into()),
            ("KILN_CELL_DISK_MB", "32768".into()),
            ("KILN_STAGER_POOL", format!("10.244.{STAGER_INDEX}.0/26")),
            ("KILN_STAGER_PORTS", ports(STAGER_INDEX)),
            ("KILN_STAGER_UIDS", uids(STAGER_INDEX)),
            ("KILN_START_TIMEOUT", "120".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Platform {
            data,
            home,
            env,
            down: false,
        }
    }

    /// Runs `deploy/<name> args...` with the test's settings only; prints its output.
    fn script(&self, name: &str, args: &[&str]) -> Output {
        let mut c = Command::new(repo().join("deploy").join(name));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KILN_") && k != "KILN_LOG" {
                c.env_remove(k);
            }
        }
        let out = c
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running deploy/{name}: {e}"));
        eprintln!(
            "--- deploy/{name} {} ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The pid of each component, from its pid file.
    fn pids(&self) -> BTreeMap<&'static str, u32> {
        COMPONENTS
            .iter()
            .filter_map(|(name, _)| {
                let text =
                    std::fs::read_to_string(self.data.join(format!("run/{name}.pid"))).ok()?;
                Some((*name, text.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if !self.down && self.data.exists() {
            let out = self.script("down", &["--purge"]);
            if !out.status.success() {
                eprintln!("deploy/down after the failure failed: clean up by hand");
            }
        }
    }
}

/// Whether `pid` runs (a zombie does not).
/// Everything of the platform in `data` still on the machine.
fn leftovers(data: &Path) -> Vec<String> {
    let mut left = Vec::new();
    // Processes started in the data dir (every component is).
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == data) && alive(pid) {
            left.push(format!("process {pid} ({})", comm(pid)));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let mountpoint = line.split(' ').nth(4).unwrap_or_default();
        if Path::new(mountpoint).starts_with(data) {
            left.push(format!("mount {mountpoint}"));
        }
    }
    let iptables: String = ["filter", "nat"]
        .iter()
        .map(|t| {
            let out = Command::new("iptables-save").args(["-t", t]).output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        })
        .collect();
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for backend in [data.join("stager"), data.join("executor/containers")] {
        let runc = backend.join("runc");
        if runc.exists() {
            let out = Command::new("runc")
                .arg("--root")
                .arg(&runc)
                .args(["list", "-q"])
                .output()
                .expect("runc list");
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                left.push(format!("container {id} ({})", backend.display()));
            }
        }
        let tag = kiln_containers::backend::backend_tag(&backend);
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let cgroup = hierarchy.path().join("kiln").join(&tag);
            if cgroup.exists() {
                left.push(format!("cgroup {}", cgroup.display()));
            }
        }
        if iptables.contains(&format!("KILN-{tag}-")) {
            left.push(format!("iptables chains KILN-{tag}-*"));
        }
        if links.contains(&format!(": kl{tag}")) {
            left.push(format!("interfaces kl{tag}*"));
        }
    }
    left
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

fn app_zip() -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("Procfile", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(PROCFILE.as_bytes()).unwrap();
    w.finish().unwrap().into_inner()
}

/// The platform answers: the API, a token for admin, the stack, the router; an app pushed
/// through the API (staged by the stager, run by the cell) answers through the router.
async fn platform_works(data: &Path) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let api = format!("http://127.0.0.1:{API_PORT}");
    let (status, root) = send(http.get(format!("{api}/"))).await;
    if status != 200 {
        return Err(format!("GET /: {status} {root}"));
    }
    let password = std::fs::read_to_string(data.join("cc/admin-password"))
        .map_err(|e| format!("the admin password: {e}"))?;
    let (_, tokens) = send(http.post(format!("{api}/oauth/token")).form(&[
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", password.trim()),
    ]))
    .await;
    let token = tokens["access_token"]
        .as_str()
        .ok_or(format!("no token for admin: {tokens}"))?
        .to_string();
    let call = |m: Method, path: &str| http.request(m, format!("{api}{path}")).bearer_auth(&token);
    let (_, stacks) = send(call(Method::GET, "/v3/stacks")).await;
    if !stacks.to_string().contains("\"name\":\"tiny\"") {
        return Err(format!("tiny is not in /v3/stacks: {stacks}"));
    }
    let health = http
        .get(format!("http://127.0.0.1:{ROUTER_STATUS_PORT}/health"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .unwrap_or_default();
    if health.trim() != "ok" {
        return Err(format!("router /health: {health}"));
    }

    // Push: app, package, upload, build, droplet, start.
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
    let app = app["guid"].as_str().unwrap_or_default().to_string();
    let (_, package) = send(
        call(Method::POST, "/v3/packages")
            .json(&json!({"type": "bits", "relationships": {"app": {"data": {"guid": app}}}})),
    )
    .await;
    let package = package["guid"].as_str().unwrap_or_default().to_string();
    let form = reqwest::multipart::Form::new().part(
        "bits",
        reqwest::multipart::Part::bytes(app_zip()).file_name("app.zip"),
    );
    let (status, body) =
        send(call(Method::POST, &format!("/v3/packages/{package}/upload")).multipart(form)).await;
    if body["state"] != "READY" {
        return Err(format!("upload: {status} {body}"));
    }
    let (status, build) =
        send(call(Method::POST, "/v3/builds").json(&json!({"package": {"guid": package}}))).await;
    if status != 201 {
        return Err(format!("build: {status} {build}"));
    }
    let build_guid = build["guid"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    let build = loop {
        let (_, b) = send(call(Method::GET, &format!("/v3/builds/{build_guid}"))).await;
        if b["state"] != "STAGING" || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if build["state"] != "STAGED" {
        return Err(format!("the build did not stage: {build}"));
    }
    let droplet = build["droplet"]["guid"].clone();
    let (status, body) = send(
        call(
            Method::PATCH,
            &format!("/v3/apps/{app}/relationships/current_droplet"),
        )
        .json(&json!({"data": {"guid": droplet}})),
    )
    .await;
    if status != 200 {
        return Err(format!("set droplet: {status} {body}"));
    }
    let (status, body) = send(call(Method::POST, &format!("/v3/apps/{app}/actions/start"))).await;
    if status != 200 {
        return Err(format!("start: {status} {body}"));
    }

    // It answers through the router, by its route on the platform's domain.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = http
            .get(format!("http://127.0.0.1:{ROUTER_PORT}/id.txt"))
            .header("host", format!("hello.{DOMAIN}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let (status, body) = match r {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        if status == 200 && body.trim() == "deployed" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the app does not answer through the router: {status} {body}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[test]
fn deploy_up_runs_a_platform_and_deploy_down_leaves_nothing() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "deploy/up needs root (containers)");
    let bins = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Platform::new(dir.path(), &bins);

    // Up: every component runs, healthy, from its config files.
    let up = platform.script("up", &[]);
    assert!(up.status.success(), "deploy/up failed");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(stdout.contains("Kiln is up"), "{stdout}");
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{API_PORT}")),
        "{stdout}"
    );
    let pids = platform.pids();
    assert_eq!(pids.len(), 5, "pid files: {pids:?}");
    for (name, binary) in COMPONENTS {
        let pid = pids[name];
        assert!(alive(pid), "{name} (pid {pid}) does not run");
        assert_eq!(comm(pid), binary, "pid {pid} of {name}");
    }
    let etc = platform.data.join("etc");
    let cell = kiln_executor::Config::from_toml(
        &std::fs::read_to_string(etc.join("executor.toml")).unwrap(),
    )
    .expect("the executor.toml deploy/up wrote parses");
    assert_eq!(cell.network_pool, format!("10.244.{CELL_INDEX}.0/26"));
    assert_eq!(cell.port_range_start, 40760);
    cell.validate().expect("a valid executor config");
    let router = kiln_router::Config::from_file(&etc.join("router.toml"))
        .expect("the router.toml deploy/up wrote parses");
    router.validate().expect("a valid router config");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(platform_works(&platform.data))
        .unwrap_or_else(|e| panic!("{e}"));

    // The user's journey with the CLI (deploy/up logged it in as admin).
    let scratch = tempfile::tempdir().unwrap();
    let target = kiln_e2e::suite::Target {
        kiln: bins.join("kiln"),
        home: platform.home.clone(),
        router: format!("127.0.0.1:{ROUTER_PORT}"),
        domain: DOMAIN.into(),
        stacks: vec!["tiny".into(), "bookworm".into()],
        max_upload_mb: Some(MAX_UPLOAD_MB),
        scratch: scratch.path().to_path_buf(),
    };
    rt.block_on(kiln_e2e::suite::run(&target))
        .unwrap_or_else(|e| panic!("the CLI suite against deploy/up: {e}"));
    drop(rt);

    // The CLI was logged in as admin (when it has `login`).
    let kiln = bins.join("kiln");
    let help = Command::new(&kiln)
        .arg("--help")
        .output()
        .expect("kiln --help");
    if String::from_utf8_lossy(&help.stdout).contains("login") {
        assert!(
            platform.home.join("config.json").exists(),
            "deploy/up did not log the CLI in"
        );
        let apps = Command::new(&kiln)
            .arg("apps")
            .env("KILN_HOME", &platform.home)
            .output()
            .expect("kiln apps");
        let listed = String::from_utf8_lossy(&apps.stdout);
        assert!(
            apps.status.success() && listed.contains("hello"),
            "kiln apps: {listed}{}",
            String::from_utf8_lossy(&apps.stderr)
        );
    }

    // Up again: nothing restarts.
    let again = platform.script("up", &[]);
    assert!(again.status.success(), "the second deploy/up failed");
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(
        stdout.matches(": already running (pid").count(),
        5,
        "{stdout}"
    );
    assert_eq!(
        platform.pids(),
        pids,
        "the second deploy/up restarted something"
    );

    // Down: nothing left, the app's container included; --purge removes the data dir.
    let down = platform.script("down", &[]);
    assert!(down.status.success(), "deploy/down failed");
    for (name, pid) in &pids {
        assert!(!alive(*pid), "{name} (pid {pid}) still runs");
    }
    let left = leftovers(&platform.data);
    assert!(left.is_empty(), "left behind: {left:?}");
    let purge = platform.script("down", &["--purge"]);
    assert!(purge.status.success(), "deploy/down --purge failed");
    assert!(!platform.data.exists(), "the data dir is still there");
    platform.down = true;
}

/// The example configs of a real install (`deploy/etc`) are valid for the components as they
/// are: the TOML files parse and validate, and every variable of the env files is one the
/// binary reads.
#[test]
fn the_example_configs_fit_the_components() {
    let etc = repo().join("deploy/etc");
    let cell = kiln_executor::Config::from_toml(
        &std::fs::read_to_string(etc.join("executor.toml")).unwrap(),
    )
    .expect("deploy/etc/executor.toml parses");
    cell.validate().expect("deploy/etc/executor.toml is valid");
    kiln_router::Config::from_file(&etc.join("router.toml"))
        .expect("deploy/etc/router.toml parses")
        .validate()
        .expect("deploy/etc/router.toml is valid");
    for (file, source) in [
        ("cc.env", "cloud-controller/src/bin/kiln-cc.rs"),
        ("stager.env", "stager/src/bin/kiln-stager.rs"),
    ] {
        let text = std::fs::read_to_string(etc.join(file)).unwrap();
        let flags = std::fs::read_to_string(repo().join(source)).unwrap();
        for line in text.lines() {
            let Some((key, _)) = line.trim_start_matches('#').split_once('=') else {
                continue;
            };
            if !key.starts_with("KILN_") || key.contains(' ') || key == "KILN_LOG" {
                continue;
            }
            assert!(
                flags.contains(&format!("\"{key}\"")),
                "{file}: {key} is not a variable of {source}"
            );
        }
    }
    // The units start the binaries with the files of deploy/etc.
    for unit in std::fs::read_dir(repo().join("deploy/systemd")).unwrap() {
        let text = std::fs::read_to_string(unit.unwrap().path()).unwrap();
        for word in text.split_whitespace() {
            if let Some(name) = word.strip_prefix("/etc/kiln/") {
                let name = name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
                assert!(etc.join(name).exists(), "a unit names /etc/kiln/{name}");
            }
        }
    }
}
