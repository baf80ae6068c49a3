//! From the bus's staging request to the library's, and from the library's result to the bus's
//! outcome. Everything in a bus request is outside input: guids, buildpack names and egress
//! rules are checked here before any of them names a file, a subject or a firewall rule.

use std::path::PathBuf;
use std::time::Duration;

use kiln_bus::{EgressRule, StagedDroplet};
use kiln_containers::{NetOutRule, Protocol};

use super::error::BuildError;
use crate::request::{StagingLimits, StagingRequest, StagingResult};

/// The longest build guid taken (it names a container and a subject).
const MAX_GUID: usize = 100;

/// Checks that a build guid can name a staging container and a subject token: letters, digits,
/// `-` and `_`.
pub(crate) fn check_guid(guid: &str) -> Result<(), BuildError> {
    let ok = !guid.is_empty()
        && guid.len() <= MAX_GUID
        && guid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BuildError::InvalidRequest(format!(
            "build guid `{}` must be 1 to {MAX_GUID} letters, digits, `-` or `_`",
            guid.chars().take(MAX_GUID).collect::<String>()
        )))
    }
}

/// The files of one staging on the host.
pub(crate) struct Files {
    pub package: PathBuf,
    pub cache_in: Option<PathBuf>,
    pub droplet: PathBuf,
    pub cache_out: PathBuf,
}

/// The library request for bus request `r`, whose files are `files`. `builtin` are the
/// stager's built-in buildpacks: a request may name only those (never a path on the host), or
/// admin buildpacks by reference. With references, the request's `buildpacks` are left for
/// the caller to fill once they are fetched ([`super::buildpacks::prepare`]).
pub(crate) fn staging_request(
    r: &kiln_bus::StagingRequest,
    files: Files,
    builtin: &[String],
) -> Result<StagingRequest, BuildError> {
    check_guid(&r.build_guid)?;
    let unknown_builtin = |name: &str| {
        BuildError::InvalidRequest(format!(
            "unknown buildpack `{name}`: this stager has only its built-in buildpacks ({})",
            builtin.join(", ")
        ))
    };
    for b in &r.buildpack_refs {
        check_ref(b, builtin).map_err(BuildError::InvalidRequest)?;
    }
    if r.buildpack_refs.is_empty() {
        if let Some(unknown) = r.buildpacks.iter().find(|b| !builtin.contains(b)) {
            return Err(unknown_builtin(unknown));
        }
    }
    let egress = r
        .egress
        .iter()
        .map(net_out_rule)
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::InvalidRequest)?;
    Ok(StagingRequest {
        id: r.build_guid.clone(),
        app: files.package,
        stack: r.stack.clone(),
        stack_image: None,
        buildpacks: if r.buildpack_refs.is_empty() {
            r.buildpacks.clone()
        } else {
            Vec::new()
        },
        // Refs without names are the candidates of a detection.
        detect: !r.buildpack_refs.is_empty() && r.buildpacks.is_empty(),
        env: r.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        cache_in: files.cache_in,
        droplet_out: files.droplet,
        cache_out: Some(files.cache_out),
        limits: limits(r),
        egress,
        start_command: r.start_command.clone().filter(|c| !c.trim().is_empty()),
    })
}

/// Checks a buildpack reference: a name that can name a file, and either a built-in of this
/// stager or a URL with the sha256 of its zip.
fn check_ref(b: &kiln_bus::BuildpackRef, builtin: &[String]) -> Result<(), String> {
    let name: String = b.name.chars().take(250).collect();
    if !super::buildpacks::valid_name(&b.name) {
        return Err(format!(
            "buildpack name `{name}` must be 1 to 250 letters, digits, `_` or `-`"
        ));
    }
    match (&b.url, &b.sha256) {
        (None, _) if builtin.contains(&b.name) => Ok(()),
        (None, _) => Err(format!(
            "unknown buildpack `{name}`: this stager has only its built-in buildpacks ({}), and the request gives no URL for it",
            builtin.join(", ")
        )),
        (Some(_), Some(sha)) if super::buildpacks::valid_sha256(sha) => Ok(()),
        (Some(_), _) => Err(format!(
            "buildpack `{name}` comes with a URL but without the sha256 of its zip (64 lowercase hex digits)"
        )),
    }
}

