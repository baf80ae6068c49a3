//! The HTTP API: the Cloud Foundry V3 shapes (resources, pagination, error bodies) for people
//! and tools, and the internal endpoints stagers and cells use.

pub mod apps;
pub mod buildpacks;
pub mod builds;
mod cells;
mod config;
mod events;
mod exec;
pub(crate) mod image_builds;
pub(crate) mod images;
mod internal;
mod listing;
mod logs;
mod package_assembly;
mod package_upload;
pub mod packages;
pub mod processes;
pub mod resource_matches;
pub mod resource_pool;
mod root;
pub mod routes;
mod spaces;
mod ssh;
pub mod stacks;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, patch, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the controller.
pub fn router(state: AppState) -> Router {
    // Uploads may be large (and are streamed); every other body is small JSON or a form.
    let upload_limit = usize::try_from(state.config.max_upload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    Router::new()
        .route("/", get(root::root))
        .route("/v3", get(root::v3))
        .route("/oauth/token", post(root::token))
        .route("/v3/organizations", get(spaces::list_orgs))
        .route("/v3/organizations/{guid}", get(spaces::get_org))
        .route("/v3/spaces", get(spaces::list_spaces))
        .route("/v3/spaces/{guid}", get(spaces::get_space))
        .route("/v3/apps", post(apps::create).get(apps::list))
        .route(
            "/v3/apps/{guid}",
            get(apps::get).patch(apps::update).delete(apps::delete),
        )
        .route(
            "/v3/apps/{guid}/environment_variables",
            get(apps::env_vars).patch(apps::update_env_vars),
        )
        .route("/v3/apps/{guid}/env", get(apps::env))
        .route("/v3/apps/{guid}/actions/start", post(apps::start))
        .route("/v3/apps/{guid}/actions/stop", post(apps::stop))
        .route("/v3/apps/{guid}/actions/restart", post(apps::restart))
        .route(
            "/v3/apps/{guid}/relationships/current_droplet",
            get(apps::current_droplet_relationship).patch(apps::set_current_droplet),
        )
        .route(
            "/v3/apps/{guid}/droplets/current",
            get(builds::current_droplet),
        )
        .route("/v3/apps/{guid}/droplets", get(builds::app_droplets))
        .route("/v3/apps/{guid}/packages", get(packages::app_packages))
        .route("/v3/jobs/{guid}", get(root::job))
        .route("/v3/apps/{guid}/processes", get(processes::app_processes))
        .route(
            "/v3/apps/{guid}/processes/{kind}",
            get(processes::get_by_type),
        )
        .route(
            "/v3/apps/{guid}/processes/{kind}/actions/scale",
            post(processes::scale_by_type),
        )
        .route(
            "/v3/processes/{guid}",
            get(processes::get).patch(processes::update),
        )
        .route("/v3/processes/{guid}/actions/scale", post(processes::scale))
        .route("/v3/processes/{guid}/stats", get(processes::stats))
        .route(
            "/v3/processes/{guid}/instances/{index}/exec",
            post(exec::exec),
        )
        .route("/v3/processes/{guid}/instances/{index}/ssh", get(ssh::ssh))
        .route("/v3/cells", get(cells::list))
        .route("/v3/cells/{id}", get(cells::get))
        .route("/v3/cells/{id}/actions/drain", post(cells::drain))
        .route("/v3/domains", get(routes::list_domains))
        .route("/v3/audit_events", get(events::list))
        .route("/v3/audit_events/{guid}", get(events::get))
        .route("/v3/images", post(images::create).get(images::list))
        .route("/v3/images/{reference}", get(images::get))
        .route("/internal/v1/images/{digest}/archive", get(images::archive))
        .route("/v3/admin/config", get(config::list))
        .route("/v3/admin/config/{key}", get(config::get).put(config::set))
        .route("/v3/stacks", get(stacks::list))
        .route("/v3/stacks/{guid}", get(stacks::get))
        .route("/v3/routes", post(routes::create).get(routes::list))
        .route("/v3/routes/{guid}", get(routes::get).delete(routes::delete))
        .route(
            "/v3/routes/{guid}/destinations",
            post(routes::add_destinations),
        )
        .route("/v3/apps/{guid}/routes", get(routes::app_routes))
        .route("/v3/apps/{guid}/logs/recent", get(logs::recent))
        .route("/v3/apps/{guid}/logs/stream", get(logs::stream))
        .route("/v3/packages", post(packages::create))
        .route("/v3/packages/{guid}", get(packages::get))
        .route(
            "/v3/packages/{guid}/upload",
            post(packages::upload).layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v3/packages/{guid}/download", get(packages::download))
        .route(
            "/v3/resource_matches",
            post(resource_matches::create).layer(axum::extract::DefaultBodyLimit::max(
                resource_matches::MAX_BODY,
            )),
        )
        .route(
            "/v3/buildpacks",
            post(buildpacks::create).get(buildpacks::list),
        )
        .route(
            "/v3/buildpacks/{guid}",
            get(buildpacks::get)
                .patch(buildpacks::update)
                .delete(buildpacks::delete),
        )
        .route(
            "/v3/buildpacks/{guid}/upload",
            post(buildpacks::upload).layer(axum::extract::DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v3/builds", post(builds::create).get(builds::list))
        .route("/v3/builds/{guid}", get(builds::get))
        .route("/v3/droplets/{guid}", get(builds::get_droplet))
        .route(
            "/v3/droplets/{guid}/download",
            get(builds::download_droplet),
        )
        .route(
            "/internal/v1/packages/{guid}/bits",
            get(internal::package_bits),
        )
        .route("/internal/v1/buildpacks/{guid}/bits", get(buildpacks::bits))
        .route(
            "/internal/v1/builds/{guid}/droplet",
            put(internal::upload_droplet),
        )
        .route(
            "/internal/v1/droplets/{guid}/download",
            get(internal::download_droplet),
        )
        .route(
            "/internal/v1/apps/{guid}/cache/{stack}",
            get(internal::download_cache).put(internal::upload_cache),
        )
        .route("/v3/apps/{guid}/features", patch(root::not_implemented))
        .layer(axum::extract::DefaultBodyLimit::max(JSON_LIMIT))
        .with_state(state)
}

/// The largest JSON or form body accepted.
const JSON_LIMIT: usize = 1 << 20;

/// A JSON body whose rejections are V3 errors: malformed JSON is a 400 (never a 500), JSON of
/// the wrong shape a 422 naming the problem.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::Unprocessable(e.body_text())),
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::TooLarge((JSON_LIMIT >> 20) as u64))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// A query string whose rejections are V3 errors (422 naming the parameter).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::Unprocessable(e.body_text()))
    }
}

/// Percent-encodes a filter value for the links of a list.
pub fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `?page=&per_page=` of list endpoints.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// 1-based.
    pub page: Option<i64>,
    /// 1 to 5000, default 50.
    pub per_page: Option<i64>,
}

