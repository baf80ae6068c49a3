//! The iptables rules of a container, written as `iptables-restore` input so that each change is
//! one process and one atomic commit.
//!
//! Per container (slot `i` of backend `tag`):
//! - filter chain `KILN-<tag>-<i>`, jumped to from FORWARD for traffic coming out of the
//!   container's host veth: established traffic passes, NetOut rules accept, the rest is
//!   rejected. So egress is denied by default.
//! - INPUT from the veth: only replies pass. The host's own services stay unreachable whatever
//!   NetOut allows.
//! - FORWARD to the veth: only replies and NetIn (DNAT) connections pass, so nothing routed
//!   from elsewhere, other containers included, reaches a container's ports directly.
//! - nat chain `KILN-<tag>-<i>N`, jumped to from PREROUTING and OUTPUT for traffic to a local
//!   address: one DNAT per NetIn port.
//! - nat POSTROUTING: masquerade the container's egress, and connections from the host's
//!   loopback to a NetIn port (so `127.0.0.1:<port>` works from the host).

use std::fmt::Write;
use std::net::Ipv4Addr;

use super::NetworkError;
use crate::spec::{NetOutRule, PortMapping, Protocol};

/// Names of one container's chains and interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chains {
    pub filter: String,
    pub nat: String,
    pub host_veth: String,
    pub container_ip: Ipv4Addr,
}

impl Chains {
    /// The rules set up at create.
    pub fn create(&self) -> String {
        let Chains {
            filter,
            nat,
            host_veth: veth,
            container_ip: ip,
        } = self;
        format!(
            "*filter\n\
             :{filter} - [0:0]\n\
             -A {filter} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n\
             -A {filter} -j REJECT --reject-with icmp-port-unreachable\n\
             -I INPUT 1 -i {veth} -j REJECT --reject-with icmp-port-unreachable\n\
             -I INPUT 1 -i {veth} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -I FORWARD 1 -i {veth} -j {filter}\n\
             -I FORWARD 1 -o {veth} -j REJECT --reject-with icmp-port-unreachable\n\
             -I FORWARD 1 -o {veth} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\n\
             COMMIT\n\
             *nat\n\
             :{nat} - [0:0]\n\
             -A PREROUTING -m addrtype --dst-type LOCAL -j {nat}\n\
             -A OUTPUT -m addrtype --dst-type LOCAL -j {nat}\n\
             -A POSTROUTING -s {ip}/32 ! -o {veth} -j MASQUERADE\n\
             -A POSTROUTING -s 127.0.0.0/8 -o {veth} -j MASQUERADE\n\
             COMMIT\n"
        )
    }

    /// A NetIn port: DNAT from the host port to the container port.
    pub fn net_in(&self, mapping: PortMapping) -> String {
        format!(
            "*nat\n-A {} -p tcp --dport {} -j DNAT --to-destination {}:{}\nCOMMIT\n",
            self.nat, mapping.host_port, self.container_ip, mapping.container_port
        )
    }

    /// A NetOut rule: ACCEPT lines inserted before the final REJECT.
    pub fn net_out(&self, rule: &NetOutRule) -> Result<String, NetworkError> {
        let mut out = String::from("*filter\n");
        for line in net_out_matches(rule)? {
            // Position 2: after the ESTABLISHED rule, before the REJECT.
            let _ = writeln!(out, "-I {} 2 {line} -j ACCEPT", self.filter);
        }
        out.push_str("COMMIT\n");
        Ok(out)
    }

