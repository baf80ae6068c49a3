//! The container backend: Garden's operations over runc, volumes and networking.
//!
//! [`Backend`] is cheap to clone and safe to share between tasks. Its operations are async;
//! the work that blocks (runc, mount, iptables) runs on tokio's blocking pool. Which handles,
//! slots and ports are taken is decided under one short lock, so concurrent creates never
//! collide; the slow part of each operation runs outside it.

mod audit;
mod changes;
mod create;
mod metrics;
mod process;
mod recovery;
mod streams;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_rootfs::store::{StackImage, StackStore};
use tracing::info;

pub use changes::{convert_changes, ChangesSummary};
pub use process::Process;
pub use streams::StreamInOptions;

use crate::config::{Config, IDS_PER_CONTAINER};
use crate::error::{Error, Result};
use crate::network::{self, Chains, Listeners, NetworkError, Pool, PortAllocator};
use crate::runtime::Runc;
use crate::spec::{
    Capacity, ContainerInfo, ContainerMetrics, ContainerState, NetOutRule, PortMapping,
};
use crate::state::{ContainerDir, ContainerRecord};
use crate::volume::{VolumePaths, VolumeStore};

/// `kiln-init`, built from `init/init.c` by build.rs.
const INIT_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-init"));

#[derive(Debug, Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    /// Short id of this backend (from its data dir) in machine-wide names: cgroups, chains, veths.
    tag: String,
    runc: Runc,
    stacks: StackStore,
    volumes: VolumeStore,
    pool: Pool,
    containers_dir: PathBuf,
    init_binary: PathBuf,
    table: Mutex<Table>,
    /// The data dir's lock: one backend per data dir, or recovery would destroy another
    /// owner's live containers. Released when the backend is dropped.
    _lock: DataDirLock,
}

/// Which handles, slots and ports are taken.
#[derive(Debug)]
struct Table {
    containers: BTreeMap<String, Entry>,
    slots: BTreeSet<usize>,
    ports: PortAllocator,
}

/// Which entry of the table a container is: its process set, made with the entry.
struct EntryId(Arc<Mutex<BTreeSet<String>>>);

#[derive(Debug)]
struct Entry {
    record: ContainerRecord,
    /// Processes started with `run` that have not exited, by id.
    processes: Arc<Mutex<BTreeSet<String>>>,
    /// The channel to the container's init; `None` for a container adopted after a restart.
    channel: Option<Arc<crate::init_channel::InitChannel>>,
    /// Its usage counters, open once read.
    metrics: Option<Arc<metrics::MetricsFiles>>,
}

impl Backend {
    /// Opens the backend on `config.data_dir`: checks the runtime, mounts the disk store, and
    /// adopts or destroys what a previous owner left (see [`Config::recovery`]).
    pub async fn new(config: Config) -> Result<Backend> {
        let inner = tokio::task::spawn_blocking(move || {
            let inner = Inner::open(config, std::time::Duration::ZERO)?;
            inner.recover()?;
            Ok::<_, Error>(inner)
        })
        .await??;
        Ok(Backend {
            inner: Arc::new(inner),
        })
    }

