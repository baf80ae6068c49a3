//! Domains and routes: the shared default domain (from configuration), routes with host and
//! path, and their destinations (app process types). A new app gets `<name>.<default domain>`
//! unless it asks for none.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::listing::{self, Filter, Page};
use super::{filter_values, link, list_body, ApiJson, ApiQuery, PageQuery};
use crate::audit::{self, Actor, Target};
use crate::auth::User;
use crate::error::{ApiError, ApiResult};
use crate::state::{new_guid, now, AppState};

/// Makes sure the configured default domain exists; returns its guid.
pub async fn ensure_default_domain(db: &crate::db::Db, name: &str) -> Result<String, sqlx::Error> {
    sqlx::query("INSERT INTO domains (guid, name, created_at) VALUES ($1, $2, $3) ON CONFLICT(name) DO NOTHING")
        .bind(new_guid())
        .bind(name)
        .bind(now())
        .execute(db)
        .await?;
    let (guid,): (String,) = sqlx::query_as("SELECT guid FROM domains WHERE name = $1")
        .bind(name)
        .fetch_one(db)
        .await?;
    Ok(guid)
}

/// A host name for an app name: lower case, letters, digits and `-`.
pub fn host_for(name: &str) -> String {
    let host: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let host = host.trim_matches('-').to_string();
    if host.is_empty() {
        "app".into()
    } else {
        host.chars().take(63).collect()
    }
}

fn check_host(host: &str) -> ApiResult<()> {
    let ok = !host.is_empty()
        && host.len() <= 63
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !host.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "Host `{host}` must be 1 to 63 lower-case letters, digits or `-`"
        )))
    }
}

fn check_path(path: &str) -> ApiResult<()> {
    if path.is_empty()
        || (path.starts_with('/') && path.len() > 1 && !path.contains('?') && !path.contains(".."))
    {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "Path `{path}` must be empty or start with `/` (no `?`, no `..`)"
        )))
    }
}

/// Creates route `host` (path `path`) on `domain` in `space`; the route's guid.
pub async fn create_route(
    s: &AppState,
    host: &str,
    path: &str,
    domain: &str,
    space: &str,
) -> ApiResult<String> {
    check_host(host)?;
    check_path(path)?;
    let (guid, t) = (new_guid(), now());
    let inserted = sqlx::query("INSERT INTO routes (guid, host, path, domain_guid, space_guid, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&guid)
        .bind(host)
        .bind(path)
        .bind(domain)
        .bind(space)
        .bind(&t)
        .bind(&t)
        .execute(&s.db)
        .await;
    match inserted {
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Err(ApiError::Unprocessable(
            format!("Route `{host}{path}` already exists on this domain."),
        )),
        other => other.map(|_| guid).map_err(Into::into),
    }
}

/// Sends route `route` to process `process` of `app`.
pub async fn add_destination(s: &AppState, route: &str, app: &str, process: &str) -> ApiResult<()> {
    sqlx::query("INSERT INTO route_destinations (guid, route_guid, app_guid, process_type, port) VALUES ($1, $2, $3, $4, 8080) ON CONFLICT DO NOTHING")
        .bind(new_guid())
        .bind(route)
        .bind(app)
        .bind(process)
        .execute(&s.db)
        .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RouteRow {
    guid: String,
    host: String,
    path: String,
    domain_guid: String,
    domain_name: String,
    space_guid: String,
    created_at: String,
    updated_at: String,
}

const ROUTE_COLUMNS: &str = "r.guid, r.host, r.path, r.domain_guid, d.name AS domain_name, r.space_guid, r.created_at, r.updated_at";
const ROUTE_FROM: &str = "routes r JOIN domains d ON d.guid = r.domain_guid";

async fn route_json(s: &AppState, r: &RouteRow) -> ApiResult<Value> {
    let dests: Vec<(String, String, String, i64)> = sqlx::query_as("SELECT guid, app_guid, process_type, port FROM route_destinations WHERE route_guid = $1 ORDER BY guid")
        .bind(&r.guid)
        .fetch_all(&s.db)
        .await?;
    let url = format!("{}.{}{}", r.host, r.domain_name, r.path);
    Ok(json!({
        "guid": r.guid, "protocol": "http", "host": r.host, "path": r.path, "port": null, "url": url,
        "created_at": r.created_at, "updated_at": r.updated_at,
        "destinations": dests.iter().map(|(g, app, kind, port)| json!({"guid": g, "app": {"guid": app, "process": {"type": kind}}, "port": port, "protocol": "http1", "weight": null})).collect::<Vec<_>>(),
        "relationships": {"space": {"data": {"guid": r.space_guid}}, "domain": {"data": {"guid": r.domain_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {"self": link(s, &format!("/v3/routes/{}", r.guid)), "destinations": link(s, &format!("/v3/routes/{}/destinations", r.guid))},
    }))
}

async fn find_route(s: &AppState, guid: &str) -> ApiResult<RouteRow> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ROUTE_COLUMNS} FROM {ROUTE_FROM} WHERE r.guid = $1"
    )))
    .bind(guid)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound("Route"))
}