/// The request's limits; a zero means the default.
pub(crate) fn limits(r: &kiln_bus::StagingRequest) -> StagingLimits {
    let default = StagingLimits::default();
    let or = |value: u64, scale: u64, default: u64| match value {
        0 => default,
        v => v.saturating_mul(scale),
    };
    StagingLimits {
        memory_bytes: or(r.memory_mb, 1 << 20, default.memory_bytes),
        disk_bytes: or(r.disk_mb, 1 << 20, default.disk_bytes),
        timeout: match r.timeout_secs {
            0 => default.timeout,
            s => Duration::from_secs(s),
        },
    }
}

/// A staging egress rule as the container backend takes it.
pub(crate) fn net_out_rule(rule: &EgressRule) -> Result<NetOutRule, String> {
    let protocol = match rule.protocol.as_str() {
        "all" => Protocol::All,
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        other => {
            return Err(format!(
                "egress protocol `{other}` is not tcp, udp, icmp or all"
            ))
        }
    };
    let destination = rule.destination.as_str();
    let (addr, len) = destination.split_once('/').unwrap_or((destination, "32"));
    let valid =
        addr.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
    if !valid {
        return Err(format!(
            "egress destination `{destination}` is not an IPv4 address or network (a.b.c.d/len)"
        ));
    }
    if !rule.ports.is_empty() && !matches!(protocol, Protocol::Tcp | Protocol::Udp) {
        return Err(format!(
            "egress rule to {destination}: ports go only with tcp or udp"
        ));
    }
    let ports = rule
        .ports
        .iter()
        .map(|p| {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) if lo > 0 && lo <= hi => Ok((lo, hi)),
                _ => Err(format!(
                    "egress rule to {destination}: `{p}` is not a port or a port range (PORT-PORT)"
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NetOutRule {
        protocol,
        networks: vec![destination.to_string()],
        ports,
    })
}

/// What the bus says of a successful staging.
pub(crate) fn staged(result: &StagingResult) -> StagedDroplet {
    StagedDroplet {
        sha256: result.droplet_sha256.clone(),
        size: result.droplet_size,
        detected_buildpack: result.detected_buildpack.clone(),
        buildpacks: result.buildpacks.clone(),
        process_types: result.process_types.clone(),
        start_command: result.start_command.clone(),
        image_digest: None,
    }
}

#[cfg(test)]
mod tests {
    use kiln_bus::BuildpackRef;

    use super::*;

    fn request() -> kiln_bus::StagingRequest {
        kiln_bus::StagingRequest {
            build_guid: "b-1".into(),
            app_guid: "a-1".into(),
            stack: "tiny".into(),
            buildpacks: vec![],
            buildpack_refs: vec![],
            env: [("K".to_string(), "V".to_string())].into(),
            package_url: "http://cc/packages/a".into(),
            droplet_upload_url: "http://cc/droplets/b".into(),
            cache_download_url: None,
            cache_upload_url: "http://cc/caches/a".into(),
            memory_mb: 512,
            disk_mb: 0,
            timeout_secs: 60,
            start_command: Some(" ".into()),
            egress: vec![],
            stack_image: None,
            images: vec![],
        }
    }

    fn files() -> Files {
        Files {
            package: "/w/package".into(),
            cache_in: None,
            droplet: "/w/droplet.tgz".into(),
            cache_out: "/w/cache.tgz".into(),
        }
    }

    fn rule(protocol: &str, destination: &str, ports: &[&str]) -> EgressRule {
        EgressRule {
            protocol: protocol.into(),
            destination: destination.into(),
            ports: ports.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn a_request_becomes_a_staging_with_its_limits_env_and_files() {
        let r = staging_request(&request(), files(), &["staticfile".into()]).unwrap();
        assert_eq!(r.id, "b-1");
        assert_eq!(r.app, PathBuf::from("/w/package"));
        assert_eq!(r.env, vec![("K".to_string(), "V".to_string())]);
        assert_eq!(r.limits.memory_bytes, 512 << 20);
        assert_eq!(r.limits.disk_bytes, StagingLimits::default().disk_bytes);
        assert_eq!(r.limits.timeout, Duration::from_secs(60));
        assert_eq!(r.cache_out, Some(PathBuf::from("/w/cache.tgz")));
        assert_eq!(r.start_command, None, "a blank start command is none");
    }

    #[test]
    fn guids_that_cannot_name_a_container_or_subject_are_refused() {
        for bad in ["", "a.b", "a b", "../x", "*", "a>"] {
            let err = check_guid(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid staging request: build guid"),
                "{err}"
            );
        }
        check_guid("0f8e-AB_9").unwrap();
        assert!(check_guid(&"a".repeat(MAX_GUID + 1)).is_err());
    }

    #[test]
    fn only_built_in_buildpacks_may_be_named() {
        let mut r = request();
        r.buildpacks = vec!["/etc".into()];
        let err = staging_request(&r, files(), &["staticfile".into(), "binary".into()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid staging request: unknown buildpack `/etc`: this stager has only its built-in buildpacks (staticfile, binary)"
        );
        r.buildpacks = vec!["binary".into()];
        assert!(staging_request(&r, files(), &["binary".into()]).is_ok());
    }

    fn admin(name: &str, sha: &str) -> BuildpackRef {
        BuildpackRef {
            name: name.into(),
            sha256: Some(sha.into()),
            url: Some(format!("http://cc/internal/v1/buildpacks/{name}/bits")),
        }
    }

    #[test]
    fn buildpack_refs_are_built_ins_or_urls_with_a_digest_and_unnamed_ones_are_detected() {
        let builtin = ["staticfile".to_string(), "binary".to_string()];
        let mut r = request();
        r.buildpack_refs = vec![
            admin("mine", &"a".repeat(64)),
            BuildpackRef {
                name: "binary".into(),
                sha256: None,
                url: None,
            },
        ];
        let staging = staging_request(&r, files(), &builtin).unwrap();
        assert!(staging.detect && staging.buildpacks.is_empty());
        r.buildpacks = vec!["mine".into(), "binary".into()];
        assert!(!staging_request(&r, files(), &builtin).unwrap().detect);
        for (bad, why) in [
            (admin("../etc", &"a".repeat(64)), "must be 1 to 250 letters"),
            (admin("mine", "nothex"), "without the sha256"),
            (
                BuildpackRef {
                    name: "python".into(),
                    sha256: None,
                    url: None,
                },
                "unknown buildpack `python`",
            ),
        ] {
            r.buildpack_refs = vec![bad];
            let err = staging_request(&r, files(), &builtin).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn a_request_of_an_older_controller_without_refs_still_parses() {
        let mut old = serde_json::to_value(request()).unwrap();
        old.as_object_mut().unwrap().remove("buildpack_refs");
        let parsed: kiln_bus::StagingRequest =
            kiln_bus::decode("s", old.to_string().as_bytes()).unwrap();
        assert!(parsed.buildpack_refs.is_empty());
        assert_eq!(parsed, request());
    }

    #[test]
    fn egress_rules_become_net_out_rules() {
        let r = net_out_rule(&rule("tcp", "10.0.0.0/8", &["443", "8000-8080"])).unwrap();
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.networks, vec!["10.0.0.0/8".to_string()]);
        assert_eq!(r.ports, vec![(443, 443), (8000, 8080)]);
        let r = net_out_rule(&rule("all", "1.2.3.4", &[])).unwrap();
        assert_eq!((r.protocol, r.ports.len()), (Protocol::All, 0));
        for (bad, why) in [
            (rule("sctp", "1.2.3.4", &[]), "is not tcp, udp, icmp or all"),
            (rule("tcp", "1.2.3.4/33", &[]), "is not an IPv4 address"),
            (rule("tcp", "example.com", &[]), "is not an IPv4 address"),
            (
                rule("icmp", "1.2.3.4", &["1"]),
                "ports go only with tcp or udp",
            ),
            (rule("tcp", "1.2.3.4", &["0"]), "is not a port"),
            (rule("udp", "1.2.3.4", &["9-3"]), "is not a port"),
        ] {
            let err = net_out_rule(&bad).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let mut r = request();
        r.egress = vec![rule("tcp", "nowhere", &[])];
        let err = staging_request(&r, files(), &[]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid staging request: egress destination"));
    }
}
