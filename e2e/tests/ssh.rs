//! Commands in a running app's instance end to end (`kiln ssh -c`): a controller, NATS, a
//! stager and an executor cell, all real, and the built `kiln`. A Procfile app on tiny is
//! pushed and started; `POST /v3/processes/:guid/instances/:index/exec` runs a command in
//! its container (the instance's environment, stdout and stderr apart, the exit code) and
//! is an `audit.app.ssh` event without the command's output; the API's refusals (an empty
//! command, an index out of range, a timeout out of range, an unknown process, an instance
//! not running); `kiln ssh` prints the output and exits with the command's code (124 when
//! killed at its timeout); without `-c` it opens a session whose shell reads the script on
//! kiln's stdin, streamed both ways over the controller's WebSocket. Test indexes 66 (the stager's backend:
//! 10.244.66.0/26, ports 41320-41339) and 67 (the cell's: 10.244.67.0/26, ports
//! 41340-41359).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_containers::{Backend, Config, Recovery};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::{json, Value};

const PROCFILE: &str = "web: sh -c 'mkdir -p $HOME/www && echo hi > $HOME/www/index.html && exec httpd -f -p 0.0.0.0:$PORT -h $HOME/www'\n";

fn backend_config(dir: &Path, index: u32) -> Config {
    Config {
        data_dir: dir.join(format!("containers-{index}")),
        stacks_dir: dir.join(format!("stacks-{index}")),
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: u16::try_from(40000 + 20 * index).unwrap(),
        port_range_size: 20,
        uid_range_start: (1 << 28) + index * (16 << 16),
        store_size_bytes: 4 << 30,
        max_containers: 4,
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

/// The platform of the test, as its user sees it.
struct Platform {
    cc_url: String,
    token: String,
    http: reqwest::Client,
    kiln: PathBuf,
    home: PathBuf,
}

/// What a `kiln` run printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Platform {
    fn call(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(m, format!("{}{path}", self.cc_url))
            .bearer_auth(&self.token)
    }

    async fn web_process(&self, app: &str) -> String {
        let (_, process) =
            send(self.call(Method::GET, &format!("/v3/apps/{app}/processes/web"))).await;
        process["guid"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until the web process's stats say `state` for every index; the stats.
    async fn wait_state(
        &self,
        process: &str,
        state: &str,
        within: Duration,
    ) -> Result<Vec<Value>, String> {
        let deadline = Instant::now() + within;
        loop {
            let (_, stats) =
                send(self.call(Method::GET, &format!("/v3/processes/{process}/stats"))).await;
            let stats = stats["resources"].as_array().cloned().unwrap_or_default();
            if !stats.is_empty() && stats.iter().all(|s| s["state"] == state) {
                return Ok(stats);
            }
            if Instant::now() > deadline {
                return Err(format!("not {state}: {}", Value::Array(stats)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `POST .../instances/:index/exec` with `body`.
    async fn exec(&self, process: &str, index: &str, body: Value) -> (u16, Value) {
        send(
            self.call(
                Method::POST,
                &format!("/v3/processes/{process}/instances/{index}/exec"),
            )
            .json(&body),
        )
        .await
    }

    /// Runs the built `kiln` with the test's home.
    async fn kiln(&self, args: &[&str]) -> Run {
        self.kiln_with_input(args, "").await
    }

    /// Runs the built `kiln` with the test's home and `input` on its stdin.
    async fn kiln_with_input(&self, args: &[&str], input: &str) -> Run {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(&self.kiln)
            .args(args)
            .env("KILN_HOME", &self.home)
            .env("NO_COLOR", "1")
            .env_remove("KILN_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run kiln");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes()).await;
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("kiln ended within 2 minutes")
            .expect("run kiln");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

#[test]
fn commands_run_in_an_instance_through_the_api_and_kiln_ssh() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let kiln = kiln_e2e::platform::kiln_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let (stager_config, cell_config) = (
        backend_config(dir.path(), 66),
        backend_config(dir.path(), 67),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let nats = Nats::start();
    let result = rt.block_on(scenario(
        dir.path(),
        &nats,
        &stager_config,
        &cell_config,
        kiln,
    ));
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
    dir: &Path,
    nats: &Nats,
    stager_config: &Config,
    cell_config: &Config,
    kiln: PathBuf,
) -> Result<(), String> {
    let mut config = kiln_cloud_controller::Config::new(dir.join("cc"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.nats_url = nats.url.clone();
    config.default_stack = "tiny".into();
    config.default_domain = "apps.e2e.test".into();
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
        "e2e-ssh-stager",
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

    let cell_backend = Backend::new(cell_config.clone())
        .await
        .map_err(|e| e.to_string())?;
    kiln_executor::import_stack(&cell_backend, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let token_file = dir.join("internal-token");
    std::fs::write(&token_file, &internal).map_err(|e| e.to_string())?;
    let executor_config = kiln_executor::Config {
        cell_id: "e2e-ssh-cell".into(),
        zone: "z1".into(),
        stacks: vec!["tiny".into()],
        memory_mb: 2048,
        disk_mb: 8192,
        max_containers: 4,
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

    let http = reqwest::Client::new();
    let password = std::fs::read_to_string(dir.join("cc/admin-password"))
        .map_err(|e| e.to_string())?
        .trim()
        .to_string();
    let (_, tokens) = send(http.post(format!("{cc_url}/oauth/token")).form(&[
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", &password),
    ]))
    .await;
    let p = Platform {
        cc_url,
        token: tokens["access_token"]
            .as_str()
            .ok_or("no token")?
            .to_string(),
        http,
        kiln,
        home: dir.join("home"),
    };
    let app = push(&p, "hello").await?;
    let process = p.web_process(&app).await;
    p.wait_state(&process, "RUNNING", Duration::from_secs(60))
        .await?;

    // Through the API: the instance's environment, stdout and stderr apart, the exit code.
    let script = "echo $PORT $CF_INSTANCE_INDEX; cat $HOME/www/index.html; echo oops >&2; exit 3";
    let (status, body) = p
        .exec(&process, "0", json!({"command": ["sh", "-c", script]}))
        .await;
    check(
        status == 200
            && body["exit_code"] == 3
            && body["stdout"] == "8080 0\nhi\n"
            && body["stderr"] == "oops\n"
            && body["truncated"] == false
            && body["timed_out"] == false,
        || format!("exec: {status} {body}"),
    )?;

    // An audit event naming the instance, without the command or its output.
    let (_, events) = send(p.call(
        Method::GET,
        &format!("/v3/audit_events?types=audit.app.ssh&target_guids={app}"),
    ))
    .await;
    let events = events["resources"].as_array().cloned().unwrap_or_default();
    check(events.len() == 1, || format!("ssh events: {events:?}"))?;
    let event = &events[0];
    check(
        event["data"]["index"] == 0
            && event["data"]["process_type"] == "web"
            && event["data"]["cell_id"] == "e2e-ssh-cell"
            && event["actor"]["name"] == "admin"
            && !event.to_string().contains("oops")
            && !event.to_string().contains("CF_INSTANCE_INDEX"),
        || format!("ssh event: {event}"),
    )?;

    // Refusals.
    let refusals = [
        ("0", json!({"command": []}), 422, "Command must be"),
        ("0", json!({"command": [""]}), 422, "Command must be"),
        (
            "1",
            json!({"command": ["true"]}),
            422,
            "Instance index 1 is out of range: process web has 1 instance (index 0)",
        ),
        ("x", json!({"command": ["true"]}), 422, "out of range"),
        (
            "0",
            json!({"command": ["true"], "timeout_secs": 601}),
            422,
            "Timeout secs must be between 1 and 600",
        ),
        ("0", json!({"command": "true"}), 422, ""),
        (
            "0",
            json!({"command": ["no-such-program"]}),
            422,
            "Instance 0 of process web: starting \"no-such-program\"",
        ),
    ];
    for (index, body, want, detail) in refusals {
        let (status, answer) = p.exec(&process, index, body.clone()).await;
        let got = answer["errors"][0]["detail"].as_str().unwrap_or("");
        check(status == want && got.contains(detail), || {
            format!("{body} at {index}: {status} {answer}")
        })?;
    }
    let (status, answer) = send(
        p.call(Method::POST, "/v3/processes/nope/instances/0/exec")
            .json(&json!({"command": ["true"]})),
    )
    .await;
    check(status == 404, || {
        format!("unknown process: {status} {answer}")
    })?;
    let (status, _) = send(
        p.http
            .post(format!(
                "{}/v3/processes/{process}/instances/0/exec",
                p.cc_url
            ))
            .json(&json!({"command": ["true"]})),
    )
    .await;
    check(status == 401, || format!("no token: {status}"))?;

    // `kiln ssh`: output as it came, the command's exit code.
    let login = p
        .kiln(&["login", "-a", &p.cc_url, "-u", "admin", "-p", &password])
        .await;
    check(login.code == Some(0), || format!("login: {}", login.stderr))?;
    let run = p
        .kiln(&[
            "ssh",
            "hello",
            "-c",
            "echo from-cli; echo to-err >&2; exit 7",
        ])
        .await;
    check(
        run.code == Some(7) && run.stdout == "from-cli\n" && run.stderr == "to-err\n",
        || format!("kiln ssh: {:?} {:?} {:?}", run.code, run.stdout, run.stderr),
    )?;
    let run = p.kiln(&["ssh", "hello", "--json", "-c", "echo json"]).await;
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    check(
        run.code == Some(0) && json["stdout"] == "json\n" && json["exit_code"] == 0,
        || format!("kiln ssh --json: {:?} {}", run.code, run.stdout),
    )?;
    let run = p
        .kiln(&["ssh", "hello", "-t", "1", "-c", "echo before; sleep 30"])
        .await;
    check(
        run.code == Some(124)
            && run.stdout == "before\n"
            && run.stderr.contains("ran longer than 1 s and was killed"),
        || {
            format!(
                "kiln ssh -t 1: {:?} {:?} {:?}",
                run.code, run.stdout, run.stderr
            )
        },
    )?;
    // A session: the script on stdin runs in the instance's shell, streamed both ways.
    let script = "echo $CF_INSTANCE_INDEX from-session\necho to-err >&2\ncd /tmp && pwd\nexit 5\necho not-run\n";
    let run = p.kiln_with_input(&["ssh", "hello"], script).await;
    check(
        run.code == Some(5)
            && run.stdout == "0 from-session\n/tmp\n"
            && run.stderr.contains("to-err"),
        || {
            format!(
                "kiln ssh (session): {:?} {:?} {:?}",
                run.code, run.stdout, run.stderr
            )
        },
    )?;
    let run = p.kiln(&["ssh", "hello", "-i", "3", "-c", "true"]).await;
    check(
        run.code == Some(1) && run.stderr.contains("Instance index 3 is out of range"),
        || format!("kiln ssh -i 3: {:?} {:?}", run.code, run.stderr),
    )?;
    let run = p
        .kiln(&["ssh", "hello", "--process", "worker", "-c", "true"])
        .await;
    check(
        run.code == Some(1) && run.stderr.contains("has no process of type 'worker'"),
        || format!("kiln ssh --process worker: {:?} {:?}", run.code, run.stderr),
    )?;
    let (_, events) = send(p.call(
        Method::GET,
        &format!("/v3/audit_events?types=audit.app.ssh&target_guids={app}"),
    ))
    .await;
    let n = events["resources"].as_array().map_or(0, Vec::len);
    check(n == 6, || format!("ssh events after the CLI: {events}"))?;

    // Stopped: the instance is not running, and the API says so.
    let (status, body) = send(p.call(Method::POST, &format!("/v3/apps/{app}/actions/stop"))).await;
    check(status == 200, || format!("stop: {status} {body}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while executor.cell_state().available_containers != 4 {
        if Instant::now() > deadline {
            return Err(format!("containers left: {:?}", executor.cell_state()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.wait_state(&process, "DOWN", Duration::from_secs(30))
        .await?;
    let (status, answer) = p.exec(&process, "0", json!({"command": ["true"]})).await;
    check(
        status == 422
            && answer["errors"][0]["detail"]
                == "Instance 0 of process web is not running (state: DOWN; the app is STOPPED)",
        || format!("exec on a stopped app: {status} {answer}"),
    )?;
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
