//! Dockerfile and OCI image apps end to end: a controller (allowed to pull from a
//! `docker-registry` on loopback), NATS, a stager, the router and a cell, all real, driven by
//! the built `kiln`.
//!
//! - `examples/dockerfile` (multi-stage, RUN, COPY, ENV, USER, EXPOSE) is pushed with no
//!   buildpack: its Dockerfile is built at staging into an image droplet that answers through
//!   the router, runs as its `USER`, and shows the image as its droplet; a second push reuses
//!   every cached layer and yields the same image.
//! - A Dockerfile with an unsupported instruction fails the push, naming the line.
//! - A prebuilt image archive (`kiln push --docker-image FILE`) runs; so does an image pushed
//!   to the loopback registry (`--docker-image 127.0.0.1:PORT/team/web:1`), pulled by the
//!   controller; an image nobody has is refused with what to do.
//!
//! Test indexes 91 (the stager's backend) and 92 (the cell), each with its own data dir,
//! address pool, port range and uid range; whatever the outcome, every backend destroys what
//! it holds and the registry is killed by its pid.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_e2e::kiln::Kiln;
use kiln_e2e::platform::{
    backend_config, cell_config, send, start_executor, Leftovers, Platform, Setup,
};
use kiln_rootfs::layout::{derive_layout, LayerFile};
use kiln_testkit::{Nats, Registry};
use reqwest::Method;
use serde_json::Value;

const DOMAIN: &str = "apps.images.test";
const STAGER: u32 = 91;
const CELL: u32 = 92;

#[test]
fn dockerfile_and_image_apps_build_run_and_answer_through_the_router() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "the end-to-end tests need root (containers)");
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start();
    let registry = Registry::start();
    let cell = cell_config(dir.path(), CELL, &nats.url);
    let leftovers = Leftovers::new(vec![
        backend_config(dir.path(), STAGER),
        cell.backend_config(),
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(scenario(dir.path(), &nats, &registry, cell));
    drop(rt);
    drop(leftovers);
    result.unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.log()));
}

async fn scenario(
    dir: &Path,
    nats: &Nats,
    registry: &Registry,
    cell: kiln_executor::Config,
) -> Result<(), String> {
    let access = format!("http://127.0.0.1:{}", registry.port)
        .parse()
        .map_err(|e: String| e)?;
    let p = Platform::start_with(
        Setup {
            dir,
            nats_url: &nats.url,
            name: "e2e-images",
            domain: DOMAIN,
            stager: STAGER,
            stager_stacks: &["tiny"],
            cell_ttl_ms: None,
        },
        vec![access],
    )
    .await?;
    let _executor = start_executor(&cell).await?;
    let id = cell.cell_id.clone();
    p.cells_until("the cell heard", Duration::from_secs(60), |c| {
        c.contains_key(&id)
    })
    .await?;
    let kiln = Kiln::login(dir, &p).await?;

    // A Dockerfile app: built at staging, run from its image, as its USER.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dockerfile");
    let example = example.to_string_lossy();
    let out = kiln.run(&["push", "site", "-p", &example]).await?;
    if !out.contains("Step ") || !out.contains("RUN ") {
        return Err(format!("the push does not show the build: {out}"));
    }
    answers(&p, "site", "Hello from dockerfile").await?;
    let first = droplet_image(&p, "site").await?;
    let run = exec(&p, "site", "id -un; echo $SITE_DIR $PORT").await?;
    if run["stdout"] != "vcap\n/srv/www 8080\n" {
        return Err(format!(
            "the instance does not run as the image says: {run}"
        ));
    }
    // Pushed again: every layer from the cache, the same image.
    let out = kiln.run(&["push", "site", "-p", &example]).await?;
    if !out.contains("CACHED") {
        return Err(format!("the second build used no cached layer: {out}"));
    }
    let second = droplet_image(&p, "site").await?;
    if second != first {
        return Err(format!(
            "the same files built another image: {first} then {second}"
        ));
    }
    answers(&p, "site", "Hello from dockerfile").await?;

    // An unsupported instruction fails the push and names its line.
    let bad = dir.join("bad-app");
    std::fs::create_dir_all(&bad).map_err(|e| e.to_string())?;
    std::fs::write(
        bad.join("Dockerfile"),
        "FROM tiny\nRUN true\nHEALTHCHECK CMD true\nCMD [\"true\"]\n",
    )
    .map_err(|e| e.to_string())?;
    match kiln
        .run(&["push", "bad", "-p", &bad.to_string_lossy()])
        .await
    {
        Ok(out) => return Err(format!("an unsupported instruction was accepted: {out}")),
        Err(e) if e.contains("line 3") && e.contains("HEALTHCHECK") => {}
        Err(e) => return Err(format!("the failure does not name the line: {e}")),
    }

    // A prebuilt image archive.
    let archive = dir.join("web-image.tar");
    let layout = app_image(dir, &archive)?;
    kiln.run(&[
        "push",
        "prebuilt",
        "--docker-image",
        &archive.to_string_lossy(),
    ])
    .await?;
    answers(&p, "prebuilt", "hello from a prebuilt image").await?;

    // The same image from the loopback registry, pulled by the controller.
    let reference = registry.reference("team/web:1");
    let options = kiln_registry::PushOptions {
        allow_http: true,
        ..Default::default()
    };
    kiln_registry::push_layout(&layout, &reference, &options)
        .await
        .map_err(|e| format!("pushing to the registry: {e}"))?;
    kiln.run(&["push", "pulled", "--docker-image", &reference])
        .await?;
    answers(&p, "pulled", "hello from a prebuilt image").await?;

    // An image neither in the store nor in a registry the controller may use.
    match kiln
        .run(&[
            "push",
            "nowhere",
            "--docker-image",
            "example.com/team/web:1",
        ])
        .await
    {
        Ok(out) => return Err(format!("an unknown image was accepted: {out}")),
        Err(e) if e.contains("not in the image store") && e.contains("127.0.0.1") => {}
        Err(e) => return Err(format!("the refusal does not say what to do: {e}")),
    }
    p.stop();
    Ok(())
}

