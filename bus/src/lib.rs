//! The messages of Kiln's NATS bus and their subjects, shared by every component that speaks
//! on it (cloud controller, stagers, cells, router). Bodies are JSON.
//!
//! Staging: the controller publishes a [`StagingRequest`] on [`STAGING_REQUEST`]; one stager of
//! the [`STAGER_QUEUE`] queue group takes it, answers [`StagingAccepted`] on
//! [`STAGING_ACCEPTED`], streams [`StagingLogLine`]s on [`staging_log`]`(build)`, and ends with
//! a [`StagingResult`] on [`STAGING_RESULT`]. Stagers advertise themselves ([`StagerAdvertise`])
//! on [`STAGER_ADVERTISE`] every [`ADVERTISE_INTERVAL_SECS`], listing the builds they are
//! running, so the controller can fail a build whose stager went silent.

pub mod cell;
pub mod router;
mod sync;

pub use sync::{round_trip, RoundTripError, ROUND_TRIP_TIMEOUT};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Subject of staging requests (queue group [`STAGER_QUEUE`]).
pub const STAGING_REQUEST: &str = "kiln.staging.request";
/// The queue group of stagers: each request goes to one of them.
pub const STAGER_QUEUE: &str = "kiln-stagers";
/// Subject on which a stager says it took a build.
pub const STAGING_ACCEPTED: &str = "kiln.staging.accepted";
/// Subject of staging results.
pub const STAGING_RESULT: &str = "kiln.staging.result";
/// Subject of stager advertisements.
pub const STAGER_ADVERTISE: &str = "kiln.stager.advertise";
/// How often a stager advertises itself.
pub const ADVERTISE_INTERVAL_SECS: u64 = 5;
/// After this long without an advertisement, a stager and its builds are given up.
pub const STAGER_TTL_SECS: u64 = 15;

/// The subject of the log lines of build `build_guid`.
pub fn staging_log(build_guid: &str) -> String {
    format!("kiln.staging.log.{build_guid}")
}

/// Subject filter for every staging log line.
pub const STAGING_LOG_ALL: &str = "kiln.staging.log.*";

/// An egress rule for staging (like a Cloud Foundry staging security group rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// `a.b.c.d` or `a.b.c.d/len`.
    pub destination: String,
    /// Ports or ranges (`443`, `8000-8080`); empty means all.
    #[serde(default)]
    pub ports: Vec<String>,
}

/// Stage a package into a droplet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingRequest {
    /// The build being staged.
    pub build_guid: String,
    /// Its app.
    pub app_guid: String,
    /// The stack to stage on.
    pub stack: String,
    /// Buildpacks by name in order, as the app or build names them (all of them run); empty:
    /// detect.
    #[serde(default)]
    pub buildpacks: Vec<String>,
    /// The buildpacks as the controller resolved them: with `buildpacks` named, one per name in
    /// the same order; with none named, the candidates for detection in priority order (the
    /// first whose detect accepts the app runs). Empty (from an older controller): `buildpacks`
    /// are the stager's built-ins, and detection is among all of them.
    #[serde(default)]
    pub buildpack_refs: Vec<BuildpackRef>,
    /// The app's environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the stager GETs the package bits (internal credential required).
    pub package_url: String,
    /// Where the stager PUTs the droplet (`.tgz`).
    pub droplet_upload_url: String,
    /// Where the stager GETs the previous build cache, if there is one.
    #[serde(default)]
    pub cache_download_url: Option<String>,
    /// Where the stager PUTs the new build cache.
    pub cache_upload_url: String,
    /// Staging limits.
    pub memory_mb: u64,
    /// Staging limits.
    pub disk_mb: u64,
    /// Staging limits.
    pub timeout_secs: u64,
    /// Overrides the `web` command.
    #[serde(default)]
    pub start_command: Option<String>,
    /// Egress allowed while staging.
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    /// The image an operator set for the stack (`stack.<name>.image`); None: the stager's own
    /// copy of the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_image: Option<StackImageRef>,
    /// The images of the controller's image store by name: what a Dockerfile's `FROM` may
    /// name besides the stacks (fetched by the stager only when one is named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<NamedImage>,
}

