//! Networking: NetIn reachable from the host (and the container's listeners seen from it),
//! egress denied by default and allowed by a rule.
//! Egress is tested against a listener in a network namespace the test makes and removes.
mod common;
#[path = "common/peer.rs"]
mod peer;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use common::*;
use kiln_containers::{NetIn, NetOutRule, ProcessSpec, Protocol};
use peer::Peer;

#[tokio::test]
async fn egress_is_denied_by_default_and_allowed_by_a_rule() {
    let t = TestBackend::new(8).await;
    let peer = Peer::new(8);
    peer.serve(9000);
    t.container("egress").await;
    let script = format!("nc -w 3 {} 9000 </dev/null; echo rc=$?", peer.address);

    let (_, out, _) = t.sh("egress", "vcap", &script).await;
    assert!(
        !out.contains("pong"),
        "egress allowed without a rule: {out}"
    );

    t.backend
        .net_out(
            "egress",
            NetOutRule {
                protocol: Protocol::Tcp,
                networks: vec![format!("{}/32", peer.address)],
                ports: vec![(9000, 9000)],
            },
        )
        .await
        .expect("net_out");
    let (_, out, _) = t.sh("egress", "vcap", &script).await;
    assert!(out.contains("pong"), "the rule did not allow egress: {out}");
    assert_eq!(t.backend.info("egress").expect("info").net_out.len(), 1);

    t.backend.destroy("egress").await.expect("destroy");
    assert_eq!(t.backend.resources_on_machine(), Vec::<String>::new());
}

#[tokio::test]
async fn net_in_forwards_host_ports_to_the_container() {
    let t = TestBackend::new(9).await;
    let mut s = spec("web");
    s.net_in = vec![NetIn {
        host_port: None,
        container_port: 8080,
    }];
    let info = t.backend.create(s).await.expect("create");
    let first = info.mapped_ports[0];
    assert_eq!(first.container_port, 8080);
    assert!(first.host_port >= t.config.port_range_start);
    let second = t.backend.net_in("web", None, 9090).await.expect("net_in");
    assert_ne!(second.host_port, first.host_port);

    let _server = t
        .backend
        .run(
            "web",
            ProcessSpec::new(
                "/bin/sh",
                &[
                    "-c",
                    "echo hello-from-web > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
                ],
            ),
        )
        .await
        .expect("run httpd");
    let get = |addr: Ipv4Addr, port: u16| -> Option<String> {
        for _ in 0..50 {
            if let Ok(mut conn) =
                TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(1))
            {
                conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
                let mut body = String::new();
                if conn.read_to_string(&mut body).is_ok() && body.contains("hello-from-web") {
                    return Some(body);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    let port = first.host_port;
    let body = tokio::task::spawn_blocking(move || get(Ipv4Addr::LOCALHOST, port))
        .await
        .expect("join");
    assert!(
        body.is_some(),
        "NetIn via 127.0.0.1:{port} did not reach the container"
    );
    // Asked of the container's network namespace: httpd listens on 8080, nothing on 9090.
    let listeners = t.backend.listeners("web").await.expect("listeners");
    assert!(
        listeners.accepts(8080).expect("ask"),
        "httpd listens on 8080"
    );
    assert!(!listeners.accepts(9090).expect("ask"), "nothing on 9090");
    assert!(t.backend.listeners("nobody").await.is_err());
    if let Some(host) = host_address() {
        let body = tokio::task::spawn_blocking(move || get(host, port))
            .await
            .expect("join");
        assert!(
            body.is_some(),
            "NetIn via {host}:{port} did not reach the container"
        );
    }
    t.backend.destroy("web").await.expect("destroy");
    assert_eq!(t.backend.resources_on_machine(), Vec::<String>::new());
}
