//! One staging container and the steps run in it: every step's output goes to the log line by
//! line as it is written, its last lines are kept for error messages, and the staging's time
//! and memory limits turn into errors that say which step hit them.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_containers::{Backend, ProcessSpec};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Phase, StagingError, Tail};
use crate::log::{LogLine, LogSink, Stream, TailBuffer};

/// Standard output kept from one step (detect names, release YAML), at most this many bytes.
const STDOUT_CAP: usize = 1 << 20;

/// One `sh -c` command of a staging; [`Step::new`] then the settings that differ from the
/// defaults (no args, no extra env, the app directory, output to the log).
pub(crate) struct Step<'a> {
    phase: Phase,
    buildpack: &'a str,
    user: &'a str,
    script: &'a str,
    args: &'a [&'a str],
    env: &'a [String],
    dir: &'a str,
    output: Output,
}

impl<'a> Step<'a> {
    /// `script` for `buildpack` in `phase`, run as `user`.
    pub fn new(phase: Phase, buildpack: &'a str, user: &'a str, script: &'a str) -> Self {
        Step {
            phase,
            buildpack,
            user,
            script,
            args: &[],
            env: &[],
            dir: kiln_droplet::APP_DIR,
            output: Output::Log,
        }
    }

    /// Its positional parameters (`$1`...).
    pub fn args(mut self, args: &'a [&'a str]) -> Self {
        self.args = args;
        self
    }

    /// Variables added to the buildpack env (not given to root steps).
    pub fn env(mut self, env: &'a [String]) -> Self {
        self.env = env;
        self
    }

    /// Its working directory.
    pub fn dir(mut self, dir: &'a str) -> Self {
        self.dir = dir;
        self
    }

    /// What happens to its output.
    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }
}

/// What a finished step gives back.
#[derive(Debug)]
pub(crate) struct StepOutput {
    /// Its exit status.
    pub status: i32,
    /// Its standard output, when captured.
    pub stdout: String,
    /// The last lines of stdout and stderr together.
    pub tail: Vec<String>,
}

/// How a step's output is treated.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Output {
    /// Every line goes to the log.
    Log,
    /// stdout is captured (not logged); stderr goes to the log.
    Capture,
    /// stdout is captured, stderr kept only in the tail.
    Quiet,
}

/// The staging container and the log.
pub(crate) struct Session<'a> {
    pub backend: &'a Backend,
    pub handle: String,
    sink: LogSink,
    log: Arc<Mutex<Vec<LogLine>>>,
    deadline: Instant,
    timeout: Duration,
    memory_mib: u64,
    /// `KEY=VALUE` given to every buildpack step.
    pub env: Vec<String>,
}

impl StepOutput {
    /// Itself when the step exited 0, else the buildpack's failure in `phase`.
    pub fn succeeded(self, phase: Phase, buildpack: &str) -> Result<StepOutput, StagingError> {
        if self.status == 0 {
            return Ok(self);
        }
        Err(StagingError::BuildpackFailed {
            phase,
            buildpack: buildpack.to_string(),
            status: self.status,
            tail: Tail(self.tail),
        })
    }

    /// Itself when the step exited 0, else a contract violation: `what` failed, and why.
    pub fn or_violation(
        self,
        phase: Phase,
        buildpack: &str,
        what: &str,
    ) -> Result<StepOutput, StagingError> {
        if self.status == 0 {
            return Ok(self);
        }
        Err(StagingError::ContractViolated {
            phase,
            buildpack: buildpack.to_string(),
            reason: format!("{what}: {}", self.tail.join(" / ")),
        })
    }
}

impl<'a> Session<'a> {
    pub fn new(
        backend: &'a Backend,
        handle: String,
        sink: LogSink,
        timeout: Duration,
        memory_bytes: u64,
    ) -> Self {
        Session {
            backend,
            handle,
            sink,
            log: Arc::default(),
            deadline: Instant::now() + timeout,
            timeout,
            memory_mib: memory_bytes >> 20,
            env: Vec::new(),
        }
    }

