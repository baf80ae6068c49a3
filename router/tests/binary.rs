//! The `kiln-router` binary: settings from a TOML file and flags, serving, and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::{client, endpoint, eventually, Nats, Registrar};

/// The binary, killed on drop unless it already exited.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn print_config_merges_the_file_and_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.toml");
    std::fs::write(
        &file,
        "balancing = \"least-connections\"\ndial_timeout_secs = 2.5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-router"))
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:9999", "--print-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: kiln_router::Config =
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed.balancing, kiln_router::Balancing::LeastConnections);
    assert_eq!(printed.dial_timeout, Duration::from_millis(2500));
    assert_eq!(printed.listen, "127.0.0.1:9999".parse().unwrap());

    std::fs::write(&file, "dial_timeout = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-router"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dial_timeout"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_serves_and_stops_on_sigterm() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.toml");
    let settings = format!(
        "listen = \"127.0.0.1:0\"\nstatus_listen = \"127.0.0.1:0\"\nnats_url = \"{}\"\n",
        nats.url
    );
    std::fs::write(&file, settings).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln-router"))
        .arg("--config")
        .arg(&file)
        .env("KILN_LOG", "warn,kiln_router::access=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut process = Process(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    // "kiln-router <id> listening on http://A (status on http://B)"
    let urls: Vec<&str> = line
        .split("http://")
        .skip(1)
        .map(|s| s.trim_end_matches(|c: char| c == ')' || c.is_whitespace()))
        .map(|s| s.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(urls.len(), 2, "{line}");
    let (proxy, status) = (urls[0].to_string(), urls[1].to_string());
    let http = client();
    let health = http
        .get(format!("http://{status}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    let backend = Backend::echo("web").await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["bin.example.com"], "app"))
        .await;
    eventually("the binary routes bin.example.com", || {
        let request = http
            .get(format!("http://{proxy}/"))
            .header("host", "bin.example.com");
        async move { matches!(request.send().await, Ok(r) if r.status() == 200) }
    })
    .await;

    let pid = process.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "kiln-router did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(status.success(), "{status}\n{log}");
    assert!(
        log.lines().any(|l| l.contains("method=GET")
            && l.contains("path=\"/\"")
            && l.contains("status=200")),
        "no access log line for the request:\n{log}"
    );
}
