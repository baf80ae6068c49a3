//! 200 MB each way through the router, generated on the fly, then 200 MB down a plain GET
//! (served by the forwarding path rather than hyper's): the bodies stream, so the process (router, backend and client all in it, and nothing else: this test is alone in its
//! binary) does not grow by anything like their size.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::backend::{text, Backend, RespBody};
use common::{endpoint, wait_routed, Nats, Registrar, Router};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::StatusCode;

const CHUNK: usize = 64 << 10;
const CHUNKS: usize = 3200; // 200 MiB
static DATA: [u8; CHUNK] = [b'k'; CHUNK];

fn generated() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::iter((0..CHUNKS).map(|_| Ok(Bytes::from_static(&DATA))))
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Counts the request body as it arrives, then answers with 200 MiB of its own.
async fn counting_backend() -> Backend {
    Backend::serve(Arc::new(
        |request: hyper::Request<hyper::body::Incoming>| {
            Box::pin(async move {
                let mut body = request.into_body();
                let mut received = 0usize;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => received += frame.data_ref().map_or(0, Bytes::len),
                        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
                    }
                }
                let stream = generated().map(|chunk| chunk.map(Frame::data).map_err(Into::into));
                let body: RespBody = StreamBody::new(stream).boxed_unsync();
                let mut response = hyper::Response::new(body);
                response
                    .headers_mut()
                    .insert("x-received", received.to_string().parse().unwrap());
                response
            })
        },
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_megabytes_stream_both_ways_without_the_memory_growing() {
    let nats = Nats::start();
    let router = Router::start(&nats.url).await;
    let backend = counting_backend().await;
    let registrar = Registrar::connect(&nats.url).await;
    registrar
        .register(&endpoint(backend.addr, &["bulk.example.com"], "bulk"))
        .await;
    wait_routed(&router, "bulk.example.com", "/").await;

    let before = status_kib("VmRSS:");
    // Reset the peak (VmHWM) to the current size, so that it measures this transfer only.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let started = Instant::now();
    let response = router
        .request(reqwest::Method::POST, "bulk.example.com", "/upload")
        .body(reqwest::Body::wrap_stream(generated()))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received: usize = response.headers()["x-received"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        received,
        CHUNK * CHUNKS,
        "the backend got all of the upload"
    );
    assert_eq!(
        download(response).await,
        CHUNK * CHUNKS,
        "the client got all of the download"
    );
    let growth_mib = growth_since(before, peak_reset);
    eprintln!(
        "400 MiB through the router in {:.1} s (+{growth_mib} MiB, peak: {peak_reset})",
        started.elapsed().as_secs_f64(),
    );
    assert!(
        growth_mib < 64,
        "the process grew by {growth_mib} MiB for 200 MiB bodies"
    );

    let before = status_kib("VmRSS:");
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    // On a new connection: the upload's went on with hyper after it.
    let response = common::client()
        .get(format!("http://{}/download", router.addr))
        .header("host", "bulk.example.com")
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        download(response).await,
        CHUNK * CHUNKS,
        "the client got all of the plain GET's download"
    );
    let growth_mib = growth_since(before, peak_reset);
    assert!(
        growth_mib < 64,
        "the process grew by {growth_mib} MiB for a 200 MiB download"
    );
}

async fn download(response: reqwest::Response) -> usize {
    let mut downloaded = 0usize;
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        downloaded += chunk.unwrap().len();
    }
    downloaded
}

/// MiB the process grew by since it had `before` KiB (its peak, if that was reset).
fn growth_since(before: u64, peak_reset: bool) -> u64 {
    let after = if peak_reset {
        status_kib("VmHWM:")
    } else {
        status_kib("VmRSS:")
    };
    after.saturating_sub(before) / 1024
}
