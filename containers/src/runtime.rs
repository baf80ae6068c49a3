//! The OCI runtime: a thin wrapper over the `runc` binary.
//!
//! Every call names the container id and the runc state root of this backend, so several
//! backends on one machine never see each other's containers. Failures carry runc's own stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The first Debian runc release with the fix for CVE-2024-21626 (leaked fds, `cwd=/proc/self/fd`).
const FIXED_DEBIAN_RELEASE: &str = "1.1.5+ds1-1+deb12u1";
/// The first upstream runc release with that fix.
const FIXED_UPSTREAM: (u32, u32, u32) = (1, 1, 12);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the OCI runtime {path} could not be run: {source}; install runc (deploy/setup) or set runtime_path")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the OCI runtime {path} is {version}, which lacks the fix for CVE-2024-21626 (container escape through leaked fds); install runc >= 1.1.12 or Debian's {FIXED_DEBIAN_RELEASE} (deploy/setup)")]
    Vulnerable { path: PathBuf, version: String },

    #[error("runc {op} {id} failed ({status}): {stderr}")]
    Failed {
        op: &'static str,
        id: String,
        status: String,
        stderr: String,
    },

    #[error("runc {op} {id}: {source}")]
    Io {
        op: &'static str,
        id: String,
        source: std::io::Error,
    },
}

/// The state runc reports for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuncStatus {
    Created,
    Running,
    Stopped,
    Paused,
    /// runc does not know the id.
    Absent,
}

#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    /// A runtime using `binary`, keeping its state under `root`. Checks the version first.
    pub fn new(binary: &Path, root: &Path) -> Result<Self, RuntimeError> {
        let runc = Runc {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
        };
        runc.check_version()?;
        Ok(runc)
    }

    fn check_version(&self) -> Result<(), RuntimeError> {
        let out = Command::new(&self.binary)
            .arg("--version")
            .output()
            .map_err(|source| RuntimeError::Missing {
                path: self.binary.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let version = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("runc version "))
            .unwrap_or("an unknown version")
            .trim()
            .to_string();
        if version_has_fix(&version, || debian_package_version(&self.binary)) {
            Ok(())
        } else {
            Err(RuntimeError::Vulnerable {
                path: self.binary.clone(),
                version,
            })
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn run(&self, op: &'static str, id: &str, cmd: &mut Command) -> Result<Output, RuntimeError> {
        let out = cmd.output().map_err(|source| RuntimeError::Io {
            op,
            id: id.to_string(),
            source,
        })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(RuntimeError::Failed {
                op,
                id: id.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `runc run --detach`: creates the container and starts its init, whose stdin is
    /// `init_stdin` (the init channel) and whose stdout and stderr are /dev/null: nothing else
    /// of ours reaches into the container, and no pipe of ours is held open by it. runc
    /// reports errors through its log file in the bundle.
    pub fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        init_stdin: Stdio,
    ) -> Result<(), RuntimeError> {
        let log = bundle.join("runc.log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "run", "--detach", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id)
            .stdin(init_stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = cmd.status().map_err(|source| RuntimeError::Io {
            op: "run",
            id: id.to_string(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        Err(RuntimeError::Failed {
            op: "run",
            id: id.to_string(),
            status: status.to_string(),
            stderr: log_errors(&log),
        })
    }

    /// Sends `signal` (a name like `TERM`) to every process of the container.
    pub fn kill_all(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        self.run(
            "kill",
            id,
            self.command().args(["kill", "--all", id, signal]),
        )
        .map(drop)
    }

    /// Forgets the container, killing what still runs in it. Absent containers are fine.
    /// Kill the container's init first when you can: `--force` on a running container makes
    /// runc wait 100 ms after its SIGKILL.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.run("delete", id, self.command().args(["delete", "--force", id])) {
            Ok(_) => Ok(()),
            Err(RuntimeError::Failed { ref stderr, .. }) if is_absent(stderr) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn status(&self, id: &str) -> Result<RuncStatus, RuntimeError> {
        match self.run("state", id, self.command().args(["state", id])) {
            Ok(out) => {
                let state: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                Ok(match state["status"].as_str().unwrap_or("") {
                    "created" => RuncStatus::Created,
                    "running" => RuncStatus::Running,
                    "paused" => RuncStatus::Paused,
                    _ => RuncStatus::Stopped,
                })
            }
            Err(RuntimeError::Failed { ref stderr, .. }) if is_absent(stderr) => {
                Ok(RuncStatus::Absent)
            }
            Err(e) => Err(e),
        }
    }

    /// Ids of every container in this backend's runc root.
    pub fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let out = self.run("list", "", self.command().args(["list", "-q"]))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The command that runs the process described by `process_json` in the container; the
    /// caller spawns it with the stdio it wants. runc stays in the foreground, forwards signals
    /// to the process and exits with its status.
    pub fn exec_command(&self, id: &str, process_json: &Path, pid_file: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .args(["exec", "--process"])
            .arg(process_json)
            .arg("--pid-file")
            .arg(pid_file)
            .arg(id);
        cmd
    }
}

/// The messages of the error lines of a runc JSON log.
fn log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let messages: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect();
    if messages.is_empty() {
        text.lines().rev().take(5).collect::<Vec<_>>().join("; ")
    } else {
        messages.join("; ")
    }
}

fn is_absent(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("not exist")
}

/// Whether `version` (as `runc --version` prints it) carries the CVE-2024-21626 fix.
/// Debian backports the fix without changing the upstream number, so for 1.1.5 the installed
/// package's release is asked for.
fn version_has_fix(version: &str, debian_release: impl FnOnce() -> Option<String>) -> bool {
    let upstream = version.split('+').next().unwrap_or(version);
    let mut parts = upstream.split('.').map(|p| {
        p.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    let triple = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if triple >= FIXED_UPSTREAM {
        return true;
    }
    if version.contains("+ds") {
        if let Some(release) = debian_release() {
            return debian_release_has_fix(&release);
        }
    }
    false
}

/// Debian releases of 1.1.5 carry the fix from `+deb12u1` on.
fn debian_release_has_fix(release: &str) -> bool {
    if !release.starts_with("1.1.5+ds1-1") {
        // A later Debian upstream version would have been caught by the upstream check.
        return false;
    }
    release
        .rsplit_once("+deb12u")
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .is_some_and(|n| n >= 1)
}

fn debian_package_version(binary: &Path) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-S"])
        .arg(binary)
        .output()
        .ok()?;
    let owner = String::from_utf8_lossy(&out.stdout);
    let package = owner.split(':').next()?.trim().to_string();
    if package.is_empty() {
        return None;
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", &package])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_versions_with_and_without_the_fix() {
        assert!(version_has_fix("1.1.12", || None));
        assert!(version_has_fix("1.2.0", || None));
        assert!(!version_has_fix("1.1.11", || None));
        assert!(!version_has_fix("1.0.0-rc93", || None));
    }

    #[test]
    fn debian_backport_is_recognised_by_its_release() {
        assert!(version_has_fix("1.1.5+ds1", || Some(
            "1.1.5+ds1-1+deb12u1".into()
        )));
        assert!(!version_has_fix("1.1.5+ds1", || Some("1.1.5+ds1-1".into())));
        assert!(!version_has_fix("1.1.5+ds1", || None));
    }
}
