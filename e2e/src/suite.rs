//! The user's journey with the `kiln` CLI against a running platform, whatever brought it up
//! (`deploy/up`, `deploy/cluster`): push each example app (the Dockerfile one with `-s docker`)
//! and get 200 through the router, push naming a buildpack, a manifest with two apps, scale to
//! 3 and see three instances answer,
//! crash an instance and see it restarted, restage, `logs --recent` with STG, APP and RTR
//! lines, `ssh -c`, delete with routes, and bad input refused with its reason (missing path,
//! unknown stack, a failing buildpack, an oversized upload) leaving nothing behind.
//!
//! Every step returns an error naming what it saw, never panics, so the caller can tear its
//! platform down and report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::deployed::repo;

/// Where the platform is and how to reach it.
pub struct Target {
    /// The `kiln` binary.
    pub kiln: PathBuf,
    /// Its `KILN_HOME`, logged in as admin.
    pub home: PathBuf,
    /// `host:port` of the router's app listener.
    pub router: String,
    /// The apps' domain (`NAME.<domain>`).
    pub domain: String,
    /// The stacks the platform has (`bookworm` adds the python and nodejs examples).
    pub stacks: Vec<String>,
    /// The controller's upload limit, MiB, when the platform was given a small one (the
    /// oversized-upload step is skipped otherwise).
    pub max_upload_mb: Option<u64>,
    /// A scratch directory of the caller's.
    pub scratch: PathBuf,
}

/// What `kiln` printed and how it exited.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1: killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

type Step<T = ()> = Result<T, String>;

