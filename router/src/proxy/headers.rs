//! Headers: what a proxy must not pass on (hop-by-hop), what the router adds for the app
//! (gorouter's `X-Vcap-Request-Id`, `X-Forwarded-*`, `X-CF-*`), and the router's own error
//! answers, named in `X-Cf-Routererror`.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Response, StatusCode};

use super::ProxyBody;
use crate::table::Endpoint;

/// The request id header, added when absent.
pub(crate) const REQUEST_ID: &str = "x-vcap-request-id";
/// Names the router's own errors.
pub(crate) const ROUTER_ERROR: &str = "x-cf-routererror";

const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // The router already answered `100 Continue` itself when it started reading the body.
    "expect",
];

/// Whether the request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers (and those `Connection` names); an upgrade keeps
/// `Connection: upgrade` and its `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = headers.get(UPGRADE).cloned();
    let named: Vec<String> = connection_tokens(headers).collect();
    for name in named.iter().map(String::as_str).chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    if let (true, Some(upgrade)) = (keep_upgrade, upgrade) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, upgrade);
    }
}

/// Adds what the app should know of the client: `X-Forwarded-For` (appended),
/// `X-Forwarded-Proto` (kept if sent), `X-Vcap-Request-Id`, `X-Request-Start` (ms).
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, request_id: &HeaderValue) {
    let earlier: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded_for = if earlier.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    headers.insert(REQUEST_ID, request_id.clone());
    if !headers.contains_key("x-request-start") {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        headers.insert("x-request-start", HeaderValue::from(ms as u64));
    }
}

/// Names the app and instance the request goes to.
pub(crate) fn add_endpoint(headers: &mut HeaderMap, endpoint: &Endpoint) {
    for (name, value) in [
        ("x-cf-applicationid", &endpoint.app),
        ("x-cf-instanceid", &endpoint.instance_id),
        ("x-cf-instanceindex", &endpoint.instance_index),
    ] {
        match HeaderValue::from_str(value) {
            Ok(v) if !value.is_empty() => {
                headers.insert(HeaderName::from_static(name), v);
            }
            _ => {
                headers.remove(name);
            }
        }
    }
}

/// A new request id (a v4 uuid).
pub(crate) fn new_request_id() -> HeaderValue {
    let id = uuid::Uuid::new_v4().to_string();
    // A uuid is always a valid header value.
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("-"))
}

/// One of the router's own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouterError {
    /// No `Host`.
    EmptyHost,
    /// No route for the host and path.
    UnknownRoute,
    /// Every endpoint tried failed.
    EndpointFailure,
    /// The endpoint did not answer within the request timeout.
    EndpointTimeout,
}

impl RouterError {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            RouterError::EmptyHost => StatusCode::BAD_REQUEST,
            RouterError::UnknownRoute => StatusCode::NOT_FOUND,
            RouterError::EndpointFailure => StatusCode::BAD_GATEWAY,
            RouterError::EndpointTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(self) -> &'static str {
        match self {
            RouterError::EmptyHost => "empty_host",
            RouterError::UnknownRoute => "unknown_route",
            RouterError::EndpointFailure | RouterError::EndpointTimeout => "endpoint_failure",
        }
    }

    fn message(self, host: &str) -> String {
        match self {
            RouterError::EmptyHost => "400 Bad Request: Request had no Host header.\n".into(),
            RouterError::UnknownRoute => {
                format!("404 Not Found: Requested route ('{host}') does not exist.\n")
            }
            RouterError::EndpointFailure => format!(
                "502 Bad Gateway: Registered endpoint failed to handle the request for '{host}'.\n"
            ),
            RouterError::EndpointTimeout => format!(
                "504 Gateway Timeout: Registered endpoint for '{host}' did not answer in time.\n"
            ),
        }
    }

    /// The response: status, `X-Cf-Routererror`, the request id, a short text naming `host`.
    pub(crate) fn response(self, host: &str, request_id: &HeaderValue) -> Response<ProxyBody> {
        let body = Full::new(Bytes::from(self.message(host)))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut response = Response::new(body);
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(ROUTER_ERROR, HeaderValue::from_static(self.code()));
        headers.insert(REQUEST_ID, request_id.clone());
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_keep_theirs() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, Upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        assert!(wants_upgrade(&h));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1, "{plain:?}");
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
        assert!(h.get("x-secret").is_none());
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let id = new_request_id();
        add_forwarded(&mut h, "10.0.0.9".parse().unwrap(), &id);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.2.3.4, 10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get(REQUEST_ID).unwrap(), &id);
        assert!(h.contains_key("x-request-start"));
    }
}