pub async fn list_domains(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = q.limits()?;
    let total: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM domains")
        .fetch_one(&s.db)
        .await?;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT guid, name, created_at FROM domains ORDER BY created_at, guid LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(&s.db)
    .await?;
    let resources = rows
        .into_iter()
        .map(|(g, name, created)| json!({"guid": g, "name": name, "internal": false, "created_at": created, "updated_at": created, "relationships": {"organization": {"data": null}, "shared_organizations": {"data": []}}, "links": {"self": link(&s, &format!("/v3/domains/{g}"))}}))
        .collect();
    Ok(Json(list_body(
        &s,
        "/v3/domains",
        "",
        &q,
        total.0,
        resources,
    )))
}

#[derive(Deserialize)]
pub struct CreateRoute {
    host: Option<String>,
    path: Option<String>,
    relationships: RouteRelationships,
}

#[derive(Deserialize)]
pub struct RouteRelationships {
    domain: super::apps::Relationship,
    space: super::apps::Relationship,
}

pub async fn create(
    user: User,
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateRoute>,
) -> ApiResult<impl IntoResponse> {
    let domain = body.relationships.domain.data_guid();
    let space = body.relationships.space.data_guid();
    let known: Option<(String,)> = sqlx::query_as("SELECT guid FROM domains WHERE guid = $1")
        .bind(domain)
        .fetch_optional(&s.db)
        .await?;
    known.ok_or_else(|| {
        ApiError::Unprocessable("Invalid domain. Ensure that the domain exists.".into())
    })?;
    let known: Option<(String,)> = sqlx::query_as("SELECT guid FROM spaces WHERE guid = $1")
        .bind(space)
        .fetch_optional(&s.db)
        .await?;
    known.ok_or_else(|| {
        ApiError::Unprocessable("Invalid space. Ensure that the space exists.".into())
    })?;
    let guid = create_route(
        &s,
        body.host.as_deref().unwrap_or(""),
        body.path.as_deref().unwrap_or(""),
        domain,
        space,
    )
    .await?;
    let route = route_json(&s, &find_route(&s, &guid).await?).await?;
    let url = route["url"].as_str().unwrap_or_default();
    let target = Target {
        kind: "route",
        guid: &guid,
        name: url,
    };
    audit::record(
        &s,
        "audit.route.create",
        Actor::User(&user),
        target,
        Some(space),
        json!({}),
    )
    .await;
    Ok((StatusCode::CREATED, Json(route)))
}

