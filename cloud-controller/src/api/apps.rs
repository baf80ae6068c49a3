//! Apps: create, list (filters `names`, `space_guids`), get, update, delete, environment
//! variables, start/stop/restart, and the current droplet.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::listing::{self, Filter, Page};
use super::{filter_values, link, list_body, ApiJson, ApiQuery, PageQuery};
use crate::audit::{self, Actor};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now, AppState};

/// An app as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppRow {
    pub guid: String,
    pub name: String,
    pub space_guid: String,
    pub state: String,
    pub stack: String,
    pub buildpacks: String,
    pub env: String,
    pub droplet_guid: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const APP_COLUMNS: &str =
    "guid, name, space_guid, state, stack, buildpacks, env, droplet_guid, created_at, updated_at";

impl AppRow {
    /// The buildpacks the app stages with (names), in order.
    pub fn buildpack_list(&self) -> Vec<String> {
        serde_json::from_str(&self.buildpacks).unwrap_or_default()
    }

    /// The app's environment variables.
    pub fn env_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.env).unwrap_or_default()
    }
}

/// The app `guid`, or 404.
pub async fn find(s: &AppState, guid: &str) -> ApiResult<AppRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {APP_COLUMNS} FROM apps WHERE guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound("App"))
}

fn app_json(s: &AppState, a: &AppRow) -> Value {
    let g = &a.guid;
    json!({
        "guid": g, "name": a.name, "state": a.state, "created_at": a.created_at, "updated_at": a.updated_at,
        "lifecycle": if a.stack == kiln_bus::DOCKER_STACK {
            json!({"type": "docker", "data": {}})
        } else {
            json!({"type": "buildpack", "data": {"buildpacks": a.buildpack_list(), "stack": a.stack}})
        },
        "relationships": {"space": {"data": {"guid": a.space_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": link(s, &format!("/v3/apps/{g}")),
            "space": link(s, &format!("/v3/spaces/{}", a.space_guid)),
            "packages": link(s, &format!("/v3/apps/{g}/packages")),
            "droplets": link(s, &format!("/v3/apps/{g}/droplets")),
            "current_droplet": link(s, &format!("/v3/apps/{g}/droplets/current")),
            "environment_variables": link(s, &format!("/v3/apps/{g}/environment_variables")),
            "start": {"href": format!("{}/v3/apps/{g}/actions/start", s.base_url), "method": "POST"},
            "stop": {"href": format!("{}/v3/apps/{g}/actions/stop", s.base_url), "method": "POST"},
        },
    })
}

#[derive(Deserialize)]
pub struct Lifecycle {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: LifecycleData,
}

#[derive(Deserialize, Default)]
pub struct LifecycleData {
    buildpacks: Option<Vec<String>>,
    stack: Option<String>,
}

#[derive(Deserialize)]
pub struct Relationship {
    data: RelData,
}

#[derive(Deserialize)]
pub struct RelData {
    guid: String,
}

#[derive(Deserialize)]
pub struct Relationships {
    space: Relationship,
}

#[derive(Deserialize)]
pub struct CreateApp {
    name: String,
    relationships: Relationships,
    lifecycle: Option<Lifecycle>,
    #[serde(default)]
    environment_variables: BTreeMap<String, String>,
    /// Kiln: no `<name>.<default domain>` route for this app.
    #[serde(default)]
    no_route: bool,
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(ApiError::Unprocessable(
            "Name must be 1 to 255 characters without control characters".into(),
        ));
    }
    Ok(())
}

/// Checks the lifecycle; a `docker` one (an app that runs an image: `kiln push
/// --docker-image`) becomes the `docker` stack with no buildpacks.
fn check_lifecycle(l: &mut Option<Lifecycle>) -> ApiResult<()> {
    match l.as_ref().and_then(|l| l.kind.as_deref()) {
        None | Some("buildpack") => Ok(()),
        Some("docker") => {
            if let Some(l) = l.as_mut() {
                l.data.stack = Some(kiln_bus::DOCKER_STACK.to_string());
                l.data.buildpacks = Some(Vec::new());
            }
            Ok(())
        }
        Some(other) => Err(ApiError::Unprocessable(format!(
            "Lifecycle type must be buildpack or docker (got `{other}`)"
        ))),
    }
}

fn check_env(env: &BTreeMap<String, String>) -> ApiResult<()> {
    for key in env.keys() {
        if key.is_empty()
            || key.starts_with("VCAP_")
            || key.starts_with("CF_INSTANCE_")
            || key == "PORT"
            || key.contains('=')
            || key.contains('\0')
        {
            return Err(ApiError::Unprocessable(format!(
                "Environment variables: `{key}` cannot be set (empty, reserved, or containing `=`)"
            )));
        }
    }
    Ok(())
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub async fn create(
    user: User,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateApp>,
) -> ApiResult<impl IntoResponse> {
    check_name(&body.name)?;
    let mut body = body;
    check_lifecycle(&mut body.lifecycle)?;
    check_env(&body.environment_variables)?;
    let space = body.relationships.space.data.guid;
    let exists: Option<(String,)> = sqlx::query_as("SELECT guid FROM spaces WHERE guid = $1")
        .bind(&space)
        .fetch_optional(&s.db)
        .await?;
    if exists.is_none() {
        return Err(ApiError::Unprocessable(
            "Invalid space. Ensure that the space exists and you have access to it.".into(),
        ));
    }
    let data = body.lifecycle.map(|l| l.data).unwrap_or_default();
    let (guid, t) = (new_guid(), now());
    let stack = data.stack.unwrap_or_else(|| s.config.default_stack.clone());
    super::stacks::check_known(&s, &stack).await?;
    let inserted = sqlx::query(
        "INSERT INTO apps (guid, name, space_guid, state, stack, buildpacks, env, droplet_guid, created_at, updated_at) VALUES ($1, $2, $3, 'STOPPED', $4, $5, $6, NULL, $7, $8)",
    )
    .bind(&guid)
    .bind(&body.name)
    .bind(&space)
    .bind(&stack)
    .bind(serde_json::to_string(&data.buildpacks.unwrap_or_default()).unwrap_or_default())
    .bind(serde_json::to_string(&body.environment_variables).unwrap_or_default())
    .bind(&t)
    .bind(&t)
    .execute(&s.db)
    .await;
    match inserted {
        Err(e) if unique_violation(&e) => {
            return Err(ApiError::Unprocessable(format!(
                "App with the name '{}' already exists.",
                body.name
            )))
        }
        other => other?,
    };
    super::processes::ensure(&s, &guid, "web").await?;
    if !body.no_route {
        let host = super::routes::host_for(&body.name);
        match super::routes::create_route(&s, &host, "", &s.default_domain_guid, &space).await {
            Ok(route) => {
                super::routes::add_destination(&s, &route, &guid, "web").await?;
                let url = format!("{host}.{}", s.config.default_domain);
                let target = audit::Target {
                    kind: "route",
                    guid: &route,
                    name: &url,
                };
                let actor = Actor::User(&user);
                audit::record(
                    &s,
                    "audit.route.create",
                    actor,
                    target,
                    Some(&space),
                    json!({}),
                )
                .await;
            }
            Err(e) => {
                sqlx::query("DELETE FROM apps WHERE guid = $1")
                    .bind(&guid)
                    .execute(&s.db)
                    .await?;
                return Err(ApiError::Unprocessable(format!(
                    "{e} The app's default route {host}.{} is taken: choose another name, or create the app with \"no_route\": true",
                    s.config.default_domain
                )));
            }
        }
    }
    tracing::info!(app = %guid, user = %user.name, "app created");
    let app = find(&s, &guid).await?;
    let data = json!({"request": {"name": app.name, "stack": app.stack, "environment_variables": "[PRIVATE DATA HIDDEN]"}});
    audit::record(
        &s,
        "audit.app.create",
        Actor::User(&user),
        audit::app(&guid, &app.name),
        Some(&space),
        data,
    )
    .await;
    Ok((StatusCode::CREATED, Json(app_json(&s, &app))))
}

#[derive(Deserialize)]
pub struct ListQuery {
    names: Option<String>,
    space_guids: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

pub async fn list(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let paging = PageQuery {
        page: q.page,
        per_page: q.per_page,
    };
    let filters = [
        Filter {
            sql: "name IN ({})",
            param: "names",
            values: filter_values(&q.names),
        },
        Filter {
            sql: "space_guid IN ({})",
            param: "space_guids",
            values: filter_values(&q.space_guids),
        },
    ];
    let page: Page<AppRow> = listing::page(
        &s,
        APP_COLUMNS,
        "apps",
        "created_at, guid",
        &filters,
        &paging,
    )
    .await?;
    let resources = page.rows.iter().map(|a| app_json(&s, a)).collect();
    Ok(Json(list_body(
        &s,
        "/v3/apps",
        &page.query,
        &paging,
        page.total,
        resources,
    )))
}

pub async fn get(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(app_json(&s, &find(&s, &guid).await?)))
}

#[derive(Deserialize)]
pub struct UpdateApp {
    name: Option<String>,
    lifecycle: Option<Lifecycle>,
}

pub async fn update(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    ApiJson(body): ApiJson<UpdateApp>,
) -> ApiResult<Json<Value>> {
    let app = find(&s, &guid).await?;
    let mut body = body;
    check_lifecycle(&mut body.lifecycle)?;
    let name = body.name.unwrap_or(app.name.clone());
    check_name(&name)?;
    let data = body.lifecycle.map(|l| l.data).unwrap_or_default();
    if let Some(stack) = &data.stack {
        super::stacks::check_known(&s, stack).await?;
    }
    let stack = data.stack.unwrap_or(app.stack.clone());
    let buildpacks = data.buildpacks.map_or(app.buildpacks.clone(), |b| {
        serde_json::to_string(&b).unwrap_or_default()
    });
    let updated = sqlx::query(
        "UPDATE apps SET name = $1, stack = $2, buildpacks = $3, updated_at = $4 WHERE guid = $5",
    )
    .bind(&name)
    .bind(&stack)
    .bind(&buildpacks)
    .bind(now())
    .bind(&guid)
    .execute(&s.db)
    .await;
    match updated {
        Err(e) if unique_violation(&e) => {
            return Err(ApiError::Unprocessable(format!(
                "App with the name '{name}' already exists."
            )))
        }
        other => other?,
    };
    let data = json!({"request": {"name": name, "stack": stack, "buildpacks": buildpacks}});
    audit::record(
        &s,
        "audit.app.update",
        Actor::User(&user),
        audit::app(&guid, &name),
        Some(&app.space_guid),
        data,
    )
    .await;
    Ok(Json(app_json(&s, &find(&s, &guid).await?)))
}

/// `DELETE /v3/apps/:guid`: 202 with a job (already complete: the app, its packages, builds,
/// droplets and cache records are gone when it answers).
pub async fn delete(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let app = find(&s, &guid).await?;
    audit::record(
        &s,
        "audit.app.delete-request",
        Actor::User(&user),
        audit::app(&guid, &app.name),
        Some(&app.space_guid),
        json!({}),
    )
    .await;
    sqlx::query("DELETE FROM apps WHERE guid = $1")
        .bind(&guid)
        .execute(&s.db)
        .await?;
    s.cells.wake.notify_one();
    let job = new_guid();
    let location = format!("{}/v3/jobs/{job}", s.base_url);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)]))
}

