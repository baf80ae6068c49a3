//! `kiln logs NAME [--recent]`: an app's log lines, `<time> [TAG] OUT|ERR message`, coloured
//! by source on a terminal; live from the controller's server-sent events stream.

use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::api::{ApiError, Client};
use crate::output::{paint, Out};

/// `kiln logs` arguments.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  kiln logs hello            # follow live (Ctrl-C stops)\n  kiln logs hello --recent   # the last lines"
)]
pub struct Args {
    /// The app.
    pub name: String,
    /// Print the recent lines and exit.
    #[arg(long)]
    pub recent: bool,
}

/// One line for people: `2024-05-01T10:00:00.12Z [APP/PROC/WEB/0] OUT hello`.
pub fn format_line(l: &Value) -> String {
    let ns = l["timestamp_ns"].as_u64().unwrap_or(0);
    let secs = ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let cs = (ns / 10_000_000) % 100;
    let source = l["source"].as_str().unwrap_or("?");
    let stream = l["stream"].as_str().unwrap_or("OUT");
    let code = match source {
        "STG" => "36",
        "API" => "35",
        "RTR" => "34",
        "CELL" => "33",
        _ => "32",
    };
    let stream_text = if stream == "ERR" {
        paint(stream, "31")
    } else {
        stream.to_string()
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{cs:02} {} {stream_text} {}",
        paint(&format!("[{source}]"), code),
        l["message"].as_str().unwrap_or("")
    )
}

/// Opens the live stream of `app` (lines from now on).
pub async fn open(client: &mut Client, app: &str) -> Result<reqwest::Response, ApiError> {
    let path = format!("/v3/apps/{app}/logs/stream");
    client
        .send(|c| {
            c.request(reqwest::Method::GET, &path)
                .header("Accept", "text/event-stream")
        })
        .await
}

/// The `log` events of a server-sent events answer, as JSON lines.
pub fn lines(resp: reqwest::Response) -> impl Stream<Item = Value> {
    let bytes = resp.bytes_stream();
    futures::stream::unfold(
        (bytes, String::new(), std::collections::VecDeque::new()),
        |(mut bytes, mut buf, mut ready)| async move {
            loop {
                if let Some(v) = ready.pop_front() {
                    return Some((v, (bytes, buf, ready)));
                }
                let chunk = bytes.next().await?.ok()?;
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    let mut kind = "message";
                    let mut data = String::new();
                    for line in event.lines() {
                        if let Some(k) = line.strip_prefix("event:") {
                            kind = k.trim();
                        } else if let Some(d) = line.strip_prefix("data:") {
                            data.push_str(d.trim_start());
                        }
                    }
                    if kind == "log" {
                        if let Ok(v) = serde_json::from_str::<Value>(&data) {
                            ready.push_back(v);
                        }
                    }
                }
            }
        },
    )
}

/// Runs `kiln logs`.
pub async fn run(args: Args, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    let guid = crate::output::s(&app, "guid");
    if args.recent {
        let recent = client.get(&format!("/v3/apps/{guid}/logs/recent")).await?;
        if out.json {
            out.json(&recent);
        } else {
            for l in recent["resources"].as_array().into_iter().flatten() {
                println!("{}", format_line(l));
            }
        }
        return Ok(0);
    }
    out.say(format!("Retrieving logs for app {}...\n", args.name));
    let resp = open(&mut client, &guid).await?;
    let mut stream = std::pin::pin!(lines(resp));
    while let Some(l) = stream.next().await {
        if out.json {
            println!("{l}");
        } else {
            println!("{}", format_line(&l));
        }
    }
    anyhow::bail!("the log stream from {} ended", client.api)
}