#[derive(Deserialize)]
pub struct RouteQuery {
    hosts: Option<String>,
    app_guids: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

pub async fn list(
    _: User,
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<RouteQuery>,
) -> ApiResult<Json<Value>> {
    let paging = PageQuery {
        page: q.page,
        per_page: q.per_page,
    };
    let filters = [
        Filter {
            sql: "r.host IN ({})",
            param: "hosts",
            values: filter_values(&q.hosts),
        },
        Filter {
            sql: "r.guid IN (SELECT route_guid FROM route_destinations WHERE app_guid IN ({}))",
            param: "app_guids",
            values: filter_values(&q.app_guids),
        },
    ];
    let page: Page<RouteRow> = listing::page(
        &s,
        ROUTE_COLUMNS,
        ROUTE_FROM,
        "r.created_at, r.guid",
        &filters,
        &paging,
    )
    .await?;
    let mut resources = Vec::new();
    for r in &page.rows {
        resources.push(route_json(&s, r).await?);
    }
    Ok(Json(list_body(
        &s,
        "/v3/routes",
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
    Ok(Json(route_json(&s, &find_route(&s, &guid).await?).await?))
}

/// `DELETE /v3/routes/:guid`: 202 with a (complete) job in `Location`, as for apps.
pub async fn delete(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let row = find_route(&s, &guid).await?;
    let route = route_json(&s, &row).await?;
    let url = route["url"].as_str().unwrap_or_default();
    let target = Target {
        kind: "route",
        guid: &guid,
        name: url,
    };
    audit::record(
        &s,
        "audit.route.delete-request",
        Actor::User(&user),
        target,
        Some(&row.space_guid),
        json!({}),
    )
    .await;
    sqlx::query("DELETE FROM routes WHERE guid = $1")
        .bind(&guid)
        .execute(&s.db)
        .await?;
    let location = format!("{}/v3/jobs/{}", s.base_url, new_guid());
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, location)],
    ))
}

#[derive(Deserialize)]
pub struct Destinations {
    destinations: Vec<Destination>,
}

#[derive(Deserialize)]
pub struct Destination {
    app: DestinationApp,
}

#[derive(Deserialize)]
pub struct DestinationApp {
    guid: String,
    process: Option<DestinationProcess>,
}

#[derive(Deserialize)]
pub struct DestinationProcess {
    #[serde(rename = "type")]
    kind: String,
}

/// `POST /v3/routes/:guid/destinations`: adds destinations.
pub async fn add_destinations(
    user: User,
    State(s): State<AppState>,
    Path(guid): Path<String>,
    ApiJson(body): ApiJson<Destinations>,
) -> ApiResult<Json<Value>> {
    let route = find_route(&s, &guid).await?;
    let url = route_json(&s, &route).await?["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for d in &body.destinations {
        let app = super::apps::find(&s, &d.app.guid)
            .await
            .map_err(|_| ApiError::Unprocessable(format!("App {} does not exist", d.app.guid)))?;
        let kind = d.app.process.as_ref().map_or("web", |p| p.kind.as_str());
        add_destination(&s, &guid, &d.app.guid, kind).await?;
        let data = json!({"route_guid": guid, "route": url, "process_type": kind});
        audit::record(
            &s,
            "audit.app.map-route",
            Actor::User(&user),
            audit::app(&app.guid, &app.name),
            Some(&app.space_guid),
            data,
        )
        .await;
    }
    let full = route_json(&s, &route).await?;
    Ok(Json(
        json!({"destinations": full["destinations"], "links": full["links"]}),
    ))
}

pub async fn app_routes(
    _: User,
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    super::apps::find(&s, &app).await?;
    let rows: Vec<RouteRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ROUTE_COLUMNS} FROM {ROUTE_FROM} WHERE r.guid IN (SELECT route_guid FROM route_destinations WHERE app_guid = $1) ORDER BY r.created_at"
    )))
    .bind(&app)
    .fetch_all(&s.db)
    .await?;
    let mut resources = Vec::new();
    for r in &rows {
        resources.push(route_json(&s, r).await?);
    }
    let total = i64::try_from(resources.len()).unwrap_or(i64::MAX);
    let all = PageQuery {
        page: None,
        per_page: Some(total.clamp(1, 5000)),
    };
    Ok(Json(list_body(
        &s,
        &format!("/v3/apps/{app}/routes"),
        "",
        &all,
        total,
        resources,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_become_host_names() {
        assert_eq!(host_for("My App_2"), "my-app-2");
        assert_eq!(host_for("--"), "app");
        assert!(check_host("my-app").is_ok());
        assert!(check_host("My_App").is_err());
        assert!(check_path("/api").is_ok() && check_path("").is_ok());
        assert!(check_path("api").is_err() && check_path("/../x").is_err());
    }
}