/// The stack name that asks for a Dockerfile build (`kiln push --stack docker`): the app's
/// `Dockerfile` is built into an OCI image instead of running buildpacks. A package with a
/// `Dockerfile` at its root and no buildpack named is built the same way on any stack.
pub const DOCKER_STACK: &str = "docker";

/// An image of the controller's image store, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedImage {
    /// Its name in the store.
    pub name: String,
    /// Its image: digest and where to GET it.
    #[serde(flatten)]
    pub image: StackImageRef,
}

/// A stack's image as the controller's image store holds it: what a stager or a cell runs
/// instead of its own copy of the stack, fetched once per digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackImageRef {
    /// The image manifest's digest, `sha256:<hex>`: what the fetched image is checked
    /// against and kept by.
    pub digest: String,
    /// Where to GET it (an OCI image layout as a tar; internal credential required).
    pub url: String,
}

/// One buildpack of a staging, as the controller resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildpackRef {
    /// Its name (letters, digits, `_`, `-`): what the log and the droplet call it.
    pub name: String,
    /// sha256 of its zip, hex; what the stager checks the download against and caches it by.
    /// None for a built-in.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Where the stager GETs its zip (internal credential required). None: the stager's
    /// built-in buildpack of that name.
    #[serde(default)]
    pub url: Option<String>,
}

/// A stager took a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingAccepted {
    /// The build.
    pub build_guid: String,
    /// The stager that took it.
    pub stager_id: String,
}

/// One line of a staging log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingLogLine {
    /// The build.
    pub build_guid: String,
    /// Its app.
    pub app_guid: String,
    /// `STG`.
    pub source: String,
    /// `OUT` or `ERR`.
    pub stream: String,
    /// The text.
    pub line: String,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u128,
}

/// What staging produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedDroplet {
    /// sha256 of the droplet, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The detected buildpack.
    pub detected_buildpack: String,
    /// Every buildpack that ran.
    pub buildpacks: Vec<String>,
    /// Process types and commands.
    pub process_types: BTreeMap<String, String>,
    /// The `web` command.
    pub start_command: String,
    /// Set when the droplet is an OCI image (a Dockerfile build): the manifest digest of the
    /// image whose layout, as a tar, is the uploaded droplet. None: a buildpack droplet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

/// How a staging ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StagingOutcome {
    /// The droplet was uploaded.
    Staged(StagedDroplet),
    /// It failed; `reason` says why and what to do.
    Failed {
        /// The message.
        reason: String,
        /// Cloud Foundry's staging exit code (222-226), or 1.
        exit_code: i32,
    },
}

/// The end of a staging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagingResult {
    /// The build.
    pub build_guid: String,
    /// The stager that ran it.
    pub stager_id: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: StagingOutcome,
}

/// A stager says it is alive, what it can stage, and what it is staging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagerAdvertise {
    /// The stager.
    pub id: String,
    /// Stacks it can stage on.
    pub stacks: Vec<String>,
    /// Builds it is staging now.
    #[serde(default)]
    pub building: Vec<String>,
    /// How many more stagings it would take now.
    pub available: u32,
}

/// A message that is not what its subject promises.
#[derive(Debug, thiserror::Error)]
#[error("bus message on {subject} is not valid: {source}")]
pub struct DecodeError {
    /// The subject it came on.
    pub subject: String,
    /// Why.
    #[source]
    pub source: serde_json::Error,
}

/// Decodes a message body.
pub fn decode<T: for<'de> Deserialize<'de>>(subject: &str, body: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|source| DecodeError {
        subject: subject.to_string(),
        source,
    })
}

/// Encodes a message body.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Messages are plain structs of strings, numbers and maps: they always serialise.
    serde_json::to_vec(message).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_round_trip_with_their_outcome_tagged() {
        let r = StagingResult {
            build_guid: "b".into(),
            stager_id: "s".into(),
            outcome: StagingOutcome::Failed {
                reason: "no buildpack detected".into(),
                exit_code: 222,
            },
        };
        let body = encode(&r);
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("\"outcome\":\"failed\""), "{text}");
        assert_eq!(decode::<StagingResult>(STAGING_RESULT, &body).unwrap(), r);
        let err = decode::<StagingResult>(STAGING_RESULT, b"{}").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("bus message on kiln.staging.result is not valid"));
    }
}
