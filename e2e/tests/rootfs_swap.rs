//! Swapping a stack's root filesystem end to end: a controller, NATS, a stager, the router and
//! two cells (executors in this process). An app of four instances on tiny answers through
//! the router; an operator imports a new tiny image (tiny plus a layer with
//! `/etc/kiln-release`) into the image store and sets `stack.tiny.image` to it. Under a steady
//! request loop every instance is replaced, rolling, onto the new image without one failed
//! request; each instance sees the new file and reports the image's digest; a new staging
//! runs on it too. Rolling back (the original tiny, imported as an image) is the same
//! command. Bad input (an archive that is no image, an unknown image, an unknown key) changes
//! nothing. Test indexes 68 (the stager's backend), 78 and 79 (the cells), each with its own
//! data dir, address pool, port range and uid range; whatever the outcome, every backend
//! destroys what it holds.

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_e2e::images::image_archives;
use kiln_e2e::kiln::Kiln;
use kiln_e2e::platform::{
    backend_config, cell_config, send, start_executor, Leftovers, Platform, RequestLoop, Setup,
    ID_PROCFILE,
};
use kiln_testkit::Nats;
use reqwest::Method;
use serde_json::{json, Value};

const DOMAIN: &str = "apps.swap.test";
const STAGER: u32 = 68;
const CELL_A: u32 = 78;
const CELL_B: u32 = 79;
const INSTANCES: usize = 4;

