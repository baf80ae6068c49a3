//! Start-up recovery: the owner of a backend is SIGKILLed with containers running; a new
//! backend on the same data dir adopts them or destroys them, and nothing leaks either way.
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use kiln_containers::{Backend, NetIn, Recovery};

const OWNER_DIR: &str = "KILN_TEST_OWNER_DATA_DIR";
const OWNER_INDEX: &str = "KILN_TEST_OWNER_INDEX";

/// Not a test: the owner process the recovery tests start and kill.
#[tokio::test]
#[ignore = "run by the recovery tests as a separate process"]
async fn owner_process() {
    let (Ok(dir), Ok(index)) = (std::env::var(OWNER_DIR), std::env::var(OWNER_INDEX)) else {
        return;
    };
    let config = config_for(index.parse().expect("index"), Path::new(&dir));
    let backend = Backend::new(config).await.expect("backend");
    backend
        .import_stack(tiny_layout(), "tiny")
        .await
        .expect("import");
    for handle in ["r1", "r2"] {
        let mut s = spec(handle);
        s.net_in = vec![NetIn {
            host_port: None,
            container_port: 8080,
        }];
        backend.create(s).await.expect("create");
    }
    let _p = backend
        .run(
            "r1",
            kiln_containers::ProcessSpec::new("/bin/sleep", &["1000"]),
        )
        .await
        .expect("run");
    println!("owner-ready");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// Starts the owner, waits until its containers exist, and SIGKILLs it.
fn crash_an_owner(index: u8, data_dir: &Path) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "owner_process", "--ignored", "--nocapture"])
        .env(OWNER_DIR, data_dir)
        .env(OWNER_INDEX, index.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start owner");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("owner-ready"));
    child.kill().expect("SIGKILL owner");
    child.wait().expect("reap owner");
    assert!(ready, "the owner never got its containers up");
}

async fn recover(index: u8, policy: Recovery) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    crash_an_owner(index, &data_dir);
    let mut config = config_for(index, &data_dir);
    config.recovery = policy;
    // Declared before the backend, so dropped after it (the clean-up needs the data dir lock).
    let guard = Cleanup(config.clone());
    let backend = Backend::new(config.clone())
        .await
        .expect("recovering backend");

    let mut handles = backend.list(&Default::default());
    handles.sort();
    match policy {
        Recovery::Adopt => {
            assert_eq!(handles, vec!["r1", "r2"]);
            let (exit, out, _) = run(
                &backend,
                "r1",
                kiln_containers::ProcessSpec::new("/bin/echo", &["still here"]),
            )
            .await;
            assert_eq!((exit.code, out.as_str()), (0, "still here\n"));
            let info = backend.info("r2").expect("info");
            assert_eq!(info.mapped_ports.len(), 1);
            // Adopted ports are not handed out again.
            let fresh = backend.net_in("r2", None, 9000).await.expect("net_in");
            assert!(!backend
                .info("r1")
                .expect("info")
                .mapped_ports
                .iter()
                .any(|m| m.host_port == fresh.host_port));
            for h in handles {
                backend.destroy(&h).await.expect("destroy");
            }
        }
        Recovery::Destroy => assert!(handles.is_empty(), "{handles:?}"),
    }
    assert_eq!(backend.resources_on_machine(), Vec::<String>::new());
    // A second backend on the same data dir is refused while this one lives.
    assert!(matches!(
        Backend::new(config.clone()).await,
        Err(kiln_containers::Error::DataDirInUse(_))
    ));
    drop(backend);
    drop(guard);
}

struct Cleanup(kiln_containers::Config);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Backend::destroy_all(&self.0);
    }
}

#[tokio::test]
async fn after_a_crash_intact_containers_are_adopted() {
    recover(14, Recovery::Adopt).await;
}

#[tokio::test]
async fn after_a_crash_containers_can_be_destroyed_without_leaks() {
    recover(15, Recovery::Destroy).await;
}