    /// Deletes the rules and chains [`Chains::create`] made (NetIn and NetOut rules live in the
    /// chains). Fails if any is missing; then use [`Chains::delete`].
    pub fn delete_created(&self) -> String {
        let created = self.create();
        let mut out = String::new();
        let mut chains = Vec::new();
        for line in created.lines() {
            if let Some(decl) = line.strip_prefix(':') {
                chains.extend(decl.split_whitespace().next().map(str::to_string));
            } else if line == "COMMIT" {
                for chain in chains.drain(..) {
                    let _ = writeln!(out, "-F {chain}\n-X {chain}");
                }
                out.push_str("COMMIT\n");
            } else if let Some(rule) = line.strip_prefix("-A ") {
                if !rule.starts_with(&format!("{} ", self.filter))
                    && !rule.starts_with(&format!("{} ", self.nat))
                {
                    let _ = writeln!(out, "-D {rule}");
                }
            } else if let Some(rule) = line.strip_prefix("-I ") {
                // "-I CHAIN 1 rest" was inserted; delete "-D CHAIN rest".
                let mut words = rule.splitn(3, ' ');
                let (chain, _, rest) = (words.next(), words.next(), words.next());
                if let (Some(chain), Some(rest)) = (chain, rest) {
                    let _ = writeln!(out, "-D {chain} {rest}");
                }
            } else {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// Deletes every rule of this container found in `saved` (the output of `iptables-save`),
    /// and its chains. Empty when nothing is left, so calling it twice is harmless.
    pub fn delete(&self, saved: &str) -> String {
        let mut out = String::new();
        let mut table = "";
        let mut body = String::new();
        let mut chains = Vec::new();
        let flush = |table: &str, body: &mut String, chains: &mut Vec<String>, out: &mut String| {
            if body.is_empty() && chains.is_empty() {
                return;
            }
            let _ = writeln!(out, "*{table}");
            out.push_str(body);
            // Rules jumping to the chains are deleted above; then empty and delete them.
            for chain in chains.iter() {
                let _ = writeln!(out, "-F {chain}\n-X {chain}");
            }
            out.push_str("COMMIT\n");
            body.clear();
            chains.clear();
        };
        for line in saved.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = match name {
                    "filter" => "filter",
                    "nat" => "nat",
                    _ => "",
                };
                continue;
            }
            if table.is_empty() {
                continue;
            }
            if line == "COMMIT" {
                flush(table, &mut body, &mut chains, &mut out);
                continue;
            }
            let ours = |name: &str| name == self.filter || name == self.nat;
            if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next().filter(|n| ours(n)) {
                    chains.push(name.to_string());
                }
                continue;
            }
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            let mut words = rule.split_whitespace();
            let chain = words.next().unwrap_or("");
            if ours(chain) {
                continue; // flushed by deleting the chain below
            }
            let tokens: Vec<&str> = rule.split_whitespace().collect();
            let mentions = tokens.windows(2).any(|w| {
                (matches!(w[0], "-i" | "-o") && w[1] == self.host_veth)
                    || (w[0] == "-j" && ours(w[1]))
                    || (w[0] == "-s" && w[1] == format!("{}/32", self.container_ip))
            });
            if mentions {
                let _ = writeln!(body, "-D {rule}");
            }
        }
        out
    }
}

/// The iptables match expressions a NetOut rule expands to, one per network × port range.
pub fn net_out_matches(rule: &NetOutRule) -> Result<Vec<String>, NetworkError> {
    let proto = match rule.protocol {
        Protocol::All => None,
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Icmp => Some("icmp"),
    };
    if !rule.ports.is_empty() && !matches!(rule.protocol, Protocol::Tcp | Protocol::Udp) {
        return Err(NetworkError::InvalidRule(
            "ports can only be given with protocol tcp or udp".into(),
        ));
    }
    let networks: Vec<Option<String>> = if rule.networks.is_empty() {
        vec![None]
    } else {
        rule.networks
            .iter()
            .map(|n| parse_network(n).map(Some))
            .collect::<Result<_, _>>()?
    };
    let ports: Vec<Option<(u16, u16)>> = if rule.ports.is_empty() {
        vec![None]
    } else {
        rule.ports.iter().copied().map(Some).collect()
    };
    let mut matches = Vec::new();
    for network in &networks {
        for range in &ports {
            let mut m = String::new();
            if let Some(p) = proto {
                let _ = write!(m, "-p {p}");
            }
            if let Some(net) = network {
                let _ = write!(m, " -d {net}");
            }
            if let Some((first, last)) = range {
                if first > last || *first == 0 {
                    return Err(NetworkError::InvalidRule(format!(
                        "port range {first}-{last} is empty or starts at 0"
                    )));
                }
                let _ = write!(m, " --dport {first}:{last}");
            }
            matches.push(m.trim().to_string());
        }
    }
    Ok(matches)
}