/// Writes an app image (tiny, a page, `httpd` on port 5000 as `vcap`) as a layout and as a
/// tar of it at `archive`; the layout's directory.
fn app_image(dir: &Path, archive: &Path) -> Result<PathBuf, String> {
    let tiny = kiln_rootfs::recipes::cached("tiny").map_err(|e| e.to_string())?;
    let layout = dir.join("web-image");
    let files: &[LayerFile<'_>] = &[(
        "srv/www/index.html",
        b"hello from a prebuilt image\n",
        0o644,
    )];
    derive_layout(&tiny.dir, "tiny", &layout, files, |c| {
        c.set_cmd(Some(
            ["httpd", "-f", "-p", "0.0.0.0:5000", "-h", "/srv/www"]
                .map(String::from)
                .to_vec(),
        ));
        c.set_exposed_ports(Some(vec!["5000/tcp".into()]));
        c.set_user(Some("vcap".into()));
    })
    .map_err(|e| e.to_string())?;
    kiln_e2e::images::tar_dir(&layout, archive)?;
    Ok(layout)
}

/// Waits until app `name` answers 200 with `needle` in its body through the router.
async fn answers(p: &Platform, name: &str, needle: &str) -> Result<(), String> {
    let host = p.host(name);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = p.through_router(&host, "/").await;
        if status == 200 && body.contains(needle) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{host} answers {status}: {body}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The app's current droplet's image digest.
async fn droplet_image(p: &Platform, name: &str) -> Result<String, String> {
    let guid = app_guid(p, name).await?;
    let (_, droplet) =
        send(p.call(Method::GET, &format!("/v3/apps/{guid}/droplets/current"))).await;
    match (
        droplet["image"].as_str(),
        droplet["lifecycle"]["type"].as_str(),
    ) {
        (Some(digest), Some("docker")) => Ok(digest.to_string()),
        _ => Err(format!("the droplet of {name} is not an image: {droplet}")),
    }
}

async fn app_guid(p: &Platform, name: &str) -> Result<String, String> {
    let (_, apps) = send(p.call(Method::GET, &format!("/v3/apps?names={name}"))).await;
    apps["resources"][0]["guid"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no app {name}: {apps}"))
}

/// Runs `script` in instance 0 of the app's web process: the exec answer.
async fn exec(p: &Platform, name: &str, script: &str) -> Result<Value, String> {
    let guid = app_guid(p, name).await?;
    let (_, process) = send(p.call(Method::GET, &format!("/v3/apps/{guid}/processes/web"))).await;
    let process = process["guid"].as_str().ok_or("no web process")?;
    let (status, run) = send(
        p.call(
            Method::POST,
            &format!("/v3/processes/{process}/instances/0/exec"),
        )
        .json(&serde_json::json!({"command": ["sh", "-c", script]})),
    )
    .await;
    if status != 200 {
        return Err(format!("exec: {status} {run}"));
    }
    Ok(run)
}
