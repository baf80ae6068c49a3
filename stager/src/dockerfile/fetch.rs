//! `ADD <url> <dest>`: the stager downloads the file itself, and only from where the build's
//! egress rules ([`BuildOptions::net_out`](super::BuildOptions::net_out), staging's rules,
//! like Cloud Foundry's staging security groups; none means no network) let a `RUN` connect.
//!
//! - Only `http://` URLs are downloaded. `https://` is refused with its reason: the stager's
//!   HTTP client is built without TLS (turning reqwest's TLS on would need every client of
//!   the workspace to install a crypto provider). Other schemes (`git@`, `ssh://`) are
//!   refused at parse.
//! - The host is resolved once; staging's network is IPv4 only, so IPv6 answers are ignored
//!   (an IPv6 literal is refused) and a host without an IPv4 address is refused. EVERY IPv4
//!   address it resolves to must pass [`Egress::check`], and the client connects only to those
//!   (they are pinned for the host, so a second DNS answer cannot swap them): a rule of
//!   protocol `tcp` or `all` whose networks hold the address and whose port ranges hold the
//!   port (empty networks or ports: any), as the containers' iptables rules read them.
//! - Whatever the rules say, as for a container (whose `INPUT` traffic is rejected, so the
//!   host's own services stay unreachable, and which cannot reach other containers), the
//!   download never goes to a loopback, link-local, unspecified (`0.0.0.0/8`), multicast or
//!   broadcast address, to an address of the staging host, or into the backend's container
//!   network.
//! - No proxy is used (`HTTP_PROXY` would bypass the checks). Redirects are followed, at most
//!   [`MAX_REDIRECTS`], each target resolved and checked the same way.
//! - The body is streamed into a file, at most the build's disk limit, within the build's
//!   time limit; its sha256 is part of the step's cache key, so the file is downloaded on
//!   every build and a changed remote file is a cache miss.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Instant;

use kiln_containers::{NetOutRule, Protocol};
use reqwest::header::LOCATION;
use reqwest::Url;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::error::DockerfileError;

/// Redirects followed before giving up.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// Where a download may connect: the build's egress rules, minus what no build ever reaches.
#[derive(Debug, Clone)]
pub(crate) struct Egress {
    rules: Vec<NetOutRule>,
    /// The staging host's own addresses.
    host: Vec<Ipv4Addr>,
    /// The container network of the backend (`Config::network_pool`).
    containers: Option<(Ipv4Addr, u8)>,
}

impl Egress {
    /// `rules` on this host: its addresses listed now, `container_pool` as `a.b.c.d/len`.
    pub fn new(rules: &[NetOutRule], container_pool: &str) -> io::Result<Egress> {
        Ok(Egress {
            rules: rules.to_vec(),
            host: host_addresses()?,
            containers: parse_network(container_pool),
        })
    }

    /// Whether a TCP connection to `addr` is allowed; the reason when it is not.
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let SocketAddr::V4(v4) = addr else {
            return Err(format!(
                "{addr} is an IPv6 address, and staging's network is IPv4 only"
            ));
        };
        let ip = *v4.ip();
        let never = if ip.is_loopback() {
            Some("a loopback address")
        } else if ip.is_link_local() {
            Some("a link-local address")
        } else if ip.octets()[0] == 0 {
            Some("an unspecified address")
        } else if ip.is_multicast() {
            Some("a multicast address")
        } else if ip.is_broadcast() {
            Some("the broadcast address")
        } else if self.host.contains(&ip) {
            Some("an address of the staging host")
        } else if self.containers.is_some_and(|net| in_network(ip, net)) {
            Some("in the containers' network")
        } else {
            None
        };
        if let Some(what) = never {
            return Err(format!(
                "{addr} is {what}, which builds can never reach whatever the staging egress \
                 rules allow"
            ));
        }
        if self.rules.iter().any(|rule| rule_allows(rule, v4)) {
            Ok(())
        } else {
            Err(format!(
                "the staging egress rules do not allow {addr} (allow it with a staging security \
                 group)"
            ))
        }
    }
}

