//! One proxied request: find the route by `Host` and path, add the forwarding headers, and
//! try up to three endpoints. Another endpoint is tried after a failed dial (which also
//! removes the endpoint from the table), or after any failure of an idempotent request that
//! got no response, but never once any of the request body may have been sent.

mod body;
mod headers;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{info, info_span, warn, Instrument};

use crate::metrics::{bump, drop_one};
use crate::server::Drain;
use crate::table::{normalize_host, Lease, Pick};
use crate::Shared;
use body::{AttemptBody, BodySource, Held};
use headers::RouterError;

/// What the router answers with.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Attempts per request, over different endpoints.
const MAX_ATTEMPTS: usize = 3;

/// The proxy: the shared state and a pooled HTTP/1.1 client for the endpoints.
pub(crate) struct Proxy {
    shared: Arc<Shared>,
    client: Client<HttpConnector, AttemptBody>,
    drain: Drain,
}

/// Counts a request in flight until dropped (with its response body).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        drop_one(&self.0.metrics.in_flight);
    }
}

impl Proxy {
    pub(crate) fn new(shared: Arc<Shared>, drain: Drain) -> Proxy {
        let config = &shared.config;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.dial_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(config.max_idle_per_endpoint)
            .build(connector);
        Proxy {
            shared,
            client,
            drain,
        }
    }

    /// Serves one request (errors become responses).
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let metrics = &self.shared.metrics;
        bump(&metrics.requests);
        bump(&metrics.in_flight);
        let in_flight = InFlight(self.shared.clone());
        let request_id = request
            .headers()
            .get(headers::REQUEST_ID)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(headers::new_request_id);
        let host = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())
            .and_then(normalize_host);
        let span = info_span!(
            "request",
            request_id = request_id.to_str().unwrap_or_default(),
            host = host.as_deref().unwrap_or_default(),
        );
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let (response, endpoint) = match host {
            Some(host) => {
                self.route(request, peer, &request_id, host, in_flight)
                    .instrument(span.clone())
                    .await
            }
            None => (RouterError::EmptyHost.response("", &request_id), None),
        };
        let status = response.status().as_u16();
        metrics.response(status);
        span.in_scope(|| {
            info!(
                target: "kiln_router::access",
                %method, path, status, endpoint = endpoint.unwrap_or_default(),
                ms = started.elapsed().as_millis() as u64,
                "request"
            )
        });
        Ok(response)
    }

    /// Looks the route up and tries its endpoints; also says which endpoint answered.
    async fn route(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        request_id: &HeaderValue,
        host: String,
        in_flight: InFlight,
    ) -> (Response<ProxyBody>, Option<String>) {
        let shared = &self.shared;
        let Some(route) = shared.table.lookup(&host, request.uri().path()) else {
            bump(&shared.metrics.unknown_routes);
            return (RouterError::UnknownRoute.response(&host, request_id), None);
        };
        let upgrade = headers::wants_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::add_forwarded(&mut parts.headers, peer.ip(), request_id);
        let body = BodySource::new(body);
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut tried = Vec::new();
        for attempt in 1..=MAX_ATTEMPTS {
            let lease = match shared.table.pick(&route, &tried) {
                Pick::Endpoint(lease) => lease,
                Pick::Exhausted => break,
            };
            if attempt > 1 {
                bump(&shared.metrics.retries);
            }
            let endpoint = lease.endpoint().clone();
            let address = endpoint.address();
            let Ok(uri) = format!("http://{address}{path_and_query}").parse::<Uri>() else {
                break;
            };
            let mut outgoing = Request::new(body.attempt());
            *outgoing.method_mut() = parts.method.clone();
            *outgoing.uri_mut() = uri;
            *outgoing.version_mut() = Version::HTTP_11;
            *outgoing.headers_mut() = parts.headers.clone();
            headers::add_endpoint(outgoing.headers_mut(), &endpoint);
            let sent = self.client.request(outgoing);
            let result = tokio::time::timeout(shared.config.request_timeout, sent).await;
            let error = match result {
                Ok(Ok(response)) => {
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if switching && client_upgrade.is_none() {
                        bump(&shared.metrics.bad_gateways);
                        warn!(endpoint = %address, "endpoint switched protocols unasked");
                        let error = RouterError::EndpointFailure;
                        return (error.response(&host, request_id), Some(address));
                    }
                    let response = self.respond(response, client_upgrade, lease, in_flight);
                    return (response, Some(address));
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    bump(&shared.metrics.bad_gateways);
                    warn!(endpoint = %address, "endpoint timed out");
                    let error = RouterError::EndpointTimeout;
                    return (error.response(&host, request_id), Some(address));
                }
            };
            let retry = if error.is_connect() {
                bump(&shared.metrics.dial_failures);
                shared.table.remove_endpoint(&endpoint.host, endpoint.port);
                warn!(endpoint = %address, error = %error, attempt, "dial failed; endpoint removed");
                body.replayable()
            } else {
                warn!(endpoint = %address, error = ?error, attempt, "endpoint failed");
                idempotent && body.replayable()
            };
            tried.push(endpoint);
            if !retry {
                break;
            }
        }
        bump(&shared.metrics.bad_gateways);
        let error = RouterError::EndpointFailure;
        (error.response(&host, request_id), None)
    }

    /// Passes the endpoint's response on: streamed, or switched to a tunnel after a 101.
    fn respond(
        &self,
        mut response: Response<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        lease: Lease,
        in_flight: InFlight,
    ) -> Response<ProxyBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let endpoint_upgrade = hyper::upgrade::on(&mut response);
            upgrade::tunnel(
                self.shared.clone(),
                &self.drain,
                client_upgrade,
                endpoint_upgrade,
                lease,
            );
            let (parts, _) = response.into_parts();
            let empty = http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            return Response::from_parts(parts, empty);
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let body = Held::new(body, (lease, in_flight)).boxed_unsync();
        Response::from_parts(parts, body)
    }
}
