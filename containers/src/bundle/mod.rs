//! OCI runtime bundles: the `config.json` of a container and the process descriptions given to
//! `runc exec`, built with `oci-spec` by one small rule per concern.

mod hardening;
pub mod seccomp;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};
pub use oci_spec::OciSpecError;

pub use hardening::{CAPABILITIES, MASKED_PATHS, READONLY_PATHS};

use crate::spec::{BindMount, Limits, Rlimit};

/// Where `kiln-init` appears inside every container.
pub const INIT_PATH: &str = "/.kiln-init";

/// The host uid/gid range a container's user namespace maps: container id 0 is `host_base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub host_base: u32,
    pub size: u32,
}

/// What a container's bundle is made from.
#[derive(Debug)]
pub struct ContainerBundle<'a> {
    pub handle: &'a str,
    /// The merged root filesystem on the host.
    pub rootfs: &'a Path,
    /// `kiln-init` on the host, bind-mounted read-only as the container's pid 1.
    pub init: &'a Path,
    pub ids: IdRange,
    pub limits: &'a Limits,
    pub bind_mounts: &'a [BindMount],
    /// The cgroup path below each hierarchy, unique on the machine.
    pub cgroups_path: &'a str,
}

/// A process as `runc exec` gets it, after the user has been resolved.
#[derive(Debug)]
pub struct ExecProcess<'a> {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub rlimits: &'a [Rlimit],
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("building the OCI spec: {0}")]
    Spec(#[from] OciSpecError),
    #[error("unknown rlimit {0:?}: use an OCI name such as RLIMIT_NOFILE")]
    UnknownRlimit(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ContainerBundle<'_> {
    /// The container's runtime spec.
    pub fn spec(&self) -> Result<Spec, BundleError> {
        let root = RootBuilder::default()
            .path(self.rootfs)
            .readonly(false)
            .build()?;
        let mappings = vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(self.ids.host_base)
            .size(self.ids.size)
            .build()?];
        let linux = LinuxBuilder::default()
            .namespaces(namespaces()?)
            .uid_mappings(mappings.clone())
            .gid_mappings(mappings)
            .cgroups_path(PathBuf::from(self.cgroups_path))
            .resources(self.resources()?)
            .seccomp(seccomp::profile()?)
            .masked_paths(strings(MASKED_PATHS))
            .readonly_paths(strings(READONLY_PATHS))
            .build()?;
        Ok(SpecBuilder::default()
            .version("1.0.2")
            .root(root)
            .hostname(self.handle.chars().take(63).collect::<String>())
            .process(self.init_process()?)
            .mounts(self.mounts()?)
            .linux(linux)
            .build()?)
    }

    /// pid 1: `kiln-init`, as container root with the container's capabilities, which the
    /// processes it starts inherit (and lose when they drop to another user). Its rlimits are
    /// the defaults of every process; a process may lower them, not raise them.
    fn init_process(&self) -> Result<Process, BundleError> {
        Ok(ProcessBuilder::default()
            .terminal(false)
            .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
            .args(vec![INIT_PATH.to_string()])
            .env(vec!["PATH=/usr/bin:/bin".to_string()])
            .cwd("/")
            .capabilities(hardening::capabilities(true)?)
            .rlimits(default_rlimits()?)
            .no_new_privileges(true)
            .build()?)
    }

    fn resources(&self) -> Result<oci_spec::runtime::LinuxResources, BundleError> {
        let memory = i64::try_from(self.limits.memory_bytes).unwrap_or(i64::MAX);
        Ok(LinuxResourcesBuilder::default()
            .devices(hardening::device_allow_list()?)
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(memory)
                    // memory + swap: the same figure, so a container never swaps.
                    .swap(memory)
                    .build()?,
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(self.limits.cpu_shares)
                    .build()?,
            )
            .pids(
                LinuxPidsBuilder::default()
                    .limit(i64::try_from(self.limits.pids).unwrap_or(i64::MAX))
                    .build()?,
            )
            .build()?)
    }

    fn mounts(&self) -> Result<Vec<Mount>, BundleError> {
        let mut mounts = vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            )?,
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                ],
            )?,
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            )?,
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            )?,
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            )?,
            MountBuilder::default()
                .destination(INIT_PATH)
                .typ("bind")
                .source(self.init)
                .options(strings(&["bind", "ro", "nosuid", "nodev"]))
                .build()?,
        ];
        for bind in self.bind_mounts {
            mounts.push(
                MountBuilder::default()
                    .destination(&bind.container_path)
                    .typ("bind")
                    .source(&bind.host_path)
                    // `bind`, not `rbind`: mounts below the host path would not be read-only.
                    .options(strings(&["bind", "ro", "nosuid", "nodev"]))
                    .build()?,
            );
        }
        Ok(mounts)
    }
}