/// Whether `rule` lets a TCP connection to `addr` out, as the containers' iptables rule made
/// from it would. A rule the containers refuse (ports without tcp or udp, a bad network or
/// port range) allows nothing.
fn rule_allows(rule: &NetOutRule, addr: SocketAddrV4) -> bool {
    match rule.protocol {
        Protocol::Tcp => {}
        Protocol::All if rule.ports.is_empty() => {}
        Protocol::All | Protocol::Udp | Protocol::Icmp => return false,
    }
    let networks: Option<Vec<(Ipv4Addr, u8)>> =
        rule.networks.iter().map(|n| parse_network(n)).collect();
    let Some(networks) = networks else {
        return false;
    };
    if rule
        .ports
        .iter()
        .any(|(first, last)| *first == 0 || first > last)
    {
        return false;
    }
    let network_ok = networks.is_empty() || networks.iter().any(|n| in_network(*addr.ip(), *n));
    let port_ok = rule.ports.is_empty()
        || rule
            .ports
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&addr.port()));
    network_ok && port_ok
}

/// `a.b.c.d` or `a.b.c.d/len`.
fn parse_network(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()?),
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    (len <= 32).then_some((addr, len))
}

fn in_network(ip: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The IPv4 addresses of the host's interfaces (of the stager's network namespace).
fn host_addresses() -> io::Result<Vec<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut node = list;
    while !node.is_null() {
        // SAFETY: `node` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*node };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        node = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once, not used after.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// The last segment of `url`'s path, percent-decoded: the file's name when `ADD`'s
/// destination is a directory. `None` when it has none usable (`http://host/`, `..`).
pub(crate) fn file_name(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    let last = url.path_segments()?.next_back()?;
    let bytes = last.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                decoded.push((hex(h)? * 16 + hex(l)?) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let name = String::from_utf8(decoded).ok()?;
    (!name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])).then_some(name)
}

/// A finished download.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fetched {
    /// `sha256:<hex>` of the body.
    pub digest: String,
    /// Its size.
    pub bytes: u64,
}

/// Downloads `url` into the new file `to`: see the [module docs](self). `check` says whether
/// connecting to an address is allowed ([`Egress::check`]). Errors name `line` and `url`.
pub(crate) async fn fetch(
    line: usize,
    url: &str,
    check: &(dyn Fn(SocketAddr) -> Result<(), String> + Sync),
    limit: u64,
    deadline: Instant,
    to: &Path,
) -> Result<Fetched, DockerfileError> {
    let fail = |reason: String| DockerfileError::Fetch {
        line,
        url: url.to_string(),
        reason,
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    match tokio::time::timeout_at(deadline, fetch_in_time(url, check, limit, to)).await {
        Ok(result) => result.map_err(fail),
        Err(_) => Err(fail(
            "the download did not finish within the build's time limit".into(),
        )),
    }
}

async fn fetch_in_time(
    url: &str,
    check: &(dyn Fn(SocketAddr) -> Result<(), String> + Sync),
    limit: u64,
    to: &Path,
) -> Result<Fetched, String> {
    let mut url = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    for _ in 0..=MAX_REDIRECTS {
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(format!(
                    "https downloads are not available: the stager is built without TLS; use \
                     an http:// URL, or download it in a RUN ({url})"
                ))
            }
            other => return Err(format!("{other} URLs cannot be downloaded; only http")),
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("{url} has no host"))?
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = resolve(&host, port).await?;
        for addr in &addrs {
            check(*addr)?;
        }
        let mut client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if host.parse::<Ipv4Addr>().is_err() {
            // Connect only to the addresses checked, whatever DNS answers next.
            client = client.resolve_to_addrs(&host, &addrs);
        }
        let client = client
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {}", cause(&e)))?;
        let where_ = if addrs.len() == 1 {
            addrs[0].to_string()
        } else {
            format!("{host}:{port}")
        };
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("cannot reach {where_}: {}", cause(&e)))?;
        let status = response.status();
        if status.is_redirection() {
            if let Some(location) = response.headers().get(LOCATION) {
                let location = location
                    .to_str()
                    .map_err(|_| format!("the server at {where_} redirected to a bad location"))?;
                url = url
                    .join(location)
                    .map_err(|e| format!("the server redirected to {location:?}: {e}"))?;
                continue;
            }
        }
        if !status.is_success() {
            return Err(format!("the server at {where_} answered {status}"));
        }
        let too_large =
            || format!("the file is larger than the build's disk limit ({limit} bytes)");
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut file = tokio::fs::File::create_new(to)
            .await
            .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("the download from {where_} broke off: {}", cause(&e)))?
        {
            bytes += chunk.len() as u64;
            if bytes > limit {
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
        return Ok(Fetched {
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            bytes,
        });
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
}

/// The addresses to connect to for `host`: itself if an IPv4 address, else its IPv4 addresses.
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]);
    }
    if host.starts_with('[') {
        return Err(format!(
            "{host} is an IPv6 address, and staging's network is IPv4 only"
        ));
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .filter(SocketAddr::is_ipv4)
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!(
            "{host} has no IPv4 address, and staging's network is IPv4 only"
        ));
    }
    Ok(addrs)
}

