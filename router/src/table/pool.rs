//! One route's endpoints: when each was last registered, and the choice of the next one
//! (round-robin or least connections, skipping endpoints a request already tried).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use hyper::http::uri::Authority;

use crate::forward::EndpointConn;
use crate::upstream::{Idle, Upstream};

use crate::config::Balancing;

/// An app instance traffic can go to.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to dial.
    pub host: String,
    /// Where to dial.
    pub port: u16,
    /// The app guid.
    pub app: String,
    /// The instance guid.
    pub instance_id: String,
    /// The instance index.
    pub instance_index: String,
    /// Labels from the registration.
    pub tags: BTreeMap<String, String>,
    /// Requests proxied to it now (for least connections).
    in_flight: AtomicUsize,
    /// What every request to it needs, made once: `host:port` for its uri, and the values
    /// of `X-CF-ApplicationID`, `X-CF-InstanceID` and `X-CF-InstanceIndex` (`None`: the
    /// header is left out).
    pub(crate) prepared: Prepared,
    /// Idle keep-alive connections to it, set up by hyper (the requests the forwarding path
    /// leaves to hyper use them).
    pub(crate) idle: Idle<Upstream>,
    /// Idle keep-alive connections to it of the forwarding path.
    pub(crate) streams: Idle<EndpointConn>,
}

/// An endpoint's parts of every request to it, made when it is registered.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) authority: Option<Authority>,
    pub(crate) app: Option<HeaderValue>,
    pub(crate) instance_id: Option<HeaderValue>,
    pub(crate) instance_index: Option<HeaderValue>,
    /// Where the app's RTR lines go (`None` without an app).
    pub(crate) log_subject: Option<async_nats::Subject>,
}

impl Endpoint {
    /// An endpoint with nothing in flight.
    pub fn new(
        host: String,
        port: u16,
        app: String,
        instance_id: String,
        instance_index: String,
        tags: BTreeMap<String, String>,
    ) -> Endpoint {
        let value = |v: &str| HeaderValue::from_str(v).ok().filter(|_| !v.is_empty());
        let mut endpoint = Endpoint {
            idle: Idle::default(),
            streams: Idle::default(),
            prepared: Prepared {
                authority: None,
                app: value(&app),
                instance_id: value(&instance_id),
                instance_index: value(&instance_index),
                log_subject: (!app.is_empty())
                    .then(|| async_nats::Subject::from(kiln_bus::cell::app_log(&app))),
            },
            host,
            port,
            app,
            instance_id,
            instance_index,
            tags,
            in_flight: AtomicUsize::new(0),
        };
        endpoint.prepared.authority = endpoint.address().parse().ok();
        endpoint
    }

    /// `host:port`, as dialled (IPv6 literals bracketed).
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether this is the endpoint at `host:port`.
    pub fn is_at(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host == host
    }

    /// Same instance, same labels: a registration that changes nothing.
    fn same_as(&self, other: &Endpoint) -> bool {
        self.app == other.app
            && self.instance_id == other.instance_id
            && self.instance_index == other.instance_index
            && self.tags == other.tags
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request's hold on an endpoint; counts it as in flight until dropped.
#[derive(Debug)]
pub struct Lease(Arc<Endpoint>);

impl Lease {
    fn new(endpoint: Arc<Endpoint>) -> Lease {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease(endpoint)
    }

    /// The endpoint held.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One registration of an endpoint on a route.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) refreshed: Instant,
    pub(crate) threshold: Duration,
    updated_at_ns: Option<i64>,
}

/// A route's endpoints and where the round-robin stands.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub(crate) entries: Vec<Entry>,
    next: usize,
}

impl Pool {
    /// Adds or refreshes an endpoint; says whether it is new. A message older than the one
    /// held (`endpoint_updated_at_ns`) changes nothing.
    pub(crate) fn upsert(
        &mut self,
        endpoint: Endpoint,
        threshold: Duration,
        updated_at_ns: Option<i64>,
        now: Instant,
    ) -> bool {
        let found = self
            .entries
            .iter_mut()
            .find(|e| e.endpoint.is_at(&endpoint.host, endpoint.port));
        let Some(entry) = found else {
            self.entries.push(Entry {
                endpoint: Arc::new(endpoint),
                refreshed: now,
                threshold,
                updated_at_ns,
            });
            return true;
        };
        if let (Some(held), Some(new)) = (entry.updated_at_ns, updated_at_ns) {
            if new < held {
                return false;
            }
        }
        if !entry.endpoint.same_as(&endpoint) {
            entry.endpoint = Arc::new(endpoint);
        }
        entry.refreshed = now;
        entry.threshold = threshold;
        entry.updated_at_ns = updated_at_ns.or(entry.updated_at_ns);
        false
    }

