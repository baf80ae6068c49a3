//! Counters the router keeps and shows as JSON on the status listener's `/varz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// Relaxed atomic counters; gauges of the route table are read when a snapshot is taken.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Requests received on the proxy listener.
    pub requests: AtomicU64,
    /// Responses sent, by status class.
    responses: [AtomicU64; 5],
    /// 502s (and 504s): endpoints that failed.
    pub bad_gateways: AtomicU64,
    /// 404s for hosts without a route.
    pub unknown_routes: AtomicU64,
    /// Extra attempts on another endpoint.
    pub retries: AtomicU64,
    /// Dials that failed (each removed its endpoint).
    pub dial_failures: AtomicU64,
    /// Requests being proxied now.
    pub in_flight: AtomicU64,
    /// Upgraded connections (WebSockets) open now.
    pub tunnels: AtomicU64,
    /// `router.register` messages handled.
    pub registrations: AtomicU64,
    /// `router.unregister` messages handled.
    pub unregistrations: AtomicU64,
    /// Bus messages that could not be decoded.
    pub bad_messages: AtomicU64,
    /// Endpoints dropped by pruning.
    pub pruned: AtomicU64,
    /// Whether the bus connection is up.
    pub bus_connected: AtomicBool,
    /// How many times the bus connection came back.
    pub bus_reconnects: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: AtomicU64::default(),
            responses: Default::default(),
            bad_gateways: AtomicU64::default(),
            unknown_routes: AtomicU64::default(),
            retries: AtomicU64::default(),
            dial_failures: AtomicU64::default(),
            in_flight: AtomicU64::default(),
            tunnels: AtomicU64::default(),
            registrations: AtomicU64::default(),
            unregistrations: AtomicU64::default(),
            bad_messages: AtomicU64::default(),
            pruned: AtomicU64::default(),
            bus_connected: AtomicBool::new(false),
            bus_reconnects: AtomicU64::default(),
        }
    }
}

/// Adds one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Takes one away.
pub fn drop_one(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts a response by its status class.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        bump(&self.responses[class]);
    }

    /// What `/varz` shows.
    pub fn snapshot(&self, id: &str, routes: usize, endpoints: usize) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            id: id.to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            requests: get(&self.requests),
            responses: Classes {
                xx1: get(&self.responses[0]),
                xx2: get(&self.responses[1]),
                xx3: get(&self.responses[2]),
                xx4: get(&self.responses[3]),
                xx5: get(&self.responses[4]),
            },
            bad_gateways: get(&self.bad_gateways),
            unknown_routes: get(&self.unknown_routes),
            retries: get(&self.retries),
            dial_failures: get(&self.dial_failures),
            in_flight: get(&self.in_flight),
            tunnels: get(&self.tunnels),
            routes,
            endpoints,
            registrations: get(&self.registrations),
            unregistrations: get(&self.unregistrations),
            bad_messages: get(&self.bad_messages),
            pruned: get(&self.pruned),
            bus_connected: self.bus_connected.load(Ordering::Relaxed),
            bus_reconnects: get(&self.bus_reconnects),
        }
    }
}

/// Responses by status class.
#[derive(Debug, Clone, Serialize)]
pub struct Classes {
    /// 1xx.
    #[serde(rename = "1xx")]
    pub xx1: u64,
    /// 2xx.
    #[serde(rename = "2xx")]
    pub xx2: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub xx3: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub xx4: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub xx5: u64,
}

/// The `/varz` document.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The router's id.
    pub id: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Requests received.
    pub requests: u64,
    /// Responses by class.
    pub responses: Classes,
    /// Endpoint failures answered 502/504.
    pub bad_gateways: u64,
    /// Unknown hosts answered 404.
    pub unknown_routes: u64,
    /// Extra attempts.
    pub retries: u64,
    /// Failed dials.
    pub dial_failures: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Open upgraded connections.
    pub tunnels: u64,
    /// Routes (host + path) in the table.
    pub routes: usize,
    /// Route-endpoint pairs in the table.
    pub endpoints: usize,
    /// Register messages handled.
    pub registrations: u64,
    /// Unregister messages handled.
    pub unregistrations: u64,
    /// Undecodable bus messages.
    pub bad_messages: u64,
    /// Endpoints pruned as stale.
    pub pruned: u64,
    /// Whether the bus is connected.
    pub bus_connected: bool,
    /// Reconnections to the bus.
    pub bus_reconnects: u64,
}
