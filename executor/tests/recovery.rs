//! The `kiln-executor` binary killed and restarted on its data dir (test index 63): the
//! instance it left is destroyed and reported STOPPED (its process cannot be re-attached), a
//! new one runs; SIGTERM makes the cell evacuate (advertised at once, the instance still
//! answering), a second SIGTERM stops at once: unregister, stop, exit 0, and nothing is left
//! on the machine.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kiln_bus::cell;
use kiln_bus::router;
use kiln_containers::Backend;

/// The binary; SIGKILLed if still running when dropped, then its backend cleaned.
struct Process {
    child: Option<Child>,
    config: kiln_executor::Config,
    log: std::path::PathBuf,
}

impl Process {
    fn start(config: &kiln_executor::Config, file: &std::path::Path, name: &str) -> Process {
        let log = file.with_file_name(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kiln-executor"))
            .arg("--config")
            .arg(file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start kiln-executor");
        Process {
            child: Some(child),
            config: config.clone(),
            log,
        }
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().map(|c| c.id() as i32).expect("running");
        // SAFETY: kill(2) of our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {within:?}:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- executor log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.config.data_dir.exists() {
            if let Err(e) = Backend::destroy_all(&self.config.backend_config()) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

#[test]
fn a_restarted_executor_leaves_nothing_of_what_it_lost() {
    let dir = tempfile::tempdir().expect("dir");
    let nats = kiln_testkit::Nats::start();
    let config = config(63, dir.path(), &nats.url);
    let file = dir.path().join("cell.toml");
    std::fs::write(&file, toml::to_string(&config).expect("toml")).expect("config file");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let wait = Duration::from_secs(60);
    let web = "exec httpd -f -p $PORT -h /home/vcap/app";
    rt.block_on(async {
        let client = async_nats::connect(&nats.url).await.expect("nats");
        let bus = Recorder::start(&client).await;
        let droplets = DropletServer::start().await;
        let tgz = droplet(&[("index.html", "hi\n")], web);
        let sha = sha256(&tgz);
        let url = droplets.add("d", tgz);
        let send = |guid: &str| {
            let body = kiln_bus::encode(&start("app4", guid, &url, &sha, web));
            let client = client.clone();
            async move {
                client
                    .publish(cell::start_subject("cell-63"), body.into())
                    .await
                    .expect("publish");
                client.flush().await.expect("flush");
            }
        };

        let mut first = Process::start(&config, &file, "first");
        bus.wait(wait, "an advertisement", |s, v| {
            s == cell::CELL_ADVERTISE && v["cell_id"] == "cell-63"
        })
        .await;
        send("inst-a").await;
        bus.state("inst-a", "RUNNING", wait).await;
        first.signal(libc::SIGKILL);
        first.wait(Duration::from_secs(10));
        std::mem::forget(first); // its clean-up would destroy what the next one must find

        let mut second = Process::start(&config, &file, "second");
        let (_, lost) = bus.state("inst-a", "STOPPED", wait).await;
        assert!(
            lost["description"]
                .as_str()
                .unwrap_or("")
                .contains("cannot re-attach"),
            "{lost}"
        );
        send("inst-b").await;
        let (_, running) = bus.state("inst-b", "RUNNING", wait).await;
        let port = running["port"].as_u64().expect("port") as u16;
        assert!(http_get(port, "/index.html").await.contains("hi"));

        // SIGTERM: evacuation. The cell says so at once and keeps its instance (no
        // controller here moves it); a second SIGTERM stops it at once.
        let asked = bus.seen.lock().expect("lock").len();
        second.signal(libc::SIGTERM);
        let (evacuating, _) = bus
            .wait(
                Duration::from_secs(10),
                "an evacuating advertisement",
                |s, v| {
                    s == cell::CELL_ADVERTISE
                        && v["cell_id"] == "cell-63"
                        && v["evacuating"] == true
                },
            )
            .await;
        assert!(evacuating >= asked);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(http_get(port, "/index.html").await.contains("hi"));
        assert!(bus
            .find(|s, v| s == router::ROUTER_UNREGISTER && v["private_instance_id"] == "inst-b")
            .is_none());
        second.signal(libc::SIGTERM);
        let status = tokio::task::block_in_place(|| second.wait(Duration::from_secs(30)));
        assert!(status.success(), "{status:?}");
        let (unregistered, _) = bus
            .wait(wait, "unregister", |s, v| {
                s == router::ROUTER_UNREGISTER && v["private_instance_id"] == "inst-b"
            })
            .await;
        let (stopped, _) = bus.state("inst-b", "STOPPED", wait).await;
        assert!(unregistered < stopped);
    });
    // Nothing on the machine: the store is unmounted and a fresh backend finds nothing.
    let data = config.data_dir.to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&data), "mounts left under {data}");
    let backend = rt
        .block_on(Backend::new(config.backend_config()))
        .expect("backend");
    assert_eq!(backend.resources_on_machine(), Vec::<String>::new());
    drop(backend);
    Backend::destroy_all(&config.backend_config()).expect("unmount");
}
