//! Interactive sessions in an instance (a Kiln extension of the V3 API, what `kiln ssh NAME`
//! opens): `GET /v3/processes/:guid/instances/:index/ssh` upgraded to a WebSocket. The
//! controller finds the instance's cell as for exec (and records the same `audit.app.ssh`
//! event), asks it to start the session (an [`InstanceExec`] naming a session id), and relays:
//!
//! - client → controller: binary messages are the session's stdin; an empty one closes it.
//! - controller → client: binary messages whose first byte says the stream (1 stdout,
//!   2 stderr) and the rest is the data; then one text message, the end as JSON
//!   (`{"exit_code": 3}` or `{"error": "..."}`), and the close.
//!
//! The command is `sh` (`sh -i`, with prompts, when `?tty=true`: the client's input is a
//! terminal), or `?command=...` run with `sh -c`. Closing the WebSocket kills the session; a
//! session the controller stops relaying (it went away) is killed by its cell.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::StreamExt;
use kiln_bus::cell::{
    self, session_from_cell, session_subject, ExecResult, InstanceExec, SESSION_MAX_SECS,
    SESSION_PING_SECS,
};
use serde::Deserialize;
use serde_json::json;

use super::exec::{resolve, unanswered, ExecError, Resolved};
use super::ApiQuery;
use crate::auth::User;
use crate::error::ApiError;
use crate::state::{new_guid, AppState};

/// How long the cell has to start the session.
const START_TIMEOUT_SECS: u64 = 15;

/// The query.
#[derive(Debug, Deserialize)]
pub struct SshQuery {
    /// The client's input is a terminal: an interactive shell with prompts.
    #[serde(default)]
    tty: bool,
    /// A command for `sh -c` instead of a shell.
    #[serde(default)]
    command: Option<String>,
}

/// `GET /v3/processes/:guid/instances/:index/ssh` (a WebSocket): the errors of exec (404,
/// 422) before the upgrade; after it, what the cell says (the instance went, the command
/// could not start) comes as the end message.
pub async fn ssh(
    user: User,
    State(s): State<AppState>,
    Path((guid, index)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<SshQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ExecError> {
    let Resolved { target, .. } = resolve(&s, &user, &guid, &index, true).await?;
    let command = match (q.command.filter(|c| !c.trim().is_empty()), q.tty) {
        (Some(c), _) => vec!["sh".to_string(), "-c".to_string(), c],
        (None, true) => vec!["sh".to_string(), "-i".to_string()],
        (None, false) => vec!["sh".to_string()],
    };
    let request = InstanceExec {
        instance_guid: target.instance_guid.clone(),
        command,
        timeout_secs: SESSION_MAX_SECS,
        session: Some(new_guid()),
    };
    Ok(upgrade.on_upgrade(move |socket| relay(s, socket, request, target.cell_id)))
}

/// Starts the session on `cell_id` and relays between it and `socket` until either ends.
async fn relay(s: AppState, mut socket: WebSocket, request: InstanceExec, cell_id: String) {
    let id = request.session.clone().unwrap_or_default();
    let end = match start(&s, &request, &cell_id).await {
        Ok(from_cell) => bridge(&s, &mut socket, &id, from_cell).await,
        Err(why) => Some(ExecResult {
            error: Some(why),
            ..ExecResult::default()
        }),
    };
    if let Some(end) = end {
        let text = json!({"exit_code": end.exit_code, "error": end.error}).to_string();
        let _ = socket.send(Message::Text(text.into())).await;
    }
    let _ = socket.send(Message::Close(None)).await;
    linger(&mut socket).await;
    tracing::info!(session = %id, cell = %cell_id, "session.closed");
}

/// How long a closed session waits for its client's side of the closing handshake.
const LINGER: Duration = Duration::from_secs(5);

/// Reads (and drops) what the client still sends until its close, or [`LINGER`]. Dropping a
/// connection whose client input is unread makes the kernel answer with a reset, and a reset
/// makes the client's kernel throw away what it had not read yet: the end message.
async fn linger(socket: &mut WebSocket) {
    let drain = async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Subscribes to the session's output, then asks the cell to start it.
async fn start(
    s: &AppState,
    request: &InstanceExec,
    cell_id: &str,
) -> Result<async_nats::Subscriber, String> {
    let id = request.session.as_deref().unwrap_or_default();
    let from_cell = s
        .nats
        .subscribe(format!("{}.*", session_from_cell(id)))
        .await
        .map_err(|e| format!("the bus: {e}"))?;
    let answer = s
        .nats
        .send_request(
            cell::exec_subject(cell_id),
            async_nats::Request::new()
                .payload(kiln_bus::encode(request).into())
                .timeout(Some(Duration::from_secs(START_TIMEOUT_SECS))),
        )
        .await
        .map_err(|e| match unanswered(&e, cell_id, START_TIMEOUT_SECS) {
            ExecError::Unavailable(why) => why,
            ExecError::Api(ApiError::Unprocessable(why)) => why,
            ExecError::Api(other) => other.to_string(),
        })?;
    let started: ExecResult = kiln_bus::decode(&answer.subject, &answer.payload)
        .map_err(|e| format!("the cell's answer: {e}"))?;
    match started.error {
        Some(why) => Err(why),
        None => Ok(from_cell),
    }
}

/// Relays until the session ends (its end, to tell the client) or the client goes (`None`).
async fn bridge(
    s: &AppState,
    socket: &mut WebSocket,
    id: &str,
    mut from_cell: async_nats::Subscriber,
) -> Option<ExecResult> {
    let mut ping = tokio::time::interval(Duration::from_secs(SESSION_PING_SECS));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ping.tick() => {
                let _ = s.nats.publish(session_subject(id, "ping"), Vec::new().into()).await;
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let _ = s.nats.publish(session_subject(id, "in"), data).await;
                }
                Some(Ok(Message::Text(text))) => {
                    let _ = s.nats.publish(session_subject(id, "in"), text.as_bytes().to_vec().into()).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    let _ = s.nats.publish(session_subject(id, "kill"), Vec::new().into()).await;
                    return None;
                }
            },
            message = from_cell.next() => {
                let Some(m) = message else {
                    return Some(ExecResult {
                        error: Some("the bus connection ended".into()),
                        ..ExecResult::default()
                    });
                };
                let stream = match m.subject.as_str().rsplit('.').next() {
                    Some("out") => 1u8,
                    Some("err") => 2u8,
                    Some("exit") => {
                        return Some(kiln_bus::decode(&m.subject, &m.payload).unwrap_or_else(|e| ExecResult {
                            error: Some(format!("the cell's end message: {e}")),
                            ..ExecResult::default()
                        }));
                    }
                    _ => continue,
                };
                let mut frame = Vec::with_capacity(m.payload.len() + 1);
                frame.push(stream);
                frame.extend_from_slice(&m.payload);
                if socket.send(Message::Binary(frame.into())).await.is_err() {
                    let _ = s.nats.publish(session_subject(id, "kill"), Vec::new().into()).await;
                    return None;
                }
            }
        }
    }
}
