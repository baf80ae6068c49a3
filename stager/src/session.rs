//! One staging container and the steps run in it: every step's output goes to the log line by
//! line as it is written, its last lines are kept for error messages, and the staging's time
//! and memory limits turn into errors that say which step hit them.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_containers::{Backend, ProcessSpec};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::error::{Phase, StagingError, Tail};
use crate::log::{LogLine, LogSink, Stream, TailBuffer};

/// Standard output kept from one step (detect names, release YAML), at most this many bytes.
const STDOUT_CAP: usize = 1 << 20;

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

    /// Runs `sh -c script kiln args...` as `user` in the app directory.
    #[allow(clippy::too_many_arguments)]
    pub async fn sh(
        &self,
        phase: Phase,
        buildpack: &str,
        user: &str,
        script: &str,
        args: &[&str],
        extra_env: &[String],
        output: Output,
    ) -> Result<StepOutput, StagingError> {
        self.sh_in(
            kiln_droplet::APP_DIR,
            phase,
            buildpack,
            user,
            script,
            args,
            extra_env,
            output,
        )
        .await
    }

    /// Runs `sh -c script kiln args...` as `user` in `dir`.
    #[allow(clippy::too_many_arguments)]
    pub async fn sh_in(
        &self,
        dir: &str,
        phase: Phase,
        buildpack: &str,
        user: &str,
        script: &str,
        args: &[&str],
        extra_env: &[String],
        output: Output,
    ) -> Result<StepOutput, StagingError> {
        let mut all = vec!["-c", script, "kiln"];
        all.extend_from_slice(args);
        let mut spec = ProcessSpec::new("/bin/sh", &all).user(user);
        spec.env = self.env.iter().chain(extra_env).cloned().collect();
        spec.dir = Some(dir.to_string());
        self.run(phase, buildpack, spec, output).await
    }

    /// Runs `spec`, streaming its output, and fails on a timeout or the OOM killer.
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
        let tail = Mutex::new(TailBuffer::default());
        let stdout = process.take_stdout();
        let stderr = process.take_stderr();
        let (captured, _) = tokio::join!(
            self.pump(stdout, Stream::Out, output != Output::Log, true, &tail),
            self.pump(stderr, Stream::Err, false, output != Output::Quiet, &tail),
        );
        let exit = process.wait().await.map_err(StagingError::sandbox(
            phase,
            format!("waiting for buildpack {buildpack}"),
        ))?;
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

    /// Reads one stream line by line: into the log (`echo`), into `captured` (`capture`, and
    /// then not echoed), and always into the tail.
    async fn pump(
        &self,
        stream: Option<impl AsyncRead + Unpin>,
        kind: Stream,
        capture: bool,
        echo: bool,
        tail: &Mutex<TailBuffer>,
    ) -> String {
        let mut captured = String::new();
        let Some(stream) = stream else {
            return captured;
        };
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end_matches(['\n', '\r']);
            if let Ok(mut t) = tail.lock() {
                t.push(line);
            }
            if capture {
                if captured.len() < STDOUT_CAP {
                    captured.push_str(&text);
                }
            } else if echo {
                emit(&self.sink, &self.log, kind, line.to_string());
            }
        }
        captured
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
        log.push(line);
    }
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
