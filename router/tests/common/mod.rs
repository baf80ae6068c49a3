//! What the router's integration tests share: a `nats-server` of each test's own
//! (kiln-testkit's: a free loopback port, another if that one was taken meanwhile), the
//! router in-process on free ports (shut down on drop), a registrar speaking gorouter's
//! messages, and polling helpers. Backends are in `backend`.
#![allow(dead_code)]

pub mod backend;
pub mod gate;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kiln_bus::router::{RegistryMessage, ROUTER_REGISTER, ROUTER_UNREGISTER};
use kiln_router::{Config, Started};
use serde_json::Value;

pub use kiln_testkit::{free_port, Nats};

/// A router on free loopback ports, shut down on drop.
pub struct Router {
    started: Option<Started>,
    pub addr: SocketAddr,
    pub status: SocketAddr,
    pub id: String,
    pub http: reqwest::Client,
}

/// Settings for tests: loopback, free ports, the given bus.
pub fn test_config(nats_url: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        status_listen: "127.0.0.1:0".parse().expect("an address"),
        nats_url: nats_url.to_string(),
        drain_timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

impl Router {
    pub async fn start(nats_url: &str) -> Router {
        Self::start_with(nats_url, |_| {}).await
    }

    pub async fn start_with(nats_url: &str, tune: impl FnOnce(&mut Config)) -> Router {
        let mut config = test_config(nats_url);
        tune(&mut config);
        let started = kiln_router::start(config).await.expect("router starts");
        Router {
            addr: started.addr,
            status: started.status_addr,
            id: started.id.clone(),
            started: Some(started),
            http: client(),
        }
    }

    /// A request for `host` + `path` through the router.
    pub fn get(&self, host: &str, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, host, path)
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        host: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.addr))
            .header("host", host)
    }

    /// A status listener document, as JSON.
    pub async fn status_json(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.status);
        let response = self.http.get(url).send().await.expect("status listener");
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.expect("JSON")
    }

    /// Endpoints of `route` (`host/path`) in `/routes`.
    pub async fn endpoints(&self, route: &str) -> usize {
        let routes = self.status_json("/routes").await;
        routes[route].as_array().map_or(0, Vec::len)
    }

    /// Waits until `route` has `n` endpoints.
    pub async fn wait_endpoints(&self, route: &str, n: usize) {
        eventually(&format!("{route} has {n} endpoints"), || async move {
            self.endpoints(route).await == n
        })
        .await;
    }

    pub fn started(&self) -> &Started {
        self.started.as_ref().expect("running")
    }

    /// Begins the shutdown and waits for the stop.
    pub async fn stop(&mut self) -> kiln_router::Stopped {
        let started = self.started.take().expect("running");
        started.shutdown();
        started.stopped().await
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(started) = &self.started {
            started.shutdown();
        }
    }
}

/// An HTTP client that never goes through a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client")
}

/// Publishes registrations on the test's bus, as a route emitter would.
pub struct Registrar {
    pub client: async_nats::Client,
}

impl Registrar {
    pub async fn connect(url: &str) -> Registrar {
        Registrar {
            client: async_nats::connect(url).await.expect("connect to nats"),
        }
    }

    pub async fn register(&self, m: &RegistryMessage) {
        self.send(ROUTER_REGISTER, m).await;
    }

    pub async fn unregister(&self, m: &RegistryMessage) {
        self.send(ROUTER_UNREGISTER, m).await;
    }

    async fn send(&self, subject: &'static str, m: &RegistryMessage) {
        let body = kiln_bus::encode(m);
        self.client
            .publish(subject, body.into())
            .await
            .expect("publish");
        self.client.flush().await.expect("flush");
    }
}

/// A registration of `addr` for `uris`.
pub fn endpoint(addr: SocketAddr, uris: &[&str], app: &str) -> RegistryMessage {
    RegistryMessage {
        host: addr.ip().to_string(),
        port: addr.port(),
        uris: uris.iter().map(|u| u.to_string()).collect(),
        app: app.to_string(),
        private_instance_id: format!("{app}-instance-{}", addr.port()),
        private_instance_index: "0".into(),
        ..RegistryMessage::default()
    }
}

/// Polls `check` until it holds, for up to 20 seconds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `host` + `path` answers something other than 404.
pub async fn wait_routed(router: &Router, host: &str, path: &str) {
    eventually(&format!("{host}{path} is routed"), || async move {
        match router.get(host, path).send().await {
            Ok(r) => r.status() != 404,
            Err(_) => false,
        }
    })
    .await;
}

/// A loopback address where connections are refused.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
