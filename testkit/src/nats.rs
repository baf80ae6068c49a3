//! A `nats-server` of a test's own on a free loopback port, killed (by its pid) when dropped.

use std::process::{Child, Command, Stdio};

/// A running `nats-server`.
pub struct Nats {
    child: Child,
    port: u16,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl Nats {
    /// Starts one and waits until it accepts connections.
    pub fn start() -> Nats {
        Self::start_on(crate::free_port())
    }

    /// Starts one on `port` (a restarted bus at the same address).
    pub fn start_on(port: u16) -> Nats {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server (deploy/setup installs it)");
        let nats = Nats {
            child,
            port,
            url: format!("nats://127.0.0.1:{port}"),
        };
        crate::wait_listening(port, "nats-server");
        nats
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
