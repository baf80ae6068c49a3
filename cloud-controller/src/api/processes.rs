//! Processes: one per process type of an app (a `web` one from the start), their commands from
//! the current droplet, scaled by instances, memory and disk. Stats come with the cells.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{link, list_body, ApiJson, PageQuery};
use kiln_bus::cell::InstanceState;

use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now, AppState};

/// Memory of a new process, MiB.
pub const DEFAULT_MEMORY_MB: i64 = 256;
/// Disk of a new process, MiB.
pub const DEFAULT_DISK_MB: i64 = 1024;

/// A process as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProcessRow {
    pub guid: String,
    pub app_guid: String,
    pub kind: String,
    pub command: Option<String>,
    pub instances: i64,
    pub memory_mb: i64,
    pub disk_mb: i64,
    pub health_check_type: String,
    /// The command a user set; the droplet's (`command`) otherwise.
    pub user_command: Option<String>,
    pub health_check_endpoint: Option<String>,
    pub health_check_timeout: Option<i64>,
    pub health_check_invocation_timeout: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str = "guid, app_guid, kind, command, instances, memory_mb, disk_mb, health_check_type, user_command, health_check_endpoint, health_check_timeout, health_check_invocation_timeout, created_at, updated_at";

fn process_json(s: &AppState, p: &ProcessRow) -> Value {
    let g = &p.guid;
    json!({
        "guid": g, "type": p.kind, "command": p.user_command.as_ref().or(p.command.as_ref()),
        "instances": p.instances,
        "memory_in_mb": p.memory_mb, "disk_in_mb": p.disk_mb, "log_rate_limit_in_bytes_per_second": -1,
        "health_check": {"type": p.health_check_type, "data": {
            "timeout": p.health_check_timeout,
            "invocation_timeout": p.health_check_invocation_timeout,
            "endpoint": p.health_check_endpoint.as_deref().or((p.health_check_type == "http").then_some("/")),
        }},
        "relationships": {"app": {"data": {"guid": p.app_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "created_at": p.created_at, "updated_at": p.updated_at,
        "links": {
            "self": link(s, &format!("/v3/processes/{g}")),
            "scale": {"href": format!("{}/v3/processes/{g}/actions/scale", s.base_url), "method": "POST"},
            "app": link(s, &format!("/v3/apps/{}", p.app_guid)),
            "stats": link(s, &format!("/v3/processes/{g}/stats")),
        },
    })
}

/// Adds process `kind` to `app` (instances: 1 for web, else 0) unless it exists.
pub async fn ensure(s: &AppState, app: &str, kind: &str) -> ApiResult<()> {
    let t = now();
    sqlx::query(
        "INSERT INTO processes (guid, app_guid, kind, command, instances, memory_mb, disk_mb, health_check_type, created_at, updated_at)
         VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9) ON CONFLICT(app_guid, kind) DO NOTHING",
    )
    .bind(new_guid())
    .bind(app)
    .bind(kind)
    .bind(i64::from(kind == "web"))
    .bind(DEFAULT_MEMORY_MB)
    .bind(DEFAULT_DISK_MB)
    .bind(if kind == "web" { "port" } else { "process" })
    .bind(&t)
    .bind(&t)
    .execute(&s.db)
    .await?;
    Ok(())
}

/// After a droplet becomes current: a process per type with the droplet's command; types the
/// droplet lacks are removed (but `web`, which stays without a command).
pub async fn sync_with_droplet(
    s: &AppState,
    app: &str,
    types: &BTreeMap<String, String>,
) -> ApiResult<()> {
    for (kind, command) in types {
        ensure(s, app, kind).await?;
        sqlx::query(
            "UPDATE processes SET command = $1, updated_at = $2 WHERE app_guid = $3 AND kind = $4",
        )
        .bind(command)
        .bind(now())
        .bind(app)
        .bind(kind)
        .execute(&s.db)
        .await?;
    }
    let existing: Vec<(String,)> = sqlx::query_as("SELECT kind FROM processes WHERE app_guid = $1")
        .bind(app)
        .fetch_all(&s.db)
        .await?;
    for (kind,) in existing {
        if kind != "web" && !types.contains_key(&kind) {
            sqlx::query("DELETE FROM processes WHERE app_guid = $1 AND kind = $2")
                .bind(app)
                .bind(&kind)
                .execute(&s.db)
                .await?;
        } else if kind == "web" && !types.contains_key("web") {
            sqlx::query("UPDATE processes SET command = NULL WHERE app_guid = $1 AND kind = 'web'")
                .bind(app)
                .execute(&s.db)
                .await?;
        }
    }
    Ok(())
}

async fn find(s: &AppState, guid: &str) -> ApiResult<ProcessRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM processes WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound("Process"))
}