fn env_json(s: &AppState, app: &AppRow) -> Value {
    json!({
        "var": app.env_map(),
        "links": {"self": link(s, &format!("/v3/apps/{}/environment_variables", app.guid)), "app": link(s, &format!("/v3/apps/{}", app.guid))},
    })
}

pub async fn env_vars(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(env_json(&s, &find(&s, &guid).await?)))
}

#[derive(Deserialize)]
pub struct EnvPatch {
    var: BTreeMap<String, Option<String>>,
}

/// Sets the given variables; a `null` value removes one.
pub async fn update_env_vars(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    ApiJson(body): ApiJson<EnvPatch>,
) -> ApiResult<Json<Value>> {
    let app = find(&s, &guid).await?;
    let mut env = app.env_map();
    for (k, v) in body.var {
        match v {
            Some(v) => {
                env.insert(k, v);
            }
            None => {
                env.remove(&k);
            }
        }
    }
    check_env(&env)?;
    sqlx::query("UPDATE apps SET env = $1, updated_at = $2 WHERE guid = $3")
        .bind(serde_json::to_string(&env).unwrap_or_default())
        .bind(now())
        .bind(&guid)
        .execute(&s.db)
        .await?;
    let data = json!({"request": {"environment_variables": "[PRIVATE DATA HIDDEN]"}});
    audit::record(
        &s,
        "audit.app.update",
        Actor::User(&user),
        audit::app(&guid, &app.name),
        Some(&app.space_guid),
        data,
    )
    .await;
    Ok(Json(env_json(&s, &find(&s, &guid).await?)))
}

