//! Headers: what a proxy must not pass on (hop-by-hop), what the router adds for the app
//! (gorouter's `X-Vcap-Request-Id`, `X-Forwarded-*`, `X-CF-*`), and the router's own error
//! answers, named in `X-Cf-Routererror`.

use std::cell::Cell;
use std::io::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, EXPECT, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::{Response, StatusCode};

use super::ProxyBody;
use crate::table::Endpoint;

/// The request id header, added when absent.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");
/// Names the router's own errors.
pub(crate) const ROUTER_ERROR: HeaderName = HeaderName::from_static("x-cf-routererror");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
const APPLICATION_ID: HeaderName = HeaderName::from_static("x-cf-applicationid");
const INSTANCE_ID: HeaderName = HeaderName::from_static("x-cf-instanceid");
const INSTANCE_INDEX: HeaderName = HeaderName::from_static("x-cf-instanceindex");

// Names made once, not parsed from text for every request.
const HOP_BY_HOP: [HeaderName; 10] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
    // The router already answered `100 Continue` itself when it started reading the body.
    EXPECT,
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
    let upgrade = if keep_upgrade {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    if headers.contains_key(CONNECTION) {
        let named: Vec<String> = connection_tokens(headers).collect();
        for name in &named {
            headers.remove(name.as_str());
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, upgrade);
    }
}

/// Adds what the app should know of the client: `X-Forwarded-For` (appended),
/// `X-Forwarded-Proto` (kept if sent), `X-Vcap-Request-Id`, `X-Request-Start` (ms).
pub(crate) fn add_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    request_id: &HeaderValue,
    now: SystemTime,
) {
    let mut value = Vec::with_capacity(64);
    for earlier in headers.get_all(&FORWARDED_FOR) {
        value.extend_from_slice(earlier.as_bytes());
        value.extend_from_slice(b", ");
    }
    let _ = write!(value, "{client}");
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(FORWARDED_FOR, v);
    }
    if !headers.contains_key(&FORWARDED_PROTO) {
        headers.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    headers.insert(REQUEST_ID, request_id.clone());
    if !headers.contains_key(&REQUEST_START) {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        headers.insert(REQUEST_START, HeaderValue::from(ms as u64));
    }
}

/// Names the app and instance the request goes to (with the values made at registration).
pub(crate) fn add_endpoint(headers: &mut HeaderMap, endpoint: &Endpoint) {
    let prepared = &endpoint.prepared;
    for (name, value) in [
        (APPLICATION_ID, &prepared.app),
        (INSTANCE_ID, &prepared.instance_id),
        (INSTANCE_INDEX, &prepared.instance_index),
    ] {
        match value {
            Some(v) => {
                headers.insert(name, v.clone());
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// A new request id: a v4 uuid from a per-thread generator seeded from the system's random
/// source once, so that no request makes a `getrandom` call (ids must be unique, not secret).
pub(crate) fn new_request_id() -> HeaderValue {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
            a ^ b.rotate_left(32)
        });
    }
    // wyrand: one multiply per 64 bits.
    let next = || {
        STATE.with(|state| {
            let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
            state.set(s);
            let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
            ((t >> 64) as u64) ^ (t as u64)
        })
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next().to_le_bytes());
    bytes[8..].copy_from_slice(&next().to_le_bytes());
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buf);
    // A uuid is always a valid header value.
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
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

    /// The response as bytes for the forwarding path (the same head and text as
    /// [`Self::response`]; no text for a HEAD request; `close`: the connection closes after),
    /// and how many bytes of text it carries.
    pub(crate) fn raw(
        self,
        host: &str,
        request_id: &HeaderValue,
        head_only: bool,
        close: bool,
    ) -> (Vec<u8>, u64) {
        let text = self.message(host);
        let status = self.status();
        let mut out = Vec::with_capacity(256 + text.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n{ROUTER_ERROR}: {}\r\n{REQUEST_ID}: ",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default(),
            self.code(),
        );
        out.extend_from_slice(request_id.as_bytes());
        let _ = write!(
            out,
            "\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            text.len()
        );
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if head_only {
            return (out, 0);
        }
        out.extend_from_slice(text.as_bytes());
        (out, text.len() as u64)
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
    fn request_ids_are_distinct_v4_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| new_request_id().to_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(10) {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 4, "{id}");
        }
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let id = new_request_id();
        add_forwarded(&mut h, "10.0.0.9".parse().unwrap(), &id, SystemTime::now());
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.2.3.4, 10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get(REQUEST_ID).unwrap(), &id);
        assert!(h.contains_key("x-request-start"));
    }
}
