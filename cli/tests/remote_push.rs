//! `kiln push` through a real `kiln-stager` service (test index 48: address pool
//! 10.244.48.0/26, ports 40960-40979, uid range (1<<28)+48*(16<<16)) on the tiny stack, with
//! no cell: the staging log is streamed, a second push uploads nothing new, a detect failure
//! shows its error and the buildpack's lines, and the wait for instances ends with the
//! placement reason. Needs root.

mod remote_common;

use std::time::Duration;

use kiln_containers::{Backend, Config, Recovery};
use remote_common::Platform;

const INDEX: u32 = 48;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_stages_streams_the_log_and_fails_on_placement_without_a_cell() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root (containers)");
    let p = Platform::start().await;
    let backend_config = Config {
        data_dir: p.dir.path().join("stager"),
        stacks_dir: p.dir.path().join("stacks"),
        network_pool: format!("10.244.{INDEX}.0/26"),
        port_range_start: u16::try_from(40000 + 20 * INDEX).expect("port"),
        port_range_size: 20,
        uid_range_start: (1 << 28) + INDEX * (16 << 16),
        store_size_bytes: 4 << 30,
        max_containers: 4,
        recovery: Recovery::Destroy,
        ..Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stager = match start_stager(&p, &backend_config, stopped).await {
        Ok(s) => Some(s),
        Err(e) => {
            let _ = Backend::destroy_all(&backend_config);
            panic!("stager: {e}");
        }
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(scenario(&p))).await;
    let _ = stop.send(());
    if let Some(s) = stager {
        match tokio::time::timeout(Duration::from_secs(60), s).await {
            Ok(Ok(Err(e))) => eprintln!("the stager ended with: {e}"),
            Ok(_) => {}
            Err(_) => eprintln!("the stager did not stop within 60 s"),
        }
    }
    if let Err(e) = Backend::destroy_all(&backend_config) {
        eprintln!("cleaning up the stager's backend: {e}");
    }
    drop(p);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

async fn start_stager(
    p: &Platform,
    config: &Config,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<tokio::task::JoinHandle<anyhow::Result<()>>, String> {
    let backend = Backend::new(config.clone())
        .await
        .map_err(|e| e.to_string())?;
    let tiny = kiln_rootfs::recipes::cached("tiny").map_err(|e| e.to_string())?;
    backend
        .import_stack(&tiny.dir, "tiny")
        .await
        .map_err(|e| e.to_string())?;
    let client = async_nats::connect(&p.nats.url)
        .await
        .map_err(|e| e.to_string())?;
    let internal = kiln_cloud_controller::internal_token(&p.dir.path().join("cc"))
        .map_err(|e| e.to_string())?;
    let mut settings = kiln_stager::service::Settings::new(
        "cli-stager",
        vec!["tiny".into()],
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks"),
    );
    settings.token = Some(kiln_stager::service::Token::new(&internal));
    settings.work_dir = p.dir.path().to_path_buf();
    Ok(tokio::spawn(async move {
        kiln_stager::service::run(client, backend, settings, async {
            let _ = stopped.await;
        })
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
    }))
}

async fn scenario(p: &Platform) {
    p.login().await;
    let staticfile =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/staticfile");
    let staticfile = staticfile.to_str().expect("path");
    let r = p
        .kiln(&["push", "site", "-p", staticfile, "-s", "tiny"])
        .await
        .failed();
    assert!(
        r.stdout.contains("Staging app and tracing logs"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.to_lowercase().contains("staticfile"),
        "no staging log:\n{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Waiting for app to start"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("no cell is running"), "{}", r.stderr);

    // The droplet is current; a second push matches every file and uploads none.
    let r = p
        .kiln(&["push", "site", "-p", staticfile, "-s", "tiny", "-t", "20"])
        .await
        .failed();
    assert!(
        r.stdout.contains("files uploaded") && r.stdout.contains(" 0 files uploaded"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("no cell is running"), "{}", r.stderr);
    let app = p.kiln(&["app", "site"]).await.ok();
    assert!(
        app.stdout.contains("site.apps.kiln.local"),
        "{}",
        app.stdout
    );
    assert!(
        app.stdout.contains("staticfile") && app.stdout.contains("tiny"),
        "{}",
        app.stdout
    );
    assert!(app.stdout.contains("no cell is running"), "{}", app.stdout);

    // Restage builds again from the package.
    let r = p.kiln(&["restage", "site"]).await.failed();
    assert!(r.stdout.contains("Staging app"), "{}", r.stdout);
    assert!(r.stderr.contains("no cell is running"), "{}", r.stderr);

    // No buildpack detects this app: the error and the buildpack's last lines.
    let odd = p.app_dir("odd", &[("data.bin", "nothing to detect")]);
    let r = p
        .kiln(&[
            "push",
            "odd",
            "-p",
            odd.to_str().expect("path"),
            "-s",
            "tiny",
        ])
        .await
        .failed();
    assert!(r.stderr.contains("staging failed"), "{}", r.stderr);
    assert!(
        r.stderr.contains("last lines") || r.stderr.contains("222"),
        "{}",
        r.stderr
    );

    // A named buildpack that does not exist is refused, naming the usable ones.
    let r = p
        .kiln(&[
            "push", "site", "-p", staticfile, "-b", "nosuch", "-s", "tiny",
        ])
        .await
        .failed();
    assert!(
        r.stderr.contains("nosuch") && r.stderr.contains("staticfile"),
        "{}",
        r.stderr
    );
}