#[test]
fn a_stack_image_swap_restarts_every_instance_onto_it_without_a_failed_request_and_rolls_back() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    let (a, b) = (
        cell_config(dir.path(), CELL_A, &nats.url),
        cell_config(dir.path(), CELL_B, &nats.url),
    );
    let leftovers = Leftovers::new(vec![
        backend_config(dir.path(), STAGER),
        a.backend_config(),
        b.backend_config(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(scenario(dir.path(), &nats, &[a, b]));
    drop(rt);
    drop(leftovers);
    result.unwrap_or_else(|e| panic!("{e}"));
}

async fn scenario(dir: &Path, nats: &Nats, cells: &[kiln_executor::Config]) -> Result<(), String> {
    let p = Platform::start(Setup {
        dir,
        nats_url: &nats.url,
        name: "e2e-swap",
        domain: DOMAIN,
        stager: STAGER,
        stager_stacks: &["tiny"],
        cell_ttl_ms: None,
    })
    .await?;
    let mut executors = Vec::new();
    for config in cells {
        executors.push(start_executor(config).await?);
    }
    let (ida, idb) = (cells[0].cell_id.clone(), cells[1].cell_id.clone());
    p.cells_until("both cells heard", Duration::from_secs(60), |c| {
        c.contains_key(&ida) && c.contains_key(&idb)
    })
    .await?;

    let app = p.push("swapped", ID_PROCFILE).await?;
    let host = format!("swapped.{DOMAIN}");
    p.running(&app, 1, None, Duration::from_secs(60)).await?;
    p.scale(&app, INSTANCES as u32).await?;
    p.running(&app, INSTANCES, None, Duration::from_secs(60))
        .await?;
    p.wait_for_answers(&host, INSTANCES, Duration::from_secs(30))
        .await?;
    let before = digests(&p, &app).await;

    // Two images: the original tiny, and tiny with a release file.
    let images = dir.join("images");
    let (original, swapped) = tokio::task::spawn_blocking(move || image_archives(&images))
        .await
        .map_err(|e| e.to_string())??;
    let v1 = import(&p, &original, "tiny-v1").await?;
    let v2 = import(&p, &swapped, "tiny-v2").await?;
    if before.iter().any(|d| *d != v1) {
        return Err(format!(
            "the instances should run on the cells' own tiny ({v1}): {before:?}"
        ));
    }

    // Bad input changes nothing.
    let (status, body) = send(
        p.call(Method::POST, "/v3/images?name=junk")
            .body("this is not a tar"),
    )
    .await;
    if status != 422 || !body.to_string().contains("not an image archive") {
        return Err(format!("a junk archive: {status} {body}"));
    }
    for (key, value, needle) in [
        (
            "stack.tiny.image",
            "no-such-image",
            "not in the image store",
        ),
        ("stack.nope.image", "tiny-v2", "there is no stack `nope`"),
        ("fence.docker.image", "tiny-v2", "the keys are stack."),
    ] {
        let (status, body) = set(&p, key, value).await;
        if status != 422 || !body.to_string().contains(needle) {
            return Err(format!("setting {key}={value}: {status} {body}"));
        }
    }
    let (_, config) = send(p.call(Method::GET, "/v3/admin/config/stack.tiny.image")).await;
    if config["value"] != Value::Null || config["rollout"]["done"] != true {
        return Err(format!("stack.tiny.image before any set: {config}"));
    }

    // The swap, under a steady request loop.
    swap(&p, &app, &host, "tiny-v2", &v2).await?;
    let (_, out) = send(
        p.call(
            Method::POST,
            &format!(
                "/v3/processes/{}/instances/0/exec",
                process_guid(&p, &app).await
            ),
        )
        .json(&json!({"command": ["cat", "/etc/kiln-release"]})),
    )
    .await;
    if out["stdout"] != "swapped\n" {
        return Err(format!("the instance does not see the new image: {out}"));
    }
    let (_, stacks) = send(p.call(Method::GET, "/v3/stacks?names=tiny")).await;
    let tiny = &stacks["resources"][0];
    if tiny["image"]["digest"] != v2.as_str() || tiny["image"]["since"].as_str().is_none() {
        return Err(format!("the stack does not show its image: {tiny}"));
    }
    // A staging after the swap runs on the new image too.
    let other = p.push("after-swap", ID_PROCFILE).await?;
    if p.stager_backend.stack_image(&v2).is_none() {
        return Err("the stager did not fetch the stack image for a new staging".into());
    }
    p.running(&other, 1, None, Duration::from_secs(60)).await?;
    if digests(&p, &other).await != [v2.clone()] {
        return Err(format!(
            "the new app does not run on the new image: {:?}",
            digests(&p, &other).await
        ));
    }

    // Rollback: the same command with the previous image.
    swap(&p, &app, &host, "tiny-v1", &v1).await?;
    let (_, events) = send(p.call(Method::GET, "/v3/audit_events?types=audit.config.update")).await;
    if events["resources"].as_array().map_or(0, Vec::len) != 2 {
        return Err(format!("two config updates should be audited: {events}"));
    }

    // The same with the CLI, as an operator does it.
    let kiln = Kiln::login(dir, &p).await?;
    let listed = kiln.run(&["admin", "images"]).await?;
    if !listed.contains("tiny-v1") || !listed.contains(&v2) {
        return Err(format!("kiln admin images: {listed}"));
    }
    let swapped = dir.join("images/swapped.tar");
    let out = kiln
        .run(&[
            "admin",
            "stack",
            "import",
            "tiny",
            &swapped.to_string_lossy(),
        ])
        .await?;
    if !out.contains(&v2) || !out.contains("Every instance is on the new image") {
        return Err(format!("kiln admin stack import: {out}"));
    }
    if digests(&p, &app).await != vec![v2.clone(); INSTANCES] {
        return Err(format!("after the CLI swap: {:?}", digests(&p, &app).await));
    }
    let stacks = kiln.run(&["stacks"]).await?;
    if !stacks.contains(&v2) {
        return Err(format!("kiln stacks does not show the image: {stacks}"));
    }
    let got = kiln
        .run(&["admin", "config", "get", "stack.tiny.image", "--json"])
        .await?;
    let got: Value = serde_json::from_str(&got).map_err(|e| format!("{e}: {got}"))?;
    if got["value"] != v2.as_str() || got["rollout"]["done"] != true {
        return Err(format!("kiln admin config get: {got}"));
    }
    match kiln
        .run(&[
            "admin",
            "config",
            "set",
            "stack.tiny.image",
            "no-such-image",
        ])
        .await
    {
        Err(e) if e.contains("not in the image store") => {}
        other => return Err(format!("setting an unknown image with the CLI: {other:?}")),
    }
    let out = kiln
        .run(&["admin", "config", "set", "stack.tiny.image", "tiny-v1"])
        .await?;
    if !out.contains(&v1) || !out.contains("updated") {
        return Err(format!("kiln admin config set (rollback): {out}"));
    }
    if digests(&p, &app).await != vec![v1.clone(); INSTANCES] {
        return Err(format!(
            "after the CLI rollback: {:?}",
            digests(&p, &app).await
        ));
    }
    drop(executors);
    p.stop();
    Ok(())
}

/// Sets `stack.tiny.image` to `image` under a request loop, waits for the rollout, and checks
/// that every instance runs on `digest` and no request failed.
async fn swap(
    p: &Platform,
    app: &str,
    host: &str,
    image: &str,
    digest: &str,
) -> Result<(), String> {
    let requests = RequestLoop::start(&p.router, host);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, body) = set(p, "stack.tiny.image", image).await;
    if status != 200 || body["value"] != digest {
        return Err(format!("setting stack.tiny.image={image}: {status} {body}"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, config) = send(p.call(Method::GET, "/v3/admin/config/stack.tiny.image")).await;
        let on_image = digests(p, app).await;
        if config["rollout"]["done"] == true
            && on_image.len() == INSTANCES
            && on_image.iter().all(|d| d == digest)
        {
            break;
        }
        if Instant::now() > deadline {
            let (_, logs) = send(p.call(Method::GET, &format!("/v3/apps/{app}/logs/recent"))).await;
            let cell_lines: Vec<String> = logs["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["source"] != "RTR")
                .rev()
                .take(12)
                .map(|l| l["message"].to_string())
                .collect();
            return Err(format!(
                "the rollout to {image} did not end: {config}; instances on {on_image:?}; stats: {:?}; last log lines: {}",
                p.stats(app).await.len(),
                cell_lines.join("\n")
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failures) = requests.finish().await?;
    if !failures.is_empty() || ok < 20 {
        return Err(format!(
            "during the swap to {image}: {ok} ok, {} failed: {failures:?}",
            failures.len()
        ));
    }
    eprintln!(
        "swap to {image}: {INSTANCES} instances in {:.1} s, {ok} requests, none failed",
        took.as_secs_f64()
    );
    Ok(())
}

async fn set(p: &Platform, key: &str, value: &str) -> (u16, Value) {
    send(
        p.call(Method::PUT, &format!("/v3/admin/config/{key}"))
            .json(&json!({ "value": value })),
    )
    .await
}

/// Uploads `archive` as image `name`; its digest.
async fn import(p: &Platform, archive: &Path, name: &str) -> Result<String, String> {
    let bytes = tokio::fs::read(archive).await.map_err(|e| e.to_string())?;
    let (status, body) = send(
        p.call(Method::POST, &format!("/v3/images?name={name}"))
            .body(bytes),
    )
    .await;
    match (status, body["digest"].as_str(), body["name"].as_str()) {
        (201, Some(digest), Some(n)) if n == name => Ok(digest.to_string()),
        _ => Err(format!("importing {name}: {status} {body}")),
    }
}

async fn process_guid(p: &Platform, app: &str) -> String {
    let (_, process) = send(p.call(Method::GET, &format!("/v3/apps/{app}/processes/web"))).await;
    process["guid"].as_str().unwrap_or_default().to_string()
}

/// The stack digest of each RUNNING instance of `app`.
async fn digests(p: &Platform, app: &str) -> Vec<String> {
    p.stats(app)
        .await
        .iter()
        .filter(|s| s["state"] == "RUNNING")
        .map(|s| s["stack_digest"].as_str().unwrap_or("?").to_string())
        .collect()
}