    /// Removes the endpoint at `host:port`; says whether it was there.
    pub(crate) fn remove(&mut self, host: &str, port: u16) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !e.endpoint.is_at(host, port));
        before != self.entries.len()
    }

    /// Drops endpoints not registered within their threshold; says how many.
    pub(crate) fn prune(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|e| now.saturating_duration_since(e.refreshed) <= e.threshold);
        before - self.entries.len()
    }

    /// Counts every endpoint as registered now.
    pub(crate) fn freshen(&mut self, now: Instant) {
        for e in &mut self.entries {
            e.refreshed = now;
        }
    }

    /// The next endpoint, other than those in `tried`.
    pub(crate) fn pick(&mut self, balancing: Balancing, tried: &[Arc<Endpoint>]) -> Option<Lease> {
        let n = self.entries.len();
        let mut candidates = (0..n).map(|i| (self.next + i) % n).filter(|&i| {
            let e = &self.entries[i].endpoint;
            !tried.iter().any(|t| t.is_at(&e.host, e.port))
        });
        let chosen = match balancing {
            Balancing::RoundRobin => candidates.next(),
            // The first of the least loaded, in round-robin order.
            Balancing::LeastConnections => {
                candidates.min_by_key(|&i| self.entries[i].endpoint.in_flight())
            }
        }?;
        self.next = (chosen + 1) % n;
        Some(Lease::new(self.entries[chosen].endpoint.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(
            "127.0.0.1".into(),
            port,
            "app".into(),
            format!("i{port}"),
            "0".into(),
            BTreeMap::new(),
        )
    }

    fn pool(ports: &[u16], now: Instant) -> Pool {
        let mut p = Pool::default();
        for &port in ports {
            p.upsert(ep(port), Duration::from_secs(10), None, now);
        }
        p
    }

    #[test]
    fn round_robin_takes_turns_and_skips_tried_endpoints() {
        let mut p = pool(&[1, 2, 3], Instant::now());
        let ports: Vec<u16> = (0..6)
            .map(|_| p.pick(Balancing::RoundRobin, &[]).unwrap().endpoint().port)
            .collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
        let first = p.pick(Balancing::RoundRobin, &[]).unwrap();
        let tried = vec![first.endpoint().clone()];
        let second = p.pick(Balancing::RoundRobin, &tried).unwrap();
        assert_ne!(second.endpoint().port, first.endpoint().port);
        let all: Vec<_> = p.entries.iter().map(|e| e.endpoint.clone()).collect();
        assert!(p.pick(Balancing::RoundRobin, &all).is_none());
    }

    #[test]
    fn least_connections_avoids_busy_endpoints() {
        let mut p = pool(&[1, 2], Instant::now());
        let held = p.pick(Balancing::LeastConnections, &[]).unwrap();
        for _ in 0..3 {
            let next = p.pick(Balancing::LeastConnections, &[]).unwrap();
            assert_ne!(next.endpoint().port, held.endpoint().port);
        }
        drop(held);
        assert!(p.entries.iter().all(|e| e.endpoint.in_flight() == 0));
    }

    #[test]
    fn older_registrations_are_ignored_and_stale_ones_pruned() {
        let t0 = Instant::now();
        let mut p = Pool::default();
        assert!(p.upsert(ep(1), Duration::from_secs(10), Some(200), t0));
        let mut changed = ep(1);
        changed.instance_id = "newer".into();
        assert!(!p.upsert(changed, Duration::from_secs(10), Some(100), t0));
        assert_eq!(p.entries[0].endpoint.instance_id, "i1");
        p.upsert(ep(2), Duration::from_secs(1), None, t0);
        assert_eq!(p.prune(t0 + Duration::from_secs(5)), 1);
        assert_eq!(p.entries[0].endpoint.port, 1);
        p.freshen(t0 + Duration::from_secs(30));
        assert_eq!(p.prune(t0 + Duration::from_secs(35)), 0);
        assert!(p.remove("127.0.0.1", 1));
        assert!(!p.remove("127.0.0.1", 1));
    }
}
