//! One proxied request: find the route by `Host` and path, add the forwarding headers, and
//! try up to three endpoints. Another endpoint is tried after a failed dial (which also
//! removes the endpoint from the table), or after any failure of an idempotent request that
//! got no response, but never once any of the request body may have been sent. A pooled
//! connection the endpoint closed meanwhile is replaced by a new one to the same endpoint
//! when the request provably was not sent on it (or is idempotent and can be sent whole).
//!
//! Endpoint connections ([`crate::upstream`]) are driven from the client connection's task,
//! so the whole exchange runs in one task.

mod body;
mod headers;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tracing::{info, info_span, warn, Instrument};

use crate::metrics::{bump, drop_one};
use crate::rtr::{Arrival, Pending, Seen};
use crate::server::Drain;
use crate::table::{normalize_host, Endpoint, Lease, Pick};
use crate::upstream::Upstream;
use crate::Shared;
pub(crate) use body::AttemptBody;
use body::{BodySource, OnEnd, Streamed};
pub(crate) use headers::{new_request_id, RouterError, REQUEST_ID};

/// What the router answers with.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Attempts per request, over different endpoints.
const MAX_ATTEMPTS: usize = 3;

/// The proxy: the shared state (the table holds the endpoints' idle connections).
pub(crate) struct Proxy {
    shared: Arc<Shared>,
    drain: Drain,
}

/// Counts a request in flight until dropped (with its response body).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        drop_one(&self.0.metrics.in_flight);
    }
}

/// How one attempt on an endpoint ended, short of a response.
enum Failure {
    /// No connection could be made.
    Dial(crate::upstream::DialError),
    /// The connection failed before a response head.
    Exchange(hyper::Error),
    /// No response head within the request timeout.
    Timeout,
}

