//! Route keys: a registered uri (`App.Example.com:80/api/`) becomes a lowercase host without
//! its port and a path prefix without a trailing slash; a request's `Host` is read the same
//! way, and a prefix matches whole path segments only (`/api` matches `/api` and `/api/x`,
//! not `/apis`).

use serde::Serialize;

/// Where a route lives in the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RouteKey {
    /// Lowercase, no port, no trailing dot.
    pub host: String,
    /// Empty, or `/`-led without a trailing `/`.
    pub path: String,
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.host, self.path)
    }
}

/// Reads a registered uri; `None` when it names no host.
pub fn parse_route(uri: &str) -> Option<RouteKey> {
    let uri = uri.trim();
    let uri = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .unwrap_or(uri);
    let (host, path) = match uri.find('/') {
        Some(i) => uri.split_at(i),
        None => (uri, ""),
    };
    let host = normalize_host(host)?;
    let path = path.split(['?', '#']).next().unwrap_or_default();
    Some(RouteKey {
        host,
        path: path.trim_end_matches('/').to_string(),
    })
}

/// A `Host` header (or authority) as a table host: lowercase, without port or trailing dot;
/// `None` when empty.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal keeps its brackets; anything after `]` is a port.
        let end = rest.find(']')?;
        &raw[..end + 2]
    } else {
        raw.split(':').next().unwrap_or_default()
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Whether a route's path prefix covers a request path.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, path: &str) -> Option<RouteKey> {
        Some(RouteKey {
            host: host.into(),
            path: path.into(),
        })
    }

    #[test]
    fn uris_become_lowercase_hosts_and_trimmed_prefixes() {
        assert_eq!(parse_route("App.Example.com"), key("app.example.com", ""));
        assert_eq!(
            parse_route("app.example.com:80/"),
            key("app.example.com", "")
        );
        assert_eq!(
            parse_route("app.example.com/api/v1/"),
            key("app.example.com", "/api/v1")
        );
        assert_eq!(parse_route("http://a.b/x?q=1"), key("a.b", "/x"));
        assert_eq!(parse_route("[::1]:8080/p"), key("[::1]", "/p"));
        assert_eq!(parse_route(""), None);
        assert_eq!(parse_route("/only-a-path"), None);
        assert_eq!(parse_route("[::1"), None);
    }

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(
            normalize_host("APP.example.com:8081").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(
            normalize_host("app.example.com.").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(normalize_host(":80"), None);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/users"));
        assert!(!prefix_matches("/api", "/apis"));
        assert!(!prefix_matches("/api", "/"));
    }
}
