//! Running a command in an instance's container on request (`kiln ssh -c`, through the
//! controller's `POST /v3/processes/:guid/instances/:index/exec`): an [`InstanceExec`] NATS
//! request on `kiln.cell.<id>.exec`, answered with an [`ExecResult`].
//!
//! The command runs as the app's process does (vcap, in `/home/vcap/app`, the app's and the
//! instance's environment; not through the launcher, so no `.profile.d`), with an empty
//! stdin, in an instance that is RUNNING or STARTING with its container made. Its stdout and
//! stderr are kept up to [`EXEC_OUTPUT_LIMIT`] each (the rest is read and dropped, so the
//! command never blocks on a full pipe); at its timeout the backend kills it and everything
//! it started (its process group). Each request runs in a task of its own, so a long command
//! holds up neither the other commands nor the cell's loops; at most [`MAX_RUNNING`] run at
//! once. A `CELL` line in the app's log says what was run; the output goes only to the
//! caller.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_bus::cell::{
    ExecResult, InstanceExec, InstanceState, EXEC_DEFAULT_TIMEOUT_SECS, EXEC_MAX_TIMEOUT_SECS,
    EXEC_OUTPUT_LIMIT,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::cell::Shared;
use crate::instance::Instance;
use crate::launch;
use crate::report;

/// Commands a cell runs at once; more are refused (each holds a process and up to two
/// output buffers of [`EXEC_OUTPUT_LIMIT`]).
const MAX_RUNNING: usize = 16;
/// Once the command exited, how long its output may still arrive: a background process it
/// started may keep its stdout open, and is not waited for.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// The bus's largest message when the server has not said (NATS's default).
const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// How much of the command the `CELL` line shows.
const SHOWN_COMMAND_CHARS: usize = 200;

/// Why a command did not run or did not finish; the message is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    /// The request is not an [`InstanceExec`].
    #[error("invalid exec request: {0}")]
    Invalid(String),
    /// The argv is empty (or its program is).
    #[error("no command given")]
    NoCommand,
    /// The cell has no such instance, or it is ending.
    #[error("instance {instance} is not running on cell {cell}")]
    NotRunning {
        /// The instance asked for.
        instance: String,
        /// This cell.
        cell: String,
    },
    /// STARTING, its container not made yet.
    #[error("instance {instance} on cell {cell} is starting and has no container yet")]
    NoContainer {
        /// The instance asked for.
        instance: String,
        /// This cell.
        cell: String,
    },
    /// [`MAX_RUNNING`] commands run already.
    #[error("cell {cell} is running {limit} commands already: try again later")]
    Busy {
        /// This cell.
        cell: String,
        /// [`MAX_RUNNING`].
        limit: usize,
    },
    /// The backend could not start the process (no such program, the container went).
    #[error("starting {program:?}: {source}")]
    Start {
        /// The program.
        program: String,
        /// Why.
        source: Box<kiln_containers::Error>,
    },
    /// The process's end could not be learnt (its container went meanwhile).
    #[error("lost the command's process: {0}")]
    Lost(Box<kiln_containers::Error>),
    /// The executor stopped while the command ran; it was killed.
    #[error("the cell is shutting down: the command was killed")]
    ShuttingDown,
}

impl From<ExecError> for ExecResult {
    fn from(e: ExecError) -> ExecResult {
        ExecResult {
            error: Some(e.to_string()),
            ..ExecResult::default()
        }
    }
}

/// Answers the exec requests of `requests` until `done` is cancelled, each in a task of its
/// own.
pub(crate) async fn serve(
    cell: Arc<Shared>,
    mut requests: async_nats::Subscriber,
    done: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_RUNNING));
    loop {
        let message = tokio::select! {
            m = requests.next() => m,
            () = done.cancelled() => None,
        };
        let Some(message) = message else { return };
        let Some(reply) = message.reply.clone() else {
            warn!(subject = %message.subject, "exec.no-reply-subject");
            continue;
        };
        let request = match kiln_bus::decode::<InstanceExec>(&message.subject, &message.payload) {
            Ok(request) => request,
            Err(e) => {
                warn!(error = %e, "command.invalid");
                answer(&cell.nats, reply, ExecError::Invalid(e.to_string()).into()).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let busy = ExecError::Busy {
                cell: cell.config.cell_id.clone(),
                limit: MAX_RUNNING,
            };
            warn!(instance = %request.instance_guid, "exec.refused-busy");
            answer(&cell.nats, reply, busy.into()).await;
            continue;
        };
        let (cell, done) = (cell.clone(), done.clone());
        if request.session.is_some() {
            tokio::spawn(async move {
                crate::session::run(&cell, request, reply, &done).await;
                drop(permit);
            });
            continue;
        }
        tokio::spawn(async move {
            let result = run(&cell, request, &done).await;
            answer(&cell.nats, reply, result).await;
            drop(permit);
        });
    }
}

