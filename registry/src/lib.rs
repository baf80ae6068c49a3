//! Kiln's OCI registry client: pulls an image by reference (`host:port/repo:tag` or
//! `host:port/repo@sha256:...`) from an OCI distribution registry into an OCI image layout
//! directory that [`kiln_rootfs::StackStore`] can import, and pushes a layout to a registry
//! (for tests and benchmarks).
//!
//! The HTTP side is the [`oci_client`] crate (the ORAS project's distribution client); this
//! crate adds what Kiln needs around it:
//!
//! - every blob (manifest, config, layers) is checked against its digest and size before it is
//!   kept, and the manifest is stored byte for byte, so the layout's manifest digest is the
//!   registry's;
//! - an image index (or Docker manifest list) is resolved to one platform, `linux/amd64`
//!   unless [`PullOptions::platform`] says otherwise;
//! - anonymous access or HTTP basic credentials ([`Auth`]); bearer-token registries are handled
//!   by `oci-client` from the registry's challenge;
//! - HTTPS always, except for the one registry of the reference when the caller allows plain
//!   HTTP ([`PullOptions::allow_http`]), meant for registries on loopback;
//! - typed errors ([`RegistryError`]) naming the reference: unknown image, unreachable
//!   registry, refused credentials, digest mismatch.
//!
//! # Layout
//!
//! - [`pull`] holds [`pull_to_layout`].
//! - [`push`] holds [`push_layout`].
//! - `connect`: the `oci-client` configuration (TLS provider, protocol, credentials) and the
//!   mapping of its errors to [`RegistryError`].

mod connect;
mod error;
pub mod pull;
pub mod push;

use std::fmt;

pub use error::RegistryError;
pub use pull::{pull_to_layout, PulledImage};
pub use push::{push_layout, PushedImage};

/// Credentials for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (a bearer token is still fetched anonymously if the registry asks).
    #[default]
    Anonymous,
    /// HTTP basic credentials (also sent to a bearer-token realm if the registry uses one).
    Basic {
        /// The user name.
        username: String,
        /// The password (never printed by `Debug`).
        password: String,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

/// An OS and CPU architecture, as the OCI image spec names them (`linux`, `amd64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
}

impl Default for Platform {
    /// `linux/amd64`, the platform Kiln's cells run.
    fn default() -> Self {
        Self {
            os: "linux".to_string(),
            architecture: "amd64".to_string(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// How [`pull_to_layout`] talks to the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Credentials.
    pub auth: Auth,
    /// Speak plain HTTP to the reference's registry instead of HTTPS. Only for registries on
    /// loopback or a trusted network: nothing is authenticated or encrypted.
    pub allow_http: bool,
    /// The platform picked from an image index (default `linux/amd64`).
    pub platform: Platform,
}

/// How [`push_layout`] talks to the registry.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Credentials.
    pub auth: Auth,
    /// Speak plain HTTP to the reference's registry instead of HTTPS (see
    /// [`PullOptions::allow_http`]).
    pub allow_http: bool,
}
