//! Shared set-up of the executor's integration tests: per test (indexes 60-65) a nats-server,
//! a tiny axum server playing the controller's internal droplet endpoint (checking the
//! credential), a real container backend on the tiny stack with its own data dir, address
//! pool (`10.244.<index>.0/26`), port range (`40000 + 20 * index`) and uid range, droplets
//! built in the test, and a recorder of everything on the bus. Everything goes on drop.
#![allow(dead_code)]

pub mod cell;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use kiln_bus::cell::{HealthCheck, InstanceStart};
use kiln_executor::{Config, Timings};
use sha2::{Digest, Sha256};

pub const TOKEN: &str = "internal-secret";

/// The test's configuration for index `index`.
pub fn config(index: u8, dir: &Path, nats: &str) -> Config {
    assert!(
        (60..=65).contains(&index) || index == 90 || index == 93,
        "executor tests use indexes 60-65, 90 and 93"
    );
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the executor tests need root");
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
    Config {
        cell_id: format!("cell-{index}"),
        zone: "z1".into(),
        stacks: vec!["tiny".into()],
        memory_mb: 1024,
        disk_mb: 4096,
        max_containers: 4,
        data_dir: dir.join("data"),
        stacks_dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stacks"),
        nats_url: nats.to_string(),
        internal_url: None,
        internal_token_file: Some(token),
        host_ip: "127.0.0.1".into(),
        droplet_cache_mb: 64,
        network_pool: format!("10.244.{index}.0/26"),
        port_range_start: 40000 + u16::from(index) * 20,
        port_range_size: 20,
        uid_range_start: (1 << 28) + u32::from(index) * (16 << 16),
        store_size_bytes: 2 << 30,
        timings: Timings {
            starting_probe_interval_ms: 200,
            advertise_interval_ms: 500,
            metrics_interval_secs: 1,
            stop_grace_secs: 2,
            ..Timings::default()
        },
    }
}

/// The controller's droplet download endpoint, serving droplets by guid.
#[derive(Clone, Default)]
pub struct DropletServer {
    droplets: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Successful downloads.
    pub downloads: Arc<AtomicUsize>,
    pub url: Arc<Mutex<String>>,
}

impl DropletServer {
    /// Serves on a free loopback port (call inside a runtime).
    pub async fn start() -> DropletServer {
        let server = DropletServer::default();
        let app = axum::Router::new()
            .route(
                "/internal/v1/droplets/{guid}/download",
                axum::routing::get(download),
            )
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        *server.url.lock().expect("lock") = format!("http://{addr}");
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    /// Adds a droplet; its download URL.
    pub fn add(&self, guid: &str, tgz: Vec<u8>) -> String {
        self.droplets
            .lock()
            .expect("lock")
            .insert(guid.to_string(), tgz);
        format!(
            "{}/internal/v1/droplets/{guid}/download",
            self.url.lock().expect("lock")
        )
    }
}

async fn download(
    State(s): State<DropletServer>,
    UrlPath(guid): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Vec<u8>, StatusCode> {
    let auth = headers.get("authorization").and_then(|h| h.to_str().ok());
    if auth != Some(&format!("Bearer {TOKEN}")) {
        return Err(StatusCode::FORBIDDEN);
    }
    let body = s.droplets.lock().expect("lock").get(&guid).cloned();
    let body = body.ok_or(StatusCode::NOT_FOUND)?;
    s.downloads.fetch_add(1, Ordering::SeqCst);
    Ok(body)
}

/// A droplet in the Cloud Foundry layout: `app/` (with `files`), `deps/`, `profile.d/`,
/// `tmp/`, `logs/`, `staging_info.yml` naming `command`.
pub fn droplet(files: &[(&str, &str)], command: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for dir in ["./app/", "./deps/", "./profile.d/", "./tmp/", "./logs/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, dir, std::io::empty()).expect("dir");
    }
    let info = format!("detected_buildpack: test\nstart_command: {command:?}\n");
    let mut entries: Vec<(String, String)> = files
        .iter()
        .map(|(n, b)| (format!("./app/{n}"), b.to_string()))
        .collect();
    entries.push(("./staging_info.yml".into(), info));
    for (name, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        tar.append_data(&mut h, name, body.as_bytes())
            .expect("file");
    }
    let mut gz = tar.into_inner().expect("tar");
    gz.flush().expect("flush");
    gz.finish().expect("gzip")
}

/// The hex sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A start message for instance `guid` of app `app` (index 0, web, 64 MB).
pub fn start(app: &str, guid: &str, url: &str, sha: &str, command: &str) -> InstanceStart {
    InstanceStart {
        app_guid: app.into(),
        app_name: format!("{app}-name"),
        space_guid: "space".into(),
        process_guid: format!("{app}-web"),
        process_type: "web".into(),
        index: 0,
        instance_guid: guid.into(),
        droplet_guid: format!("{app}-droplet"),
        droplet_url: url.into(),
        droplet_sha256: sha.into(),
        stack: "tiny".into(),
        memory_mb: 64,
        disk_mb: 64,
        start_command: command.into(),
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        health_check: HealthCheck::default(),
        routes: vec![format!("{app}.example.com")],
        stack_image: None,
        image: None,
    }
}

/// Every message on the bus, in order.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Recorder {
    /// Records everything on `client`'s server (call inside a runtime).
    pub async fn start(client: &async_nats::Client) -> Recorder {
        let recorder = Recorder::default();
        let mut sub = client.subscribe(">").await.expect("subscribe");
        kiln_bus::round_trip(client, kiln_bus::ROUND_TRIP_TIMEOUT)
            .await
            .expect("subscribed");
        let seen = recorder.seen.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let v = serde_json::from_slice(&m.payload).unwrap_or(serde_json::Value::Null);
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((m.subject.to_string(), v));
            }
        });
        recorder
    }

    /// The position and body of the first message matching, waiting up to `within`.
    pub async fn wait(
        &self,
        within: Duration,
        what: &str,
        pred: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> (usize, serde_json::Value) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.find(&pred) {
                return found;
            }
            if Instant::now() > deadline {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let last: Vec<_> = seen.iter().rev().take(40).rev().collect();
                panic!("no {what} within {within:?}; last messages: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn find(
        &self,
        pred: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> Option<(usize, serde_json::Value)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .enumerate()
            .find(|(_, (s, v))| pred(s, v))
            .map(|(i, (_, v))| (i, v.clone()))
    }

    /// Waits for instance `guid` to reach `state`.
    pub async fn state(
        &self,
        guid: &str,
        state: &str,
        within: Duration,
    ) -> (usize, serde_json::Value) {
        self.wait(within, &format!("{state} of {guid}"), |s, v| {
            s == kiln_bus::cell::INSTANCE_STATE && v["instance_guid"] == guid && v["state"] == state
        })
        .await
    }

    /// The app log messages of `app` from `source`, in order.
    pub fn log(&self, app: &str, source: &str) -> Vec<(usize, String, String)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .enumerate()
            .filter(|(_, (s, v))| *s == kiln_bus::cell::app_log(app) && v["source"] == source)
            .map(|(i, (_, v))| {
                (
                    i,
                    v["stream"].as_str().unwrap_or("").to_string(),
                    v["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// `GET /` on `127.0.0.1:port`, the whole answer.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
