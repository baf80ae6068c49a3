//! Counters the router keeps, shown as JSON on the status listener's `/varz` and in
//! Prometheus's text format on `/metrics` ([`Metrics::prometheus`]).

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Relaxed atomic counters; gauges of the route table are read when a snapshot is taken.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Requests received on the proxy listener.
    pub requests: AtomicU64,
    /// Responses sent, by status class.
    responses: [AtomicU64; 5],
    /// Time from a request's arrival to its response head.
    pub latency: Histogram,
    /// 502s (and 504s): endpoints that failed.
    pub bad_gateways: AtomicU64,
    /// 502s alone: every attempt failed (or an endpoint switched protocols unasked).
    pub endpoint_failures: AtomicU64,
    /// 504s alone: an endpoint did not send its response head within the request timeout.
    pub endpoint_timeouts: AtomicU64,
    /// 404s for hosts without a route.
    pub unknown_routes: AtomicU64,
    /// 400s for requests without a `Host`.
    pub empty_hosts: AtomicU64,
    /// 431s: request heads over the size or count limit (answered by the HTTP layer).
    pub headers_too_large: AtomicU64,
    /// Clients cut off for taking longer than the header read timeout.
    pub header_timeouts: AtomicU64,
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
    /// RTR lines published on the bus.
    pub rtr_lines: AtomicU64,
    /// RTR lines dropped: their queue was full, or the bus refused them.
    pub rtr_dropped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: AtomicU64::default(),
            responses: Default::default(),
            latency: Histogram::default(),
            bad_gateways: AtomicU64::default(),
            endpoint_failures: AtomicU64::default(),
            endpoint_timeouts: AtomicU64::default(),
            unknown_routes: AtomicU64::default(),
            empty_hosts: AtomicU64::default(),
            headers_too_large: AtomicU64::default(),
            header_timeouts: AtomicU64::default(),
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
            rtr_lines: AtomicU64::default(),
            rtr_dropped: AtomicU64::default(),
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
            endpoint_timeouts: get(&self.endpoint_timeouts),
            unknown_routes: get(&self.unknown_routes),
            empty_hosts: get(&self.empty_hosts),
            headers_too_large: get(&self.headers_too_large),
            header_timeouts: get(&self.header_timeouts),
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
            rtr_lines: get(&self.rtr_lines),
            rtr_dropped: get(&self.rtr_dropped),
        }
    }

    /// The counters in Prometheus's text exposition format (version 0.0.4), for `/metrics`.
    pub fn prometheus(&self, id: &str, routes: usize, endpoints: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP kiln_router_{name} {help}");
            let _ = writeln!(out, "# TYPE kiln_router_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "kiln_router_{name}{labels} {value}");
            }
        };
        family(
            "info",
            "gauge",
            "The router's id.",
            &[(&format!("{{id=\"{}\"}}", escape_label(id)), 1)],
        );
        family(
            "uptime_seconds",
            "gauge",
            "Seconds since the router started.",
            &[("", self.started.elapsed().as_secs())],
        );
        family(
            "requests_total",
            "counter",
            "Requests received on the proxy listener.",
            &[("", get(&self.requests))],
        );
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let labels: Vec<String> = classes
            .iter()
            .map(|c| format!("{{status_class=\"{c}\"}}"))
            .collect();
        let by_class: Vec<(&str, u64)> = labels
            .iter()
            .zip(&self.responses)
            .map(|(l, c)| (l.as_str(), get(c)))
            .collect();
        family(
            "responses_total",
            "counter",
            "Responses sent, by status class (431s from the HTTP layer included).",
            &by_class,
        );
        family(
            "errors_total",
            "counter",
            "The router's own error answers and cut-off clients, by kind.",
            &[
                ("{kind=\"unknown_route\"}", get(&self.unknown_routes)),
                ("{kind=\"empty_host\"}", get(&self.empty_hosts)),
                ("{kind=\"endpoint_failure\"}", get(&self.endpoint_failures)),
                ("{kind=\"endpoint_timeout\"}", get(&self.endpoint_timeouts)),
                ("{kind=\"headers_too_large\"}", get(&self.headers_too_large)),
                ("{kind=\"header_read_timeout\"}", get(&self.header_timeouts)),
            ],
        );
        family(
            "retries_total",
            "counter",
            "Extra attempts on another endpoint.",
            &[("", get(&self.retries))],
        );
        family(
            "dial_failures_total",
            "counter",
            "Connections to endpoints that failed (each removed its endpoint).",
            &[("", get(&self.dial_failures))],
        );
        family(
            "in_flight_requests",
            "gauge",
            "Requests being proxied now.",
            &[("", get(&self.in_flight))],
        );
        family(
            "open_tunnels",
            "gauge",
            "Upgraded connections (WebSockets) open now.",
            &[("", get(&self.tunnels))],
        );
        family(
            "routes",
            "gauge",
            "Routes (host and path prefix) in the table.",
            &[("", routes as u64)],
        );
        family(
            "endpoints",
            "gauge",
            "Route-endpoint pairs in the table.",
            &[("", endpoints as u64)],
        );
        family(
            "registrations_total",
            "counter",
            "router.register messages handled.",
            &[("", get(&self.registrations))],
        );
        family(
            "unregistrations_total",
            "counter",
            "router.unregister messages handled.",
            &[("", get(&self.unregistrations))],
        );
        family(
            "bad_messages_total",
            "counter",
            "Bus messages that could not be used.",
            &[("", get(&self.bad_messages))],
        );
        family(
            "pruned_total",
            "counter",
            "Endpoints dropped as stale.",
            &[("", get(&self.pruned))],
        );
        family(
            "bus_connected",
            "gauge",
            "1 while the NATS connection is up.",
            &[("", u64::from(self.bus_connected.load(Ordering::Relaxed)))],
        );
        family(
            "bus_reconnects_total",
            "counter",
            "Times the NATS connection came back.",
            &[("", get(&self.bus_reconnects))],
        );
        family(
            "rtr_lines_total",
            "counter",
            "RTR access log lines published to apps' logs.",
            &[("", get(&self.rtr_lines))],
        );
        family(
            "rtr_lines_dropped_total",
            "counter",
            "RTR access log lines dropped: their queue was full, or the bus refused them.",
            &[("", get(&self.rtr_dropped))],
        );
        self.latency.write(
            &mut out,
            "kiln_router_request_duration_seconds",
            "Time from a request's arrival to its response head (the router's own answers included).",
        );
        out
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A latency histogram with fixed buckets: a relaxed atomic per bucket, one for the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the observations, nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(BUCKETS.len());
        bump(&self.counts[i]);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match BUCKETS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
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
    /// Of those, 504s (no response head within the request timeout).
    pub endpoint_timeouts: u64,
    /// Unknown hosts answered 404.
    pub unknown_routes: u64,
    /// Requests without a `Host`, answered 400.
    pub empty_hosts: u64,
    /// Request heads over the limits, answered 431.
    pub headers_too_large: u64,
    /// Clients cut off for a slow request head.
    pub header_timeouts: u64,
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
    /// RTR lines published.
    pub rtr_lines: u64,
    /// RTR lines dropped (queue full).
    pub rtr_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_in_the_text_format() {
        let m = Metrics::default();
        m.latency.observe(Duration::from_micros(300));
        m.latency.observe(Duration::from_millis(3));
        m.latency.observe(Duration::from_secs(100));
        bump(&m.requests);
        m.response(200);
        m.response(431);
        let text = m.prometheus("r\"1", 2, 3);
        for line in [
            "kiln_router_info{id=\"r\\\"1\"} 1",
            "kiln_router_requests_total 1",
            "kiln_router_responses_total{status_class=\"2xx\"} 1",
            "kiln_router_responses_total{status_class=\"4xx\"} 1",
            "kiln_router_routes 2",
            "kiln_router_endpoints 3",
            "kiln_router_request_duration_seconds_bucket{le=\"0.0005\"} 1",
            "kiln_router_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "kiln_router_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "kiln_router_request_duration_seconds_bucket{le=\"60\"} 2",
            "kiln_router_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "kiln_router_request_duration_seconds_count 3",
            "# TYPE kiln_router_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert_eq!(m.latency.count(), 3);
    }
}