    /// Destroys every container of the data dir in `config` and unmounts its disk store,
    /// without needing a running backend (tests call it on drop, operators to reset a cell).
    ///
    /// A backend of this process on the same data dir that is still being dropped (a task
    /// holding a clone finishing) is waited for, up to 10 seconds; a backend of
    /// another process is [`Error::DataDirInUse`]. A container that resists destruction (a
    /// mount still busy, a dying init) is retried for a few seconds, and if any is left the
    /// error names it and the store stays mounted (so that a later call can finish the job):
    /// `Ok` means nothing of the data dir is left on the machine.
    pub fn destroy_all(config: &Config) -> Result<()> {
        let mut config = config.clone();
        config.recovery = crate::config::Recovery::Destroy;
        let inner = Inner::open(config, DESTROY_ALL_WAIT)?;
        inner.recover()?;
        // What recovery could not destroy it keeps listed: try again, then give up loudly.
        let mut attempt = 0;
        loop {
            let left: Vec<ContainerRecord> = inner
                .table()
                .containers
                .values()
                .map(|e| e.record.clone())
                .collect();
            if left.is_empty() {
                break;
            }
            attempt += 1;
            let mut failed = Vec::new();
            for record in left {
                match inner.teardown(&record) {
                    Ok(()) => {
                        let mut table = inner.table();
                        table.containers.remove(&record.spec.handle);
                        table.release(&record);
                    }
                    Err(e) => failed.push((record.spec.handle.clone(), e)),
                }
            }
            if !failed.is_empty() && attempt >= DESTROY_ALL_ATTEMPTS {
                let (handle, source) = failed.swap_remove(0);
                return Err(Error::DestroyFailed {
                    handle,
                    source: Box::new(source),
                    others: failed.into_iter().map(|(h, _)| h).collect(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(200 * attempt as u64));
        }
        inner.volumes.unmount()?;
        inner.remove_cgroup_parents();
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The short id of this backend in machine-wide names: cgroups `/kiln/<tag>/<handle>`,
    /// iptables chains `KILN-<tag>-<slot>`, host veths `kl<tag><slot>h`.
    pub fn tag(&self) -> &str {
        &self.inner.tag
    }

    /// Imports a stack image (an OCI layout directory) under `name`.
    pub async fn import_stack(&self, layout: &Path, name: &str) -> Result<StackImage> {
        let inner = self.inner.clone();
        let layout = layout.to_path_buf();
        let name = name.to_string();
        Ok(tokio::task::spawn_blocking(move || inner.stacks.import(&layout, &name)).await??)
    }

    /// Imports the stack image `digest` from `archive` (an OCI layout as a tar, plain or
    /// gzip), once: an image already in the store is not imported again. The archive must
    /// hold exactly that image (its manifest digest), else nothing is kept under its name.
    pub async fn import_stack_image(&self, archive: &Path, digest: &str) -> Result<StackImage> {
        if let Some(image) = self.stack_image(digest) {
            return Ok(image);
        }
        let inner = self.inner.clone();
        let archive = archive.to_path_buf();
        let name = stack_image_name(digest);
        let image =
            tokio::task::spawn_blocking(move || inner.stacks.import_archive(&archive, &name))
                .await??;
        if image.digest != digest {
            return Err(Error::StackDigestMismatch {
                expected: digest.to_string(),
                found: image.digest,
            });
        }
        Ok(image)
    }

    /// The stack image `name_or_digest`, if the store has it.
    pub fn stack_image(&self, name_or_digest: &str) -> Option<StackImage> {
        self.inner.stacks.resolve(name_or_digest).ok()
    }

    /// Handles of the containers whose properties include every pair of `filter`.
    pub fn list(&self, filter: &BTreeMap<String, String>) -> Vec<String> {
        self.inner
            .table()
            .containers
            .iter()
            .filter(|(_, e)| {
                filter
                    .iter()
                    .all(|(k, v)| e.record.spec.properties.get(k) == Some(v))
            })
            .map(|(h, _)| h.clone())
            .collect()
    }

    pub fn info(&self, handle: &str) -> Result<ContainerInfo> {
        let table = self.inner.table();
        let entry = table
            .containers
            .get(handle)
            .ok_or_else(|| Error::NotFound(handle.to_string()))?;
        let r = &entry.record;
        let subnet = self.inner.pool.subnet(r.slot);
        let processes = lock(&entry.processes).iter().cloned().collect();
        Ok(ContainerInfo {
            handle: handle.to_string(),
            state: r.state,
            stack: r.spec.stack.clone(),
            stack_digest: r.stack_digest.clone(),
            container_ip: subnet.container_ip,
            host_ip: subnet.host_ip,
            mapped_ports: r.mapped_ports.clone(),
            net_out: r.net_out.clone(),
            processes,
            properties: r.spec.properties.clone(),
            limits: r.spec.limits,
        })
    }

    /// A look into the container's network: which TCP ports would accept a connection at its
    /// address ([`Listeners`], a netlink socket in its network namespace, for as long as the
    /// caller keeps it).
    pub async fn listeners(&self, handle: &str) -> Result<Listeners> {
        let address = self.info(handle)?.container_ip;
        let pid_file = self.inner.dir(handle).init_pid();
        let made = tokio::task::spawn_blocking(move || {
            let pid = create::read_pid(&pid_file)?;
            Listeners::of_process(pid, address).map_err(|e| {
                Error::io(
                    "look into the network namespace of",
                    format!("/proc/{pid}"),
                    e,
                )
            })
        });
        made.await.map_err(|e| {
            Error::io(
                "look into the container's network",
                handle,
                std::io::Error::other(e),
            )
        })?
    }

    /// CPU time and memory from the container's cgroups, disk from its quota group.
    pub async fn metrics(&self, handle: &str) -> Result<ContainerMetrics> {
        let mut all = self.metrics_of(vec![handle.to_string()]).await;
        all.pop()
            .map_or_else(|| Err(Error::NotFound(handle.to_string())), |(_, m)| m)
    }

    /// [`Backend::metrics`] of each of `handles`, read in one blocking task (a cell's
    /// periodic report of all its containers costs one thread hand-off, not one each).
    pub async fn metrics_of(
        &self,
        handles: Vec<String>,
    ) -> Vec<(String, Result<ContainerMetrics>)> {
        let inner = self.inner.clone();
        let read = tokio::task::spawn_blocking(move || {
            handles
                .into_iter()
                .map(|handle| {
                    let metrics = metrics::read(&inner, &handle);
                    (handle, metrics)
                })
                .collect::<Vec<_>>()
        });
        read.await.unwrap_or_default()
    }

    /// What this backend can hold.
    pub fn capacity(&self) -> Capacity {
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        Capacity {
            memory_bytes: memory,
            disk_bytes: self.inner.volumes.size_bytes(),
            max_containers: self.inner.max_containers() as u64,
        }
    }

    /// Forwards a host port (the next free one if `None`) to `container_port`.
    pub async fn net_in(
        &self,
        handle: &str,
        host_port: Option<u16>,
        container_port: u16,
    ) -> Result<PortMapping> {
        let port = self.inner.table().ports.acquire(host_port)?;
        let mapping = PortMapping {
            host_port: port,
            container_port,
        };
        let result = self
            .update_rules(
                handle,
                move |chains| Ok(chains.net_in(mapping)),
                move |record| record.mapped_ports.push(mapping),
            )
            .await;
        if result.is_err() {
            self.inner.table().ports.release(port);
        }
        result.map(|_| mapping)
    }

    /// Allows egress matching `rule`.
    pub async fn net_out(&self, handle: &str, rule: NetOutRule) -> Result<()> {
        crate::network::iptables::net_out_matches(&rule)?;
        let recorded = rule.clone();
        self.update_rules(
            handle,
            move |chains| chains.net_out(&rule),
            move |record| record.net_out.push(recorded),
        )
        .await
    }

    /// Applies the rules `script` makes for the container, then records the change with
    /// `apply` on the container's current record (under the table lock, so concurrent changes
    /// are not lost) and saves it.
    async fn update_rules(
        &self,
        handle: &str,
        script: impl FnOnce(&Chains) -> Result<String, NetworkError> + Send + 'static,
        apply: impl FnOnce(&mut ContainerRecord) + Send + 'static,
    ) -> Result<()> {
        let record = self.inner.record(handle)?;
        let inner = self.inner.clone();
        let handle = handle.to_string();
        tokio::task::spawn_blocking(move || {
            network::iptables_restore(&script(&inner.chains(&record))?)?;
            let mut table = inner.table();
            let entry = table
                .containers
                .get_mut(&handle)
                .ok_or_else(|| Error::NotFound(handle.clone()))?;
            apply(&mut entry.record);
            inner.dir(&handle).save(&entry.record)
        })
        .await?
    }

    /// Ends every process of the container: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, handle: &str, grace: std::time::Duration) -> Result<()> {
        self.inner.record(handle)?;
        let inner = self.inner.clone();
        let handle = handle.to_string();
        tokio::task::spawn_blocking(move || inner.stop(&handle, grace)).await?
    }

    /// Destroys the container and everything it held. Destroying an unknown handle is an error;
    /// a half-destroyed container is finished off by the next destroy or by recovery.
    pub async fn destroy(&self, handle: &str) -> Result<()> {
        let entry = {
            let mut table = self.inner.table();
            match table.containers.get(handle) {
                None => return Err(Error::NotFound(handle.to_string())),
                // Its create is still running and will undo itself if it fails.
                Some(e) if e.record.state == ContainerState::Creating => {
                    return Err(Error::NotActive {
                        handle: handle.to_string(),
                        state: "still being created".into(),
                    })
                }
                Some(_) => {}
            }
            table
                .containers
                .remove(handle)
                .ok_or_else(|| Error::NotFound(handle.to_string()))?
        };
        let inner = self.inner.clone();
        let record = entry.record;
        tokio::task::spawn_blocking(move || {
            let result = inner.teardown(&record);
            let mut table = inner.table();
            if result.is_ok() {
                table.release(&record);
            } else {
                // Keep it listed so that destroy can be retried.
                table.hold(record.clone());
            }
            result
        })
        .await?
    }
}

impl Table {
    /// Lists a container and marks its slot and ports as taken (no init channel: a container
    /// being created gets its channel when create finishes).
    fn hold(&mut self, record: ContainerRecord) {
        self.slots.insert(record.slot);
        for m in &record.mapped_ports {
            self.ports.mark_taken(m.host_port);
        }
        self.containers.insert(
            record.spec.handle.clone(),
            Entry {
                record,
                processes: Default::default(),
                channel: None,
                metrics: None,
            },
        );
    }

    /// Frees a container's slot and ports for others.
    fn release(&mut self, record: &ContainerRecord) {
        self.slots.remove(&record.slot);
        for m in &record.mapped_ports {
            self.ports.release(m.host_port);
        }
    }
}

impl Inner {
    /// Opens the data dir; a backend of this process holding it is waited for up to `wait`.
    fn open(config: Config, wait: std::time::Duration) -> Result<Inner> {
        let data_dir = &config.data_dir;
        let containers_dir = data_dir.join("containers");
        let bin_dir = data_dir.join("bin");
        for dir in [data_dir, &containers_dir, &bin_dir, &data_dir.join("runc")] {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            // Container roots (mapped uids) must traverse to their rootfs and init binary.
            set_mode(dir, 0o711)?;
        }
        let lock = DataDirLock::acquire(data_dir, wait)?;
        let runc = Runc::new(&config.runtime_path, &data_dir.join("runc"))?;
        let init_binary = bin_dir.join("kiln-init");
        install_init(&init_binary)?;
        let stacks = StackStore::open(&config.stacks_dir)?;
        let volumes = VolumeStore::open(data_dir, config.store_size_bytes)?;
        let pool = Pool::parse(&config.network_pool)?;
        network::enable_forwarding()?;
        let tag = backend_tag(data_dir);
        info!(data_dir = %data_dir.display(), tag, "container backend open");
        let ports = PortAllocator::new(config.port_range_start, config.port_range_size);
        Ok(Inner {
            tag,
            runc,
            stacks,
            volumes,
            pool,
            containers_dir,
            init_binary,
            table: Mutex::new(Table {
                containers: BTreeMap::new(),
                slots: BTreeSet::new(),
                ports,
            }),
            config,
            _lock: lock,
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    fn record(&self, handle: &str) -> Result<ContainerRecord> {
        self.table()
            .containers
            .get(handle)
            .map(|e| e.record.clone())
            .ok_or_else(|| Error::NotFound(handle.to_string()))
    }

    /// The container's record, its usage counters if they were opened before, and which entry
    /// of the table it is (a container of the same handle made later is another).
    fn record_and_metrics_files(
        &self,
        handle: &str,
    ) -> Result<(ContainerRecord, Option<Arc<metrics::MetricsFiles>>, EntryId)> {
        self.table()
            .containers
            .get(handle)
            .map(|e| {
                let id = EntryId(e.processes.clone());
                (e.record.clone(), e.metrics.clone(), id)
            })
            .ok_or_else(|| Error::NotFound(handle.to_string()))
    }

    /// Keeps the container's counters open (until it goes), if `handle` is still the entry
    /// they were opened for.
    fn keep_metrics_files(&self, handle: &str, id: &EntryId, files: Arc<metrics::MetricsFiles>) {
        if let Some(entry) = self.table().containers.get_mut(handle) {
            if Arc::ptr_eq(&entry.processes, &id.0) && entry.metrics.is_none() {
                entry.metrics = Some(files);
            }
        }
    }

    fn max_containers(&self) -> usize {
        self.pool.size().min(self.config.max_containers)
    }

    fn dir(&self, handle: &str) -> ContainerDir {
        ContainerDir::new(&self.containers_dir, handle)
    }

    fn volume_paths(&self, record: &ContainerRecord) -> VolumePaths {
        let dir = self.dir(&record.spec.handle);
        VolumePaths {
            lower: dir.lower(),
            layers: (0..record.spec.layers.len())
                .map(|i| (record.spec.layers[i].clone(), dir.layer(i)))
                .collect(),
            rootfs: dir.rootfs(),
        }
    }

    fn cgroups_path(&self, handle: &str) -> String {
        format!("/kiln/{}/{}", self.tag, handle)
    }

    fn chains(&self, record: &ContainerRecord) -> Chains {
        let filter = format!("KILN-{}-{}", self.tag, record.slot);
        Chains {
            nat: format!("{filter}N"),
            filter,
            host_veth: format!("kl{}{:03x}h", self.tag, record.slot),
            container_ip: self.pool.subnet(record.slot).container_ip,
        }
    }

    fn ids(&self, slot: usize) -> crate::bundle::IdRange {
        crate::bundle::IdRange {
            host_base: self
                .config
                .uid_range_start
                .saturating_add((slot as u32).saturating_mul(IDS_PER_CONTAINER)),
            size: IDS_PER_CONTAINER,
        }
    }

    /// Removes this backend's (empty) parent cgroup in every hierarchy. The `kiln` cgroup
    /// above it, shared by the machine's backends, stays: removing it when it looked empty
    /// raced another backend's runc between its `mkdir kiln` and `mkdir kiln/<tag>` (seen in
    /// CI as "unable to apply cgroup configuration: mkdir .../kiln/<tag>: no such file").
    fn remove_cgroup_parents(&self) {
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for h in hierarchies.flatten() {
            let _ = std::fs::remove_dir(h.path().join("kiln").join(&self.tag));
        }
    }
}

/// A short, stable id of the data dir, used in machine-wide names (at most 6 characters so
/// that veth names fit in 15).
pub fn backend_tag(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(digest)[..6].to_string()
}

/// The exclusive lock on a data dir: a POSIX record lock (`fcntl(F_SETLK)`) on
/// `<data_dir>/lock` against other processes, and a registry against other backends of this
/// process.
///
/// Not `flock`: an flock belongs to the open file description, which every child this
/// (multi-threaded) process forks shares until it execs (a `runc`, `iptables` or `btrfs` being
/// spawned by another thread, the helper of an idmapped mount). A backend dropped at such a
/// moment left its lock held by that child, and the next open of the data dir (`destroy_all`
/// right after the drop, a restart) was refused as in use. A record lock belongs to the
/// process and no child inherits it; since it does not exclude the process itself, backends
/// of this process are kept apart by [`OPEN_DATA_DIRS`]. Closing *any* fd of the lock file
/// drops the process's record lock, so the file is opened only by the holder of the registry
/// entry, and closed before the entry goes.
#[derive(Debug)]
struct DataDirLock {
    /// Device and inode of the data dir.
    key: (u64, u64),
    file: Option<std::fs::File>,
}

/// Data dirs (device, inode) held by a backend of this process.
static OPEN_DATA_DIRS: Mutex<BTreeSet<(u64, u64)>> = Mutex::new(BTreeSet::new());
/// Notified when an entry leaves [`OPEN_DATA_DIRS`].
static DATA_DIR_RELEASED: std::sync::Condvar = std::sync::Condvar::new();

/// How long [`Backend::destroy_all`] waits for a backend of this process on the same data dir
/// to be dropped.
const DESTROY_ALL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How many times [`Backend::destroy_all`] tries to destroy a container.
const DESTROY_ALL_ATTEMPTS: u32 = 5;

impl DataDirLock {
    /// Takes the lock of `data_dir`, waiting up to `wait` for a backend of this process that
    /// holds it; one of another process is [`Error::DataDirInUse`] at once.
    fn acquire(data_dir: &Path, wait: std::time::Duration) -> Result<DataDirLock> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let in_use = || Error::DataDirInUse(data_dir.to_path_buf());
        let meta = std::fs::metadata(data_dir).map_err(|e| Error::io("stat", data_dir, e))?;
        let key = (meta.dev(), meta.ino());
        {
            let deadline = std::time::Instant::now() + wait;
            let mut open = lock(&OPEN_DATA_DIRS);
            while open.contains(&key) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(in_use());
                }
                open = DATA_DIR_RELEASED
                    .wait_timeout(open, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            open.insert(key);
        }
        // From here on, dropping `held` gives the registry entry back.
        let mut held = DataDirLock { key, file: None };
        let path = data_dir.join("lock");
        let file = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        // SAFETY: an all-zero flock is a valid value; the fields that matter are set below.
        let mut whole: libc::flock = unsafe { std::mem::zeroed() };
        whole.l_type = libc::F_WRLCK as libc::c_short;
        whole.l_whence = libc::SEEK_SET as libc::c_short;
        // l_start = l_len = 0: the whole file.
        // SAFETY: fcntl on an fd we own with a valid flock struct that outlives the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &whole) } != 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EACCES | libc::EAGAIN) => Err(in_use()),
                _ => Err(Error::io("lock", &path, err)),
            };
        }
        held.file = Some(file);
        Ok(held)
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Close first (releasing the record lock), then let another backend of this process in.
        drop(self.file.take());
        lock(&OPEN_DATA_DIRS).remove(&self.key);
        DATA_DIR_RELEASED.notify_all();
    }
}

fn install_init(path: &Path) -> Result<()> {
    if std::fs::read(path).is_ok_and(|existing| existing == INIT_BINARY) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, INIT_BINARY).map_err(|e| Error::io("write kiln-init", &tmp, e))?;
    set_mode(&tmp, 0o555)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("install kiln-init", path, e))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("chmod", path, e))
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl From<ContainerState> for &'static str {
    fn from(s: ContainerState) -> Self {
        match s {
            ContainerState::Creating => "creating",
            ContainerState::Active => "active",
            ContainerState::Stopped => "stopped",
        }
    }
}

