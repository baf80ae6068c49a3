//! Start-up recovery: find the containers a previous owner of the data dir left, adopt the
//! intact ones (if so configured) and destroy the rest, so that nothing leaks across a crash.

use tracing::{info, warn};

use super::Inner;
use crate::config::Recovery;
use crate::error::Result;
use crate::runtime::RuncStatus;
use crate::spec::ContainerState;
use crate::state::ContainerDir;
use crate::volume::is_mountpoint;

impl Inner {
    pub(super) fn recover(&self) -> Result<()> {
        let mut handles: Vec<String> = std::fs::read_dir(&self.containers_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        handles.sort();
        for handle in &handles {
            let dir = ContainerDir::new(&self.containers_dir, handle);
            let record = match dir.load() {
                Ok(record) => record,
                Err(e) => {
                    // The record is written before anything is made: without one, only the
                    // directory (and maybe a runc container) can exist.
                    warn!(handle, error = %e, "recovery.unreadable-state");
                    self.runc.delete(handle)?;
                    let _ = std::fs::remove_dir_all(dir.path());
                    continue;
                }
            };
            if self.config.recovery == Recovery::Adopt && self.intact(&record)? {
                info!(handle, "recovery.adopted");
                self.table().hold(record);
            } else {
                if let Err(e) = self.teardown(&record) {
                    // Keep it listed (stopped) so destroy can retry; one bad container must
                    // not keep the backend from starting.
                    warn!(handle, error = %e, "recovery.destroy-failed");
                    let mut record = record;
                    record.state = ContainerState::Stopped;
                    self.table().hold(record);
                } else {
                    info!(handle, "recovery.destroyed");
                }
            }
        }
        // runc containers of this backend without a directory: remnants of a crash.
        for id in self.runc.list()? {
            if !handles.contains(&id) {
                warn!(id, "recovery.orphan-runc-container");
                self.runc.delete(&id)?;
            }
        }
        Ok(())
    }

    /// Whether a container survived its owner whole: fully created, still running, with its
    /// root filesystem and network in place.
    fn intact(&self, record: &crate::state::ContainerRecord) -> Result<bool> {
        let handle = &record.spec.handle;
        let running = matches!(self.runc.status(handle)?, RuncStatus::Running);
        let veth = std::path::Path::new("/sys/class/net")
            .join(&self.chains(record).host_veth)
            .exists();
        Ok(record.state == ContainerState::Active
            && running
            && veth
            && is_mountpoint(&self.dir(handle).rootfs()))
    }
}