/// The instance `request` names, with its host port, when a command can run in it.
pub(crate) fn target(
    cell: &Shared,
    request: &InstanceExec,
) -> Result<(Arc<Instance>, u16), ExecError> {
    let not_running = || ExecError::NotRunning {
        instance: request.instance_guid.clone(),
        cell: cell.config.cell_id.clone(),
    };
    let inst = cell.instances().get(&request.instance_guid).cloned();
    let inst = match inst {
        Some(inst) if !inst.stop.is_cancelled() => inst,
        _ => return Err(not_running()),
    };
    let (state, port) = {
        let actual = inst.actual();
        (actual.state, actual.port)
    };
    if !matches!(state, InstanceState::Running | InstanceState::Starting) {
        Err(not_running())
    } else if port == 0 {
        Err(ExecError::NoContainer {
            instance: request.instance_guid.clone(),
            cell: cell.config.cell_id.clone(),
        })
    } else if request.command.first().is_none_or(|p| p.is_empty()) {
        Err(ExecError::NoCommand)
    } else {
        Ok((inst, port))
    }
}

/// The span of a command or session in `inst`.
pub(crate) fn span(kind: &'static str, inst: &Instance) -> tracing::Span {
    info_span!(
        "exec",
        kind,
        app = %inst.start.app_guid,
        instance = %inst.start.instance_guid,
        index = inst.start.index,
        container = %inst.handle(),
    )
}

/// Runs `request`, or says why not.
async fn run(cell: &Shared, request: InstanceExec, done: &CancellationToken) -> ExecResult {
    let (inst, port) = match target(cell, &request) {
        Ok(found) => found,
        Err(why) => {
            info!(instance = %request.instance_guid, reason = %why, "exec.refused");
            return why.into();
        }
    };
    async {
        match execute(cell, &inst, &request, port, done).await {
            Ok(result) => result,
            Err(e) => {
                warn!(error = %e, "exec.failed");
                e.into()
            }
        }
    }
    .instrument(span("command", &inst))
    .await
}

/// The timeout a request asks for, within the limits.
fn timeout_of(request: &InstanceExec) -> Duration {
    let secs = match request.timeout_secs {
        0 => EXEC_DEFAULT_TIMEOUT_SECS,
        s => s.min(EXEC_MAX_TIMEOUT_SECS),
    };
    Duration::from_secs(secs)
}

/// Starts the command in `inst`'s container and collects its output and end.
async fn execute(
    cell: &Shared,
    inst: &Instance,
    request: &InstanceExec,
    port: u16,
    done: &CancellationToken,
) -> Result<ExecResult, ExecError> {
    let timeout = timeout_of(request);
    let argv = &request.command;
    let started = Instant::now();
    let mut process = start(cell, inst, argv, port, timeout, "Running command").await?;
    info!(timeout_secs = timeout.as_secs(), "exec.started");
    drop(process.take_stdin());
    let stop_reading = CancellationToken::new();
    let stdout = tokio::spawn(collect(process.take_stdout(), stop_reading.clone()));
    let stderr = tokio::spawn(collect(process.take_stderr(), stop_reading.clone()));
    let exit = tokio::select! {
        exit = process.wait() => Some(exit),
        () = done.cancelled() => None,
    };
    if exit.is_none() {
        if let Err(e) = process.signal(libc::SIGKILL).await {
            warn!(error = %e, "exec.kill-failed");
        }
    }
    // Output written before the end is read within the grace; a background process that
    // keeps the pipes open is not waited for.
    let mut readers = std::pin::pin!(async { tokio::join!(stdout, stderr) });
    let (stdout, stderr) = match tokio::time::timeout(OUTPUT_GRACE, &mut readers).await {
        Ok(both) => both,
        Err(_) => {
            stop_reading.cancel();
            readers.await
        }
    };
    let (stdout, stdout_cut) = stdout.unwrap_or_default();
    let (stderr, stderr_cut) = stderr.unwrap_or_default();
    let mut result = ExecResult {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        truncated: stdout_cut || stderr_cut,
        ..ExecResult::default()
    };
    match exit {
        None => result.error = Some(ExecError::ShuttingDown.to_string()),
        Some(Err(e)) => result.error = Some(ExecError::Lost(Box::new(e)).to_string()),
        Some(Ok(exit)) if exit.timed_out => {
            result.timed_out = true;
            result.error = Some(format!(
                "the command ran longer than {} s and was killed",
                timeout.as_secs()
            ));
        }
        Some(Ok(exit)) => result.exit_code = Some(exit.code),
    }
    info!(
        exit_code = ?result.exit_code,
        timed_out = result.timed_out,
        truncated = result.truncated,
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "exec.finished"
    );
    Ok(result)
}