impl PageQuery {
    /// (limit, offset), or a 422 naming the bad parameter.
    pub fn limits(&self) -> Result<(i64, i64), ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(50);
        if page < 1 {
            return Err(ApiError::Unprocessable(
                "Page must be greater than 0".into(),
            ));
        }
        if !(1..=5000).contains(&per_page) {
            return Err(ApiError::Unprocessable(
                "Per page must be between 1 and 5000".into(),
            ));
        }
        let offset = (page - 1)
            .checked_mul(per_page)
            .ok_or_else(|| ApiError::Unprocessable("Page is too large".into()))?;
        Ok((per_page, offset))
    }
}

/// A V3 list body: `pagination` with links, then `resources`.
pub fn list_body(
    state: &AppState,
    path: &str,
    extra_query: &str,
    q: &PageQuery,
    total: i64,
    resources: Vec<Value>,
) -> Value {
    let (per_page, _) = q.limits().unwrap_or((50, 0));
    let page = q.page.unwrap_or(1);
    let pages = ((total + per_page - 1) / per_page).max(1);
    let href = |p: i64| {
        let sep = if extra_query.is_empty() { "" } else { "&" };
        json!({"href": format!("{}{path}?{extra_query}{sep}page={p}&per_page={per_page}", state.base_url)})
    };
    json!({
        "pagination": {
            "total_results": total,
            "total_pages": pages,
            "first": href(1),
            "last": href(pages),
            "next": if page < pages { href(page + 1) } else { Value::Null },
            "previous": if page > 1 { href(page - 1) } else { Value::Null },
        },
        "resources": resources,
    })
}

/// `{"href": base + path}`.
pub fn link(state: &AppState, path: &str) -> Value {
    json!({"href": format!("{}{path}", state.base_url)})
}

/// Splits a comma-separated filter (`names=a,b`).
pub fn filter_values(v: &Option<String>) -> Vec<String> {
    v.as_deref()
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
