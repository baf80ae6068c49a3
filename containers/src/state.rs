//! What the backend keeps on disk about each container, so that a backend started after a
//! crash can find every container the previous one left and adopt or destroy it.
//!
//! Layout of the data dir:
//! ```text
//! <data>/store.img, <data>/store/     btrfs store of the writable layers (see volume.rs)
//! <data>/runc/                        runc's state root for this backend
//! <data>/bin/kiln-init                pid 1 of every container
//! <data>/containers/<handle>/
//!     state.json                      the ContainerRecord, written before anything is made
//!     config.json                     the OCI bundle
//!     lower/ rootfs/                  the idmapped stack and the merged root filesystem
//!     layer-<i>/                      extra read-only layers (a droplet), idmapped
//!     init.pid                        pid of the container's init on the host
//!     processes/<id>.json, <id>.pid   processes started with `run`
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::IdRange;
use crate::error::{Error, Result};
use crate::spec::{ContainerSpec, ContainerState, NetOutRule, PortMapping};

/// A user from the container's `/etc/passwd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Everything known about a container, persisted as `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub spec: ContainerSpec,
    pub state: ContainerState,
    /// Index into the backend's subnet pool and uid ranges.
    pub slot: usize,
    pub stack_digest: String,
    pub ids: IdRange,
    pub mapped_ports: Vec<PortMapping>,
    pub net_out: Vec<NetOutRule>,
    /// Users of the stack's `/etc/passwd`, read at create.
    pub users: BTreeMap<String, User>,
}

/// The paths of one container's directory.
#[derive(Debug, Clone)]
pub struct ContainerDir(PathBuf);

impl ContainerDir {
    pub fn new(containers_dir: &Path, handle: &str) -> Self {
        ContainerDir(containers_dir.join(handle))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    pub fn lower(&self) -> PathBuf {
        self.0.join("lower")
    }
    /// Where extra layer `i` ([`ContainerSpec::layers`]) is mounted idmapped.
    pub fn layer(&self, i: usize) -> PathBuf {
        self.0.join(format!("layer-{i}"))
    }
    pub fn init_pid(&self) -> PathBuf {
        self.0.join("init.pid")
    }
    pub fn processes(&self) -> PathBuf {
        self.0.join("processes")
    }

    pub fn save(&self, record: &ContainerRecord) -> Result<()> {
        let path = self.state();
        let tmp = self.0.join("state.json.tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(|e| Error::io("write container state", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("write container state", &path, e))
    }

    pub fn load(&self) -> Result<ContainerRecord> {
        let path = self.state();
        let bytes =
            std::fs::read(&path).map_err(|e| Error::io("read container state", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::State { path, source })
    }
}

/// Parses `/etc/passwd` lines into users by name.
pub fn parse_passwd(text: &str) -> BTreeMap<String, User> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 6 {
                return None;
            }
            Some((
                fields[0].to_string(),
                User {
                    uid: fields[2].parse().ok()?,
                    gid: fields[3].parse().ok()?,
                    home: fields[5].to_string(),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_become_users_and_garbage_is_skipped() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/sh\nvcap:x:2000:2000::/home/vcap:/bin/sh\nbroken\nx:x:a:b::/:/bin/sh\n",
        );
        assert_eq!(users.len(), 2);
        assert_eq!(
            users["vcap"],
            User {
                uid: 2000,
                gid: 2000,
                home: "/home/vcap".into()
            }
        );
    }
}
