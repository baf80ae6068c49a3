//! The droplet: what staging produces and an instance runs.
//!
//! A droplet is a gzip tar of `./app ./deps ./profile.d ./tmp ./logs ./staging_info.yml`,
//! unpacked into `/home/vcap` of an instance container. Paths at staging are the same as at
//! run time (the app is built in `/home/vcap/app`), so absolute paths baked in by buildpacks
//! stay valid. This crate holds the layout, the `staging_info.yml` format, and the launcher
//! that starts a process type: it is shared by the stager, the executor and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a droplet is unpacked in a container.
pub const HOME: &str = "/home/vcap";
/// The app directory (the build directory at staging).
pub const APP_DIR: &str = "/home/vcap/app";
/// Dependencies supplied by buildpacks, one directory per buildpack index.
pub const DEPS_DIR: &str = "/home/vcap/deps";
/// Scripts sourced before the start command.
pub const PROFILE_DIR: &str = "/home/vcap/profile.d";
/// The droplet's top-level entries, in the order they are written.
pub const ENTRIES: &[&str] = &[
    "app",
    "deps",
    "profile.d",
    "tmp",
    "logs",
    "staging_info.yml",
];
/// The metadata file at the droplet's root.
pub const STAGING_INFO: &str = "staging_info.yml";
/// The port an instance listens on inside its container (`PORT`).
pub const APP_PORT: u16 = 8080;

/// `staging_info.yml`: what staging found, read by whoever runs the droplet.
///
/// Written as JSON (which is YAML), like Cloud Foundry's builder does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StagingInfo {
    /// The buildpack that produced the start command (the last one), as its detect named it.
    pub detected_buildpack: String,
    /// The `web` process's command, empty when staging found none.
    #[serde(default)]
    pub start_command: String,
    /// Every process type and its command (Procfile over `bin/release` defaults).
    #[serde(default)]
    pub process_types: BTreeMap<String, String>,
    /// Every buildpack that ran, in order.
    #[serde(default)]
    pub buildpacks: Vec<String>,
}