/// Starts `argv` in `inst`'s container as the app's process runs (its user, directory and
/// environment), killed at `timeout`, after a `CELL` line "<what> in instance <i>: <argv>".
pub(crate) async fn start(
    cell: &Shared,
    inst: &Instance,
    argv: &[String],
    port: u16,
    timeout: Duration,
    what: &str,
) -> Result<kiln_containers::Process, ExecError> {
    report::cell_log(
        &cell.nats,
        inst,
        &format!("{what} in instance {}: {}", inst.start.index, shown(argv)),
    )
    .await;
    let mut spec = launch::process_spec(cell, inst, port);
    spec.path.clone_from(&argv[0]);
    spec.args = argv[1..].to_vec();
    spec.timeout = Some(timeout);
    cell.backend
        .run(inst.handle(), spec)
        .await
        .map_err(|source| ExecError::Start {
            program: argv[0].clone(),
            source: Box::new(source),
        })
}

/// Reads `stream` to its end (or until `stop`), keeping the first [`EXEC_OUTPUT_LIMIT`]
/// bytes; whether any were dropped.
async fn collect(
    stream: Option<impl AsyncRead + Unpin>,
    stop: CancellationToken,
) -> (Vec<u8>, bool) {
    let Some(mut stream) = stream else {
        return (Vec::new(), false);
    };
    let (mut kept, mut truncated) = (Vec::new(), false);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        let room = EXEC_OUTPUT_LIMIT.saturating_sub(kept.len());
        if n > room {
            truncated = true;
        }
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    (kept, truncated)
}

/// Sends `result` to `reply`, cut to the bus's largest message.
pub(crate) async fn answer(
    nats: &async_nats::Client,
    reply: async_nats::Subject,
    mut result: ExecResult,
) {
    let max = match nats.server_info().max_payload {
        0 => DEFAULT_MAX_PAYLOAD,
        max => max,
    };
    let body = fit(&mut result, max);
    if let Err(e) = nats.publish(reply, body.into()).await {
        warn!(error = %e, "exec.reply-failed");
    }
}

/// `result` encoded in at most `max` bytes: the end of the output taking more room is
/// dropped (and `truncated` set) until it fits. 2 MiB of output do not fit NATS's default
/// largest message of 1 MiB.
fn fit(result: &mut ExecResult, max: usize) -> Vec<u8> {
    let encoded = |s: &str| serde_json::to_string(s).map_or(s.len(), |e| e.len());
    loop {
        let body = kiln_bus::encode(result);
        if body.len() <= max || (result.stdout.is_empty() && result.stderr.is_empty()) {
            return body;
        }
        // A little more than the excess, for the `truncated` flag.
        let excess = body.len() - max + 16;
        let (out, err) = (encoded(&result.stdout), encoded(&result.stderr));
        let (longer, room) = if out >= err {
            (&mut result.stdout, out)
        } else {
            (&mut result.stderr, err)
        };
        // Escapes make a byte of output up to six of JSON: drop raw bytes in proportion.
        let drop = (excess.saturating_mul(longer.len()) / room.max(1)).max(1) + 1;
        let mut keep = longer.len().saturating_sub(drop);
        while !longer.is_char_boundary(keep) {
            keep -= 1;
        }
        longer.truncate(keep);
        result.truncated = true;
    }
}

/// The argv for people, shell-quoted where needed and cut after [`SHOWN_COMMAND_CHARS`].
fn shown(argv: &[String]) -> String {
    let plain = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    };
    let text = argv
        .iter()
        .map(|a| {
            if plain(a) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > SHOWN_COMMAND_CHARS {
        let cut: String = text.chars().take(SHOWN_COMMAND_CHARS).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_shown_quoted_and_cut() {
        let argv = ["sh", "-c", "echo $PORT; echo it's"].map(String::from);
        assert_eq!(shown(&argv), r"sh -c 'echo $PORT; echo it'\''s'");
        assert_eq!(shown(&["ls".into(), "".into()]), "ls ''");
        let long = vec!["x".repeat(500)];
        assert_eq!(shown(&long).len(), SHOWN_COMMAND_CHARS + 3);
    }

    #[test]
    fn timeouts_default_and_are_capped() {
        let request = |timeout_secs| InstanceExec {
            instance_guid: "i".into(),
            command: vec!["true".into()],
            timeout_secs,
            session: None,
        };
        assert_eq!(timeout_of(&request(0)), Duration::from_secs(60));
        assert_eq!(timeout_of(&request(1)), Duration::from_secs(1));
        assert_eq!(timeout_of(&request(86_400)), Duration::from_secs(600));
    }

    #[test]
    fn answers_are_cut_to_the_largest_message() {
        let mut result = ExecResult {
            exit_code: Some(0),
            stdout: "é".repeat(400_000),
            stderr: "\u{1}".repeat(300_000),
            ..ExecResult::default()
        };
        let max = 1 << 20;
        let body = fit(&mut result, max);
        assert!(body.len() <= max, "{}", body.len());
        assert!(result.truncated);
        let back: ExecResult = kiln_bus::decode("s", &body).unwrap();
        assert_eq!(back, result);
        assert!(back.stdout.len() > 100_000 && back.stdout.starts_with('é'));

        let mut small = ExecResult {
            stdout: "ok\n".into(),
            ..ExecResult::default()
        };
        fit(&mut small, max);
        assert!(!small.truncated);
    }
}
