//! A `nats-server` of a test's own on a free loopback port, killed (by its pid) when dropped.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `nats-server`.
pub struct Nats {
    child: Child,
    port: u16,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl Nats {
    /// Starts one and waits until it accepts connections. A free port can be taken by another
    /// test between being picked and being bound: then the server exits, and another port is
    /// tried.
    pub fn start() -> Nats {
        for _ in 0..5 {
            if let Some(nats) = Self::try_start(crate::free_port()) {
                return nats;
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
    }

    /// Starts one on `port` (a restarted bus at the same address).
    pub fn start_on(port: u16) -> Nats {
        Self::try_start(port)
            .unwrap_or_else(|| panic!("nats-server did not start on 127.0.0.1:{port}"))
    }

    /// Starts one on `port`: None when it exited (the port was taken).
    fn try_start(port: u16) -> Option<Nats> {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server (deploy/setup installs it)");
        let mut nats = Nats {
            child,
            port,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = nats.child.try_wait() {
                return None;
            }
            // Ours when what answers there greets as a NATS server and ours still runs.
            if greets(port) && matches!(nats.child.try_wait(), Ok(None)) {
                return Some(nats);
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on 127.0.0.1:{port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a NATS server answers on `127.0.0.1:port` (its first line is `INFO {...}`).
fn greets(port: u16) -> bool {
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut banner = [0u8; 5];
    conn.read_exact(&mut banner).is_ok() && &banner == b"INFO "
}
