//! The routes of a push: the manifest's `routes`, else `<hostname or name>.<default domain>`
//! for an app that has none yet; `no-route` maps none.

use serde_json::{json, Value};

use super::plan::Plan;
use crate::api::{encode, Client};
use crate::output::{s, Out};

/// A host name from an app name: lower case letters, digits and `-`.
pub fn host_for(name: &str) -> String {
    let h: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let h = h.trim_matches('-').to_string();
    if h.is_empty() {
        "app".into()
    } else {
        h.chars().take(63).collect()
    }
}

fn random_suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    format!("{:06x}", n & 0xff_ffff)
}

/// Splits `host.domain[/path]` on the longest known domain: (host, domain, path).
pub fn split_route<'a>(
    route: &str,
    domains: &'a [Value],
) -> anyhow::Result<(String, &'a Value, String)> {
    let (hostpart, path) = match route.find('/') {
        Some(i) => (&route[..i], route[i..].to_string()),
        None => (route, String::new()),
    };
    let best = domains
        .iter()
        .filter(|d| {
            let name = d["name"].as_str().unwrap_or("");
            !name.is_empty() && (hostpart == name || hostpart.ends_with(&format!(".{name}")))
        })
        .max_by_key(|d| d["name"].as_str().map(str::len).unwrap_or(0));
    let Some(d) = best else {
        let names: Vec<String> = domains.iter().map(|d| s(d, "name")).collect();
        anyhow::bail!(
            "route {route}: no domain of it is known (domains: {})",
            names.join(", ")
        );
    };
    let name = d["name"].as_str().unwrap_or("");
    let host = hostpart
        .strip_suffix(name)
        .unwrap_or("")
        .trim_end_matches('.')
        .to_string();
    Ok((host, d, path))
}

/// Finds or creates route host/domain/path in `space`; its guid.
pub async fn ensure(
    client: &mut Client,
    host: &str,
    domain: &Value,
    path: &str,
    space: &str,
) -> anyhow::Result<String> {
    let existing = client
        .list(&format!("/v3/routes?hosts={}", encode(host)))
        .await?;
    let dguid = s(domain, "guid");
    if let Some(r) = existing.iter().find(|r| {
        r["relationships"]["domain"]["data"]["guid"] == dguid.as_str() && s(r, "path") == path
    }) {
        return Ok(s(r, "guid"));
    }
    let body = json!({"host": host, "path": path, "relationships": {"domain": {"data": {"guid": dguid}}, "space": {"data": {"guid": space}}}});
    Ok(s(&client.post("/v3/routes", &body).await?, "guid"))
}

/// Maps the plan's routes to the app's web process.
pub async fn map(
    client: &mut Client,
    p: &Plan,
    app: &str,
    space: &str,
    out: Out,
) -> anyhow::Result<()> {
    if p.no_route {
        return Ok(());
    }
    let domains = client.list("/v3/domains").await?;
    let Some(default) = domains.first() else {
        anyhow::bail!("the platform has no domain to route to");
    };
    let mut wanted = Vec::new();
    for r in &p.routes {
        wanted.push(split_route(r, &domains)?);
    }
    if wanted.is_empty() {
        let has_routes = !client
            .list(&format!("/v3/apps/{app}/routes"))
            .await?
            .is_empty();
        if has_routes && p.hostname.is_none() && !p.random_route {
            return Ok(());
        }
        let mut host = p.hostname.clone().unwrap_or_else(|| host_for(&p.name));
        if p.random_route {
            host = format!("{host}-{}", random_suffix());
        }
        wanted.push((host, default, String::new()));
    }
    for (host, domain, path) in wanted {
        let url = format!("{host}.{}{path}", s(domain, "name"));
        out.say(format!("Mapping route {url}..."));
        let route = ensure(client, &host, domain, &path, space).await?;
        let body = json!({"destinations": [{"app": {"guid": app, "process": {"type": "web"}}}]});
        client
            .post(&format!("/v3/routes/{route}/destinations"), &body)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_on_the_longest_domain() {
        let d = vec![
            json!({"name": "example.com"}),
            json!({"name": "apps.example.com"}),
        ];
        let (h, dom, p) = split_route("web.apps.example.com/api", &d).unwrap();
        assert_eq!(
            (h.as_str(), dom["name"].as_str(), p.as_str()),
            ("web", Some("apps.example.com"), "/api")
        );
        assert!(split_route("a.other.org", &d).is_err());
        assert_eq!(host_for("My_App"), "my-app");
    }
}
