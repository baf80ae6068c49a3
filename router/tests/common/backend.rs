//! Real HTTP backends on loopback (hyper servers in the test process): an echo that reports
//! what it received, slow and held ones, an upgrade echo, and raw TCP endpoints that
//! misbehave on purpose. Each stops when dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type RespBody = UnsyncBoxBody<Bytes, Error>;
pub type Reply = Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>;
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> Reply + Send + Sync>;

/// A backend; `hits` counts requests (or connections, for raw ones).
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Body bytes a raw backend read before it hung up.
    pub body_bytes: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Serves `handler` over HTTP/1.1 (with upgrades).
    pub async fn serve(handler: Handler) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (counter, accepted_count, token) = (hits.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                accepted_count.fetch_add(1, Ordering::SeqCst);
                let (handler, counter, token) = (handler.clone(), counter.clone(), token.clone());
                let service = service_fn(move |request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let reply = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(reply.await) }
                });
                tokio::spawn(async move {
                    let conn = http1::Builder::new()
                        // Room for the router's largest heads (1 MiB).
                        .max_buf_size(4 << 20)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Backend {
            addr,
            hits,
            body_bytes: Arc::default(),
            connections,
            stop,
        }
    }

    /// Answers 200 with JSON: its name, the method, path, headers and body it received.
    pub async fn echo(name: &str) -> Backend {
        Self::slow(name, Duration::ZERO).await
    }

    /// An echo that waits `delay` before answering.
    pub async fn slow(name: &str, delay: Duration) -> Backend {
        let name = name.to_string();
        Self::serve(Arc::new(move |request| {
            let name = name.clone();
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                echo_reply(&name, request).await
            })
        }))
        .await
    }

    /// An echo that answers only once `release` is cancelled.
    pub async fn held(name: &str, release: CancellationToken) -> Backend {
        let name = name.to_string();
        Self::serve(Arc::new(move |request| {
            let (name, release) = (name.clone(), release.clone());
            Box::pin(async move {
                release.cancelled().await;
                echo_reply(&name, request).await
            })
        }))
        .await
    }

    /// Switches to the protocol asked for in `Upgrade` and echoes every byte back.
    pub async fn upgrade_echo() -> Backend {
        Self::serve(Arc::new(|mut request: Request<Incoming>| {
            Box::pin(async move {
                let protocol = request.headers().get("upgrade").cloned();
                let Some(protocol) = protocol else {
                    return text(StatusCode::BAD_REQUEST, "upgrade expected");
                };
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
                let mut response = text(StatusCode::SWITCHING_PROTOCOLS, "");
                response
                    .headers_mut()
                    .insert("connection", "upgrade".parse().unwrap());
                response.headers_mut().insert("upgrade", protocol);
                response
            })
        }))
        .await
    }

    /// Raw TCP: reads a request head, then `body` more bytes of body (0: none), and hangs up
    /// without answering.
    pub async fn hangs_up(body: usize) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (hits, body_bytes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        let (h, b, token) = (hits.clone(), body_bytes.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let mut stream = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                h.fetch_add(1, Ordering::SeqCst);
                let mut seen = Vec::new();
                let mut buf = [0u8; 16 << 10];
                loop {
                    let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n");
                    if let Some(end) = head_end {
                        let got = seen.len() - end - 4;
                        if got >= body {
                            b.fetch_add(got, Ordering::SeqCst);
                            break;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.shutdown().await;
                drop(stream);
            }
        });
        Backend {
            addr,
            connections: hits.clone(),
            hits,
            body_bytes,
            stop,
        }
    }
}

/// The echo's answer.
pub async fn echo_reply(name: &str, request: Request<Incoming>) -> Response<RespBody> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("body: {e}")),
    };
    let mut headers = Map::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).to_string();
        match headers.get_mut(k.as_str()) {
            Some(Value::String(earlier)) => *earlier = format!("{earlier}, {v}"),
            _ => {
                headers.insert(k.as_str().to_string(), Value::String(v));
            }
        }
    }
    let report = json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = text(StatusCode::OK, &report.to_string());
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// A plain answer.
pub fn text(status: StatusCode, body: &str) -> Response<RespBody> {
    let body = Full::new(Bytes::from(body.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
