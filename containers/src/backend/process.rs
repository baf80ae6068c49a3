//! Running processes in a container, their stdout and stderr streamed separately as they are
//! written, their exit (OOM kill and timeout included) reported.
//!
//! Processes are started by the container's `kiln-init` over its channel (a fork and exec in
//! the container, see [`crate::init_channel`]). A container adopted after a backend restart has
//! no channel any more; its processes are started with `runc exec` instead.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::{lock, Backend, Inner};
use crate::bundle::{self, ExecProcess};
use crate::error::{Error, Result};
use crate::init_channel::{InitChannel, RunRequest, Started};
use crate::runtime::RuntimeError;
use crate::spec::{ContainerState, ProcessExit, ProcessSpec};
use crate::state::ContainerRecord;

static NEXT_PROCESS: AtomicU64 = AtomicU64::new(1);

/// A process running in a container.
#[derive(Debug)]
pub struct Process {
    id: String,
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    exit: watch::Receiver<Option<ProcessExit>>,
    signals: Signals,
}

/// How signals reach the process.
#[derive(Debug, Clone)]
enum Signals {
    Init(Arc<InitChannel>),
    /// `runc exec`: our child forwards signals; SIGKILL goes to the pid in `pid_file`, if that
    /// pid is (still) in the container's cgroup.
    Runc {
        runc_pid: u32,
        pid_file: PathBuf,
        cgroups_path: String,
    },
}

impl Process {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The process's stdin; dropping it closes the process's input.
    pub fn take_stdin(&mut self) -> Option<pipe::Sender> {
        self.stdin.take()
    }

    /// The process's stdout, readable as it is written.
    pub fn take_stdout(&mut self) -> Option<pipe::Receiver> {
        self.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<pipe::Receiver> {
        self.stderr.take()
    }

    /// Waits for the process to end. Output not taken is discarded.
    pub async fn wait(&mut self) -> Result<ProcessExit> {
        // Drain untaken pipes so a chatty process never blocks on a full pipe.
        for reader in [self.stdout.take(), self.stderr.take()]
            .into_iter()
            .flatten()
        {
            tokio::spawn(drain(reader));
        }
        self.stdin.take();
        let exit = self
            .exit
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::Task("process watcher ended without an exit status".into()))?;
        exit.ok_or_else(|| Error::Task("no exit status".into()))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process. Signalling an ended process does
    /// nothing.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        send_signal(&self.signals, &self.id, signal).await
    }
}

async fn send_signal(signals: &Signals, id: &str, signal: i32) -> Result<()> {
    match signals {
        Signals::Init(channel) => channel
            .kill(id, signal)
            .await
            .map_err(|e| Error::io("signal process", id, e)),
        Signals::Runc {
            runc_pid,
            pid_file,
            cgroups_path,
        } => {
            let target = if signal == libc::SIGKILL {
                // runc cannot forward SIGKILL: kill the process itself, then runc exits too.
                // A pid read from a file may have been reused: only one in our cgroup counts.
                match read_pid(pid_file).filter(|pid| in_cgroup(*pid, cgroups_path)) {
                    Some(pid) => pid,
                    None => *runc_pid as i32,
                }
            } else {
                *runc_pid as i32
            };
            // SAFETY: kill(2) on our own unreaped child, or the pid runc reported for it.
            if unsafe { libc::kill(target, signal) } != 0 {
                return Err(Error::io(
                    "signal process",
                    pid_file,
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(())
        }
    }
}

async fn drain(mut r: pipe::Receiver) {
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

impl Backend {
    /// Starts `process` in the container.
    pub async fn run(&self, handle: &str, process: ProcessSpec) -> Result<Process> {
        let (record, processes, channel) = {
            let table = self.inner.table();
            let entry = table
                .containers
                .get(handle)
                .ok_or_else(|| Error::NotFound(handle.to_string()))?;
            (
                entry.record.clone(),
                entry.processes.clone(),
                entry.channel.clone(),
            )
        };
        if record.state != ContainerState::Active {
            return Err(Error::NotActive {
                handle: handle.to_string(),
                state: <&str>::from(record.state).to_string(),
            });
        }
        let id = format!("{handle}-p{}", NEXT_PROCESS.fetch_add(1, Ordering::Relaxed));
        let exec = exec_process(&record, &process)?;
        let oom_counter = self.inner.oom_counter_path(handle);
        let ooms_before = read_oom_kills(&oom_counter);

        let (ours, theirs) = process_pipes().map_err(|e| Error::io("start process", &id, e))?;
        let launched = match channel {
            Some(channel) => start_with_init(channel, &id, &exec, &process, theirs).await?,
            None => self.start_with_runc(handle, &id, &exec, theirs).await?,
        };
        lock(&processes).insert(id.clone());
        info!(handle, process = %id, path = %process.path, "process.started");

        let (tx, rx) = watch::channel(None);
        let Launched { signals, exited } = launched;
        let process_handle = Process {
            id: id.clone(),
            stdin: Some(ours.stdin),
            stdout: Some(ours.stdout),
            stderr: Some(ours.stderr),
            exit: rx,
            signals: signals.clone(),
        };
        let timeout = process.timeout;
        let watcher_id = id.clone();
        tokio::spawn(async move {
            let (status, timed_out) = wait_or_kill(exited, timeout, &signals, &watcher_id).await;
            let oom_killed = status == 128 + libc::SIGKILL
                && !timed_out
                && read_oom_kills(&oom_counter) > ooms_before;
            lock(&processes).remove(&watcher_id);
            if let Signals::Runc { pid_file, .. } = &signals {
                let _ = std::fs::remove_file(pid_file);
                let _ = std::fs::remove_file(pid_file.with_extension("json"));
            }
            info!(process = %watcher_id, code = status, oom_killed, timed_out, "process.exited");
            let _ = tx.send(Some(ProcessExit {
                code: status,
                oom_killed,
                timed_out,
            }));
        });
        Ok(process_handle)
    }

    /// The fallback for adopted containers: `runc exec` in the foreground, the process's
    /// stdio being `theirs`.
    async fn start_with_runc(
        &self,
        handle: &str,
        id: &str,
        exec: &ExecProcess<'_>,
        theirs: [OwnedFd; 3],
    ) -> Result<Launched> {
        let dir = self.inner.dir(handle).processes();
        let spec_file = dir.join(format!("{id}.json"));
        let pid_file = dir.join(format!("{id}.pid"));
        bundle::write_json(&spec_file, &exec.spec().map_err(invalid)?).map_err(invalid)?;
        let mut cmd = tokio::process::Command::from(
            self.inner.runc.exec_command(handle, &spec_file, &pid_file),
        );
        let [stdin, stdout, stderr] = theirs;
        cmd.stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Io {
            op: "exec",
            id: handle.to_string(),
            source,
        })?;
        // Our copies of the process's ends close with the command, so EOF reaches the readers.
        drop(cmd);
        let runc_pid = child.id().unwrap_or(0);
        let (exited_tx, exited) = oneshot::channel();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(s) => s.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + s.signal().unwrap_or(0)
                }),
                Err(_) => -1,
            };
            let _ = exited_tx.send(code);
        });
        Ok(Launched {
            signals: Signals::Runc {
                runc_pid,
                pid_file,
                cgroups_path: self.inner.cgroups_path(handle),
            },
            exited,
        })
    }
}

