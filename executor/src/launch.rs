//! What an instance's container and process are: the container spec (limits, the droplet
//! layer, NetIn to 8080, properties a restarted executor recognises), the process (the
//! droplet's launcher as vcap with the instance environment of Cloud Foundry), and the pumps
//! that carry its output to the app's log.

use kiln_containers::{ContainerSpec, Limits, NetIn, ProcessSpec};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::cell::Shared;
use crate::droplets::Layer;
use crate::instance::{Instance, ROLE, ROLE_PROPERTY};
use crate::report::{self, Ending};
use kiln_bus::cell::{CrashReason, ImageProcess, InstanceState};
use tracing::warn;

pub(crate) fn container_spec(inst: &Instance, layer: Option<&Layer>) -> ContainerSpec {
    let s = &inst.start;
    // What the instance runs: the droplet by sha256, or an image droplet by digest.
    let runs = match (layer, &s.stack_image) {
        (Some(layer), _) => layer.sha256.clone(),
        (None, Some(image)) => image.digest.clone(),
        (None, None) => String::new(),
    };
    let properties = [
        (ROLE_PROPERTY, ROLE.to_string()),
        ("kiln.app_guid", s.app_guid.clone()),
        ("kiln.process_guid", s.process_guid.clone()),
        ("kiln.process_type", s.process_type.clone()),
        ("kiln.index", s.index.to_string()),
        ("kiln.instance_guid", s.instance_guid.clone()),
        ("kiln.droplet_sha256", runs),
    ];
    ContainerSpec {
        handle: s.instance_guid.clone(),
        // An image an operator set for the stack, by digest, else the cell's own copy.
        stack: s
            .stack_image
            .as_ref()
            .map_or_else(|| s.stack.clone(), |image| image.digest.clone()),
        limits: Limits {
            memory_bytes: s.memory_mb.saturating_mul(1 << 20),
            disk_bytes: s.disk_mb.saturating_mul(1 << 20),
            // CPU weight in proportion to memory, as Diego does.
            cpu_shares: s.memory_mb.clamp(2, 262_144),
            ..Limits::default()
        },
        layers: layer.map(|l| l.path.clone()).into_iter().collect(),
        net_in: vec![NetIn {
            host_port: None,
            container_port: app_port(inst),
        }],
        properties: properties
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..ContainerSpec::default()
    }
}

pub(crate) fn process_spec(cell: &Shared, inst: &Instance, port: u16) -> ProcessSpec {
    let s = &inst.start;
    let env = kiln_droplet::Instance {
        app_id: s.app_guid.clone(),
        app_name: s.app_name.clone(),
        space_id: s.space_guid.clone(),
        index: s.index,
        instance_id: s.instance_guid.clone(),
        host_ip: cell.config.host_ip.clone(),
        host_port: port,
        memory_mib: s.memory_mb,
        disk_mib: s.disk_mb,
        uris: s.routes.clone(),
    };
    let Some(image) = &s.image else {
        let args = kiln_droplet::launcher_args(&s.start_command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut spec = ProcessSpec::new("/bin/sh", &args).user("vcap");
        // The app's variables first, the platform's last: they win (as in Cloud Foundry).
        spec.env = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        spec.env.extend(kiln_droplet::instance_env(&env));
        spec.dir = Some(kiln_droplet::APP_DIR.to_string());
        return spec;
    };
    image_process_spec(image, s, &env)
}

/// An image droplet's process: the image's argv as its `USER` (root, inside the user
/// namespace only, when it names none; a `user:group` runs with the user's own group) in its
/// `WORKDIR`, with its `ENV`, then the app's variables, then the platform's with `PORT` the
/// image's port.
fn image_process_spec(
    image: &ImageProcess,
    s: &kiln_bus::cell::InstanceStart,
    env: &kiln_droplet::Instance,
) -> ProcessSpec {
    let (path, args) = match image.command.split_first() {
        Some((path, args)) => (path.clone(), args.to_vec()),
        None => (String::from("/bin/sh"), Vec::new()),
    };
    let user = match image.user.split(':').next().unwrap_or_default() {
        "" => "0",
        user => user,
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut spec = ProcessSpec::new(&path, &args).user(user);
    spec.env = image.env.clone();
    spec.env
        .extend(s.env.iter().map(|(k, v)| format!("{k}={v}")));
    spec.env.extend(kiln_droplet::platform_env(env, image.port));
    spec.dir = Some(match image.working_dir.as_str() {
        "" => "/".to_string(),
        dir => dir.to_string(),
    });
    spec
}

/// The port the app listens on inside its container.
pub(crate) fn app_port(inst: &Instance) -> u16 {
    inst.start
        .image
        .as_ref()
        .map_or(kiln_droplet::APP_PORT, |image| image.port)
}

/// Streams lines of `stream` to the app's log.
pub(crate) async fn pump(
    nats: async_nats::Client,
    stream: Option<impl AsyncRead + Unpin>,
    app: String,
    source: String,
    kind: &'static str,
) {
    let Some(stream) = stream else { return };
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        report::log(&nats, &app, &source, kind, &line).await;
    }
}

pub(crate) async fn destroy(cell: &Shared, inst: &Instance, layer: Option<&Layer>) {
    let (id, guid) = (&cell.config.cell_id, inst.handle());
    report::cell_log(
        &cell.nats,
        inst,
        &format!("Cell {id} destroying container for instance {guid}"),
    )
    .await;
    match cell.backend.destroy(guid).await {
        Ok(()) => {
            report::cell_log(
                &cell.nats,
                inst,
                &format!("Cell {id} successfully destroyed container for instance {guid}"),
            )
            .await
        }
        Err(e) => warn!(error = %e, "container.destroy-failed"),
    }
    if let Some(layer) = layer {
        cell.droplets.release(layer);
    }
}

pub(crate) async fn start_failed(
    cell: &Shared,
    inst: &Instance,
    layer: Option<&Layer>,
    why: String,
) {
    if let Some(layer) = layer {
        cell.droplets.release(layer);
    }
    let (id, guid) = (&cell.config.cell_id, inst.handle());
    let message = format!("Cell {id} failed to create container for instance {guid}: {why}");
    warn!(reason = %why, "instance.start-failed");
    report::cell_log(&cell.nats, inst, &message).await;
    let ending = Ending {
        crash_reason: Some(CrashReason::StartFailed),
        exit_status: None,
        description: Some(why),
    };
    report::set_state(&cell.nats, inst, InstanceState::Crashed, ending).await;
}

pub(crate) async fn stopped(cell: &Shared, inst: &Instance) {
    let ending = Ending {
        description: Some("stopped as requested".into()),
        ..Ending::default()
    };
    report::set_state(&cell.nats, inst, InstanceState::Stopped, ending).await;
}
