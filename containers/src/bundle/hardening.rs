//! The hardening every container gets: capabilities, masked and read-only kernel paths, and
//! the device allow-list.

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType,
};
use oci_spec::OciSpecError;

/// Docker's 14 default capabilities minus four that apps of a platform have no use for:
/// NET_RAW (raw sockets: ARP/ICMP spoofing on the container network), MKNOD (device nodes),
/// SETFCAP (file capabilities, a way to keep privileges across exec) and AUDIT_WRITE.
pub const CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
];

/// Kernel files that would leak host information or allow host attacks: hidden.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Kernel files that stay visible but cannot be written.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capability sets of a process: root inside the container gets the whole allowed set;
/// anyone else gets none in effect (they stay in the bounding set only, so nothing can gain
/// them back: `noNewPrivileges` is set too).
pub fn capabilities(root: bool) -> Result<LinuxCapabilities, OciSpecError> {
    let all: Capabilities = CAPABILITIES.iter().copied().collect();
    let granted = if root {
        all.clone()
    } else {
        Capabilities::new()
    };
    LinuxCapabilitiesBuilder::default()
        .bounding(all)
        .effective(granted.clone())
        .permitted(granted)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
}

/// Denies every device, then allows the ones a process needs: null, zero, full, random,
/// urandom, tty, ptmx, the pts, and fuse.
pub fn device_allow_list() -> Result<Vec<LinuxDeviceCgroup>, OciSpecError> {
    let mut rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?];
    let allowed: &[(i64, Option<i64>)] = &[
        (1, Some(3)),    // null
        (1, Some(5)),    // zero
        (1, Some(7)),    // full
        (1, Some(8)),    // random
        (1, Some(9)),    // urandom
        (5, Some(0)),    // tty
        (5, Some(2)),    // ptmx
        (136, None),     // pts/*
        (10, Some(229)), // fuse
    ];
    for (major, minor) in allowed {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(*major)
            .access("rwm");
        if let Some(minor) = minor {
            rule = rule.minor(*minor);
        }
        rules.push(rule.build()?);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_a_strict_subset_of_dockers_defaults() {
        for dropped in [
            Capability::NetRaw,
            Capability::Mknod,
            Capability::Setfcap,
            Capability::AuditWrite,
            Capability::SysAdmin,
        ] {
            assert!(
                !CAPABILITIES.contains(&dropped),
                "{dropped:?} must be dropped"
            );
        }
        assert!(CAPABILITIES.len() < 14);
    }

    #[test]
    fn unprivileged_users_get_no_effective_capabilities() {
        let caps = capabilities(false).expect("builds");
        assert!(caps.effective().as_ref().is_some_and(|c| c.is_empty()));
        assert!(caps.permitted().as_ref().is_some_and(|c| c.is_empty()));
        let root = capabilities(true).expect("builds");
        assert_eq!(
            root.effective().as_ref().map(|c| c.len()),
            Some(CAPABILITIES.len())
        );
    }
}
