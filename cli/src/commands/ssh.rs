//! `kiln ssh NAME -c COMMAND`: runs a command in one instance of an app (the controller's
//! `POST /v3/processes/:guid/instances/:index/exec`), prints its stdout and stderr as they
//! came back, and exits with its exit code. `kiln ssh NAME`: a session (a shell in the
//! instance) over the controller's WebSocket (`/v3/processes/:guid/instances/:index/ssh`,
//! see [`super::session`]).

use std::io::Write;

use serde_json::{json, Value};

use crate::api::{encode, ApiError, Client};
use crate::output::{paint_err, s, Out};

/// The exit code when the command was killed at its timeout (as `timeout(1)` exits).
const TIMED_OUT: u8 = 124;

/// `kiln ssh` arguments.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  kiln ssh hello\n  kiln ssh hello -c 'ls -la'\n  kiln ssh hello -i 1 -c 'echo $CF_INSTANCE_INDEX; df -h .'\n  kiln ssh hello --process worker -t 300 -c './bin/migrate'\n\nThe command runs with `sh -c` as the app's user in /home/vcap/app, with the app's and\nthe instance's environment (PORT, CF_INSTANCE_*, VCAP_APPLICATION), and no stdin; up to\n1 MiB of each of stdout and stderr comes back. kiln exits with the command's exit code,\n124 when it was killed at its timeout.\n\nWithout -c: a shell in the instance (`sh -i` when stdin is a terminal, `sh` reading\na script otherwise), streamed both ways; no pseudo-terminal, so no job control or\nfull-screen programs (like `cf ssh -T`). kiln exits with the shell's exit code."
)]
pub struct Args {
    /// The app.
    pub name: String,
    /// The instance index.
    #[arg(short = 'i', long = "index", default_value_t = 0)]
    pub index: u32,
    /// The process type.
    #[arg(long = "process", default_value = "web")]
    pub process: String,
    /// The command, run with `sh -c` in the instance; without it, a shell session.
    #[arg(short = 'c', long = "command")]
    pub command: Option<String>,
    /// Seconds before the command is killed, 1 to 600.
    #[arg(short = 't', long = "timeout", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

/// Runs `kiln ssh`.
pub async fn run(args: Args, out: Out) -> anyhow::Result<u8> {
    let mut client = Client::from_config()?;
    let app = client.app_by_name(&args.name).await?;
    let path = format!(
        "/v3/apps/{}/processes/{}",
        s(&app, "guid"),
        encode(&args.process)
    );
    let process = match client.get(&path).await {
        Ok(p) => p,
        Err(ApiError::Status { status: 404, .. }) => anyhow::bail!(
            "app '{}' has no process of type '{}'",
            args.name,
            args.process
        ),
        Err(e) => return Err(e.into()),
    };
    let Some(command) = args.command else {
        let path = format!(
            "/v3/processes/{}/instances/{}/ssh",
            s(&process, "guid"),
            args.index
        );
        return super::session::open(&mut client, &path).await;
    };
    let body = json!({"command": ["sh", "-c", command], "timeout_secs": args.timeout});
    let result = client
        .post(
            &format!(
                "/v3/processes/{}/instances/{}/exec",
                s(&process, "guid"),
                args.index
            ),
            &body,
        )
        .await?;
    if out.json {
        out.json(&result);
    } else {
        print_output(&result)?;
    }
    Ok(exit_code(&result))
}

/// Writes the command's stdout and stderr to ours, byte for byte, and says when some was
/// cut or the command was killed.
fn print_output(result: &Value) -> std::io::Result<()> {
    let text = |key: &str| result[key].as_str().unwrap_or("").to_string();
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text("stdout").as_bytes())?;
    stdout.flush()?;
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(text("stderr").as_bytes())?;
    if result["truncated"] == true {
        writeln!(
            stderr,
            "(output truncated: up to 1 MiB of each stream comes back)"
        )?;
    }
    if result["timed_out"] == true {
        let why = result["error"]
            .as_str()
            .unwrap_or("the command ran past its timeout and was killed");
        writeln!(stderr, "{} {why}", paint_err("FAILED"))?;
    }
    stderr.flush()
}

/// The command's exit code as ours: 124 when it timed out, 1 for a code a process cannot
/// exit with.
fn exit_code(result: &Value) -> u8 {
    if result["timed_out"] == true {
        return TIMED_OUT;
    }
    result["exit_code"]
        .as_i64()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_command() {
        assert_eq!(exit_code(&json!({"exit_code": 0})), 0);
        assert_eq!(exit_code(&json!({"exit_code": 3})), 3);
        assert_eq!(exit_code(&json!({"exit_code": 137})), 137);
        assert_eq!(exit_code(&json!({"exit_code": -1})), 1);
        assert_eq!(
            exit_code(&json!({"exit_code": null, "timed_out": true})),
            124
        );
    }
}