    /// Writes a line of the stager's own to the log.
    pub fn say(&self, text: impl Into<String>) {
        emit(&self.sink, &self.log, Stream::Out, text.into());
    }

    /// Writes a warning to the log (stderr).
    pub fn warn(&self, text: impl Into<String>) {
        emit(&self.sink, &self.log, Stream::Err, text.into());
    }

    /// The whole log so far.
    pub fn log(&self) -> Vec<LogLine> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Runs `step`: `sh -c script kiln args...` as its user in its directory.
    pub async fn sh(&self, step: Step<'_>) -> Result<StepOutput, StagingError> {
        let mut all = vec!["-c", step.script, "kiln"];
        all.extend_from_slice(step.args);
        let mut spec = ProcessSpec::new("/bin/sh", &all).user(step.user);
        // The stager's root steps never see the app's env (a PATH of the app's could otherwise
        // run app code as root).
        spec.env = if step.user == "root" {
            vec![ROOT_PATH.to_string()]
        } else {
            self.env.iter().chain(step.env).cloned().collect()
        };
        spec.dir = Some(step.dir.to_string());
        self.run(step.phase, step.buildpack, spec, step.output)
            .await
    }

    /// Runs `spec`, streaming its output, and fails on a timeout or the OOM killer. Output
    /// still coming after the process exited (from processes it left in the background) is
    /// read for a moment; then those processes are killed.
    pub async fn run(
        &self,
        phase: Phase,
        buildpack: &str,
        mut spec: ProcessSpec,
        output: Output,
    ) -> Result<StepOutput, StagingError> {
        let timed_out = |tail: Vec<String>| StagingError::TimedOut {
            phase,
            buildpack: buildpack.to_string(),
            limit_secs: self.timeout.as_secs(),
            tail: Tail(tail),
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(Vec::new()));
        }
        spec.timeout = Some(left);
        let mut process =
            self.backend
                .run(&self.handle, spec)
                .await
                .map_err(StagingError::sandbox(
                    phase,
                    format!("starting a step of buildpack {buildpack}"),
                ))?;
        let tail = Arc::new(Mutex::new(TailBuffer::default()));
        let pump = |stream, kind, capture, echo| {
            let pump = Pump {
                sink: self.sink.clone(),
                log: self.log.clone(),
                tail: tail.clone(),
                kind,
                capture,
                echo,
            };
            tokio::spawn(pump.run(stream))
        };
        let mut out = pump(
            process.take_stdout(),
            Stream::Out,
            output != Output::Log,
            true,
        );
        let mut err = pump(
            process.take_stderr(),
            Stream::Err,
            false,
            output != Output::Quiet,
        );
        let exit = process.wait().await.map_err(StagingError::sandbox(
            phase,
            format!("waiting for buildpack {buildpack}"),
        ));
        let drained = tokio::time::timeout(Duration::from_millis(300), async {
            tokio::join!(&mut out, &mut err)
        })
        .await;
        let captured = match drained {
            Ok((o, _)) => o.unwrap_or_default(),
            Err(_) => {
                self.warn(format!(
                    "       {buildpack} left processes running in the background; stopping them"
                ));
                self.kill_strays().await;
                let grace = tokio::time::timeout(Duration::from_secs(2), async {
                    tokio::join!(&mut out, &mut err)
                })
                .await;
                out.abort();
                err.abort();
                grace.ok().and_then(|(o, _)| o.ok()).unwrap_or_default()
            }
        };
        let exit = exit?;
        let tail = tail.lock().map(|mut t| t.take()).unwrap_or_default();
        if exit.timed_out {
            return Err(timed_out(tail));
        }
        if exit.oom_killed {
            return Err(StagingError::OutOfMemory {
                phase,
                buildpack: buildpack.to_string(),
                limit_mib: self.memory_mib,
                tail: Tail(tail),
            });
        }
        Ok(StepOutput {
            status: exit.code,
            stdout: captured,
            tail,
        })
    }

    /// Kills every process in the container but its init (and the killer itself).
    async fn kill_strays(&self) {
        let mut spec = ProcessSpec::new("/bin/sh", &["-c", "kill -9 -1; true"]).user("root");
        spec.env = vec![ROOT_PATH.to_string()];
        spec.dir = Some("/".to_string());
        spec.timeout = Some(Duration::from_secs(10));
        match self.backend.run(&self.handle, spec).await {
            Ok(mut p) => {
                let _ = p.wait().await;
            }
            Err(e) => tracing::warn!(error = %e, "killing background processes"),
        }
    }

    /// Copies the tar stream `tar` to `path` in the container, owned by `user`.
    pub async fn put(
        &self,
        phase: Phase,
        path: &str,
        user: &str,
        tar: impl Read + Send + 'static,
    ) -> Result<(), StagingError> {
        self.backend
            .stream_in(&self.handle, path, Some(user), tar)
            .await
            .map_err(StagingError::sandbox(phase, format!("copying into {path}")))
    }
}

