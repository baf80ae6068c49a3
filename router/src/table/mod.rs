//! The route table: host (case-insensitive, port stripped) and optional path prefix → a pool
//! of endpoints. Filled from `router.register`, emptied by `router.unregister`, pruning, and
//! failed dials; read by the proxy for every attempt. One mutex, held briefly.

mod pool;
mod uri;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kiln_bus::router::RegistryMessage;
use serde::Serialize;

use crate::config::Balancing;
use pool::Pool;
pub use pool::{Endpoint, Lease};
pub use uri::{normalize_host, parse_route, prefix_matches, RouteKey};

/// What a pick found.
#[derive(Debug)]
pub enum Pick {
    /// An endpoint to try.
    Endpoint(Lease),
    /// The route is gone or every endpoint was tried.
    Exhausted,
}

/// The shared table.
#[derive(Debug)]
pub struct Table {
    balancing: Balancing,
    default_threshold: Duration,
    /// Per host, its routes by path prefix, longest first.
    routes: Mutex<HashMap<String, Vec<(String, Pool)>>>,
}

/// An endpoint as `/routes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// `host:port`.
    pub address: String,
    /// The app guid.
    pub app: String,
    /// The instance guid.
    pub private_instance_id: String,
    /// The instance index.
    pub private_instance_index: String,
    /// Labels.
    pub tags: BTreeMap<String, String>,
    /// Requests in flight to it.
    pub in_flight: usize,
    /// Seconds until it is pruned unless registered again.
    pub ttl_secs: u64,
}

impl Table {
    /// An empty table.
    pub fn new(balancing: Balancing, default_threshold: Duration) -> Table {
        Table {
            balancing,
            default_threshold,
            routes: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<(String, Pool)>>> {
        // Nothing panics while holding the lock; if something did, the table is still usable.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or refreshes the message's endpoint on each of its uris; says how many uris
    /// were understood.
    pub fn register(&self, m: &RegistryMessage, now: Instant) -> usize {
        let threshold = match m.stale_threshold_in_seconds {
            0 => self.default_threshold,
            s => Duration::from_secs(s),
        };
        let mut routes = self.lock();
        let mut accepted = 0;
        for key in m.uris.iter().filter_map(|u| parse_route(u)) {
            let host_routes = routes.entry(key.host).or_default();
            if !host_routes.iter().any(|(p, _)| *p == key.path) {
                host_routes.push((key.path.clone(), Pool::default()));
                // Longest prefix first, so that the first match is the best.
                host_routes.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
            }
            let Some((_, pool)) = host_routes.iter_mut().find(|(p, _)| *p == key.path) else {
                continue;
            };
            let endpoint = Endpoint::new(
                m.host.clone(),
                m.port,
                m.app.clone(),
                m.private_instance_id.clone(),
                m.private_instance_index.clone(),
                m.tags.clone(),
            );
            pool.upsert(endpoint, threshold, m.endpoint_updated_at_ns, now);
            accepted += 1;
        }
        accepted
    }

    /// Removes the message's endpoint (host and port) from each of its uris; says from how
    /// many.
    pub fn unregister(&self, m: &RegistryMessage) -> usize {
        let mut routes = self.lock();
        let mut removed = 0;
        for key in m.uris.iter().filter_map(|u| parse_route(u)) {
            if let Some(host_routes) = routes.get_mut(&key.host) {
                for (path, pool) in host_routes.iter_mut() {
                    if *path == key.path && pool.remove(&m.host, m.port) {
                        removed += 1;
                    }
                }
            }
        }
        drop_empty(&mut routes);
        removed
    }

    /// The route serving `host` + `path`: the longest prefix that matches.
    pub fn lookup(&self, host: &str, path: &str) -> Option<RouteKey> {
        let routes = self.lock();
        let host_routes = routes.get(host)?;
        host_routes
            .iter()
            .find(|(prefix, pool)| !pool.entries.is_empty() && prefix_matches(prefix, path))
            .map(|(prefix, _)| RouteKey {
                host: host.to_string(),
                path: prefix.clone(),
            })
    }

    /// The next endpoint of `route` that is not in `tried`.
    pub fn pick(&self, route: &RouteKey, tried: &[Arc<Endpoint>]) -> Pick {
        let mut routes = self.lock();
        let pool = routes
            .get_mut(&route.host)
            .and_then(|rs| rs.iter_mut().find(|(p, _)| *p == route.path));
        match pool.and_then(|(_, pool)| pool.pick(self.balancing, tried)) {
            Some(lease) => Pick::Endpoint(lease),
            None => Pick::Exhausted,
        }
    }

    /// Removes the endpoint at `host:port` from every route (its dial failed).
    pub fn remove_endpoint(&self, host: &str, port: u16) -> usize {
        let mut routes = self.lock();
        let mut removed = 0;
        for pool in routes.values_mut().flatten().map(|(_, pool)| pool) {
            removed += usize::from(pool.remove(host, port));
        }
        drop_empty(&mut routes);
        removed
    }

    /// Drops endpoints past their stale threshold; says how many.
    pub fn prune(&self, now: Instant) -> usize {
        let mut routes = self.lock();
        let pruned = routes
            .values_mut()
            .flatten()
            .map(|(_, pool)| pool.prune(now))
            .sum();
        drop_empty(&mut routes);
        pruned
    }

    /// Closes idle endpoint connections that timed out or were closed by their endpoint;
    /// says how many stay open.
    pub(crate) fn sweep_idle(&self, now: Instant) -> usize {
        let routes = self.lock();
        routes
            .values()
            .flatten()
            .flat_map(|(_, pool)| &pool.entries)
            .map(|e| e.endpoint.idle.sweep(now) + e.endpoint.streams.sweep(now))
            .sum()
    }

    /// Counts every endpoint as registered now (after a bus outage, so that registrars get
    /// a full threshold to register again).
    pub fn freshen(&self, now: Instant) {
        for (_, pool) in self.lock().values_mut().flatten() {
            pool.freshen(now);
        }
    }

    /// Routes and route-endpoint pairs.
    pub fn size(&self) -> (usize, usize) {
        let routes = self.lock();
        let all = || routes.values().flatten();
        (all().count(), all().map(|(_, p)| p.entries.len()).sum())
    }

    /// Every route (`host/path`) and its endpoints.
    pub fn snapshot(&self, now: Instant) -> BTreeMap<String, Vec<EndpointView>> {
        let routes = self.lock();
        let mut out = BTreeMap::new();
        for (host, host_routes) in routes.iter() {
            for (path, pool) in host_routes {
                let views = pool
                    .entries
                    .iter()
                    .map(|e| EndpointView {
                        address: e.endpoint.address(),
                        app: e.endpoint.app.clone(),
                        private_instance_id: e.endpoint.instance_id.clone(),
                        private_instance_index: e.endpoint.instance_index.clone(),
                        tags: e.endpoint.tags.clone(),
                        in_flight: e.endpoint.in_flight(),
                        ttl_secs: (e.refreshed + e.threshold)
                            .saturating_duration_since(now)
                            .as_secs(),
                    })
                    .collect();
                out.insert(format!("{host}{path}"), views);
            }
        }
        out
    }
}

fn drop_empty(routes: &mut HashMap<String, Vec<(String, Pool)>>) {
    for host_routes in routes.values_mut() {
        host_routes.retain(|(_, pool)| !pool.entries.is_empty());
    }
    routes.retain(|_, host_routes| !host_routes.is_empty());
}

#[cfg(test)]
mod tests;