/// Checks `a.b.c.d` or `a.b.c.d/len` and returns it in CIDR form.
fn parse_network(text: &str) -> Result<String, NetworkError> {
    let bad =
        || NetworkError::InvalidRule(format!("{text:?} is not an IPv4 network (a.b.c.d/len)"));
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().map_err(|_| bad())?),
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok(format!("{addr}/{len}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chains() -> Chains {
        Chains {
            filter: "KILN-abc123-7".into(),
            nat: "KILN-abc123-7N".into(),
            host_veth: "klabc123007h".into(),
            container_ip: Ipv4Addr::new(10, 254, 0, 30),
        }
    }

    #[test]
    fn net_out_expands_networks_and_ports() {
        let rule = NetOutRule {
            protocol: Protocol::Tcp,
            networks: vec!["10.0.0.0/8".into(), "192.168.1.1".into()],
            ports: vec![(80, 80), (8000, 8100)],
        };
        let m = net_out_matches(&rule).expect("valid");
        assert_eq!(m.len(), 4);
        assert!(m.contains(&"-p tcp -d 192.168.1.1/32 --dport 8000:8100".to_string()));
    }

    #[test]
    fn invalid_net_out_rules_are_refused_with_the_reason() {
        let rule = NetOutRule {
            protocol: Protocol::All,
            networks: vec![],
            ports: vec![(80, 80)],
        };
        assert!(net_out_matches(&rule).is_err());
        let rule = NetOutRule {
            protocol: Protocol::Tcp,
            networks: vec!["10.0.0.300/8".into()],
            ports: vec![],
        };
        let err = net_out_matches(&rule).expect_err("bad address");
        assert!(err.to_string().contains("10.0.0.300/8"));
    }

    #[test]
    fn delete_created_undoes_create() {
        let script = chains().delete_created();
        for rule in [
            "-D INPUT -i klabc123007h -j REJECT --reject-with icmp-port-unreachable\n",
            "-D FORWARD -i klabc123007h -j KILN-abc123-7\n",
            "-D FORWARD -o klabc123007h -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT\n",
        ] {
            assert!(script.contains(rule), "{rule:?} missing from {script}");
        }
        assert!(script.contains("-D OUTPUT -m addrtype --dst-type LOCAL -j KILN-abc123-7N\n"));
        assert!(script.contains("-F KILN-abc123-7N\n-X KILN-abc123-7N\nCOMMIT"));
        assert!(
            !script.contains("-D KILN-"),
            "rules inside our chains are flushed with them: {script}"
        );
    }

    #[test]
    fn delete_removes_exactly_this_containers_rules() {
        let c = chains();
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:KILN-abc123-7 - [0:0]\n:KILN-abc123-8 - [0:0]\n\
            -A INPUT -i klabc123007h -j KILN-abc123-7\n-A INPUT -i klabc123008h -j KILN-abc123-8\n\
            -A FORWARD -i klabc123007h -j KILN-abc123-7\n-A KILN-abc123-7 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n\
            *nat\n:KILN-abc123-7N - [0:0]\n-A OUTPUT -m addrtype --dst-type LOCAL -j KILN-abc123-7N\n\
            -A POSTROUTING -s 10.254.0.30/32 ! -o klabc123007h -j MASQUERADE\n-A POSTROUTING -s 10.254.0.34/32 ! -o klabc123008h -j MASQUERADE\nCOMMIT\n";
        let script = c.delete(saved);
        assert!(script.contains("-D INPUT -i klabc123007h -j KILN-abc123-7\n"));
        assert!(script.contains("-D FORWARD -i klabc123007h -j KILN-abc123-7\n"));
        assert!(script.contains("-F KILN-abc123-7\n-X KILN-abc123-7\n"));
        assert!(script.contains("-F KILN-abc123-7N\n-X KILN-abc123-7N\n"));
        assert!(script.contains("-D POSTROUTING -s 10.254.0.30/32 ! -o klabc123007h -j MASQUERADE"));
        assert!(
            !script.contains("abc123-8"),
            "another container's rules: {script}"
        );
        assert!(!script.contains("10.254.0.34"));
        assert_eq!(c.delete("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"), "");
    }
}