/// The innermost cause of `e` (`Connection refused (os error 111)`), or "timed out".
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut inner: &dyn std::error::Error = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(protocol: Protocol, networks: &[&str], ports: &[(u16, u16)]) -> NetOutRule {
        NetOutRule {
            protocol,
            networks: networks.iter().map(|n| n.to_string()).collect(),
            ports: ports.to_vec(),
        }
    }

    fn egress(rules: Vec<NetOutRule>) -> Egress {
        Egress {
            rules,
            host: vec![Ipv4Addr::new(192, 168, 7, 1)],
            containers: parse_network("10.254.0.0/22"),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn no_rules_allow_nothing() {
        let e = egress(vec![]);
        assert_eq!(
            e.check(addr("10.0.0.5:443")).unwrap_err(),
            "the staging egress rules do not allow 10.0.0.5:443 (allow it with a staging \
             security group)"
        );
    }

    #[test]
    fn a_rule_allows_by_network_and_port_range() {
        let e = egress(vec![rule(
            Protocol::Tcp,
            &["10.0.0.0/8", "203.0.113.7"],
            &[(80, 80), (8000, 8100)],
        )]);
        for ok in [
            "10.0.0.5:80",
            "10.255.1.2:8000",
            "10.1.1.1:8100",
            "203.0.113.7:8050",
        ] {
            assert_eq!(e.check(addr(ok)), Ok(()), "{ok}");
        }
        for denied in [
            "11.0.0.5:80",
            "10.0.0.5:81",
            "10.0.0.5:7999",
            "10.0.0.5:8101",
            "203.0.113.8:80",
        ] {
            let reason = e.check(addr(denied)).unwrap_err();
            assert!(reason.contains("do not allow"), "{denied}: {reason}");
        }
    }

    #[test]
    fn empty_networks_and_ports_mean_any() {
        let e = egress(vec![rule(Protocol::Tcp, &[], &[])]);
        assert_eq!(e.check(addr("198.51.100.1:12345")), Ok(()));
        let e = egress(vec![rule(Protocol::All, &["198.51.100.0/24"], &[])]);
        assert_eq!(e.check(addr("198.51.100.1:80")), Ok(()));
        assert!(e.check(addr("198.51.101.1:80")).is_err());
    }

    #[test]
    fn only_tcp_or_all_rules_allow_a_download() {
        for protocol in [Protocol::Udp, Protocol::Icmp] {
            let e = egress(vec![rule(protocol, &["10.0.0.0/8"], &[])]);
            assert!(e.check(addr("10.0.0.5:80")).is_err(), "{protocol:?}");
        }
        let e = egress(vec![rule(Protocol::Udp, &["10.0.0.0/8"], &[(80, 80)])]);
        assert!(e.check(addr("10.0.0.5:80")).is_err());
        // The containers refuse these rules; they allow nothing here either.
        for bad in [
            rule(Protocol::All, &["10.0.0.0/8"], &[(80, 80)]),
            rule(Protocol::Tcp, &["10.0.0.300/8"], &[]),
            rule(Protocol::Tcp, &["10.0.0.0/8"], &[(90, 80)]),
        ] {
            assert!(
                egress(vec![bad.clone()])
                    .check(addr("10.0.0.5:80"))
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn loopback_link_local_and_the_host_are_never_reachable() {
        let e = egress(vec![rule(Protocol::All, &[], &[])]);
        for (denied, what) in [
            ("127.0.0.1:80", "a loopback address"),
            ("127.9.9.9:80", "a loopback address"),
            ("169.254.169.254:80", "a link-local address"),
            ("0.0.0.0:80", "an unspecified address"),
            ("224.0.0.1:80", "a multicast address"),
            ("255.255.255.255:80", "the broadcast address"),
            ("192.168.7.1:80", "an address of the staging host"),
            ("10.254.1.9:8080", "in the containers' network"),
        ] {
            let reason = e.check(addr(denied)).unwrap_err();
            assert_eq!(
                reason,
                format!(
                    "{denied} is {what}, which builds can never reach whatever the staging \
                     egress rules allow"
                )
            );
        }
        assert!(e
            .check(addr("[2001:db8::1]:80"))
            .unwrap_err()
            .contains("IPv4 only"));
        assert_eq!(e.check(addr("192.168.7.2:80")), Ok(()));
    }

    #[test]
    fn the_host_addresses_include_loopback() {
        assert!(host_addresses().unwrap().contains(&Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn file_names_come_from_the_last_path_segment() {
        assert_eq!(
            file_name("http://x/a/b/tool.tar.gz?v=1").as_deref(),
            Some("tool.tar.gz")
        );
        assert_eq!(file_name("http://x/a%20b").as_deref(), Some("a b"));
        for none in [
            "http://x",
            "http://x/",
            "http://x/a/..",
            "http://x/a%2Fb",
            "http://x/%2e%2e",
        ] {
            assert_eq!(file_name(none), None, "{none}");
        }
    }

    /// A server on loopback answering each request with the response its path names.
    async fn server(routes: Vec<(&'static str, String)>) -> u16 {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let response = routes
                        .iter()
                        .find(|(p, _)| *p == path)
                        .map(|(_, r)| r.clone())
                        .unwrap_or_else(|| {
                            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into()
                        });
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        port
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn redirect(to: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\n\r\n")
    }

    /// Loopback allowed on the ports given (never so in a build), everything else refused.
    fn only_ports(ports: Vec<u16>) -> impl Fn(SocketAddr) -> Result<(), String> + Sync {
        move |a: SocketAddr| {
            if a.ip().is_loopback() && ports.contains(&a.port()) {
                Ok(())
            } else {
                Err(format!("{a} refused"))
            }
        }
    }

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(20)
    }

    #[tokio::test]
    async fn a_download_is_hashed_limited_and_redirects_are_checked_again() {
        let other = server(vec![("/elsewhere", ok("far"))]).await;
        let port = server(vec![
            ("/file", ok("hello\n")),
            ("/moved", redirect("/file")),
            (
                "/away",
                redirect(&format!("http://127.0.0.1:{other}/elsewhere")),
            ),
            ("/loop", redirect("/loop")),
            ("/big", ok(&"x".repeat(100))),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let check = only_ports(vec![port]);
        let got = fetch(
            4,
            &url("/moved"),
            &check,
            1000,
            later(),
            &dir.path().join("a"),
        )
        .await
        .unwrap();
        assert_eq!(got.bytes, 6);
        assert_eq!(
            got.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(b"hello\n")))
        );
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello\n");

        let e = fetch(
            4,
            &url("/away"),
            &check,
            1000,
            later(),
            &dir.path().join("b"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("line 4: ADD {}: 127.0.0.1:{other} refused", url("/away"))
        );
        let e = fetch(
            4,
            &url("/loop"),
            &check,
            1000,
            later(),
            &dir.path().join("c"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().ends_with("more than 5 redirects"), "{e}");
        let e = fetch(4, &url("/big"), &check, 99, later(), &dir.path().join("d"))
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("the file is larger than the build's disk limit (99 bytes)"),
            "{e}"
        );
        let e = fetch(
            4,
            &url("/nope"),
            &check,
            1000,
            later(),
            &dir.path().join("e"),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().ends_with(&format!(
                "the server at 127.0.0.1:{port} answered 404 Not Found"
            )),
            "{e}"
        );
        let e = fetch(
            4,
            "https://127.0.0.1/x",
            &check,
            1000,
            later(),
            &dir.path().join("f"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("without TLS"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_server_and_the_time_limit_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: bound, then closed.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let check = only_ports(vec![port]);
        let url = format!("http://127.0.0.1:{port}/x");
        let e = fetch(2, &url, &check, 10, later(), &dir.path().join("a"))
            .await
            .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "line 2: ADD {url}: cannot reach 127.0.0.1:{port}: "
            )),
            "{e}"
        );

        // A server that never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let check = only_ports(vec![port]);
        let url = format!("http://127.0.0.1:{port}/x");
        let soon = Instant::now() + std::time::Duration::from_millis(300);
        let e = fetch(2, &url, &check, 10, soon, &dir.path().join("b"))
            .await
            .unwrap_err();
        assert!(
            e.to_string().ends_with("within the build's time limit"),
            "{e}"
        );
        drop(silent);
    }
}
