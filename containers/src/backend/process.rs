//! Running processes in a container: `runc exec` in the foreground, its stdout and stderr
//! streamed separately as they are written, its exit (OOM kill and timeout included) reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{lock, Backend};
use crate::bundle::{self, ExecProcess};
use crate::error::{Error, Result};
use crate::runtime::RuntimeError;
use crate::spec::{ContainerState, ProcessExit, ProcessSpec};
use crate::state::ContainerRecord;

static NEXT_PROCESS: AtomicU64 = AtomicU64::new(1);

/// A process running in a container.
#[derive(Debug)]
pub struct Process {
    id: String,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    exit: watch::Receiver<Option<ProcessExit>>,
    /// Pid of our `runc exec` child, which forwards signals to the process.
    runc_pid: u32,
    /// Where runc writes the process's own host pid (for SIGKILL, which runc cannot forward).
    pid_file: PathBuf,
}

impl Process {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The process's stdin; dropping it closes the process's input.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The process's stdout, readable as it is written.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Waits for the process to end. Output not taken is discarded.
    pub async fn wait(&mut self) -> Result<ProcessExit> {
        // Drain untaken pipes so a chatty process never blocks on a full pipe.
        if let Some(stdout) = self.stdout.take() {
            tokio::spawn(drain(stdout));
        }
        if let Some(stderr) = self.stderr.take() {
            tokio::spawn(drain(stderr));
        }
        let exit = self
            .exit
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::Task("process watcher ended without an exit status".into()))?;
        exit.ok_or_else(|| Error::Task("no exit status".into()))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process. Signalling an ended process does
    /// nothing.
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        let target = if signal == libc::SIGKILL {
            // runc cannot forward SIGKILL: kill the process itself, then runc exits with it.
            match std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                Some(pid) => pid,
                None => self.runc_pid as i32,
            }
        } else {
            self.runc_pid as i32
        };
        // SAFETY: plain kill(2) on a pid we started (runc exec, our unreaped child) or that
        // runc reported for it.
        if unsafe { libc::kill(target, signal) } != 0 {
            return Err(Error::io(
                "signal process",
                &self.pid_file,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

async fn drain<R: tokio::io::AsyncRead + Unpin>(mut r: R) {
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

impl Backend {
    /// Starts `process` in the container.
    pub async fn run(&self, handle: &str, process: ProcessSpec) -> Result<Process> {
        let (record, processes) = {
            let table = self.inner.table();
            let entry = table
                .containers
                .get(handle)
                .ok_or_else(|| Error::NotFound(handle.to_string()))?;
            (entry.record.clone(), entry.processes.clone())
        };
        if record.state != ContainerState::Active {
            return Err(Error::NotActive {
                handle: handle.to_string(),
                state: <&str>::from(record.state).to_string(),
            });
        }
        let id = format!("{handle}-p{}", NEXT_PROCESS.fetch_add(1, Ordering::Relaxed));
        let dir = self.inner.dir(handle).processes();
        let spec_file = dir.join(format!("{id}.json"));
        let pid_file = dir.join(format!("{id}.pid"));
        let exec = exec_process(&record, &process)?;
        bundle::write_json(&spec_file, &exec.spec().map_err(invalid)?).map_err(invalid)?;

        let oom_counter = self.oom_counter_path(handle);
        let ooms_before = read_oom_kills(&oom_counter);
        let mut cmd = tokio::process::Command::from(self.inner.runc.exec_command(
            handle,
            &spec_file,
            &pid_file,
        ));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Io {
            op: "exec",
            id: handle.to_string(),
            source,
        })?;
        let runc_pid = child.id().unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        lock(&processes).insert(id.clone(), runc_pid);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        info!(handle, process = %id, path = %process.path, "process.started");

        let timeout = process.timeout;
        let watcher_id = id.clone();
        let watcher_pid_file = pid_file.clone();
        tokio::spawn(async move {
            let (status, timed_out) = match timeout {
                Some(t) => match tokio::time::timeout(t, child.wait()).await {
                    Ok(status) => (status, false),
                    Err(_) => {
                        kill_process(&watcher_pid_file, runc_pid);
                        (child.wait().await, true)
                    }
                },
                None => (child.wait().await, false),
            };
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + s.signal().unwrap_or(0)
                }),
                Err(e) => {
                    warn!(process = %watcher_id, error = %e, "process.wait-failed");
                    -1
                }
            };
            let oom_killed = code == 128 + libc::SIGKILL
                && !timed_out
                && read_oom_kills(&oom_counter) > ooms_before;
            lock(&processes).remove(&watcher_id);
            let _ = std::fs::remove_file(&spec_file);
            let _ = std::fs::remove_file(&watcher_pid_file);
            info!(process = %watcher_id, code, oom_killed, timed_out, "process.exited");
            let _ = tx.send(Some(ProcessExit {
                code,
                oom_killed,
                timed_out,
            }));
        });

        Ok(Process {
            id,
            stdin,
            stdout,
            stderr,
            exit: rx,
            runc_pid,
            pid_file,
        })
    }

    fn oom_counter_path(&self, handle: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup/memory")
            .join(self.inner.cgroups_path(handle).trim_start_matches('/'))
            .join("memory.oom_control")
    }
}

/// The `runc exec` process for `process`: user resolved, env merged, defaults filled in.
fn exec_process<'a>(record: &ContainerRecord, process: &'a ProcessSpec) -> Result<ExecProcess<'a>> {
    let handle = &record.spec.handle;
    let user_name = process.user.as_deref().unwrap_or("vcap");
    let user = match record.users.get(user_name) {
        Some(u) => u.clone(),
        None => match user_name.parse::<u32>() {
            Ok(uid) => crate::state::User {
                uid,
                gid: uid,
                home: "/".into(),
            },
            Err(_) => {
                return Err(Error::UnknownUser {
                    handle: handle.clone(),
                    user: user_name.to_string(),
                })
            }
        },
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let defaults = [
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("HOME={}", user.home),
        format!("USER={user_name}"),
    ];
    for entry in defaults
        .iter()
        .chain(record.spec.env.iter())
        .chain(process.env.iter())
    {
        let (k, v) = entry.split_once('=').ok_or_else(|| {
            Error::InvalidSpec(format!("env entry {entry:?} is not KEY=VALUE"))
        })?;
        env.insert(k.to_string(), v.to_string());
    }
    let mut args = vec![process.path.clone()];
    args.extend(process.args.iter().cloned());
    Ok(ExecProcess {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd: match (&process.dir, user.home.is_empty()) {
            (Some(dir), _) => dir.clone(),
            (None, false) => user.home.clone(),
            (None, true) => "/".to_string(),
        },
        uid: user.uid,
        gid: user.gid,
        rlimits: &process.rlimits,
    })
}

fn kill_process(pid_file: &Path, runc_pid: u32) {
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        // SAFETY: kill(2) on the pid runc reported for the process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(runc_pid as i32, libc::SIGKILL) };
}

/// The `oom_kill` count of a memory cgroup (cgroup v1 `memory.oom_control`).
fn read_oom_kills(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn invalid(e: bundle::BundleError) -> Error {
    Error::InvalidSpec(e.to_string())
}
