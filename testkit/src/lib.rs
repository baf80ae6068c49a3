//! Servers of a test's own, for Kiln's integration tests and benchmarks: a `nats-server` on a
//! free loopback port per test ([`Nats`]), and a PostgreSQL server per test process with a
//! fresh database per test ([`postgres_database`]), and an OCI registry per test
//! ([`Registry`]). All are the Debian packages that `deploy/setup` installs; all go away with
//! the test, even when it fails or is killed.

mod nats;
mod postgres;
mod registry;

pub use nats::Nats;
pub use postgres::postgres_database;
pub use registry::Registry;

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free loopback port")
}
