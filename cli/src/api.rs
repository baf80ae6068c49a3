//! The HTTP client of the cloud controller's V3 API: bearer tokens from the config, refreshed
//! with the refresh token when the access token has expired or a call answers 401, and errors
//! typed from the V3 error bodies (`{"errors":[{code,title,detail}]}`) and UAA's token errors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use crate::config::{Config, ConfigError};

/// What went wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nothing answers at the API address.
    #[error("cannot reach the API at {api} ({reason}): is it running? Log in to the right one with `kiln login -a URL`")]
    Unreachable {
        /// The API address tried.
        api: String,
        /// The transport's words.
        reason: String,
    },
    /// No API targeted or no token yet.
    #[error("not logged in: run `kiln login -a URL`")]
    NotLoggedIn,
    /// The token endpoint refused (UAA's `error_description`).
    #[error("{0}")]
    Auth(String),
    /// The session could not be renewed.
    #[error("your session has expired ({0}): run `kiln login` again")]
    SessionExpired(String),
    /// A V3 error answer.
    #[error("{detail} ({title}, HTTP {status})")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The V3 code (10008, ...), 0 if none.
        code: i64,
        /// `CF-UnprocessableEntity`, ...
        title: String,
        /// The detail for people.
        detail: String,
    },
    /// A transport error after the connection was made.
    #[error("talking to {api}: {source}")]
    Http {
        /// The API address.
        api: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The answer was not what the API should send.
    #[error("unexpected answer from {0}")]
    Unexpected(String),
    /// The config could not be read or saved.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A logged-in client.
pub struct Client {
    http: reqwest::Client,
    /// The saved config (tokens are updated in place and saved on refresh).
    pub config: Config,
    /// The API root, no trailing `/`.
    pub api: String,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A plain HTTP client with the CLI's timeouts.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("kiln-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// Maps a transport error: connection failures name the API and say how to log in.
pub fn transport(api: &str, e: reqwest::Error) -> ApiError {
    if e.is_connect() || e.is_timeout() && e.status().is_none() && !e.is_body() {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        ApiError::Unreachable {
            api: api.to_string(),
            reason,
        }
    } else {
        ApiError::Http {
            api: api.to_string(),
            source: e,
        }
    }
}

/// The error of a non-success answer, from its V3 (or UAA) body.
pub async fn error_of(resp: reqwest::Response) -> ApiError {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if let Some(e) = body["errors"].as_array().and_then(|e| e.first()) {
        return ApiError::Status {
            status,
            code: e["code"].as_i64().unwrap_or(0),
            title: e["title"].as_str().unwrap_or("").to_string(),
            detail: e["detail"].as_str().unwrap_or("").to_string(),
        };
    }
    if let Some(d) = body["error_description"].as_str() {
        return ApiError::Auth(d.to_string());
    }
    ApiError::Status {
        status,
        code: 0,
        title: String::new(),
        detail: format!("HTTP {status}"),
    }
}

/// Asks the token endpoint for tokens with `form` (client `cf`, empty secret) and stores them
/// in `config`.
pub async fn token(
    http: &reqwest::Client,
    config: &mut Config,
    form: &[(&str, &str)],
) -> Result<(), ApiError> {
    let api = config.api.clone().ok_or(ApiError::NotLoggedIn)?;
    let login = config.login.clone().unwrap_or_else(|| api.clone());
    let resp = http
        .post(format!("{}/oauth/token", login.trim_end_matches('/')))
        .basic_auth("cf", Some(""))
        .form(form)
        .send()
        .await
        .map_err(|e| transport(&login, e))?;
    if !resp.status().is_success() {
        return Err(error_of(resp).await);
    }
    let body: Value = resp.json().await.map_err(|e| transport(&login, e))?;
    let access = body["access_token"]
        .as_str()
        .ok_or_else(|| ApiError::Unexpected(login.clone()))?;
    config.access_token = Some(access.to_string());
    if let Some(r) = body["refresh_token"].as_str() {
        config.refresh_token = Some(r.to_string());
    }
    config.expires_at = body["expires_in"].as_u64().map(|s| now_secs() + s);
    Ok(())
}

impl Client {
    /// A client from the saved config; fails when not logged in.
    pub fn from_config() -> Result<Client, ApiError> {
        let config = Config::load()?;
        let api = config.api.clone().ok_or(ApiError::NotLoggedIn)?;
        if config.access_token.is_none() {
            return Err(ApiError::NotLoggedIn);
        }
        Ok(Client {
            http: http(),
            config,
            api,
        })
    }

    /// Gets a new access token with the refresh token and saves it.
    pub async fn refresh(&mut self) -> Result<(), ApiError> {
        let refresh = self
            .config
            .refresh_token
            .clone()
            .ok_or_else(|| ApiError::SessionExpired("no refresh token".into()))?;
        let form = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
        match token(&self.http, &mut self.config, &form).await {
            Ok(()) => {}
            Err(ApiError::Auth(why)) => return Err(ApiError::SessionExpired(why)),
            Err(e) => return Err(e),
        }
        self.config.save()?;
        Ok(())
    }

    /// Refreshes first if the access token expires within a minute.
    pub async fn fresh(&mut self) -> Result<(), ApiError> {
        if self.config.expires_at.is_some_and(|t| t <= now_secs() + 60) {
            self.refresh().await?;
        }
        Ok(())
    }

    /// A request to `path` (relative to the API root) with the bearer token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.api)
        };
        let token = self.config.access_token.clone().unwrap_or_default();
        self.http
            .request(method, url)
            .header("Authorization", format!("bearer {token}"))
    }

    /// Sends `build(self)`, refreshing the token and trying once more on a 401.
    pub async fn send(
        &mut self,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        self.fresh().await?;
        let resp = build(self)
            .send()
            .await
            .map_err(|e| transport(&self.api, e))?;
        let resp = if resp.status() == StatusCode::UNAUTHORIZED {
            self.refresh().await?;
            build(self)
                .send()
                .await
                .map_err(|e| transport(&self.api, e))?
        } else {
            resp
        };
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(error_of(resp).await)
        }
    }

    /// A JSON call: `body` if given, the answer's JSON (Null for an empty answer).
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let resp = self
            .send(|c| {
                let r = c.request(method.clone(), path);
                match body {
                    Some(b) => r.json(b),
                    None => r,
                }
            })
            .await?;
        let text = resp.text().await.map_err(|e| transport(&self.api, e))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| ApiError::Unexpected(path.to_string()))
    }

    /// GET `path`.
    pub async fn get(&mut self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None).await
    }

    /// POST `body` to `path`.
    pub async fn post(&mut self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// PATCH `path` with `body`.
    pub async fn patch(&mut self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// DELETE `path`.
    pub async fn delete(&mut self, path: &str) -> Result<(), ApiError> {
        self.call(Method::DELETE, path, None).await.map(|_| ())
    }

    /// Every resource of a list endpoint, following `pagination.next`.
    pub async fn list(&mut self, path: &str) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{sep}per_page=100"));
        while let Some(p) = next.take() {
            let page = self.get(&p).await?;
            if let Some(r) = page["resources"].as_array() {
                out.extend(r.iter().cloned());
            }
            next = page["pagination"]["next"]["href"]
                .as_str()
                .map(str::to_string);
        }
        Ok(out)
    }

    /// The targeted space's guid.
    pub fn space_guid(&self) -> Result<String, ApiError> {
        self.config
            .space
            .as_ref()
            .map(|s| s.guid.clone())
            .ok_or(ApiError::NotLoggedIn)
    }

    /// The app named `name` in the targeted space, or a 404-shaped error naming it.
    pub async fn app_by_name(&mut self, name: &str) -> Result<Value, ApiError> {
        self.find_app(name).await?.ok_or_else(|| ApiError::Status {
            status: 404,
            code: 10010,
            title: "CF-ResourceNotFound".into(),
            detail: format!("App '{name}' not found"),
        })
    }

    /// The app named `name` in the targeted space, if any.
    pub async fn find_app(&mut self, name: &str) -> Result<Option<Value>, ApiError> {
        let space = self.space_guid()?;
        let q = format!("/v3/apps?names={}&space_guids={space}", encode(name));
        Ok(self.list(&q).await?.into_iter().next())
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