/// Errors reading droplet metadata.
#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    /// `staging_info.yml` is not valid.
    #[error("staging_info.yml is not valid YAML: {0}")]
    InvalidStagingInfo(#[from] serde_yaml::Error),
    /// The droplet could not be read (not a gzip tar?).
    #[error("reading the droplet (is it a .tgz made by staging?): {0}")]
    Read(#[source] std::io::Error),
    /// The droplet has no `staging_info.yml`.
    #[error("the droplet has no staging_info.yml: is it a droplet made by staging?")]
    NoStagingInfo,
}

impl StagingInfo {
    /// Parses `staging_info.yml`.
    pub fn parse(text: &str) -> Result<Self, DropletError> {
        Ok(serde_yaml::from_str(text)?)
    }

    /// Serialises it as `staging_info.yml` (JSON, which is YAML).
    pub fn to_yaml(&self) -> String {
        // A struct of strings and maps of strings always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The command of process type `kind`; for `web`, the start command.
    pub fn command_for(&self, kind: &str) -> Option<&str> {
        self.process_types
            .get(kind)
            .map(String::as_str)
            .or_else(|| {
                (kind == "web" && !self.start_command.is_empty())
                    .then_some(self.start_command.as_str())
            })
            .filter(|c| !c.trim().is_empty())
    }
}

/// The launcher, a POSIX `sh` script run as `SHELL -c LAUNCHER launcher <command>`: it goes to
/// the app directory, sources `profile.d/*.sh` of the droplet, the app's `.profile.d/*.sh` and
/// `.profile`, then replaces itself with `SHELL -c <command>`. SHELL is bash where the stack has
/// it (Cloud Foundry's launcher runs `bash -c`, and profile scripts may use bash), else `sh`
/// (busybox is enough), so one launcher serves every stack, and buildpack and Cloud Native
/// Buildpack droplets alike. [`launcher_args`] picks the shell.
pub const LAUNCHER: &str = r#"cd /home/vcap/app || { echo "launcher: /home/vcap/app is missing: is this a droplet?" >&2; exit 1; }
for f in /home/vcap/profile.d/*.sh /home/vcap/app/.profile.d/*.sh; do
  if [ -f "$f" ]; then . "$f"; fi
done
if [ -f /home/vcap/app/.profile ]; then . /home/vcap/app/.profile; fi
cd /home/vcap/app || exit 1
if [ -z "$1" ]; then echo "launcher: no start command: give one in a Procfile or with -c" >&2; exit 1; fi
if [ -n "$BASH_VERSION" ]; then exec /bin/bash -c "$1"; fi
exec /bin/sh -c "$1"
"#;

/// Runs [`LAUNCHER`] under bash when the stack has it, else under sh.
const PICK_SHELL: &str = r#"if [ -x /bin/bash ]; then exec /bin/bash -c "$1" launcher "$2"; fi
exec /bin/sh -c "$1" launcher "$2""#;

/// The argv, for `/bin/sh`, that launches `command` through [`LAUNCHER`].
pub fn launcher_args(command: &str) -> Vec<String> {
    vec![
        "-c".to_string(),
        PICK_SHELL.to_string(),
        "kiln".to_string(),
        LAUNCHER.to_string(),
        command.to_string(),
    ]
}

/// What an instance is, for its environment ([`instance_env`]).
#[derive(Debug, Clone, Default)]
pub struct Instance {
    /// The app's guid.
    pub app_id: String,
    /// The app's name.
    pub app_name: String,
    /// The space's guid.
    pub space_id: String,
    /// The instance's index among the app's instances.
    pub index: u32,
    /// The instance's guid.
    pub instance_id: String,
    /// The host address the instance is reachable on.
    pub host_ip: String,
    /// The host port forwarded to [`APP_PORT`].
    pub host_port: u16,
    /// The memory limit in MiB.
    pub memory_mib: u64,
    /// The disk limit in MiB.
    pub disk_mib: u64,
    /// The routes (host names) of the app.
    pub uris: Vec<String>,
}

/// The Cloud Foundry instance environment of a droplet instance (`PORT`, `CF_INSTANCE_*`,
/// `VCAP_APPLICATION`, ..., and the droplet layout's `HOME`, `TMPDIR`, `DEPS_DIR`, `LANG`).
pub fn instance_env(i: &Instance) -> Vec<String> {
    let mut env = platform_env(i, APP_PORT);
    env.extend([
        format!("HOME={APP_DIR}"),
        "TMPDIR=/home/vcap/tmp".to_string(),
        format!("DEPS_DIR={DEPS_DIR}"),
        "LANG=C.UTF-8".to_string(),
    ]);
    env
}

/// The platform's part of an instance's environment, for any process listening on `port`
/// (an image's instance has no droplet layout, so no `HOME` or `TMPDIR` of Kiln's: the
/// image's own hold).
pub fn platform_env(i: &Instance, port: u16) -> Vec<String> {
    let vcap_application = serde_json::json!({
        "application_id": i.app_id,
        "application_name": i.app_name,
        "name": i.app_name,
        "instance_index": i.index,
        "instance_id": i.instance_id,
        "port": port,
        "space_id": i.space_id,
        "uris": i.uris,
        "application_uris": i.uris,
        "limits": {"mem": i.memory_mib, "disk": i.disk_mib, "fds": 16384},
    });
    vec![
        format!("PORT={port}"),
        format!("CF_INSTANCE_INDEX={}", i.index),
        format!("CF_INSTANCE_GUID={}", i.instance_id),
        format!("CF_INSTANCE_IP={}", i.host_ip),
        format!("CF_INSTANCE_PORT={}", i.host_port),
        format!("CF_INSTANCE_ADDR={}:{}", i.host_ip, i.host_port),
        format!("VCAP_APPLICATION={vcap_application}"),
        "VCAP_SERVICES={}".to_string(),
        format!("MEMORY_LIMIT={}m", i.memory_mib),
    ]
}

/// Reads `staging_info.yml` out of a droplet file (`.tgz`).
pub fn read_staging_info(droplet: &std::path::Path) -> Result<StagingInfo, DropletError> {
    let file = std::fs::File::open(droplet).map_err(DropletError::Read)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    for entry in tar.entries().map_err(DropletError::Read)? {
        let mut entry = entry.map_err(DropletError::Read)?;
        let path = entry.path().map_err(DropletError::Read)?;
        if path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .eq(std::path::Path::new(STAGING_INFO).components())
        {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).map_err(DropletError::Read)?;
            return StagingInfo::parse(&text);
        }
    }
    Err(DropletError::NoStagingInfo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn staging_info_round_trips_and_reads_cloud_foundry_files() {
        let info = StagingInfo {
            detected_buildpack: "python".into(),
            start_command: "python3 app.py".into(),
            process_types: [("web".to_string(), "python3 app.py".to_string())].into(),
            buildpacks: vec!["python".into()],
        };
        assert_eq!(StagingInfo::parse(&info.to_yaml()).unwrap(), info);
        let cf = StagingInfo::parse(
            "{\"detected_buildpack\":\"ruby\",\"start_command\":\"bundle exec rackup\"}",
        )
        .unwrap();
        assert_eq!(cf.command_for("web"), Some("bundle exec rackup"));
        assert_eq!(cf.command_for("worker"), None);
        assert!(StagingInfo::parse("detected_buildpack: [").is_err());
    }

    #[test]
    fn launcher_sources_profiles_and_runs_the_command() {
        let dir = std::env::temp_dir().join(format!("kiln-launcher-{}", std::process::id()));
        let script = LAUNCHER.replace("/home/vcap", dir.to_str().unwrap());
        std::fs::create_dir_all(dir.join("app/.profile.d")).unwrap();
        std::fs::create_dir_all(dir.join("profile.d")).unwrap();
        std::fs::write(dir.join("profile.d/0.sh"), "export A=droplet\n").unwrap();
        std::fs::write(dir.join("app/.profile.d/x.sh"), "export B=app\n").unwrap();
        std::fs::write(dir.join("app/.profile"), "export C=profile\n").unwrap();
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script, "launcher", "echo $A $B $C $(pwd)"])
            .output()
            .unwrap();
        // Through launcher_args, the command runs under bash where there is one.
        let mut args = launcher_args("echo ${BASH_VERSION:+bash}");
        args[3] = script.clone();
        let shell = std::process::Command::new("/bin/sh")
            .args(&args)
            .output()
            .unwrap();
        let expected = if Path::new("/bin/bash").exists() {
            "bash"
        } else {
            ""
        };
        assert_eq!(String::from_utf8_lossy(&shell.stdout).trim(), expected);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("droplet app profile {}", dir.join("app").display())
        );
    }
}