async fn find_by_type(s: &AppState, app: &str, kind: &str) -> ApiResult<ProcessRow> {
    super::apps::find(s, app).await?;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM processes WHERE app_guid = $1 AND kind = $2"
    )))
    .bind(app)
    .bind(kind)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound("Process"))
}

pub async fn app_processes(
    _: User,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    super::apps::find(&s, &app).await?;
    let rows: Vec<ProcessRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM processes WHERE app_guid = $1 ORDER BY kind"
    )))
    .bind(&app)
    .fetch_all(&s.db)
    .await?;
    let total = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let all = PageQuery {
        page: None,
        per_page: Some(total.clamp(1, 5000)),
    };
    let resources = rows.iter().map(|p| process_json(&s, p)).collect();
    Ok(Json(list_body(
        &s,
        &format!("/v3/apps/{app}/processes"),
        "",
        &all,
        total,
        resources,
    )))
}

pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(process_json(&s, &find(&s, &guid).await?)))
}

pub async fn get_by_type(
    _: User,
    State(s): State<AppState>,
    Path((app, kind)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(process_json(
        &s,
        &find_by_type(&s, &app, &kind).await?,
    )))
}

/// `PATCH /v3/processes/:guid` body: a field left out is left as it is; `"command": null` (or
/// `""`) goes back to the droplet's command.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    #[serde(default, deserialize_with = "present")]
    command: Option<Option<String>>,
    health_check: Option<HealthCheckUpdate>,
    #[serde(default)]
    metadata: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckUpdate {
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Option<HealthCheckData>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckData {
    #[serde(default, deserialize_with = "present")]
    endpoint: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    timeout: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    invocation_timeout: Option<Option<i64>>,
}

/// A field given, even as `null`, is `Some`; one left out stays `None` (by `default`).
fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Longest health check timeout, seconds (Cloud Foundry's default maximum).
const MAX_HEALTH_CHECK_TIMEOUT: i64 = 180;

/// `PATCH /v3/processes/:guid`: the command and the health check (type, http endpoint,
/// timeouts). Like Cloud Foundry, running instances keep theirs until the app restarts.
pub async fn update(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    ApiJson(body): ApiJson<Update>,
) -> ApiResult<Json<Value>> {
    let mut p = find(&s, &guid).await?;
    let _ = body.metadata;
    if let Some(command) = body.command {
        p.user_command = command.filter(|c| !c.trim().is_empty());
        if p.user_command.as_ref().is_some_and(|c| c.len() > 4096) {
            return Err(ApiError::Unprocessable(
                "Command must be at most 4096 characters".into(),
            ));
        }
    }
    if let Some(hc) = body.health_check {
        if let Some(kind) = hc.kind {
            if !["port", "http", "process"].contains(&kind.as_str()) {
                return Err(ApiError::Unprocessable(format!(
                    "Health check type must be \"port\", \"process\", or \"http\", not {kind:?}"
                )));
            }
            p.health_check_type = kind;
        }
        let data = hc.data.unwrap_or(HealthCheckData {
            endpoint: None,
            timeout: None,
            invocation_timeout: None,
        });
        if let Some(endpoint) = data.endpoint {
            p.health_check_endpoint = endpoint;
        }
        if let Some(timeout) = data.timeout {
            p.health_check_timeout = timeout;
        }
        if let Some(timeout) = data.invocation_timeout {
            p.health_check_invocation_timeout = timeout;
        }
    }
    if p.health_check_type != "http" {
        if p.health_check_endpoint.is_some() {
            return Err(ApiError::Unprocessable(
                "Health check endpoint can only be set with the \"http\" health check type".into(),
            ));
        }
    } else if let Some(e) = &p.health_check_endpoint {
        if !e.starts_with('/') || e.chars().any(char::is_whitespace) {
            return Err(ApiError::Unprocessable(format!(
                "Health check endpoint must be a path starting with \"/\", not {e:?}"
            )));
        }
    }
    for (name, t) in [
        ("Health check timeout", p.health_check_timeout),
        (
            "Health check invocation timeout",
            p.health_check_invocation_timeout,
        ),
    ] {
        if t.is_some_and(|t| !(1..=MAX_HEALTH_CHECK_TIMEOUT).contains(&t)) {
            return Err(ApiError::Unprocessable(format!(
                "{name} must be between 1 and {MAX_HEALTH_CHECK_TIMEOUT} seconds"
            )));
        }
    }
    sqlx::query(
        "UPDATE processes SET user_command = $1, health_check_type = $2, health_check_endpoint = $3,
            health_check_timeout = $4, health_check_invocation_timeout = $5, updated_at = $6 WHERE guid = $7",
    )
    .bind(&p.user_command)
    .bind(&p.health_check_type)
    .bind(&p.health_check_endpoint)
    .bind(p.health_check_timeout)
    .bind(p.health_check_invocation_timeout)
    .bind(now())
    .bind(&p.guid)
    .execute(&s.db)
    .await?;
    let app = super::apps::find(&s, &p.app_guid).await?;
    // The command may hold secrets: the event says it changed, not what it is.
    let data = json!({"process_type": p.kind, "request": {
        "command": if p.user_command.is_some() { "[PRIVATE DATA HIDDEN]" } else { "" },
        "health_check": {"type": p.health_check_type, "data": {
            "endpoint": p.health_check_endpoint,
            "timeout": p.health_check_timeout,
            "invocation_timeout": p.health_check_invocation_timeout,
        }},
    }});
    crate::audit::record(
        &s,
        "audit.app.process.update",
        crate::audit::Actor::User(&user),
        crate::audit::app(&app.guid, &app.name),
        Some(&app.space_guid),
        data,
    )
    .await;
    Ok(Json(process_json(&s, &find(&s, &p.guid).await?)))
}

#[derive(Deserialize)]
pub struct Scale {
    instances: Option<i64>,
    memory_in_mb: Option<i64>,
    disk_in_mb: Option<i64>,
}

async fn scale_process(
    s: &AppState,
    user: &User,
    p: ProcessRow,
    body: Scale,
) -> ApiResult<Json<Value>> {
    let instances = body.instances.unwrap_or(p.instances);
    let memory = body.memory_in_mb.unwrap_or(p.memory_mb);
    let disk = body.disk_in_mb.unwrap_or(p.disk_mb);
    if !(0..=1000).contains(&instances) {
        return Err(ApiError::Unprocessable(
            "Instances must be between 0 and 1000".into(),
        ));
    }
    if !(16..=65536).contains(&memory) {
        return Err(ApiError::Unprocessable(
            "Memory in mb must be between 16 and 65536".into(),
        ));
    }
    if !(64..=262144).contains(&disk) {
        return Err(ApiError::Unprocessable(
            "Disk in mb must be between 64 and 262144".into(),
        ));
    }
    sqlx::query("UPDATE processes SET instances = $1, memory_mb = $2, disk_mb = $3, updated_at = $4 WHERE guid = $5")
        .bind(instances)
        .bind(memory)
        .bind(disk)
        .bind(now())
        .bind(&p.guid)
        .execute(&s.db)
        .await?;
    s.cells.wake.notify_one();
    let app = super::apps::find(s, &p.app_guid).await?;
    let data = serde_json::json!({"process_type": p.kind, "request": {"instances": instances, "memory_in_mb": memory, "disk_in_mb": disk}});
    let actor = crate::audit::Actor::User(user);
    crate::audit::record(
        s,
        "audit.app.process.scale",
        actor,
        crate::audit::app(&app.guid, &app.name),
        Some(&app.space_guid),
        data,
    )
    .await;
    Ok(Json(process_json(s, &find(s, &p.guid).await?)))
}

pub async fn scale(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    ApiJson(body): ApiJson<Scale>,
) -> ApiResult<Json<Value>> {
    let p = find(&s, &guid).await?;
    scale_process(&s, &user, p, body).await
}

pub async fn scale_by_type(
    user: User,
    State(s): State<AppState>,
    Path((app, kind)): Path<(String, String)>,
    ApiJson(body): ApiJson<Scale>,
) -> ApiResult<Json<Value>> {
    let p = find_by_type(&s, &app, &kind).await?;
    scale_process(&s, &user, p, body).await
}

/// `GET /v3/processes/:guid/stats`: each instance index with its state as the cells report
/// it (RUNNING, STARTING, CRASHED waiting for its restart, or DOWN with the reason when it
/// cannot be placed), where it listens, its uptime and usage.
pub async fn stats(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = find(&s, &guid).await?;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let inner = s.cells.lock();
    let resources: Vec<Value> = (0..p.instances)
        .map(|i| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let best = inner
                .instances
                .values()
                .filter(|k| k.actual.process_guid == p.guid && k.actual.index == index)
                .min_by_key(|k| {
                    (
                        k.actual.state != InstanceState::Running,
                        k.stopping.is_some(),
                        std::cmp::Reverse(k.actual.since_ns),
                    )
                });
            let mut stat = json!({
                "type": p.kind, "index": i, "state": "DOWN", "host": null, "uptime": 0,
                "instance_ports": [], "usage": {}, "details": null,
                "mem_quota": p.memory_mb << 20, "disk_quota": p.disk_mb << 20, "fds_quota": 16384,
            });
            match best {
                Some(k) => {
                    let running = k.actual.state == InstanceState::Running;
                    stat["state"] = json!(if running { "RUNNING" } else { "STARTING" });
                    stat["instance_guid"] = json!(k.actual.instance_guid);
                    if !k.actual.stack_digest.is_empty() {
                        stat["stack_digest"] = json!(k.actual.stack_digest);
                    }
                    if !k.actual.host.is_empty() {
                        stat["host"] = json!(k.actual.host);
                        stat["instance_ports"] = json!([{"external": k.actual.port, "internal": 8080}]);
                    }
                    if running {
                        stat["uptime"] = json!(now_ns.saturating_sub(k.actual.since_ns) / 1_000_000_000);
                    }
                    if let Some(m) = inner.metrics.get(&k.actual.instance_guid) {
                        stat["usage"] = json!({
                            "time": chrono::DateTime::from_timestamp_nanos(i64::try_from(m.timestamp_ns).unwrap_or(i64::MAX)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            "cpu": m.cpu_percent / 100.0, "mem": m.memory_bytes, "disk": m.disk_bytes,
                        });
                    }
                }
                None => {
                    if let Some(c) = inner.crashes.get(&(p.guid.clone(), index)) {
                        stat["state"] = json!("CRASHED");
                        let next = match c.next_restart() {
                            Some(at) => format!(
                                "restarting in {} s",
                                at.saturating_duration_since(std::time::Instant::now()).as_secs()
                            ),
                            None => "given up after too many crashes".into(),
                        };
                        stat["details"] = json!(format!("{} ({} crashes; {next})", c.description, c.count));
                    } else if let Some(why) = inner.unplaceable.get(&p.guid) {
                        stat["details"] = json!(why);
                    }
                }
            }
            stat
        })
        .collect();
    Ok(Json(json!({"resources": resources})))
}