impl Target {
    /// Runs `kiln args...` (no colour, no terminal).
    pub async fn kiln(&self, args: &[&str]) -> Step<Run> {
        let out = tokio::process::Command::new(&self.kiln)
            .args(args)
            .env("KILN_HOME", &self.home)
            .env("NO_COLOR", "1")
            .current_dir(&self.scratch)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", self.kiln.display()))?;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `kiln args...`, which must succeed.
    pub async fn ok(&self, args: &[&str]) -> Step<Run> {
        let r = self.kiln(args).await?;
        if r.code != 0 {
            return Err(format!(
                "kiln {} exited {}:\n{}{}",
                args.join(" "),
                r.code,
                r.stdout,
                r.stderr
            ));
        }
        Ok(r)
    }

    /// Runs `kiln args...`, which must fail; its output.
    pub async fn fails(&self, args: &[&str]) -> Step<Run> {
        let r = self.kiln(args).await?;
        if r.code == 0 {
            return Err(format!(
                "kiln {} succeeded but should have failed:\n{}{}",
                args.join(" "),
                r.stdout,
                r.stderr
            ));
        }
        Ok(r)
    }

    /// `GET path` of app `name` through the router: status and body (0 when unreachable).
    pub async fn get(&self, name: &str, path: &str) -> (u16, String) {
        let client = reqwest::Client::new();
        let r = client
            .get(format!("http://{}{path}", self.router))
            .header("host", format!("{name}.{}", self.domain))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match r {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// Waits until app `name` answers 200 with a body containing `needle`.
    pub async fn answers(&self, name: &str, needle: &str) -> Step {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(name, "/").await;
            if status == 200 && body.contains(needle) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} does not answer with {needle:?} through the router: {status} {body}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Pushes `examples/<example>` as `name` on `stack` with `extra` arguments; checks the
    /// output names the app's URL and the app answers with its greeting.
    async fn push_example(&self, name: &str, example: &str, stack: &str, extra: &[&str]) -> Step {
        let path = repo().join("examples").join(example);
        let path = path.to_string_lossy();
        let mut args = vec!["push", name, "-p", &path, "-s", stack];
        args.extend_from_slice(extra);
        let r = self.ok(&args).await?;
        if !r
            .stdout
            .contains(&format!("App URL: http://{name}.{}", self.domain))
        {
            return Err(format!("kiln push {name}: no App URL in\n{}", r.stdout));
        }
        self.answers(name, &format!("Hello from {example}")).await
    }
}

/// Runs the whole journey; the apps it made are deleted when it succeeds.
pub async fn run(t: &Target) -> Step {
    let started = Instant::now();
    let step = |what: &str| eprintln!("suite: {what} ({:.0?})", started.elapsed());

    step("push each example");
    t.push_example("e2e-static", "staticfile", "tiny", &[])
        .await?;
    t.push_example("e2e-procfile", "procfile", "tiny", &[])
        .await?;
    t.push_example("e2e-bin", "binary", "tiny", &["-b", "binary"])
        .await?;
    let droplet = t.ok(&["app", "e2e-bin"]).await?.stdout;
    if !droplet
        .lines()
        .any(|l| l.starts_with("buildpacks:") && l.contains("binary"))
    {
        return Err(format!(
            "e2e-bin was not staged by the binary buildpack:\n{droplet}"
        ));
    }
    // The Dockerfile example (FROM tiny), built at staging into an image droplet.
    t.push_example("e2e-docker", "dockerfile", "docker", &[])
        .await?;
    if t.stacks.iter().any(|s| s == "bookworm") {
        t.push_example("e2e-python", "python", "bookworm", &[])
            .await?;
        t.push_example("e2e-nodejs", "nodejs", "bookworm", &[])
            .await?;
    }

    step("a manifest with two apps");
    manifest_with_two_apps(t).await?;

    step("scale to 3");
    t.ok(&["scale", "e2e-bin", "-i", "3"]).await?;
    three_instances_answer(t).await?;

    step("crash an instance");
    crash_and_restart(t).await?;

    step("restage");
    let r = t.ok(&["restage", "e2e-static"]).await?;
    if !r.stdout.contains("Staging") && !r.stdout.contains("STG") {
        return Err(format!("kiln restage shows no staging:\n{}", r.stdout));
    }
    t.answers("e2e-static", "Hello from staticfile").await?;

    step("logs --recent");
    let logs = t.ok(&["logs", "e2e-bin", "--recent"]).await?.stdout;
    for tag in ["[STG", "[APP/PROC/WEB/0]", "[RTR", "[CELL"] {
        if !logs.contains(tag) {
            return Err(format!("kiln logs --recent has no {tag} line:\n{logs}"));
        }
    }

    step("ssh -c");
    let r = t
        .ok(&[
            "ssh",
            "e2e-bin",
            "-i",
            "1",
            "-c",
            "echo index=$CF_INSTANCE_INDEX; id -u",
        ])
        .await?;
    if !r.stdout.contains("index=1") {
        return Err(format!("kiln ssh -c ran elsewhere: {}", r.stdout));
    }
    let r = t.fails(&["ssh", "e2e-bin", "-c", "exit 7"]).await?;
    if r.code != 7 {
        return Err(format!("kiln ssh -c 'exit 7' exited {}", r.code));
    }

    step("bad input");
    bad_input(t).await?;

    step("delete");
    for app in [
        "e2e-static",
        "e2e-procfile",
        "e2e-bin",
        "e2e-m1",
        "e2e-m2",
        "e2e-python",
        "e2e-nodejs",
        "e2e-docker",
    ] {
        if t.kiln(&["app", app]).await?.code == 0 {
            t.ok(&["delete", app, "-r", "-f"]).await?;
        }
    }
    let (status, _) = t.get("e2e-static", "/").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = status;
    while status != 404 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = t.get("e2e-static", "/").await.0;
    }
    if status != 404 {
        return Err(format!("a deleted app's route answers {status}"));
    }
    let apps = t.ok(&["apps"]).await?.stdout;
    let routes = t.ok(&["routes"]).await?.stdout;
    if apps.contains("e2e-") || routes.contains("e2e-") {
        return Err(format!(
            "deleted apps or routes are still listed:\n{apps}\n{routes}"
        ));
    }
    step("done");
    Ok(())
}

async fn manifest_with_two_apps(t: &Target) -> Step {
    let dir = t.scratch.join("two-apps");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let examples = repo().join("examples");
    let manifest = format!(
        "applications:\n- name: e2e-m1\n  path: {}\n  stack: tiny\n  memory: 64M\n  env: {{GREETING: one}}\n- name: e2e-m2\n  path: {}\n  stack: tiny\n  instances: 2\n",
        examples.join("procfile").display(),
        examples.join("binary").display()
    );
    std::fs::write(dir.join("manifest.yml"), manifest).map_err(|e| e.to_string())?;
    let manifest = dir.join("manifest.yml");
    t.ok(&["push", "-f", &manifest.to_string_lossy()]).await?;
    t.answers("e2e-m1", "Hello from procfile").await?;
    t.answers("e2e-m2", "Hello from binary").await?;
    let env = t.ok(&["env", "e2e-m1"]).await?.stdout;
    if !env.contains("GREETING") || !env.contains("one") {
        return Err(format!("the manifest's env is not the app's:\n{env}"));
    }
    Ok(())
}

/// The binary example says which instance it is; three distinct ones must answer.
async fn three_instances_answer(t: &Target) -> Step {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        if Instant::now() > deadline {
            return Err(format!(
                "after scaling to 3 only instances {seen:?} answered"
            ));
        }
        let (status, body) = t.get("e2e-bin", "/").await;
        if status == 200 {
            if let Some(i) = body.split("instance ").nth(1) {
                seen.insert(
                    i.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Kills instance 0's server from inside: the cell reports the crash, the controller
/// restarts it, the app keeps answering and `kiln events` shows the crash.
async fn crash_and_restart(t: &Target) -> Step {
    // The instance may be gone before the command's answer: its outcome is what follows.
    t.kiln(&["ssh", "e2e-bin", "-i", "0", "-c", "kill -9 $(pidof httpd)"])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = t.ok(&["events", "e2e-bin"]).await?.stdout;
        let app = t.ok(&["app", "e2e-bin"]).await?.stdout;
        let running = app.matches("running").count();
        if events.contains("crash") && running >= 3 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no crash event and 3 running instances after killing instance 0:\n{events}\n{app}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    t.answers("e2e-bin", "Hello from binary").await
}

async fn bad_input(t: &Target) -> Step {
    let before = t.ok(&["apps"]).await?.stdout;

    let r = t
        .fails(&["push", "e2e-bad", "-p", "/nonexistent/app"])
        .await?;
    if !r.stderr.contains("/nonexistent/app") {
        return Err(format!("a missing path is not named: {}", r.stderr));
    }
    let static_dir = repo().join("examples/staticfile");
    let static_dir = static_dir.to_string_lossy();
    let r = t
        .fails(&["push", "e2e-bad", "-p", &static_dir, "-s", "nosuch"])
        .await?;
    if !(r.stderr.contains("nosuch") && r.stderr.contains("tiny")) {
        return Err(format!(
            "an unknown stack is refused without the list of stacks: {}",
            r.stderr
        ));
    }
    if t.ok(&["apps"]).await?.stdout != before {
        return Err("a refused push left an app behind".into());
    }

    // A buildpack that fails with its own words and exit code.
    let bp = t.scratch.join("failing-buildpack");
    let bin = bp.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    let scripts = [
        (
            "detect",
            "#!/bin/sh\n[ -f \"$1/FAIL_ME\" ] && echo failing\n",
        ),
        (
            "compile",
            "#!/bin/sh\necho 'compiling...'\necho 'the e2e buildpack gives up' >&2\nexit 3\n",
        ),
        ("release", "#!/bin/sh\necho '--- {}'\n"),
    ];
    for (name, text) in scripts {
        use std::os::unix::fs::PermissionsExt;
        let file = bin.join(name);
        std::fs::write(&file, text).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    if !t.ok(&["buildpacks"]).await?.stdout.contains("e2e-failing") {
        t.ok(&[
            "create-buildpack",
            "e2e-failing",
            &bp.to_string_lossy(),
            "99",
            "-s",
            "tiny",
        ])
        .await?;
    }
    let app = t.scratch.join("failing-app");
    std::fs::create_dir_all(&app).map_err(|e| e.to_string())?;
    std::fs::write(app.join("FAIL_ME"), "x").map_err(|e| e.to_string())?;
    let r = t
        .fails(&[
            "push",
            "e2e-failing",
            "-p",
            &app.to_string_lossy(),
            "-s",
            "tiny",
            "-b",
            "e2e-failing",
        ])
        .await?;
    let all = format!("{}{}", r.stdout, r.stderr);
    if !all.contains("the e2e buildpack gives up") || !all.contains("exit") {
        return Err(format!(
            "a failed staging does not show the buildpack's output and exit code:\n{all}"
        ));
    }
    t.ok(&["delete", "e2e-failing", "-r", "-f"]).await?;

    if let Some(limit) = t.max_upload_mb {
        let big = t.scratch.join("big-app");
        std::fs::create_dir_all(&big).map_err(|e| e.to_string())?;
        // Incompressible bytes, a MiB more than the limit.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let bytes: Vec<u8> = (0..(limit + 1) << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        std::fs::write(big.join("blob.bin"), bytes).map_err(|e| e.to_string())?;
        std::fs::write(big.join("index.html"), "big").map_err(|e| e.to_string())?;
        let r = t
            .fails(&[
                "push",
                "e2e-big",
                "-p",
                &big.to_string_lossy(),
                "-s",
                "tiny",
            ])
            .await?;
        if !r.stderr.contains(&format!("{limit} MiB")) {
            return Err(format!(
                "an oversized upload does not name the limit: {}",
                r.stderr
            ));
        }
        let r = t.kiln(&["app", "e2e-big"]).await?;
        if r.code == 0 && !r.stdout.contains("stopped") {
            return Err(format!(
                "an oversized upload left a started app:\n{}",
                r.stdout
            ));
        }
        if r.code == 0 {
            t.ok(&["delete", "e2e-big", "-r", "-f"]).await?;
        }
    }
    Ok(())
}
