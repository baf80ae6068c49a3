//! Desired state, read from the database: every process of a STARTED app with a STAGED
//! current droplet, with what a cell needs to run its instances.

use std::collections::{BTreeMap, HashMap};

use kiln_bus::cell::ImageProcess;

use crate::db::Db;
use crate::image_process;

/// A process that should run `instances` instances.
#[derive(Debug, Clone)]
pub struct DesiredProcess {
    /// The process.
    pub guid: String,
    /// Its type.
    pub kind: String,
    /// Changes on restart and on a new droplet: instances of another version are replaced.
    pub version: String,
    /// How many instances.
    pub instances: u32,
    /// Limits, MiB.
    pub memory_mb: u64,
    /// Limits, MiB.
    pub disk_mb: u64,
    /// `port`, `http` or `process`.
    pub health_check: String,
    /// The path of an `http` check (the cell's default `/` when none).
    pub health_check_endpoint: Option<String>,
    /// Seconds to become healthy (the cell's default when none).
    pub health_check_timeout: Option<u64>,
    /// Seconds one probe may take (the cell's default when none).
    pub health_check_invocation_timeout: Option<u64>,
    /// The command, or why there is none.
    pub command: Result<String, String>,
    /// The app.
    pub app_guid: String,
    /// Its name.
    pub app_name: String,
    /// Its space.
    pub space_guid: String,
    /// Its environment variables.
    pub env: BTreeMap<String, String>,
    /// The droplet.
    pub droplet_guid: String,
    /// Its sha256.
    pub droplet_sha256: String,
    /// Its stack.
    pub stack: String,
    /// The image an operator set for the stack (`stack.<name>.image`), by manifest digest;
    /// None: each cell's own copy. Part of `version`, so that setting it replaces instances.
    pub stack_image: Option<String>,
    /// The routes of this app and process type (`host.domain/path`).
    pub routes: Vec<String>,
    /// An image droplet: its manifest digest and how its instances run (or why they cannot).
    /// None: a buildpack droplet on `stack`.
    pub image: Option<(String, Result<ImageProcess, String>)>,
}

#[derive(sqlx::FromRow)]
struct Row {
    guid: String,
    kind: String,
    version: String,
    command: Option<String>,
    instances: i64,
    memory_mb: i64,
    disk_mb: i64,
    health_check_type: String,
    user_command: Option<String>,
    health_check_endpoint: Option<String>,
    health_check_timeout: Option<i64>,
    health_check_invocation_timeout: Option<i64>,
    app_guid: String,
    app_name: String,
    space_guid: String,
    env: String,
    droplet_guid: String,
    droplet_sha256: Option<String>,
    stack: String,
    stack_image: Option<String>,
    process_types: String,
    start_command: Option<String>,
    image_digest: Option<String>,
    image_config: Option<String>,
}

const QUERY: &str = "SELECT p.guid, p.kind, p.version, p.command, p.instances, p.memory_mb, p.disk_mb, p.health_check_type,
        p.user_command, p.health_check_endpoint, p.health_check_timeout, p.health_check_invocation_timeout,
        a.guid AS app_guid, a.name AS app_name, a.space_guid, a.env,
        d.guid AS droplet_guid, d.sha256 AS droplet_sha256, d.stack, st.image_digest AS stack_image, d.process_types, d.start_command,
        d.image_digest, i.config AS image_config
    FROM processes p
    JOIN apps a ON a.guid = p.app_guid
    JOIN droplets d ON d.guid = a.droplet_guid
    LEFT JOIN stacks st ON st.name = d.stack
    LEFT JOIN images i ON i.digest = d.image_digest AND i.state = 'READY'
    WHERE a.state = 'STARTED' AND d.state = 'STAGED' AND p.instances > 0";

const ROUTES: &str = "SELECT rd.app_guid, rd.process_type, r.host, r.path, dm.name
    FROM route_destinations rd
    JOIN routes r ON r.guid = rd.route_guid
    JOIN domains dm ON dm.guid = r.domain_guid";

/// Every desired process, by guid.
pub async fn load(db: &Db) -> Result<HashMap<String, DesiredProcess>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(QUERY).fetch_all(db).await?;
    let routes: Vec<(String, String, String, String, String)> =
        sqlx::query_as(ROUTES).fetch_all(db).await?;
    let mut by_process: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (app, kind, host, path, domain) in routes {
        let url = if host.is_empty() {
            format!("{domain}{path}")
        } else {
            format!("{host}.{domain}{path}")
        };
        by_process.entry((app, kind)).or_default().push(url);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let types: BTreeMap<String, String> =
                serde_json::from_str(&r.process_types).unwrap_or_default();
            let command = r
                .user_command
                .clone()
                .filter(|c| !c.trim().is_empty())
                .or_else(|| r.command.clone())
                .filter(|c| !c.trim().is_empty())
                .or_else(|| types.get(&r.kind).cloned())
                .or_else(|| r.start_command.clone().filter(|_| r.kind == "web"))
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "the droplet has no command for process type {}: set one with the process's command",
                        r.kind
                    )
                });
            // An image droplet runs its image (no stack, no stack image): the process's own
            // command if it has one, else the image's.
            let image = r.image_digest.clone().map(|digest| {
                let process = match &r.image_config {
                    Some(config) => {
                        let config = serde_json::from_str(config).unwrap_or_default();
                        let own = r.user_command.as_deref().filter(|c| !c.trim().is_empty());
                        image_process::process(&config, own)
                    }
                    None => Err(format!("the droplet's image {digest} is not in the image store")),
                };
                (digest, process)
            });
            let stack_image = r.stack_image.filter(|_| image.is_none());
            let routes = by_process
                .remove(&(r.app_guid.clone(), r.kind.clone()))
                .unwrap_or_default();
            let p = DesiredProcess {
                guid: r.guid.clone(),
                kind: r.kind,
                version: match &stack_image {
                    Some(image) => format!("{}+{image}", r.version),
                    None => r.version,
                },
                instances: u32::try_from(r.instances).unwrap_or(0),
                memory_mb: u64::try_from(r.memory_mb).unwrap_or(0),
                disk_mb: u64::try_from(r.disk_mb).unwrap_or(0),
                health_check: r.health_check_type,
                health_check_endpoint: r.health_check_endpoint,
                health_check_timeout: r.health_check_timeout.and_then(|t| u64::try_from(t).ok()),
                health_check_invocation_timeout: r
                    .health_check_invocation_timeout
                    .and_then(|t| u64::try_from(t).ok()),
                command,
                app_guid: r.app_guid,
                app_name: r.app_name,
                space_guid: r.space_guid,
                env: serde_json::from_str(&r.env).unwrap_or_default(),
                droplet_guid: r.droplet_guid,
                droplet_sha256: r.droplet_sha256.unwrap_or_default(),
                stack: r.stack,
                stack_image,
                routes,
                image,
            };
            (r.guid, p)
        })
        .collect())
}
