//! Creating a container, and undoing it: create registers nothing it cannot take back, and a
//! failure part-way destroys whatever was made and reports both errors.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;
use std::process::Stdio;

use kiln_rootfs::archive::{self, ExtractOptions};
use tracing::{info, info_span, warn};

use super::{Backend, Inner};
use crate::bundle::{self, ContainerBundle};
use crate::error::{Error, Result};
use crate::init_channel::{socketpair, InitChannel};
use crate::network;
use crate::runtime::RuncStatus;
use crate::spec::{ContainerSpec, ContainerState, PortMapping};
use crate::state::{parse_passwd, ContainerRecord, User};

impl Backend {
    /// Creates and starts a container (its init runs; use [`Backend::run`] for processes).
    ///
    /// The create goes on if the caller stops waiting for it (its future dropped: a timeout,
    /// a cancelled staging): once made, a container nobody waits for any more is destroyed,
    /// so an abandoned create leaves neither a container its caller does not know of nor one
    /// stuck in `Creating` that destroy refuses.
    pub async fn create(&self, spec: ContainerSpec) -> Result<crate::spec::ContainerInfo> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let backend = self.clone();
        tokio::spawn(async move {
            let handle = spec.handle.clone();
            let created = backend.create_whole(spec).await;
            let Err(abandoned) = answer.send(created) else {
                return;
            };
            // Made (or half-made and listed for destroy to finish): this create's to undo.
            let made = match abandoned {
                Ok(_) => true,
                Err(Error::CreateFailed { cleanup, .. }) => cleanup.is_some(),
                Err(_) => false,
            };
            if made {
                warn!(%handle, "container.create-abandoned: destroying it");
                if let Err(e) = backend.destroy(&handle).await {
                    warn!(%handle, error = %e, "destroying a container whose create was abandoned");
                }
            }
        });
        answered.await.unwrap_or_else(|_| {
            Err(Error::Task(
                "the create task ended without an answer".into(),
            ))
        })
    }

    /// The create itself, run to its end by [`Backend::create`]'s task.
    async fn create_whole(&self, spec: ContainerSpec) -> Result<crate::spec::ContainerInfo> {
        validate(&spec)?;
        let stack = self.inner.resolve_stack(&spec.stack)?;
        let handle = spec.handle.clone();
        let record = self.inner.reserve(spec, &stack.digest)?;
        let inner = self.inner.clone();
        let stack_rootfs = stack.rootfs.clone();
        let handle_ = handle.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _span = info_span!("create", handle = %record.spec.handle).entered();
            let started = Instant::now();
            let mut record = record;
            // The channel is registered here, on a thread of the runtime, so that a failure
            // to watch it is undone like any other.
            let built = inner.build(&mut record, &stack_rootfs).and_then(|fd| {
                InitChannel::start(fd).map_err(|e| Error::io("watch the init channel", &handle_, e))
            });
            match built {
                Ok(init_channel) => {
                    info!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "container.created"
                    );
                    Ok((record, init_channel))
                }
                Err(source) => {
                    warn!(error = %source, "container.create-failed");
                    let cleanup = inner.teardown(&record).err().map(Box::new);
                    Err(Error::CreateFailed {
                        handle: record.spec.handle.clone(),
                        source: Box::new(source),
                        cleanup,
                    })
                }
            }
        })
        .await
        .map_err(Error::from)
        .and_then(|r| r);
        let mut table = self.inner.table();
        match result {
            Ok((record, channel)) => {
                if let Some(entry) = table.containers.get_mut(&handle) {
                    entry.record = record;
                    entry.channel = Some(channel);
                }
                drop(table);
                self.info(&handle)
            }
            Err(
                e @ Error::CreateFailed {
                    cleanup: Some(_), ..
                },
            ) => {
                // Something is left: keep the container listed (stopped) so that destroy
                // can finish the job, and keep its slot and ports out of use until then.
                if let Some(entry) = table.containers.get_mut(&handle) {
                    entry.record.state = ContainerState::Stopped;
                }
                Err(e)
            }
            Err(e) => {
                if let Some(entry) = table.containers.remove(&handle) {
                    table.release(&entry.record);
                }
                Err(e)
            }
        }
    }
}