/// `GET /v3/apps/:guid/env`: what the app's processes see.
pub async fn env(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = find(&s, &guid).await?;
    let uri = format!("{}.{}", app.name.to_lowercase(), s.config.default_domain);
    Ok(Json(json!({
        "staging_env_json": {},
        "running_env_json": {},
        "environment_variables": app.env_map(),
        "system_env_json": {"VCAP_SERVICES": {}},
        "application_env_json": {"VCAP_APPLICATION": {
            "application_id": app.guid, "application_name": app.name, "name": app.name,
            "space_id": app.space_guid, "uris": [uri], "application_uris": [uri],
            "limits": {"mem": 1024, "disk": 1024, "fds": 16384},
        }},
    })))
}

async fn set_state(s: &AppState, guid: &str, state: &str) -> ApiResult<(AppRow, Json<Value>)> {
    let app = find(s, guid).await?;
    if state == "STARTED" && app.droplet_guid.is_none() {
        return Err(ApiError::Unprocessable(
            "Assign a droplet before starting this app.".into(),
        ));
    }
    sqlx::query("UPDATE apps SET state = $1, updated_at = $2 WHERE guid = $3")
        .bind(state)
        .bind(now())
        .bind(guid)
        .execute(&s.db)
        .await?;
    let app = find(s, guid).await?;
    let body = Json(app_json(s, &app));
    Ok((app, body))
}

