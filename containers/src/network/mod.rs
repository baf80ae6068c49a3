//! Container networking: a network namespace per container (runc makes it), a veth pair into
//! it, a /30 of the backend's pool, NetIn port forwarding and NetOut egress rules.

pub mod iptables;
mod listening;
mod ports;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

pub use iptables::Chains;
pub use listening::Listeners;
pub use ports::PortAllocator;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "invalid network pool {0:?}: give an IPv4 network of /30 or larger, like 10.254.0.0/22"
    )]
    InvalidPool(String),
    #[error("invalid NetOut rule: {0}")]
    InvalidRule(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
}

/// The pool of /30 subnets containers get their addresses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    base: u32,
    subnets: usize,
}

/// One container's /30: the host end of the veth is `.1`, the container `.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub host_ip: Ipv4Addr,
    pub container_ip: Ipv4Addr,
}

impl Pool {
    /// Parses `a.b.c.d/len`.
    pub fn parse(cidr: &str) -> Result<Pool, NetworkError> {
        let bad = || NetworkError::InvalidPool(cidr.to_string());
        let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&len) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - len);
        Ok(Pool {
            base: u32::from(addr) & mask,
            subnets: 1usize << (30 - len),
        })
    }

    /// How many containers the pool can address.
    pub fn size(&self) -> usize {
        self.subnets
    }

    pub fn subnet(&self, slot: usize) -> Subnet {
        let network = self.base + (slot as u32) * 4;
        Subnet {
            host_ip: Ipv4Addr::from(network + 1),
            container_ip: Ipv4Addr::from(network + 2),
        }
    }
}

/// Turns IPv4 forwarding on: containers' egress is forwarded by the host.
pub fn enable_forwarding() -> Result<(), NetworkError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| NetworkError::Command {
        command: "write /proc/sys/net/ipv4/ip_forward".into(),
        stderr: e.to_string(),
    })
}

/// Puts a veth pair between the host and the network namespace of process `pid`, and
/// addresses both ends.
pub fn setup_veth(pid: u32, host_veth: &str, subnet: Subnet) -> Result<(), NetworkError> {
    let Subnet {
        host_ip,
        container_ip,
    } = subnet;
    ip_batch(
        &format!(
            "link add {host_veth} type veth peer name eth0 netns {pid}\n\
             addr add {host_ip}/30 dev {host_veth}\n\
             link set {host_veth} up\n"
        ),
        None,
    )?;
    // Lets NetIn connections from the host's loopback be routed to this veth; the INPUT rules
    // keep the container itself from reaching the host's loopback services.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{host_veth}/route_localnet"),
        "1",
    );
    // No IPv6 on the host end: no link-local address for a container to reach the host's
    // services by, and no path the IPv4 rules do not see.
    std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{host_veth}/disable_ipv6"),
        "1",
    )
    .or_else(|e| {
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            Err(e)
        } else {
            Ok(()) // a kernel without IPv6
        }
    })
    .map_err(|e| NetworkError::Command {
        command: format!("disable IPv6 on {host_veth}"),
        stderr: e.to_string(),
    })?;
    ip_batch(
        &format!(
            "link set lo up\n\
             addr add {container_ip}/30 dev eth0\n\
             link set eth0 up\n\
             route add default via {host_ip}\n"
        ),
        Some(pid),
    )
}

/// Deletes the host end of a veth pair (its peer goes with it). Absent is fine.
pub fn delete_veth(host_veth: &str) -> Result<(), NetworkError> {
    if !std::path::Path::new("/sys/class/net")
        .join(host_veth)
        .exists()
    {
        return Ok(());
    }
    match ip_batch(&format!("link del {host_veth}\n"), None) {
        // The kernel removes the pair itself once the namespace is gone: it may just have.
        Err(NetworkError::Command { stderr, .. })
            if stderr.contains("Cannot find device") || stderr.contains("No such device") =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Applies `iptables-restore` input without touching other rules.
pub fn iptables_restore(script: &str) -> Result<(), NetworkError> {
    if script.is_empty() {
        return Ok(());
    }
    feed(
        Command::new("iptables-restore").args(["--noflush", "--wait"]),
        script,
    )
    .map_err(|(command, stderr)| NetworkError::Command {
        command,
        stderr: format!("{stderr}\ninput was:\n{script}"),
    })
}

/// The current filter and nat tables.
pub fn iptables_save() -> Result<String, NetworkError> {
    let out = Command::new("iptables-save")
        .output()
        .map_err(|e| NetworkError::Command {
            command: "iptables-save".into(),
            stderr: e.to_string(),
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs `ip -batch -` with `commands`, inside the network namespace of `pid` if given.
fn ip_batch(commands: &str, netns_of: Option<u32>) -> Result<(), NetworkError> {
    let mut cmd = Command::new("ip");
    cmd.args(["-batch", "-"]);
    let netns = match netns_of {
        Some(pid) => Some(
            std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| {
                NetworkError::Command {
                    command: format!("open /proc/{pid}/ns/net"),
                    stderr: e.to_string(),
                }
            })?,
        ),
        None => None,
    };
    if let Some(ns) = &netns {
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe and `fd` stays open in the parent until spawn
        // returns; the child only changes its own network namespace before exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    feed(&mut cmd, commands).map_err(|(command, stderr)| NetworkError::Command {
        command: format!("{command} <<< {commands:?}"),
        stderr,
    })
}

/// Runs `cmd` with `input` on its stdin; on failure returns the command line and its stderr.
fn feed(cmd: &mut Command, input: &str) -> Result<(), (String, String)> {
    let describe = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (describe.clone(), e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| (describe.clone(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| (describe.clone(), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err((
            describe,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_consecutive_slash_30s() {
        let pool = Pool::parse("10.254.0.0/22").expect("valid");
        assert_eq!(pool.size(), 256);
        assert_eq!(
            pool.subnet(0),
            Subnet {
                host_ip: Ipv4Addr::new(10, 254, 0, 1),
                container_ip: Ipv4Addr::new(10, 254, 0, 2)
            }
        );
        assert_eq!(
            pool.subnet(255).container_ip,
            Ipv4Addr::new(10, 254, 3, 254)
        );
    }

    #[test]
    fn bad_pools_are_refused() {
        for bad in ["10.254.0.0", "10.254.0.0/31", "300.1.1.1/22", "x/22"] {
            assert!(Pool::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
