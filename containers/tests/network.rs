//! Networking: NetIn reachable from the host, egress denied by default and allowed by a rule.
//! Egress is tested against a listener in a network namespace the test makes and removes.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::*;
use kiln_containers::{NetIn, NetOutRule, ProcessSpec, Protocol};

/// A network namespace with a veth to the host, removed on drop.
struct Peer {
    name: String,
    host_veth: String,
    address: Ipv4Addr,
}

impl Peer {
    fn new(index: u8) -> Peer {
        let name = format!("kiln-test-{}-{index}", std::process::id());
        let host_veth = format!("ktp{}{index}", std::process::id() % 10000);
        let host_ip = format!("10.243.{index}.1");
        let address = Ipv4Addr::new(10, 243, index, 2);
        let peer = Peer {
            name: name.clone(),
            host_veth: host_veth.clone(),
            address,
        };
        for args in [
            vec!["netns", "add", &name],
            vec![
                "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
            vec!["addr", "add", &format!("{host_ip}/30"), "dev", &host_veth],
            vec!["link", "set", &host_veth, "up"],
            vec![
                "-n",
                &name,
                "addr",
                "add",
                &format!("{address}/30"),
                "dev",
                "eth0",
            ],
            vec!["-n", &name, "link", "set", "eth0", "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "route", "add", "default", "via", &host_ip],
        ] {
            let status = Command::new("ip").args(&args).status().expect("ip");
            assert!(status.success(), "ip {args:?}");
        }
        peer
    }

    /// A TCP listener on `port` inside the namespace that answers "pong" to each connection.
    fn serve(&self, port: u16) {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        let address = self.address;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only; the fd is open.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "enter the peer's network namespace");
            let listener = TcpListener::bind((address, port)).expect("bind in peer");
            ready_tx.send(()).expect("ready");
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(b"pong\n");
            }
        });
        ready_rx.recv().expect("listener ready");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

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
