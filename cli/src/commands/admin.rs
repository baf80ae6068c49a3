//! Operator commands (`kiln admin …`): the cells the controller hears from, and draining one
//! (its instances move to other cells, then the cell's executor exits); images, stack imports
//! and configuration are in [`super::images`].

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::images::{self, ConfigCommand, ImageCommand, StackCommand};
use crate::api::{ApiError, Client};
use crate::output::{s, table, Out};

/// `kiln admin` subcommands.
#[derive(clap::Subcommand)]
pub enum Admin {
    /// List the cells: zone, stacks, instances, free memory, disk and containers.
    Cells,
    /// Operate on one cell.
    #[command(subcommand)]
    Cell(CellCommand),
    /// List the images of the controller's image store.
    Images,
    /// Add images to the image store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Import a stack image and switch the stack to it.
    #[command(subcommand)]
    Stack(StackCommand),
    /// Show or change platform settings (`stack.<name>.image`).
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `kiln admin cell` subcommands.
#[derive(clap::Subcommand)]
pub enum CellCommand {
    /// Drain a cell: its instances start on other cells and answer there before the cell
    /// stops them; then its executor exits. Waits and shows the instances left.
    #[command(
        after_help = "Examples:\n  kiln admin cells\n  kiln admin cell drain cell-0\n  kiln admin cell drain cell-0 --no-wait"
    )]
    Drain(DrainArgs),
}

/// `kiln admin cell drain` arguments.
#[derive(clap::Args)]
pub struct DrainArgs {
    /// The cell's id (`kiln admin cells`).
    pub id: String,
    /// Return once the drain is asked for, without waiting for the cell to empty.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the cell to empty, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

/// Runs `kiln admin …`.
pub async fn run(command: Admin, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    match command {
        Admin::Cells => cells(&mut client, out).await,
        Admin::Cell(CellCommand::Drain(a)) => drain(&mut client, a, out).await,
        Admin::Images => images::list(&mut client, out).await,
        Admin::Image(ImageCommand::Import { archive, name }) => {
            images::import(&mut client, &archive, name.as_deref(), out).await
        }
        Admin::Stack(StackCommand::Import {
            name,
            archive,
            wait,
        }) => images::stack_import(&mut client, &name, &archive, &wait, out).await,
        Admin::Config(ConfigCommand::Get { key }) => {
            images::get(&mut client, key.as_deref(), out).await
        }
        Admin::Config(ConfigCommand::Set { key, value, wait }) => {
            images::set(&mut client, &key, &value, &wait, out).await
        }
    }
}

fn mb(v: &Value) -> String {
    format!(
        "{}/{} MB",
        v["available"].as_u64().unwrap_or(0),
        v["total"].as_u64().unwrap_or(0)
    )
}

async fn cells(client: &mut Client, out: Out) -> anyhow::Result<u8> {
    let cells = client.list("/v3/cells").await?;
    if out.json {
        out.json(&json!({"resources": cells}));
        return Ok(0);
    }
    if cells.is_empty() {
        out.say("No cells: the controller has heard from none in the last 10 s.");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = cells
        .iter()
        .map(|c| {
            let stacks: Vec<String> = c["stacks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let state = if c["evacuating"].as_bool().unwrap_or(false) {
                "draining"
            } else {
                "up"
            };
            vec![
                s(c, "id"),
                state.to_string(),
                s(c, "zone"),
                stacks.join(", "),
                c["instances"].as_u64().unwrap_or(0).to_string(),
                mb(&c["memory_mb"]),
                mb(&c["disk_mb"]),
                format!(
                    "{}/{}",
                    c["containers"]["available"].as_u64().unwrap_or(0),
                    c["containers"]["total"].as_u64().unwrap_or(0)
                ),
            ]
        })
        .collect();
    table(
        &[
            "cell",
            "state",
            "zone",
            "stacks",
            "instances",
            "free memory",
            "free disk",
            "free containers",
        ],
        &rows,
    );
    Ok(0)
}

async fn drain(client: &mut Client, a: DrainArgs, out: Out) -> anyhow::Result<u8> {
    let path = format!("/v3/cells/{}", a.id);
    let cell = match client
        .post(&format!("{path}/actions/drain"), &json!({}))
        .await
    {
        Err(ApiError::Status { status: 404, .. }) => anyhow::bail!(
            "the controller hears from no cell {:?}; `kiln admin cells` lists the cells",
            a.id
        ),
        r => r?,
    };
    out.say(format!(
        "Draining cell {} ({} instances to move)...",
        a.id,
        cell["instances"].as_u64().unwrap_or(0)
    ));
    if a.no_wait {
        if out.json {
            out.json(&cell);
        }
        return Ok(0);
    }
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut last = None;
    loop {
        let left = match client.get(&path).await {
            // The executor exits once it is empty and the controller forgets it.
            Err(ApiError::Status { status: 404, .. }) => None,
            r => r?["instances"].as_u64(),
        };
        match left {
            None | Some(0) => break,
            Some(n) if last != Some(n) => {
                out.say(format!("  {n} instances left on {}", a.id));
                last = Some(n);
            }
            Some(_) => {}
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "cell {} still has instances after {} s: see `kiln admin cells` and the apps' \
                 events; other cells may lack room for them",
                a.id,
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if out.json {
        out.json(&json!({"id": a.id, "drained": true}));
    } else {
        out.say(format!("Cell {} is drained.", a.id));
    }
    Ok(0)
}