fn emit(sink: &LogSink, log: &Mutex<Vec<LogLine>>, stream: Stream, text: String) {
    let line = LogLine { stream, text };
    sink(&line);
    if let Ok(mut log) = log.lock() {
        match log.len() {
            n if n < MAX_LOG_LINES => log.push(line),
            n if n == MAX_LOG_LINES => log.push(LogLine {
                stream: Stream::Err,
                text: format!(
                    "(the staging log keeps its first {MAX_LOG_LINES} lines; the rest was only streamed)"
                ),
            }),
            _ => {}
        }
    }
}

/// Lines of the log kept in the result; every line is streamed to the sink regardless.
const MAX_LOG_LINES: usize = 20_000;
/// A line longer than this is cut into pieces of this size.
const MAX_LINE: usize = 8 << 10;
/// `PATH` of the stager's own root steps, whatever the app's env says.
pub(crate) const ROOT_PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// Reads one output stream of a step in chunks and cuts it into lines (at most [`MAX_LINE`]
/// bytes each): into the log (`echo`), into the captured stdout (`capture`, then not echoed),
/// and always into the tail.
struct Pump {
    sink: LogSink,
    log: Arc<Mutex<Vec<LogLine>>>,
    tail: Arc<Mutex<TailBuffer>>,
    kind: Stream,
    capture: bool,
    echo: bool,
}

impl Pump {
    async fn run(self, stream: Option<impl AsyncRead + Unpin>) -> String {
        let mut captured = String::new();
        let Some(mut stream) = stream else {
            return captured;
        };
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = line_end(&pending) {
                let line: Vec<u8> = pending.drain(..=end).collect();
                self.line(&line, &mut captured);
            }
        }
        if !pending.is_empty() {
            self.line(&pending, &mut captured);
        }
        captured
    }

    fn line(&self, raw: &[u8], captured: &mut String) {
        let text = String::from_utf8_lossy(raw);
        let line = text.trim_end_matches(['\n', '\r']);
        if let Ok(mut t) = self.tail.lock() {
            t.push(line);
        }
        if self.capture {
            if captured.len() < STDOUT_CAP {
                captured.push_str(&text);
            }
        } else if self.echo {
            emit(&self.sink, &self.log, self.kind, line.to_string());
        }
    }
}

/// Where the first line in `pending` ends (its newline, or [`MAX_LINE`] bytes in).
fn line_end(pending: &[u8]) -> Option<usize> {
    pending
        .iter()
        .take(MAX_LINE)
        .position(|b| *b == b'\n')
        .or((pending.len() >= MAX_LINE).then_some(MAX_LINE - 1))
}

/// A tar holding one file `name` with `content` and mode `mode`.
pub(crate) fn file_tar(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        // Writing to a Vec cannot fail.
        let _ = builder.append_data(&mut header, name, *content);
    }
    builder.into_inner().unwrap_or_default()
}
