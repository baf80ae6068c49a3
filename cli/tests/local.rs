//! `kiln stage` and `kiln run-droplet` as a buildpack author uses them: the real binary, real
//! containers on the tiny stack, a zip buildpack, the cache on a second staging, a failure's
//! exit code, and a droplet answering HTTP until Ctrl-C, after which nothing is left.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_containers::{Backend, Config, Recovery};

const PORT: u16 = 62090;

/// The CLI's local backends under a `KILN_CLI_DIR` (as `cli/src/local.rs` makes them). The CLI
/// destroys what they made when it exits; on drop, this finishes the job for a test that
/// failed half-way, and fails the test if something is left.
struct LocalBackends(PathBuf);

impl LocalBackends {
    fn configs(&self) -> Vec<Config> {
        [
            ("stage", "10.253.0.0/26", 1u32 << 29),
            ("run", "10.253.0.64/26", (1u32 << 29) + (1 << 26)),
        ]
        .into_iter()
        .map(|(name, pool, uids)| Config {
            data_dir: self.0.join(name),
            stacks_dir: self.0.join("stacks"),
            network_pool: pool.to_string(),
            uid_range_start: uids,
            store_size_bytes: 1 << 30,
            recovery: Recovery::Destroy,
            ..Config::default()
        })
        .collect()
    }
}

impl Drop for LocalBackends {
    fn drop(&mut self) {
        for config in self.configs() {
            if !config.data_dir.exists() {
                continue;
            }
            if let Err(e) = Backend::destroy_all(&config) {
                let message = format!(
                    "LEAK: cleaning up {} failed, it is left on the machine: {e}",
                    config.data_dir.display()
                );
                eprintln!("{message}");
                if !std::thread::panicking() {
                    panic!("{message}");
                }
            }
        }
    }
}

fn kiln(cli_dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("KILN_CLI_DIR", cli_dir);
    c
}

fn zip_buildpack(path: &Path) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let exec = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    for (name, body) in [
        ("bin/detect", "#!/bin/sh\n[ -f \"$1/page.html\" ] && echo zipped || { echo 'no page.html' >&2; exit 1; }\n"),
        ("bin/compile", "#!/bin/sh\nset -e\nmkdir -p \"$2/c\"\nif [ -f \"$2/c/seen\" ]; then echo 'cache: reused'; else echo 'cache: empty'; fi\ntouch \"$2/c/seen\"\n"),
        ("bin/release", "#!/bin/sh\necho 'default_process_types: {web: \"httpd -f -v -p 0.0.0.0:$PORT -h /home/vcap/app\"}'\n"),
    ] {
        w.start_file(name, exec).unwrap();
        w.write_all(body.as_bytes()).unwrap();
    }
    w.finish().unwrap();
}

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /page.html HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn stage_then_run_a_droplet_locally_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cli_dir = dir.path().join("cli");
    // Dropped before `dir`.
    let backends = LocalBackends(cli_dir.clone());
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("page.html"), "Hello from a zipped buildpack\n").unwrap();
    let bp = dir.path().join("my-bp.zip");
    zip_buildpack(&bp);
    let droplet = dir.path().join("app.tgz");

    let stage = |extra: &[&str]| {
        let out = kiln(&cli_dir)
            .args(["stage", "--stack", "tiny", "-o"])
            .arg(&droplet)
            .args(extra)
            .arg(&app)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = stage(&["-b", bp.to_str().unwrap()]);
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        !err.contains("cleaning up"),
        "the CLI cleaned up after itself: {err}"
    );
    assert!(out.contains("my-bp: detected"), "{out}");
    assert!(out.contains("cache: empty"), "{out}");
    assert!(out.contains("detected buildpack: zipped"), "{out}");
    assert!(
        out.contains("start command:      httpd -f -v -p 0.0.0.0:$PORT"),
        "{out}"
    );
    assert!(out.contains("phases:             create"), "{out}");
    let (code, out, err) = stage(&["-b", bp.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(
        !err.contains("cleaning up"),
        "the CLI cleaned up after itself: {err}"
    );
    assert!(
        out.contains("cache: reused"),
        "the second staging reuses the cache: {out}"
    );

    // A buildpack that does not detect the app: exit code 222 and why.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (code, _, err) = {
        let out = kiln(&cli_dir)
            .args(["stage", "--stack", "tiny", "-o"])
            .arg(dir.path().join("x.tgz"))
            .arg(&other)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(222), "{err}");
    assert!(
        !err.contains("cleaning up"),
        "the CLI cleaned up after itself: {err}"
    );
    assert!(
        err.contains("no buildpack detected: tried staticfile, binary, python, nodejs, procfile"),
        "{err}"
    );

    // Run it, see it answer, Ctrl-C it.
    let mut child = kiln(&cli_dir)
        .args(["run-droplet", "--stack", "tiny", "-p", &PORT.to_string()])
        .arg(&droplet)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = None;
    while Instant::now() < deadline && answer.is_none() {
        answer = http_get(PORT).filter(|a| a.contains("Hello from a zipped buildpack"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !err.contains("cleaning up"),
        "the CLI cleaned up after itself: {err}"
    );
    assert!(
        answer.is_some(),
        "the droplet never answered on {PORT}:\n{out}"
    );
    assert!(
        status.success(),
        "Ctrl-C is a clean stop: {status:?}\n{out}"
    );
    assert!(
        out.contains("[APP/PROC/WEB/0]"),
        "app output is tagged: {out}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(cli_dir.to_str().unwrap()),
        "nothing stays mounted under {}",
        cli_dir.display()
    );
    for config in backends.configs() {
        let root = config.data_dir.join("runc");
        if root.exists() {
            let runc = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
                .unwrap();
            let left = String::from_utf8_lossy(&runc.stdout).trim().to_string();
            assert!(
                left.is_empty(),
                "containers left in {}: {left}",
                root.display()
            );
        }
    }
}