/// A process just started, as either way of starting one hands it over.
struct Launched {
    signals: Signals,
    /// Its exit code (or 128 + signal), when it ends.
    exited: oneshot::Receiver<i32>,
}

/// Our ends of a process's stdio.
struct Pipes {
    stdin: pipe::Sender,
    stdout: pipe::Receiver,
    stderr: pipe::Receiver,
}

/// Three pipes: our (non-blocking) ends, and the process's ends (stdin, stdout, stderr).
fn process_pipes() -> std::io::Result<(Pipes, [OwnedFd; 3])> {
    let (stdin_read, stdin_write) = pipe_pair()?;
    let (stdout_read, stdout_write) = pipe_pair()?;
    let (stderr_read, stderr_write) = pipe_pair()?;
    Ok((
        Pipes {
            stdin: pipe::Sender::from_owned_fd(stdin_write)?,
            stdout: pipe::Receiver::from_owned_fd(stdout_read)?,
            stderr: pipe::Receiver::from_owned_fd(stderr_read)?,
        },
        [stdin_read, stdout_write, stderr_write],
    ))
}

/// Starts the process through the container's init, the process's stdio being `theirs`.
async fn start_with_init(
    channel: Arc<InitChannel>,
    id: &str,
    exec: &ExecProcess<'_>,
    process: &ProcessSpec,
    theirs: [OwnedFd; 3],
) -> Result<Launched> {
    let rlimits = exec
        .rlimits
        .iter()
        .map(|r| {
            Ok((
                bundle::rlimit_number(&r.kind).map_err(invalid)?,
                r.soft,
                r.hard,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let request = RunRequest {
        id,
        uid: exec.uid,
        gid: exec.gid,
        cwd: &exec.cwd,
        args: &exec.args,
        env: &exec.env,
        rlimits: &rlimits,
    };
    let (started, exited) = channel
        .run(&request, [&theirs[0], &theirs[1], &theirs[2]])
        .await
        .map_err(|e| Error::io("start process", id, e))?;
    // The process has its own copies now; ours close so EOF reaches the readers.
    drop(theirs);
    if let Started::Failed { errno, what } = started {
        return Err(Error::ProcessStart {
            path: process.path.clone(),
            step: what,
            source: std::io::Error::from_raw_os_error(errno),
        });
    }
    // Exit statuses come back raw from waitpid: turn them into shell-style codes.
    let (code_tx, code_rx) = oneshot::channel();
    tokio::spawn(async move {
        let status = exited.await.unwrap_or(libc::SIGKILL);
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        let _ = code_tx.send(code);
    });
    Ok(Launched {
        signals: Signals::Init(channel),
        exited: code_rx,
    })
}

/// Waits for the exit code, killing the process if it overruns `timeout`.
async fn wait_or_kill(
    mut exited: oneshot::Receiver<i32>,
    timeout: Option<Duration>,
    signals: &Signals,
    id: &str,
) -> (i32, bool) {
    if let Some(t) = timeout {
        match tokio::time::timeout(t, &mut exited).await {
            Ok(code) => return (code.unwrap_or(-1), false),
            Err(_) => {
                if let Err(e) = send_signal(signals, id, libc::SIGKILL).await {
                    warn!(process = %id, error = %e, "process.timeout-kill-failed");
                }
                return (exited.await.unwrap_or(-1), true);
            }
        }
    }
    (exited.await.unwrap_or(-1), false)
}

impl Inner {
    fn oom_counter_path(&self, handle: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup/memory")
            .join(self.cgroups_path(handle).trim_start_matches('/'))
            .join("memory.oom_control")
    }
}

/// The process as it will be run: user resolved, env merged, defaults filled in.
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
        let (k, v) = entry
            .split_once('=')
            .ok_or_else(|| Error::InvalidSpec(format!("env entry {entry:?} is not KEY=VALUE")))?;
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

/// A pipe (read end, write end), both close-on-exec.
fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn in_cgroup(pid: i32, cgroups_path: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.lines().any(|l| l.ends_with(cgroups_path)))
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
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
