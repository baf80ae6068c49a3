//! One PostgreSQL server per test process, started on first use from Debian's binaries in a
//! data dir of its own, on a free loopback port, trusting local connections of role `kiln`;
//! each test gets a database of its own on it.
//!
//! The server lives as long as the test process: a shell keeps it and waits on a pipe whose
//! other end only this process holds. When the process ends, however it ends, the pipe closes
//! and the shell stops the server (fast shutdown) and removes its data dir.

use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

struct Server {
    port: u16,
    /// Held, never written: its closing (at exit) stops the server.
    _lifeline: Mutex<ChildStdin>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// A new, empty database on this process's PostgreSQL server:
/// `postgres://kiln@127.0.0.1:<port>/<name>`. Panics naming the cause when PostgreSQL cannot
/// run here (deploy/setup installs it).
pub fn postgres_database() -> String {
    let server = match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("PostgreSQL for the tests: {e}"),
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let created = psql(server.port, &format!("CREATE DATABASE {name}"));
    if let Err(e) = created {
        panic!("creating database {name}: {e}");
    }
    format!("postgres://kiln@127.0.0.1:{}/{name}", server.port)
}

fn psql(port: u16, sql: &str) -> Result<(), String> {
    let out = Command::new(bin_dir()?.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "kiln"])
        .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (run deploy/setup to install PostgreSQL)"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| "no /usr/lib/postgresql/<version> (run deploy/setup)".to_string())
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("kiln-test-pg-")
        .tempdir()
        .map_err(|e| format!("a data dir: {e}"))?
        .keep();
    let data = dir.join("data");
    let made = prepare(&bin, &dir, &data);
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let port = crate::free_port();
    // The server runs as `postgres` (it refuses root); the shell stays root to remove the dir.
    let script = r#"
        setpriv --reuid=postgres --regid=postgres --clear-groups -- \
            "$0/postgres" -D "$1/data" -p "$2" -k "$1" -c listen_addresses=127.0.0.1 \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=300 >"$1/server.log" 2>&1 &
        pid=$!
        read -r _ || true
        kill -INT "$pid"
        wait "$pid"
        rm -rf "$1"
    "#;
    let mut child = Command::new("sh")
        .args(["-c", script])
        .arg(&bin)
        .arg(&dir)
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    let lifeline = child.stdin.take().ok_or("no pipe to the server's shell")?;
    let server = Server {
        port,
        _lifeline: Mutex::new(lifeline),
    };
    // Ready when psql gets in ("the database system is starting up" before that).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match psql(port, "SELECT 1") {
            Ok(()) => return Ok(server),
            Err(e) if std::time::Instant::now() > deadline => {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(format!(
                    "postgres did not come up on port {port}: {e}\n{log}"
                ));
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// `initdb` as `postgres` into `data` (inside `dir`, both owned by `postgres`).
fn prepare(bin: &Path, dir: &Path, data: &Path) -> Result<(), String> {
    let chown = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if !chown.success() {
        return Err(
            "chown of the data dir to postgres failed (is the postgresql package installed?)"
                .into(),
        );
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(bin.join("initdb"))
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            "kiln",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}
