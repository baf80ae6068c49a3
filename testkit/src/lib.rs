//! Servers of a test's own, for Kiln's integration tests and benchmarks: a `nats-server` on a
//! free loopback port per test ([`Nats`]), and a PostgreSQL server per test process with a
//! fresh database per test ([`postgres_database`]). Both are the Debian packages that
//! `deploy/setup` installs; both go away with the test, even when it fails or is killed.

mod nats;
mod postgres;

pub use nats::Nats;
pub use postgres::postgres_database;

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}

/// Waits until something accepts connections on `127.0.0.1:port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port} within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
