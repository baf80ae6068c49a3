//! Staging: turns an app's source into a droplet by running buildpacks inside a sandboxed
//! container on a stack.
//!
//! [`Stager::stage`] takes a [`StagingRequest`] (app bits, stack, buildpacks, env, cache,
//! limits, egress) and produces a droplet in the Cloud Foundry layout with its metadata, a new
//! cache, and a log streamed line by line ([`LogLine`], tagged `STG`). Three buildpack
//! contracts are spoken: Heroku (`detect`/`compile`/`release`), Cloud Foundry v2
//! (`supply`/`finalize`) and Cloud Native Buildpacks (`buildpack.toml`, `detect`/`build`,
//! layers). Every buildpack step runs as the unprivileged `vcap` user in the container.

mod app_bits;
pub mod buildpack;
mod classic;
mod container_guard;
pub mod dockerfile;
mod error;
mod lifecycle;
pub mod log;
mod native;
mod pack;
mod release;
mod request;
pub mod service;
mod session;

pub use error::{Phase, StagingError, Tail};
pub use lifecycle::Stager;
pub use log::{LogLine, LogSink, Stream};
pub use request::{DetectOutcome, StagingLimits, StagingRequest, StagingResult};
