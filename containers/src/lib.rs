//! Kiln's container backend: Garden's operations (create, run, stream in and out, NetIn and
//! NetOut, info, metrics, list, capacity, stop, destroy) over runc.
//!
//! # Layout
//! - [`backend`]: the [`Backend`] and its operations, recovery after a crash.
//! - [`spec`]: what callers ask for and what they get back.
//! - [`bundle`]: OCI runtime bundles (`oci-spec`), one rule per concern: namespaces and id
//!   mappings, mounts, limits, capabilities, seccomp, masked paths, devices.
//! - [`runtime`]: the `runc` binary, version-checked for CVE-2024-21626.
//! - [`volume`] and [`idmap`]: root filesystems: an idmapped read-only stack under a writable
//!   overlay layer in a btrfs subvolume whose qgroup limits the container's disk.
//! - [`network`]: veth pairs, a /30 per container, NetIn DNAT and NetOut egress rules.
//! - [`state`]: what is kept on disk per container.
//!
//! Every container gets its own user namespace with its own host uid range; capabilities a
//! strict subset of Docker's; `noNewPrivileges`; an allow-list seccomp profile; masked and
//! read-only kernel paths; a device allow-list; memory, cpu, disk and pids limits; a network
//! namespace that can reach neither the host's services nor other containers unless a NetOut
//! rule allows it.

mod as_user;
pub mod backend;
pub mod bundle;
pub mod config;
pub mod error;
pub mod idmap;
pub mod init_channel;
pub mod network;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod volume;

pub use backend::{Backend, ChangesSummary, Process, StreamInOptions};
pub use config::{Config, Recovery};
pub use error::{Error, Result};
pub use spec::*;
pub use volume::mount_overlay;
