//! A network namespace of the test's own with a veth to the host and a TCP listener in it:
//! the only place egress tests may send traffic. Shared by the container and staging tests
//! (`#[path]`-included).
#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;

/// A network namespace with a veth to the host, removed on drop.
pub struct Peer {
    name: String,
    host_veth: String,
    pub address: Ipv4Addr,
}

impl Peer {
    pub fn new(index: u8) -> Peer {
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
    pub fn serve(&self, port: u16) {
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

    /// An HTTP/1.1 server on `port` inside the namespace that answers every request with
    /// `200 OK` and what `body` holds at the time (one request per connection).
    pub fn serve_http(&self, port: u16, body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
        use std::io::Read;
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
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = body.lock().expect("body").clone();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
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