impl ExecProcess<'_> {
    /// The process spec for `runc exec --process`.
    pub fn spec(&self) -> Result<Process, BundleError> {
        let mut rlimits = default_rlimits()?;
        for r in self.rlimits {
            let typ = rlimit_type(&r.kind)?;
            rlimits.retain(|existing| existing.typ() != typ);
            rlimits.push(
                PosixRlimitBuilder::default()
                    .typ(typ)
                    .soft(r.soft)
                    .hard(r.hard)
                    .build()?,
            );
        }
        Ok(ProcessBuilder::default()
            .terminal(false)
            .user(UserBuilder::default().uid(self.uid).gid(self.gid).build()?)
            .args(self.args.clone())
            .env(self.env.clone())
            .cwd(&self.cwd)
            .capabilities(hardening::capabilities(self.uid == 0)?)
            .rlimits(rlimits)
            .no_new_privileges(true)
            .build()?)
    }
}

/// Writes `value` as JSON to `path`.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), BundleError> {
    let bytes = serde_json::to_vec(value).map_err(|e| BundleError::Write {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    std::fs::write(path, bytes).map_err(|source| BundleError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Open files: 1024, raisable to 4096 (by root only).
fn default_rlimits() -> Result<Vec<oci_spec::runtime::PosixRlimit>, OciSpecError> {
    Ok(vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(1024u64)
        .hard(4096u64)
        .build()?])
}

/// The kernel's number for an OCI rlimit name, e.g. `RLIMIT_NOFILE` -> 7.
pub fn rlimit_number(name: &str) -> Result<i32, BundleError> {
    let number = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return Err(BundleError::UnknownRlimit(name.to_string())),
    };
    Ok(number as i32)
}

fn namespaces() -> Result<Vec<oci_spec::runtime::LinuxNamespace>, OciSpecError> {
    [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, OciSpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(strings(options))
        .build()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rlimit_type(name: &str) -> Result<PosixRlimitType, BundleError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| BundleError::UnknownRlimit(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle<'a>(limits: &'a Limits, binds: &'a [BindMount]) -> ContainerBundle<'a> {
        ContainerBundle {
            handle: "c1",
            rootfs: Path::new("/data/c1/rootfs"),
            init: Path::new("/data/bin/kiln-init"),
            ids: IdRange {
                host_base: 1_000_000,
                size: 65536,
            },
            limits,
            bind_mounts: binds,
            cgroups_path: "/kiln/test/c1",
        }
    }

    #[test]
    fn spec_maps_root_to_the_container_range_and_sets_limits() {
        let limits = Limits::default();
        let spec = bundle(&limits, &[]).spec().expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["linux"]["uidMappings"][0]["hostID"], 1_000_000);
        assert_eq!(json["linux"]["gidMappings"][0]["size"], 65536);
        assert_eq!(
            json["linux"]["resources"]["memory"]["limit"],
            limits.memory_bytes
        );
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], limits.pids);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["args"][0], INIT_PATH);
        let namespaces: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        for ns in ["pid", "network", "user", "mount", "ipc", "uts", "cgroup"] {
            assert!(namespaces.contains(&ns), "missing {ns} namespace");
        }
    }

    #[test]
    fn bind_mounts_are_read_only() {
        let limits = Limits::default();
        let binds = [BindMount {
            host_path: "/srv/droplet".into(),
            container_path: "/home/vcap/droplet".into(),
        }];
        let spec = bundle(&limits, &binds).spec().expect("spec");
        let mounts = spec.mounts().as_ref().expect("mounts");
        let bind = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/home/vcap/droplet"))
            .expect("bind mount present");
        assert!(bind
            .options()
            .as_ref()
            .is_some_and(|o| o.contains(&"ro".to_string())));
    }

    #[test]
    fn exec_process_rlimits_override_the_default_and_reject_unknown_names() {
        let rl = [Rlimit {
            kind: "RLIMIT_NOFILE".into(),
            soft: 10,
            hard: 20,
        }];
        let p = ExecProcess {
            args: vec!["/bin/true".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 2000,
            gid: 2000,
            rlimits: &rl,
        };
        let json = serde_json::to_value(p.spec().expect("spec")).expect("json");
        assert_eq!(json["rlimits"].as_array().map(|a| a.len()), Some(1));
        assert_eq!(json["rlimits"][0]["soft"], 10);

        let bad = [Rlimit {
            kind: "RLIMIT_BOGUS".into(),
            soft: 1,
            hard: 1,
        }];
        let p = ExecProcess { rlimits: &bad, ..p };
        assert!(matches!(p.spec(), Err(BundleError::UnknownRlimit(_))));
    }
}