impl Inner {
    /// The stack `name` (or digest) from the store; an unknown one names those there are.
    fn resolve_stack(&self, name: &str) -> Result<kiln_rootfs::store::StackImage> {
        self.stacks.resolve(name).map_err(|e| match e {
            kiln_rootfs::store::StoreError::UnknownStack { .. } => Error::UnknownStack {
                stack: name.to_string(),
                known: self
                    .stacks
                    .list()
                    .map(|l| {
                        l.iter()
                            .filter_map(|s| s.name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
            },
            other => other.into(),
        })
    }

    /// Takes the handle, a slot and the NetIn ports, all or nothing.
    fn reserve(&self, spec: ContainerSpec, stack_digest: &str) -> Result<ContainerRecord> {
        let mut table = self.table();
        if table.containers.contains_key(&spec.handle) || self.dir(&spec.handle).path().exists() {
            return Err(Error::HandleTaken(spec.handle));
        }
        let max = self.max_containers();
        let slot = (0..max)
            .find(|s| !table.slots.contains(s))
            .ok_or(Error::PoolExhausted(max))?;
        let mut mapped_ports: Vec<PortMapping> = Vec::new();
        for net_in in &spec.net_in {
            match table.ports.acquire(net_in.host_port) {
                Ok(host_port) => mapped_ports.push(PortMapping {
                    host_port,
                    container_port: net_in.container_port,
                }),
                Err(e) => {
                    for m in &mapped_ports {
                        table.ports.release(m.host_port);
                    }
                    return Err(e);
                }
            }
        }
        let record = ContainerRecord {
            net_out: spec.net_out.clone(),
            spec,
            state: ContainerState::Creating,
            slot,
            stack_digest: stack_digest.to_string(),
            ids: self.ids(slot),
            mapped_ports,
            users: BTreeMap::new(),
        };
        table.hold(record.clone());
        Ok(record)
    }

    /// Makes everything the container needs, recording progress in its state file first.
    /// Returns the backend's end of the channel to the container's init.
    fn build(&self, record: &mut ContainerRecord, stack_rootfs: &Path) -> Result<OwnedFd> {
        let handle = record.spec.handle.clone();
        let dir = self.dir(&handle);
        std::fs::create_dir_all(dir.processes())
            .map_err(|e| Error::io("create container directory", dir.path(), e))?;
        super::set_mode(dir.path(), 0o711)?;
        dir.save(record)?;

        // The rules name the host veth, which need not exist yet: apply them while the root
        // filesystem and the container are made.
        let chains = self.chains(record);
        let mut rules = chains.create();
        for m in &record.mapped_ports {
            rules.push_str(&chains.net_in(*m));
        }
        for rule in &record.net_out {
            rules.push_str(&chains.net_out(rule)?);
        }
        let firewall = std::thread::spawn(move || network::iptables_restore(&rules));

        // Whatever happens below, wait for the rules: teardown must not race their creation.
        let made = (|| -> Result<OwnedFd> {
            let paths = self.volume_paths(record);
            self.volumes.create(
                &handle,
                stack_rootfs,
                record.ids,
                record.spec.limits.disk_bytes,
                &paths,
            )?;
            record.users = read_users(&paths.rootfs)?;
            write_etc(&paths.rootfs, &handle, record)?;

            let cgroups_path = self.cgroups_path(&handle);
            let spec = ContainerBundle {
                handle: &handle,
                rootfs: &paths.rootfs,
                init: &self.init_binary,
                ids: record.ids,
                limits: &record.spec.limits,
                bind_mounts: &record.spec.bind_mounts,
                cgroups_path: &cgroups_path,
            }
            .spec()
            .map_err(|e| Error::InvalidSpec(e.to_string()))?;
            bundle::write_json(&dir.path().join("config.json"), &spec)
                .map_err(|e| Error::InvalidSpec(e.to_string()))?;

            let (ours, init_end) =
                socketpair().map_err(|e| Error::io("make the init channel", dir.path(), e))?;
            self.runc
                .run_detached(&handle, dir.path(), &dir.init_pid(), Stdio::from(init_end))?;
            let pid = read_pid(&dir.init_pid())?;
            network::setup_veth(pid, &chains.host_veth, self.pool.subnet(record.slot))?;

            Ok(ours)
        })();
        let applied = firewall.join().unwrap_or_else(|_| {
            Err(network::NetworkError::Command {
                command: "iptables-restore".into(),
                stderr: "the thread applying the rules panicked".into(),
            })
        });
        let ours = made?;
        applied?;

        record.state = ContainerState::Active;
        dir.save(record)?;
        Ok(ours)
    }

    /// Removes everything a container may hold, in reverse order of creation. Every step
    /// tolerates its part being absent, so this finishes a half-made or half-destroyed one.
    pub(super) fn teardown(&self, record: &ContainerRecord) -> Result<()> {
        let handle = &record.spec.handle;
        let _span = info_span!("destroy", handle = %handle).entered();
        let dir = self.dir(handle);
        kill_init(&dir.init_pid(), &self.cgroups_path(handle));
        self.runc.delete(handle)?;
        let chains = self.chains(record);
        network::delete_veth(&chains.host_veth)?;
        // The rules as created; should some be missing, delete whatever is left by name.
        if network::iptables_restore(&chains.delete_created()).is_err() {
            network::iptables_restore(&chains.delete(&network::iptables_save()?))?;
        }
        self.volumes.destroy(handle, &self.volume_paths(record))?;
        if dir.path().exists() {
            std::fs::remove_dir_all(dir.path())
                .map_err(|e| Error::io("remove container directory", dir.path(), e))?;
        }
        info!("container.destroyed");
        Ok(())
    }

    pub(super) fn stop(&self, handle: &str, grace: Duration) -> Result<()> {
        let status = self.runc.status(handle)?;
        if matches!(
            status,
            RuncStatus::Running | RuncStatus::Created | RuncStatus::Paused
        ) {
            let _ = self.runc.kill_all(handle, "TERM");
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline
                && matches!(self.runc.status(handle)?, RuncStatus::Running)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !matches!(
                self.runc.status(handle)?,
                RuncStatus::Stopped | RuncStatus::Absent
            ) {
                let _ = self.runc.kill_all(handle, "KILL");
            }
        }
        let mut table = self.table();
        let entry = table
            .containers
            .get_mut(handle)
            .ok_or_else(|| Error::NotFound(handle.to_string()))?;
        entry.record.state = ContainerState::Stopped;
        self.dir(handle).save(&entry.record)
    }
}

/// Refuses specs that make no sense before anything is reserved.
fn validate(spec: &ContainerSpec) -> Result<()> {
    let handle = &spec.handle;
    let bad_handle = |reason: &str| Error::InvalidHandle {
        handle: handle.clone(),
        reason: reason.to_string(),
    };
    if handle.is_empty() || handle.len() > 64 {
        return Err(bad_handle("must be 1 to 64 characters"));
    }
    if !handle
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || handle.starts_with('.')
    {
        return Err(bad_handle(
            "may contain only letters, digits, '-', '_' and '.', and not start with '.'",
        ));
    }
    let l = &spec.limits;
    if l.memory_bytes < 4 << 20 {
        return Err(Error::InvalidLimits(format!(
            "memory {} bytes is below the 4 MiB minimum",
            l.memory_bytes
        )));
    }
    if !(2..=262_144).contains(&l.cpu_shares) {
        return Err(Error::InvalidLimits(format!(
            "cpu shares {} outside 2..=262144",
            l.cpu_shares
        )));
    }
    if l.disk_bytes < 1 << 20 {
        return Err(Error::InvalidLimits(format!(
            "disk {} bytes is below the 1 MiB minimum",
            l.disk_bytes
        )));
    }
    if l.pids == 0 {
        return Err(Error::InvalidLimits(
            "pids must be at least 1 (a pids limit is always set)".into(),
        ));
    }
    for bind in &spec.bind_mounts {
        if !bind.host_path.is_absolute() || !bind.container_path.is_absolute() {
            return Err(Error::InvalidSpec(format!(
                "bind mount {} -> {}: both paths must be absolute",
                bind.host_path.display(),
                bind.container_path.display()
            )));
        }
        if !bind.host_path.exists() {
            return Err(Error::InvalidSpec(format!(
                "bind mount source {} does not exist",
                bind.host_path.display()
            )));
        }
    }
    for layer in &spec.layers {
        if !layer.is_absolute() || !layer.is_dir() {
            return Err(Error::InvalidSpec(format!(
                "layer {}: must be an existing directory, given by an absolute path",
                layer.display()
            )));
        }
    }
    for env in &spec.env {
        if !env.contains('=') {
            return Err(Error::InvalidSpec(format!(
                "env entry {env:?} is not KEY=VALUE"
            )));
        }
    }
    for rule in &spec.net_out {
        network::iptables::net_out_matches(rule)?;
    }
    Ok(())
}

/// The users of the container's `/etc/passwd`, read inside its root.
fn read_users(rootfs: &Path) -> Result<BTreeMap<String, User>> {
    let mut tar = Vec::new();
    match archive::archive_from_root(rootfs, Path::new("/etc/passwd"), &mut tar) {
        Ok(()) => {}
        Err(archive::ArchiveError::NotFound { .. }) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    }
    let mut text = String::new();
    let mut entries = tar::Archive::new(Cursor::new(tar));
    if let Some(Ok(mut entry)) = entries.entries().ok().and_then(|mut e| e.next()) {
        use std::io::Read;
        let _ = entry.read_to_string(&mut text);
    }
    Ok(parse_passwd(&text))
}

/// Writes `/etc/hosts` and `/etc/hostname` into the container, inside its root.
fn write_etc(rootfs: &Path, handle: &str, record: &ContainerRecord) -> Result<()> {
    let hosts = format!("127.0.0.1 localhost\n::1 localhost\n127.0.1.1 {handle}\n");
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in [("hosts", hosts), ("hostname", format!("{handle}\n"))] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, body.as_bytes())
            .map_err(|e| Error::io("build /etc files", rootfs, e))?;
    }
    let tar = builder
        .into_inner()
        .map_err(|e| Error::io("build /etc files", rootfs, e))?;
    let options = ExtractOptions {
        owner: Some((record.ids.host_base, record.ids.host_base)),
        ..ExtractOptions::default()
    };
    let root = record.ids.host_base;
    let rootfs = rootfs.to_path_buf();
    crate::as_user::run_as(root, root, move || {
        archive::extract_in_root(&rootfs, Path::new("/etc"), Cursor::new(tar), &options)
    })
    .map_err(|e| Error::io("write /etc files", "", e))??;
    Ok(())
}

/// SIGKILLs the container's init (and so everything in its pid namespace) and waits until it
/// is gone, so that `runc delete` finds a stopped container. The pid is only trusted if the
/// process is still in the container's cgroup.
fn kill_init(pid_file: &Path, cgroups_path: &str) {
    let Ok(pid) = read_pid(pid_file) else {
        return;
    };
    let in_container = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|c| c.lines().any(|l| l.ends_with(cgroups_path)));
    if !in_container {
        return;
    }
    // SAFETY: kill(2) of a pid checked above to be this container's init.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat)
                if stat
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('Z')) =>
            {
                return
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

pub(super) fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read pid file", path, e))?;
    text.trim().parse().map_err(|_| {
        Error::io(
            "parse pid file",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, text.clone()),
        )
    })
}
