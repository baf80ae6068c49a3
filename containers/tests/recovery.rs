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
    let mut config = config_for(index, &data_dir);
    config.recovery = policy;
    // Made before the owner, so that whatever it leaves is cleaned up even if the test fails
    // early; declared before the backend, so dropped after it (the clean-up needs the data
    // dir's lock).
    let guard = Cleanup(config.clone(), Some(dir));
    crash_an_owner(index, &data_dir);
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

/// Cleans the data dir up on drop, and removes its temp dir unless something is left in it.
struct Cleanup(kiln_containers::Config, Option<tempfile::TempDir>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = clean_up(&self.0) {
            // Removing the dir would delete through whatever is still mounted in it: keep it.
            let kept = self.1.take().map(tempfile::TempDir::keep);
            fail_clean_up(&self.0, &format!("(dir kept: {kept:?})"), e);
        }
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

/// A child of this process that only waits, holding copies of all its fds: what a child that
/// another thread spawns (`runc`, `iptables`, the helper of an idmapped mount) is between its
/// fork and its exec. Killed on drop.
struct ForkedChild(libc::pid_t);

impl ForkedChild {
    fn fork() -> ForkedChild {
        // SAFETY: the child makes only async-signal-safe calls (prctl, pause) and never
        // returns into Rust code.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: as above; it dies with the test's thread at the latest.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                loop {
                    libc::pause();
                }
            }
        }
        ForkedChild(pid)
    }

    fn alive(&self) -> bool {
        // SAFETY: waitpid of our own child; WNOHANG returns at once.
        unsafe { libc::waitpid(self.0, std::ptr::null_mut(), libc::WNOHANG) == 0 }
    }

    /// Whether the child has `path` open.
    fn has_open(&self, path: &Path) -> bool {
        std::fs::read_dir(format!("/proc/{}/fd", self.0))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == path))
            })
            .unwrap_or(false)
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// The data dir's lock stays with the backend: a child forked meanwhile (it holds copies of
/// the backend's fds until it execs) does not keep a new backend, or `destroy_all` right after
/// the drop, out of the data dir. It did: under load, tests' clean-up was refused as "in use"
/// and left their containers running and their store mounted.
#[tokio::test]
async fn a_child_forked_meanwhile_does_not_keep_the_data_dir_locked() {
    let mut t = TestBackend::new(19).await;
    t.container("f").await;
    let lock = t.config.data_dir.join("lock");
    let child = ForkedChild::fork();
    assert!(
        child.has_open(&lock),
        "the child holds a copy of the lock's fd"
    );

    t.reopen().await;
    assert!(child.alive());
    assert_eq!(
        t.backend.list(&Default::default()),
        Vec::<String>::new(),
        "recovery destroyed the container"
    );
    t.container("g").await;

    let second = ForkedChild::fork();
    assert!(second.has_open(&lock));
    t.drop_backend();
    Backend::destroy_all(&t.config).expect("destroy_all while a forked child holds copies");
    assert!(child.alive() && second.alive());
    let data_dir = t.config.data_dir.to_string_lossy().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let left: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&data_dir))
        .collect();
    assert_eq!(left, Vec::<&str>::new(), "mounts left");
}
