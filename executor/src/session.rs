//! Interactive sessions in an instance's container (`kiln ssh NAME` without `-c`, relayed by
//! the controller's WebSocket): an [`InstanceExec`] naming a session starts the command with
//! its stdin open and is answered at once; then stdin arrives on the session's `in` subject,
//! stdout and stderr leave as they are written on `out` and `err`, and the end (exit code or
//! why) on `exit`, after the last output. A `kill` message, the controller's silence for
//! [`SESSION_IDLE_SECS`], the session's time limit or the executor stopping kills the
//! command and everything it started.

use std::time::Duration;

use futures::StreamExt;
use kiln_bus::cell::{
    session_from_cell, session_subject, ExecResult, InstanceExec, SESSION_IDLE_SECS,
    SESSION_MAX_SECS,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::cell::Shared;
use crate::exec::{self, ExecError};

/// Output is published in pieces of at most this many bytes.
const CHUNK: usize = 32 << 10;
/// Pieces of input queued for a program's stdin, at most.
const STDIN_QUEUE: usize = 256;
/// Once the command exited, how long its output may still arrive.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Runs the session `request` names, answering `reply` once it started (or why it did not).
pub(crate) async fn run(
    cell: &Shared,
    request: InstanceExec,
    reply: async_nats::Subject,
    done: &CancellationToken,
) {
    let id = request.session.clone().unwrap_or_default();
    let (inst, port) = match exec::target(cell, &request) {
        Ok(found) => found,
        Err(why) => {
            info!(instance = %request.instance_guid, reason = %why, "session.refused");
            return exec::answer(&cell.nats, reply, why.into()).await;
        }
    };
    async {
        // Subscribed before the answer, so no input sent after it is lost.
        let input = match cell.nats.subscribe(session_subject(&id, "*")).await {
            Ok(input) => input,
            Err(e) => {
                let error = Some(format!("subscribing to the session's input: {e}"));
                return exec::answer(
                    &cell.nats,
                    reply,
                    ExecResult {
                        error,
                        ..ExecResult::default()
                    },
                )
                .await;
            }
        };
        let limit = Duration::from_secs(SESSION_MAX_SECS);
        let started = exec::start(
            cell,
            &inst,
            &request.command,
            port,
            limit,
            "Opening a session",
        )
        .await;
        let process = match started {
            Ok(process) => process,
            Err(e) => return exec::answer(&cell.nats, reply, e.into()).await,
        };
        info!(session = %id, "session.started");
        exec::answer(&cell.nats, reply, ExecResult::default()).await;
        let end = relay(cell, &id, process, input, done).await;
        info!(session = %id, exit_code = ?end.exit_code, error = ?end.error, "session.ended");
        let subject = format!("{}.exit", session_from_cell(&id));
        if let Err(e) = cell
            .nats
            .publish(subject, kiln_bus::encode(&end).into())
            .await
        {
            warn!(error = %e, "session.exit-not-sent");
        }
    }
    .instrument(exec::span("session", &inst))
    .await
}

/// Carries input to the process and its output out until it ends; how it ended.
async fn relay(
    cell: &Shared,
    id: &str,
    mut process: kiln_containers::Process,
    mut input: async_nats::Subscriber,
    done: &CancellationToken,
) -> ExecResult {
    let from_cell = session_from_cell(id);
    let stop_reading = CancellationToken::new();
    let stdout = tokio::spawn(forward(
        cell.nats.clone(),
        format!("{from_cell}.out"),
        process.take_stdout(),
        stop_reading.clone(),
    ));
    let stderr = tokio::spawn(forward(
        cell.nats.clone(),
        format!("{from_cell}.err"),
        process.take_stderr(),
        stop_reading.clone(),
    ));
    // Stdin is written by a task of its own, so a program that does not read it never holds
    // up the session's kill, idle timeout or shutdown; input beyond what is queued is dropped.
    let (mut stdin, writer) = match process.take_stdin() {
        Some(pipe) => {
            let (tx, rx) = tokio::sync::mpsc::channel(STDIN_QUEUE);
            (Some(tx), Some(tokio::spawn(write_stdin(pipe, rx))))
        }
        None => (None, None),
    };
    let idle = Duration::from_secs(SESSION_IDLE_SECS);
    let mut deadline = tokio::time::Instant::now() + idle;
    let mut killed: Option<&str> = None;
    let exit = loop {
        tokio::select! {
            exit = process.wait() => break exit,
            () = done.cancelled(), if killed.is_none() => killed = Some("the cell is shutting down"),
            () = tokio::time::sleep_until(deadline), if killed.is_none() => {
                killed = Some("the session was idle: nobody relayed it any more");
            }
            message = input.next() => match message {
                Some(m) => {
                    deadline = tokio::time::Instant::now() + idle;
                    match m.subject.as_str().rsplit('.').next() {
                        Some("in") if m.payload.is_empty() => stdin = None,
                        Some("in") => {
                            let queued = match stdin.as_ref() {
                                Some(tx) => tx.try_send(m.payload),
                                None => Ok(()),
                            };
                            match queued {
                                Ok(()) => {}
                                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                                    warn!("session.stdin-full: the program is not reading its input; dropped");
                                }
                                // The process closed its stdin: what comes next is dropped.
                                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => stdin = None,
                            }
                        }
                        Some("kill") => killed = Some("the session was closed"),
                        _ => {}
                    }
                }
                None => killed = Some("the session's input ended"),
            },
        }
        if let Some(why) = killed.filter(|_| stdin.is_some() || !stop_reading.is_cancelled()) {
            info!(reason = why, "session.killing");
            stdin = None;
            stop_reading.cancel();
            if let Err(e) = process.signal(libc::SIGKILL).await {
                warn!(error = %e, "session.kill-failed");
            }
        }
    };
    drop(stdin);
    if let Some(writer) = writer {
        writer.abort();
    }
    let mut readers = std::pin::pin!(async { tokio::join!(stdout, stderr) });
    if tokio::time::timeout(OUTPUT_GRACE, &mut readers)
        .await
        .is_err()
    {
        stop_reading.cancel();
        let _ = readers.await;
    }
    match (exit, killed) {
        (_, Some(why)) => ExecResult {
            error: Some(why.to_string()),
            ..ExecResult::default()
        },
        (Err(e), None) => ExecResult {
            error: Some(ExecError::Lost(Box::new(e)).to_string()),
            ..ExecResult::default()
        },
        (Ok(exit), None) if exit.timed_out => ExecResult {
            timed_out: true,
            error: Some(format!(
                "the session lasted longer than {SESSION_MAX_SECS} s and was killed"
            )),
            ..ExecResult::default()
        },
        (Ok(exit), None) => ExecResult {
            exit_code: Some(exit.code),
            ..ExecResult::default()
        },
    }
}

/// Publishes what `stream` gives on `subject`, piece by piece, until its end or `stop`.
async fn forward(
    nats: async_nats::Client,
    subject: String,
    stream: Option<impl AsyncRead + Unpin>,
    stop: CancellationToken,
) {
    let Some(mut stream) = stream else { return };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            n = stream.read(&mut buf) => n,
            () = stop.cancelled() => return,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let piece = buf[..n].to_vec();
                if nats.publish(subject.clone(), piece.into()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes what arrives on `input` to the program's stdin until either ends; the pipe closes
/// (the program sees its input end) when this returns.
async fn write_stdin<T: AsRef<[u8]>>(
    mut pipe: impl tokio::io::AsyncWrite + Unpin,
    mut input: tokio::sync::mpsc::Receiver<T>,
) {
    while let Some(chunk) = input.recv().await {
        if pipe.write_all(chunk.as_ref()).await.is_err() {
            return;
        }
    }
}
