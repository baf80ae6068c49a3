//! What this backend holds on the machine, listed from the machine itself (runc, mountinfo,
//! network interfaces, iptables, cgroups) rather than from the backend's own records, so that
//! tests, benchmarks and operators can check that destroy and recovery leave nothing behind.

use std::path::Path;

use super::Backend;

impl Backend {
    /// One line per resource of this backend found on the machine: runc containers, mounts in
    /// the data dir (the disk store aside), host veths, iptables lines and container cgroups.
    /// Empty when no container exists and nothing leaked.
    pub fn resources_on_machine(&self) -> Vec<String> {
        let inner = &self.inner;
        let tag = &inner.tag;
        let mut found = Vec::new();
        match inner.runc.list() {
            Ok(ids) => found.extend(ids.into_iter().map(|id| format!("runc container {id}"))),
            Err(e) => found.push(format!("runc list failed: {e}")),
        }
        let data = inner.config.data_dir.to_string_lossy().to_string();
        let store = format!("{data}/store");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        found.extend(
            mounts
                .lines()
                .filter_map(|line| line.split(' ').nth(4))
                .filter(|mp| mp.starts_with(&format!("{data}/")) && *mp != store)
                .map(|mp| format!("mount {mp}")),
        );
        let veth_prefix = format!("kl{tag}");
        if let Ok(links) = std::fs::read_dir("/sys/class/net") {
            found.extend(
                links
                    .flatten()
                    .map(|l| l.file_name().to_string_lossy().to_string())
                    .filter(|name| name.starts_with(&veth_prefix))
                    .map(|name| format!("network interface {name}")),
            );
        }
        let chain = format!("KILN-{tag}-");
        match crate::network::iptables_save() {
            Ok(saved) => found.extend(
                saved
                    .lines()
                    .filter(|l| l.contains(&chain) || l.contains(&format!(" {veth_prefix}")))
                    .map(|l| format!("iptables {l}")),
            ),
            Err(e) => found.push(format!("iptables-save failed: {e}")),
        }
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let dir = h.path().join("kiln").join(tag);
                found.extend(
                    std::fs::read_dir(&dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| format!("cgroup {}", display(&e.path()))),
                );
            }
        }
        found
    }
}

fn display(path: &Path) -> String {
    path.to_string_lossy().to_string()
}