/// Sets the app's state and records `event`.
async fn act(
    s: &AppState,
    user: &User,
    guid: &str,
    state: &str,
    event: &str,
) -> ApiResult<Json<Value>> {
    let (app, body) = set_state(s, guid, state).await?;
    s.cells.wake.notify_one();
    audit::record(
        s,
        event,
        Actor::User(user),
        audit::app(guid, &app.name),
        Some(&app.space_guid),
        json!({}),
    )
    .await;
    Ok(body)
}

pub async fn start(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    act(&s, &user, &guid, "STARTED", "audit.app.start").await
}

pub async fn stop(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    act(&s, &user, &guid, "STOPPED", "audit.app.stop").await
}

pub async fn restart(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    // A started app restarts rolling: new instances (a new process version) replace the old
    // ones one by one as they become healthy. A stopped one just starts.
    new_process_versions(&s, &guid).await?;
    act(&s, &user, &guid, "STARTED", "audit.app.restart").await
}

/// Gives every process of `app` a new version: convergence replaces their instances, each
/// old one stopping once its successor is RUNNING.
pub async fn new_process_versions(s: &AppState, app: &str) -> ApiResult<()> {
    sqlx::query("UPDATE processes SET version = $1, updated_at = $2 WHERE app_guid = $3")
        .bind(new_guid())
        .bind(now())
        .bind(app)
        .execute(&s.db)
        .await?;
    s.cells.wake.notify_one();
    Ok(())
}

fn droplet_relationship(s: &AppState, app: &AppRow) -> Value {
    json!({
        "data": app.droplet_guid.as_ref().map(|g| json!({"guid": g})),
        "links": {
            "self": link(s, &format!("/v3/apps/{}/relationships/current_droplet", app.guid)),
            "related": link(s, &format!("/v3/apps/{}/droplets/current", app.guid)),
        },
    })
}

pub async fn current_droplet_relationship(
    _: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(droplet_relationship(&s, &find(&s, &guid).await?)))
}

#[derive(Deserialize)]
pub struct SetDroplet {
    data: RelData,
}

pub async fn set_current_droplet(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    ApiJson(body): ApiJson<SetDroplet>,
) -> ApiResult<Json<Value>> {
    let app = find(&s, &guid).await?;
    let droplet: Option<(String, String)> =
        sqlx::query_as("SELECT app_guid, state FROM droplets WHERE guid = $1")
            .bind(&body.data.guid)
            .fetch_optional(&s.db)
            .await?;
    match droplet {
        Some((app, state)) if app == guid && state == "STAGED" => {}
        Some((app, _)) if app == guid => {
            return Err(ApiError::Unprocessable(
                "Unable to assign current droplet: the droplet is not STAGED".into(),
            ))
        }
        _ => return Err(ApiError::Unprocessable(
            "Unable to assign current droplet. Ensure the droplet exists and belongs to this app."
                .into(),
        )),
    }
    let droplet = super::builds::find_droplet(&s, &body.data.guid).await?;
    let types: BTreeMap<String, String> =
        serde_json::from_str(&droplet.process_types).unwrap_or_default();
    super::processes::sync_with_droplet(&s, &guid, &types).await?;
    sqlx::query("UPDATE apps SET droplet_guid = $1, updated_at = $2 WHERE guid = $3")
        .bind(&body.data.guid)
        .bind(now())
        .bind(&guid)
        .execute(&s.db)
        .await?;
    if app.droplet_guid.as_deref() != Some(body.data.guid.as_str()) {
        new_process_versions(&s, &guid).await?;
    }
    let data = json!({"request": {"droplet_guid": body.data.guid}});
    audit::record(
        &s,
        "audit.app.droplet.mapped",
        Actor::User(&user),
        audit::app(&guid, &app.name),
        Some(&app.space_guid),
        data,
    )
    .await;
    Ok(Json(droplet_relationship(&s, &find(&s, &guid).await?)))
}

impl Relationship {
    /// The related resource's guid.
    pub fn data_guid(&self) -> &str {
        &self.data.guid
    }
}
