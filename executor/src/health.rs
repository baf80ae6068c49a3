//! Health probes of an instance: `port` (the app's port would accept a TCP connection at the
//! container's address), `http` (a GET of the endpoint there answers 200) and `process` (the
//! process is alive, which the instance's own task knows: always healthy here).
//!
//! A `port` probe asks the container's network namespace whether a socket listens on the port
//! ([`Listeners`]: one netlink round trip), as Diego's check runs inside the container; a
//! connection from the host instead (the fallback) crosses the veth, the host's firewall
//! chains and conntrack, seven packets that made up most of an idle cell's CPU. `http` probes
//! connect from the host to the container's address (not through the NetIn translation).

use std::net::SocketAddr;
use std::time::Duration;

use kiln_bus::cell::{HealthCheck, HealthCheckType};
use kiln_containers::network::Listeners;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

/// One probe of `check` against `app` (the container's address and the app's port), given at
/// most `timeout`; `listeners` looks into the container's network when it could be made.
pub async fn probe(
    check: &HealthCheck,
    app: SocketAddr,
    listeners: Option<&Listeners>,
    timeout: Duration,
) -> bool {
    let attempt = async {
        match check.kind {
            HealthCheckType::Process => true,
            HealthCheckType::Port => match listeners.map(|l| l.accepts(app.port())) {
                Some(Ok(accepts)) => accepts,
                Some(Err(e)) => {
                    debug!(error = %e, "asking the container's listeners; connecting instead");
                    TcpStream::connect(app).await.is_ok()
                }
                None => TcpStream::connect(app).await.is_ok(),
            },
            HealthCheckType::Http => {
                let endpoint = check.endpoint.as_deref().unwrap_or("/");
                http_ok(app, endpoint).await.unwrap_or(false)
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

/// Whether `GET endpoint` on `app` answers 200.
async fn http_ok(app: SocketAddr, endpoint: &str) -> std::io::Result<bool> {
    let path = if endpoint.starts_with('/') {
        endpoint.to_string()
    } else {
        format!("/{endpoint}")
    };
    // A path with spaces or line breaks would break the request line: never healthy.
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Ok(false);
    }
    let mut stream = TcpStream::connect(app).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {app}\r\nUser-Agent: kiln-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all that matters.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1);
    Ok(line.starts_with("HTTP/") && status == Some("200"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_tell_healthy_from_not() {
        let t = Duration::from_secs(1);
        let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let missing = server("HTTP/1.0 404 Not Found\r\n\r\n").await;
        let http = HealthCheck {
            kind: HealthCheckType::Http,
            endpoint: Some("/health".into()),
            ..HealthCheck::default()
        };
        assert!(probe(&http, ok, None, t).await);
        assert!(!probe(&http, missing, None, t).await);
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // Port checks: by connecting, and by asking the namespace's listeners (this test's).
        let listeners = Listeners::here(std::net::Ipv4Addr::LOCALHOST).unwrap();
        for asked in [None, Some(&listeners)] {
            assert!(probe(&HealthCheck::default(), missing, asked, t).await);
            assert!(!probe(&HealthCheck::default(), closed, asked, t).await);
        }
        let process = HealthCheck {
            kind: HealthCheckType::Process,
            ..HealthCheck::default()
        };
        assert!(probe(&process, closed, None, t).await);
    }
}