/// The store name of a stack image fetched by digest (`sha256-<hex>`: store names have no `:`).
fn stack_image_name(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The metrics of `handle`, read from the cgroup and volume files (blocking).
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn one_lock_per_data_dir_in_this_process_and_waiters_get_it_when_it_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path(), Duration::ZERO).expect("first");
        assert!(matches!(
            DataDirLock::acquire(dir.path(), Duration::ZERO),
            Err(Error::DataDirInUse(_))
        ));
        let started = Instant::now();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = DataDirLock::acquire(dir.path(), Duration::from_secs(10))
            .expect("given when the first goes");
        assert!(started.elapsed() >= Duration::from_millis(200));
        releaser.join().expect("releaser");
        drop(second);
        DataDirLock::acquire(dir.path(), Duration::ZERO).expect("free again");
    }

    #[test]
    fn another_process_holding_the_lock_is_refused_at_once() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path =
            std::ffi::CString::new(dir.path().join("lock").as_os_str().as_bytes()).expect("path");
        let mut ready = [0; 2];
        // SAFETY: `ready` has room for the two fds pipe2 writes.
        let rc = unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        // SAFETY: the child makes only async-signal-safe calls (open, fcntl, write, pause,
        // _exit) and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600);
                let mut whole: libc::flock = std::mem::zeroed();
                whole.l_type = libc::F_WRLCK as libc::c_short;
                let ok: u8 = (fd >= 0 && libc::fcntl(fd, libc::F_SETLK, &whole) == 0).into();
                libc::write(ready[1], &ok as *const u8 as *const libc::c_void, 1);
                loop {
                    libc::pause();
                }
            }
        }
        let mut ok = 0u8;
        // SAFETY: reads one byte into `ok`; the fds are ours.
        let n = unsafe { libc::read(ready[0], &mut ok as *mut u8 as *mut libc::c_void, 1) };
        let started = Instant::now();
        let result = DataDirLock::acquire(dir.path(), Duration::from_secs(10));
        // SAFETY: kill and reap our own child; close our pipe fds.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(ready[0]);
            libc::close(ready[1]);
        }
        assert_eq!((n, ok), (1, 1), "the child took the lock");
        assert!(matches!(result, Err(Error::DataDirInUse(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "not waited for");
        DataDirLock::acquire(dir.path(), Duration::ZERO).expect("free once the child is gone");
    }
}
