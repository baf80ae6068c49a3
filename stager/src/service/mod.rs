//! The stager as a service on Kiln's NATS bus.
//!
//! [`run`] takes staging requests ([`kiln_bus::StagingRequest`]) from the stagers' queue
//! group, one per free slot, and for each: answers [`kiln_bus::StagingAccepted`], downloads
//! the package (and the previous build cache) from the controller's internal endpoints,
//! stages it with [`Stager`](crate::Stager), publishes every log line on the build's log
//! subject as it is written, uploads the droplet (and the new cache), and ends with a
//! [`kiln_bus::StagingResult`]. Every few seconds it advertises itself
//! ([`kiln_bus::StagerAdvertise`]: its stacks, the builds it runs, its free slots).
//!
//! A request on the `docker` stack, or one naming no buildpack whose package has a
//! `Dockerfile` at its root, is built from its Dockerfile into an OCI image instead
//! (`dockerfile`; the droplet is the image's layout as a tar).
//!
//! Layout: `server` is the loop (slots, advertising, graceful stop), `job` one build,
//! `dockerfile` the Dockerfile builds,
//! `transfer` the HTTP downloads and uploads, `buildpacks` the admin buildpacks (downloaded,
//! checked against their sha256, cached unpacked), `convert` the checks and conversions
//! between the bus's messages and the library's request and result, `error` the errors.
//!
//! The container backend, the stacks it holds and the bus connection are made by the caller
//! (the `kiln-stager` binary), which also destroys the backend's leftovers when `run` returns.

mod buildpacks;
mod convert;
mod dockerfile;
mod error;
mod job;
mod server;
mod transfer;

pub use error::{BuildError, ServiceError, TransferError};
pub use server::{run, Settings, Summary};
pub use transfer::Token;
