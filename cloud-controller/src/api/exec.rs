//! Running a command in an instance's container (a Kiln extension of the V3 API, what
//! `kiln ssh -c` calls): `POST /v3/processes/:guid/instances/:index/exec` with
//! `{"command": ["sh", "-c", "..."], "timeout_secs": 60}`. The controller finds the cell the
//! instance runs on from what the cells report, asks it over the bus (an `InstanceExec`
//! request on `kiln.cell.<id>.exec`) and answers with the command's output and exit code.
//! Who may run commands is who may scale the process (today: any signed-in user; there are
//! no roles yet). Each request is an `audit.app.ssh` event naming the instance, never the
//! command or its output.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_bus::cell::{
    self, ExecResult, InstanceExec, InstanceState, EXEC_DEFAULT_TIMEOUT_SECS, EXEC_MAX_TIMEOUT_SECS,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiJson;
use crate::audit::{self, Actor};
use crate::auth::User;
use crate::error::ApiError;
use crate::state::AppState;

/// How much longer than the command's timeout the controller waits for the cell's answer.
const ANSWER_SLACK_SECS: u64 = 5;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct ExecBody {
    /// The argv, run through no shell (`["sh", "-c", "..."]` for one).
    command: Vec<String>,
    /// Seconds before the cell kills the command: 1 to 600, default 60.
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// What the endpoint answers besides 200: the API's errors, and 503 when the cell does not
/// answer (the V3 `CF-ServiceUnavailable`).
#[derive(Debug)]
pub enum ExecError {
    /// 4xx and 500, as every endpoint answers them.
    Api(ApiError),
    /// 503: the cell is gone or did not answer in time.
    Unavailable(String),
}

impl From<ApiError> for ExecError {
    fn from(e: ApiError) -> Self {
        ExecError::Api(e)
    }
}

impl From<sqlx::Error> for ExecError {
    fn from(e: sqlx::Error) -> Self {
        ExecError::Api(e.into())
    }
}

impl IntoResponse for ExecError {
    fn into_response(self) -> Response {
        match self {
            ExecError::Api(e) => e.into_response(),
            ExecError::Unavailable(detail) => {
                let body = json!({"errors": [{"code": 10015, "title": "CF-ServiceUnavailable", "detail": detail}]});
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
        }
    }
}

fn unprocessable(detail: String) -> ExecError {
    ExecError::Api(ApiError::Unprocessable(detail))
}

/// The instance a command goes to.
pub(crate) struct Target {
    pub(crate) instance_guid: String,
    pub(crate) cell_id: String,
}

/// A command's instance, found and audited: the process type and index, and where the
/// instance runs.
pub(crate) struct Resolved {
    pub(crate) kind: String,
    pub(crate) index: u32,
    pub(crate) target: Target,
}

/// Finds instance `index` of process `guid` for `user` and records the `audit.app.ssh`
/// event; 404 for an unknown process, 422 for an index out of range or an instance that is
/// not running.
pub(crate) async fn resolve(
    s: &AppState,
    user: &User,
    guid: &str,
    index: &str,
    session: bool,
) -> Result<Resolved, ExecError> {
    let process: Option<(String, String, i64)> =
        sqlx::query_as("SELECT app_guid, kind, instances FROM processes WHERE guid = $1")
            .bind(guid)
            .fetch_optional(&s.db)
            .await?;
    let (app_guid, kind, instances) = process.ok_or(ApiError::NotFound("Process"))?;
    let app = super::apps::find(s, &app_guid).await?;
    let range = match instances {
        0 => format!("process {kind} has no instances"),
        1 => format!("process {kind} has 1 instance (index 0)"),
        n => format!("process {kind} has {n} instances (indexes 0-{})", n - 1),
    };
    let index: u32 = match index.parse() {
        Ok(i) if i64::from(i) < instances => i,
        _ => {
            return Err(unprocessable(format!(
                "Instance index {index} is out of range: {range}"
            )))
        }
    };
    let target = find_instance(s, guid, index, &kind, &app.state)?;
    let data = json!({
        "process_type": kind,
        "index": index,
        "instance_guid": target.instance_guid,
        "cell_id": target.cell_id,
        "session": session,
    });
    audit::record(
        s,
        "audit.app.ssh",
        Actor::User(user),
        audit::app(&app.guid, &app.name),
        Some(&app.space_guid),
        data,
    )
    .await;
    tracing::info!(
        app = %app.guid, process = %guid, index, instance = %target.instance_guid,
        cell = %target.cell_id, user = %user.name, session, "exec.requested"
    );
    Ok(Resolved {
        kind,
        index,
        target,
    })
}

/// `POST /v3/processes/:guid/instances/:index/exec`: 200 `{exit_code, stdout, stderr,
/// truncated, timed_out, error}` once the command ended (or was killed at its timeout:
/// `exit_code` null, `timed_out` true); 404 for an unknown process; 422 for an empty
/// command, a timeout out of range, an index the process does not have, an instance that is
/// not running, or a command the cell could not start; 503 when the cell does not answer
/// within the timeout and 5 s.
pub async fn exec(
    user: User,
    State(s): State<AppState>,
    Path((guid, index)): Path<(String, String)>,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Json<Value>, ExecError> {
    if body
        .command
        .first()
        .is_none_or(|program| program.is_empty())
    {
        return Err(unprocessable(
            "Command must be a non-empty list whose first element names a program".into(),
        ));
    }
    let timeout_secs = body.timeout_secs.unwrap_or(EXEC_DEFAULT_TIMEOUT_SECS);
    if !(1..=EXEC_MAX_TIMEOUT_SECS).contains(&timeout_secs) {
        return Err(unprocessable(format!(
            "Timeout secs must be between 1 and {EXEC_MAX_TIMEOUT_SECS}"
        )));
    }
    let Resolved {
        kind,
        index,
        target,
    } = resolve(&s, &user, &guid, &index, false).await?;
    let request = InstanceExec {
        instance_guid: target.instance_guid.clone(),
        command: body.command,
        timeout_secs,
        session: None,
    };
    let wait = timeout_secs + ANSWER_SLACK_SECS;
    let answer = s
        .nats
        .send_request(
            cell::exec_subject(&target.cell_id),
            async_nats::Request::new()
                .payload(kiln_bus::encode(&request).into())
                .timeout(Some(Duration::from_secs(wait))),
        )
        .await;
    let cell_id = &target.cell_id;
    let answer = answer.map_err(|e| unanswered(&e, cell_id, wait))?;
    let result: ExecResult = kiln_bus::decode(&answer.subject, &answer.payload)
        .map_err(|e| ApiError::internal("the answer of a cell to a command", e))?;
    if let (Some(why), None, false) = (&result.error, result.exit_code, result.timed_out) {
        return Err(unprocessable(format!(
            "Instance {index} of process {kind}: {why}"
        )));
    }
    Ok(Json(json!({
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "truncated": result.truncated,
        "timed_out": result.timed_out,
        "error": result.error,
    })))
}

/// Why a cell did not answer a request.
pub(crate) fn unanswered(e: &async_nats::RequestError, cell_id: &str, wait: u64) -> ExecError {
    use async_nats::client::RequestErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut => {
            ExecError::Unavailable(format!("Cell {cell_id} did not answer within {wait} s"))
        }
        Kind::NoResponders => ExecError::Unavailable(format!(
            "Cell {cell_id} is not answering: it may have stopped"
        )),
        Kind::MaxPayloadExceeded => unprocessable("The command is too long for the bus".into()),
        _ => ExecError::Api(ApiError::internal("asking a cell to run a command", e)),
    }
}

/// The instance `index` of process `guid` that runs (RUNNING first, then STARTING, one not
/// being stopped, the newest), or a 422 saying its state as stats would.
fn find_instance(
    s: &AppState,
    guid: &str,
    index: u32,
    kind: &str,
    app_state: &str,
) -> Result<Target, ExecError> {
    let inner = s.cells.lock();
    let best = inner
        .instances
        .values()
        .filter(|k| k.actual.process_guid == guid && k.actual.index == index)
        .filter(|k| {
            matches!(
                k.actual.state,
                InstanceState::Running | InstanceState::Starting
            )
        })
        .min_by_key(|k| {
            (
                k.actual.state != InstanceState::Running,
                k.stopping.is_some(),
                k.pending,
                std::cmp::Reverse(k.actual.since_ns),
            )
        });
    let state = match best {
        Some(k) if !k.pending => {
            return Ok(Target {
                instance_guid: k.actual.instance_guid.clone(),
                cell_id: k.actual.cell_id.clone(),
            })
        }
        Some(_) => "STARTING".to_string(),
        None if inner.crashes.contains_key(&(guid.to_string(), index)) => "CRASHED".into(),
        None if app_state != "STARTED" => format!("DOWN; the app is {app_state}"),
        None => "DOWN".into(),
    };
    Err(unprocessable(format!(
        "Instance {index} of process {kind} is not running (state: {state})"
    )))
}
