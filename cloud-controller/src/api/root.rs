//! `GET /` and `/v3` (the links), the token endpoint, and jobs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{check_password, Claims, User, ACCESS_TTL_SECS, REFRESH_TTL_SECS};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn root(State(s): State<AppState>) -> Json<Value> {
    let base = &s.base_url;
    let port = s.config.apps_port.filter(|p| *p != 80);
    let apps = match port {
        Some(p) => format!("http://{}:{p}", s.config.default_domain),
        None => format!("http://{}", s.config.default_domain),
    };
    Json(json!({"links": {
        "self": {"href": base.to_string()},
        "cloud_controller_v3": {"href": format!("{base}/v3"), "meta": {
            "version": env!("CARGO_PKG_VERSION"),
            // Clients check an upload against it before sending it.
            "max_upload_bytes": s.config.max_upload_bytes,
        }},
        "login": {"href": base.to_string()},
        "uaa": {"href": base.to_string()},
        "logging": null,
        "log_stream": null,
        "app_ssh": null,
        "network_policy_v1": null,
        "app_routes": {"href": apps, "meta": {"port": port.unwrap_or(80)}},
    }}))
}

pub async fn v3(State(s): State<AppState>) -> Json<Value> {
    let base = &s.base_url;
    let l = |p: &str| json!({"href": format!("{base}/v3/{p}")});
    Json(json!({"links": {
        "self": {"href": format!("{base}/v3")},
        "apps": l("apps"), "builds": l("builds"), "droplets": l("droplets"),
        "organizations": l("organizations"), "packages": l("packages"), "spaces": l("spaces"),
    }}))
}

#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
}

/// An error of the token endpoint, in UAA's OAuth shape (`{"error", "error_description"}`),
/// which the cf CLI and OAuth clients expect there instead of a V3 error body.
pub struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl TokenError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        TokenError {
            status,
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> axum::response::Response {
        let body = json!({"error": self.error, "error_description": self.description});
        (self.status, Json(body)).into_response()
    }
}

impl From<ApiError> for TokenError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidAuthToken(why) => TokenError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                format!("Invalid refresh token: {why}"),
            ),
            other => TokenError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                other.to_string(),
            ),
        }
    }
}

/// `POST /oauth/token`: `password` and `refresh_token` grants, for client `cf` (empty secret).
pub async fn token(
    State(s): State<AppState>,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Result<Json<Value>, TokenError> {
    let bad = |d: String| TokenError::new(StatusCode::BAD_REQUEST, "invalid_request", d);
    // OAuth says 400 for a malformed request; a body over the limit stays 413.
    let Form(req) = form.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            TokenError::new(e.status(), "invalid_request", e.body_text())
        }
        _ => bad(e.body_text()),
    })?;
    if req.client_id.as_deref().is_some_and(|c| c != "cf") {
        return Err(TokenError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Bad credentials: the only client is `cf` with an empty secret",
        ));
    }
    let (guid, name) = match req.grant_type.as_str() {
        "password" => {
            let (Some(user), Some(password)) = (req.username, req.password) else {
                return Err(bad("username and password are required".into()));
            };
            let row: Option<(String, String)> =
                sqlx::query_as("SELECT guid, password_hash FROM users WHERE username = $1")
                    .bind(&user)
                    .fetch_optional(&s.db)
                    .await
                    .map_err(ApiError::from)?;
            let hash_ok =
                check_password(password, row.as_ref().map(|(_, hash)| hash.clone())).await;
            match row {
                Some((guid, _)) if hash_ok => (guid, user),
                _ => {
                    return Err(TokenError::new(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "Bad credentials",
                    ))
                }
            }
        }
        "refresh_token" => {
            let token = req
                .refresh_token
                .ok_or_else(|| bad("refresh_token is required".into()))?;
            let claims = s.tokens.verify(&token, "refresh")?;
            (claims.sub, claims.user_name)
        }
        other => {
            return Err(TokenError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!("Unsupported grant type: {other} (use password or refresh_token)"),
            ))
        }
    };
    let now = chrono::Utc::now().timestamp();
    let sign = |kind: &str, ttl: i64| {
        s.tokens.sign(&Claims {
            sub: guid.clone(),
            user_name: name.clone(),
            exp: now + ttl,
            kind: kind.into(),
        })
    };
    Ok(Json(json!({
        "access_token": sign("access", ACCESS_TTL_SECS),
        "token_type": "bearer",
        "refresh_token": sign("refresh", REFRESH_TTL_SECS),
        "expires_in": ACCESS_TTL_SECS,
        "scope": "cloud_controller.read cloud_controller.write",
        "jti": crate::state::new_guid(),
    })))
}

/// `GET /v3/jobs/:guid`: deletes finish before they answer, so every job is complete.
pub async fn job(_: User, State(s): State<AppState>, Path(guid): Path<String>) -> Json<Value> {
    Json(json!({
        "guid": guid, "operation": "app.delete", "state": "COMPLETE", "errors": [], "warnings": [],
        "links": {"self": super::link(&s, &format!("/v3/jobs/{guid}"))},
    }))
}

pub async fn not_implemented(_: User) -> impl IntoResponse {
    (
        StatusCode::NOT_IMPLEMENTED,
        Json(
            json!({"errors": [{"code": 10000, "title": "CF-NotImplemented", "detail": "not implemented yet"}]}),
        ),
    )
}