impl Proxy {
    pub(crate) fn new(shared: Arc<Shared>, drain: Drain) -> Proxy {
        Proxy { shared, drain }
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
        let arrival = Arrival {
            at: Instant::now(),
            wall: SystemTime::now(),
        };
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
        let method = request.method().clone();
        let uri = request.uri().clone();
        let (response, endpoint) = match host {
            Some(host) => {
                self.route(request, peer, &request_id, host, in_flight, arrival)
                    .instrument(span.clone())
                    .await
            }
            None => {
                bump(&metrics.empty_hosts);
                (RouterError::EmptyHost.response("", &request_id), None)
            }
        };
        let status = response.status().as_u16();
        metrics.response(status);
        let elapsed = arrival.at.elapsed();
        metrics.latency.observe(elapsed);
        span.in_scope(|| {
            info!(
                target: "kiln_router::access",
                %method, path = uri.path(), status,
                endpoint = endpoint.as_deref().map(Endpoint::address).unwrap_or_default(),
                ms = elapsed.as_millis() as u64,
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
        arrival: Arrival,
    ) -> (Response<ProxyBody>, Option<Arc<Endpoint>>) {
        let shared = &self.shared;
        let Some(route) = shared.table.lookup(&host, request.uri().path()) else {
            bump(&shared.metrics.unknown_routes);
            return (RouterError::UnknownRoute.response(&host, request_id), None);
        };
        let upgrade = headers::wants_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::add_forwarded(&mut parts.headers, peer.ip(), request_id, arrival.wall);
        if !parts.headers.contains_key(HOST) {
            // An absolute-form request without `Host`: the app gets the host it named.
            if let Some(authority) = parts.uri.authority() {
                if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(HOST, value);
                }
            }
        }
        let body = BodySource::new(body, shared.rtr.enabled());
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        // What the RTR line of a failure names: the last endpoint tried.
        let failed = |error: RouterError, endpoint: Option<Arc<Endpoint>>| {
            let response = error.response(&host, request_id);
            if let Some(endpoint) = endpoint.as_ref().filter(|e| !e.app.is_empty()) {
                if shared.rtr.enabled() {
                    let status = response.status().as_u16();
                    let seen = Seen::copy(&parts);
                    let pending =
                        Pending::new(seen, peer, endpoint, status, arrival, body.bytes_read());
                    let sent = hyper::body::Body::size_hint(response.body())
                        .exact()
                        .unwrap_or_default();
                    shared.rtr.offer(pending.finish(sent), &shared.metrics);
                }
            }
            (response, endpoint)
        };
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
            let address = Address(&endpoint);
            let failure = match self.exchange(&endpoint, &parts, &body, idempotent).await {
                Ok((response, upstream)) => {
                    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
                    if switching && client_upgrade.is_none() {
                        bump(&shared.metrics.bad_gateways);
                        bump(&shared.metrics.endpoint_failures);
                        warn!(endpoint = %address, "endpoint switched protocols unasked");
                        return failed(RouterError::EndpointFailure, Some(endpoint));
                    }
                    let log = (shared.rtr.enabled() && !endpoint.app.is_empty()).then(|| {
                        let status = response.status().as_u16();
                        let seen = Seen::take(parts);
                        Pending::new(seen, peer, &endpoint, status, arrival, body.bytes_read())
                    });
                    let hold = Hold {
                        lease,
                        in_flight,
                        log,
                    };
                    let response = self.respond(response, upstream, client_upgrade, hold);
                    return (response, Some(endpoint));
                }
                Err(failure) => failure,
            };
            let retry = match failure {
                Failure::Timeout => {
                    bump(&shared.metrics.bad_gateways);
                    bump(&shared.metrics.endpoint_timeouts);
                    warn!(endpoint = %address, "endpoint timed out");
                    return failed(RouterError::EndpointTimeout, Some(endpoint));
                }
                Failure::Dial(error) => {
                    bump(&shared.metrics.dial_failures);
                    shared.table.remove_endpoint(&endpoint.host, endpoint.port);
                    warn!(endpoint = %address, error = %error, attempt, "dial failed; endpoint removed");
                    body.replayable()
                }
                Failure::Exchange(error) => {
                    warn!(endpoint = %address, error = ?error, attempt, "endpoint failed");
                    idempotent && body.replayable()
                }
            };
            tried.push(endpoint);
            if !retry {
                break;
            }
        }
        bump(&shared.metrics.bad_gateways);
        bump(&shared.metrics.endpoint_failures);
        failed(RouterError::EndpointFailure, tried.pop())
    }

    /// One attempt on `endpoint`: a pooled connection (or a new one), the request, and its
    /// response head within the request timeout.
    async fn exchange(
        &self,
        endpoint: &Arc<Endpoint>,
        parts: &Parts,
        body: &BodySource,
        idempotent: bool,
    ) -> Result<(Response<Incoming>, Upstream), Failure> {
        let config = &self.shared.config;
        let deadline = tokio::time::Instant::now() + config.request_timeout;
        let mut request = outgoing(parts, body, endpoint);
        let mut upstream = endpoint.idle.checkout(Instant::now());
        loop {
            let mut conn = match upstream.take() {
                Some(conn) => conn,
                None => Upstream::dial(endpoint, config.dial_timeout)
                    .await
                    .map_err(Failure::Dial)?,
            };
            match tokio::time::timeout_at(deadline, conn.send(request)).await {
                Ok(Ok(response)) => return Ok((response, conn)),
                Ok(Err(mut error)) => {
                    let given_back = error.take_message();
                    let error = error.into_error();
                    if !conn.kept.reused {
                        return Err(Failure::Exchange(error));
                    }
                    // A pooled connection the endpoint closed meanwhile: the request again on
                    // a new one, if it was not sent at all or can be sent whole again.
                    request = match given_back {
                        Some(request) => request,
                        None if idempotent && body.replayable() => outgoing(parts, body, endpoint),
                        None => return Err(Failure::Exchange(error)),
                    };
                    tracing::debug!(error = %error, "pooled connection was closed; dialling");
                }
                Err(_) => return Err(Failure::Timeout),
            }
        }
    }

    /// Passes the endpoint's response on: streamed, or switched to a tunnel after a 101.
    fn respond(
        &self,
        mut response: Response<Incoming>,
        upstream: Upstream,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        mut hold: Hold,
    ) -> Response<ProxyBody> {
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let endpoint_upgrade = hyper::upgrade::on(&mut response);
            // The connection finishes the switch on its own; the tunnel then takes it over.
            upstream.detach();
            // The line is written at the switch; what the tunnel carries is not counted.
            hold.ended(0, None);
            upgrade::tunnel(
                self.shared.clone(),
                &self.drain,
                client_upgrade,
                endpoint_upgrade,
                hold.lease,
            );
            let (parts, _) = response.into_parts();
            let empty = http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            return Response::from_parts(parts, empty);
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, false);
        let body = Streamed::new(body, upstream, hold).boxed_unsync();
        Response::from_parts(parts, body)
    }
}

/// The request for an endpoint: the client's, in origin form, with the endpoint's headers.
fn outgoing(parts: &Parts, body: &BodySource, endpoint: &Endpoint) -> Request<AttemptBody> {
    let mut request = Request::new(body.attempt());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = Uri::from(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers.clone();
    headers::add_endpoint(request.headers_mut(), endpoint);
    request
}

/// An endpoint's `host:port` in log lines, formatted only if the line is written.
struct Address<'a>(&'a Endpoint);

impl std::fmt::Display for Address<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.address())
    }
}

/// What a streamed response holds until it is done: the endpoint, the request's place among
/// those in flight, and its RTR line, sent once the byte count is known.
struct Hold {
    lease: Lease,
    in_flight: InFlight,
    log: Option<Pending>,
}

impl OnEnd for Hold {
    fn ended(&mut self, sent: u64, clean: Option<Upstream>) {
        let shared = &self.in_flight.0;
        if let Some(upstream) = clean {
            let max = shared.config.max_idle_per_endpoint;
            self.lease.endpoint().idle.checkin(upstream, max);
        }
        if let Some(log) = self.log.take() {
            shared.rtr.offer(log.finish(sent), &shared.metrics);
        }
    }
}
