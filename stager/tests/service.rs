//! The staging service end to end: a real `nats-server`, the `kiln-stager` binary, a fake
//! controller (axum) playing the internal endpoints (package, droplet and cache), real
//! containers on the tiny stack (the fixture is `stager_service/`). Test index 58: address
//! pool 10.244.58.0/26, ports 41160-41179, uid range start (1<<28) + 58 * (16<<16).

mod stager_service;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use kiln_bus::{StagerAdvertise, StagingAccepted, StagingLogLine, StagingOutcome};
use kiln_testkit::Nats;
use sha2::{Digest, Sha256};
use stager_service::{
    assert_nothing_left, droplet_has, failed, request, start_controller, staticfile_zip, Bus,
    StagerProcess,
};

const INDEX: u8 = 58;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stager_service_stages_from_the_bus_and_stops_gracefully() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the service test needs root (runc, mounts, iptables)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = Nats::start();
    let (addr, controller) = start_controller(staticfile_zip()).await;
    let base = format!("http://{addr}");
    let mut bus = Bus::connect(&nats.url).await;
    let mut stager = StagerProcess::start(INDEX, dir.path(), &nats.url, "stager", &[]);

    // It advertises itself once it holds its stacks and listens.
    let ad = bus
        .wait_for(
            "the stager's advertisement",
            Duration::from_secs(300),
            &stager,
            |subject, body| {
                (subject == kiln_bus::STAGER_ADVERTISE)
                    .then(|| kiln_bus::decode::<StagerAdvertise>(subject, body).expect("an ad"))
                    .filter(|a| a.id == stager.id)
            },
        )
        .await;
    assert_eq!(ad.stacks, vec!["tiny".to_string(), "docker".to_string()]);
    assert_eq!((ad.available, ad.building.len()), (2, 0));

    // A stack it lacks: refused with the stacks it has, never accepted.
    bus.publish(&request("on-nope", "nope", &base, "/packages/x"))
        .await;
    let (reason, code) = failed(bus.result("on-nope", &stager).await);
    assert_eq!(
        reason,
        format!(
            "stager {} cannot stage on stack `nope`: it has tiny, docker",
            stager.id
        )
    );
    assert_eq!(code, 1);
    assert!(!bus.accepted("on-nope"));

    // A package server that refuses the stager's credential, and a package that is not there.
    bus.publish(&request("locked", "tiny", &base, "/locked/packages/x"))
        .await;
    let (reason, code) = failed(bus.result("locked", &stager).await);
    assert_eq!(
        reason,
        format!("downloading the package from {base}/locked/packages/x: 403 Forbidden")
    );
    assert_eq!(code, 1);
    assert!(bus.accepted("locked"));
    assert!(
        bus.log_lines("locked")
            .iter()
            .any(|l| l.stream == "ERR" && l.line.starts_with("Staging failed: downloading")),
        "{:?}",
        bus.log_lines("locked")
    );
    bus.publish(&request("missing", "tiny", &base, "/packages/missing"))
        .await;
    let (reason, _) = failed(bus.result("missing", &stager).await);
    assert_eq!(
        reason,
        format!("downloading the package from {base}/packages/missing: 404 Not Found")
    );

    // A static site: accepted, its log streamed, the droplet uploaded and described.
    bus.publish(&request("site", "tiny", &base, "/packages/x"))
        .await;
    let outcome = bus.result("site", &stager).await;
    assert!(bus.accepted("site"));
    let staged = match outcome {
        StagingOutcome::Staged(s) => s,
        StagingOutcome::Failed { reason, .. } => panic!("staging failed: {reason}"),
    };
    let lines = bus.log_lines("site");
    assert!(
        lines.iter().any(|l| l.line.contains("staticfile")),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .all(|l| l.source == "STG" && l.app_guid == "app-of-site"));
    assert_eq!(
        lines.last().map(|l| l.line.as_str()),
        Some("-----> Uploading the droplet"),
        "every line comes before the result"
    );
    let (content_type, droplet) = controller
        .uploads
        .lock()
        .unwrap()
        .get("droplet/site")
        .cloned()
        .expect("the droplet was uploaded");
    assert_eq!(content_type, "application/gzip");
    assert_eq!(staged.sha256, hex::encode(Sha256::digest(&droplet)));
    assert_eq!(staged.size, droplet.len() as u64);
    assert_eq!(staged.detected_buildpack, "staticfile");
    assert!(droplet_has(&droplet, "app/index.html"));
    assert!(
        controller.uploads.lock().unwrap().contains_key("cache/app"),
        "the new cache was uploaded"
    );

    // A droplet the controller does not take.
    let mut nowhere = request("nowhere", "tiny", &base, "/packages/x");
    nowhere.droplet_upload_url = format!("{base}/nowhere/droplet?signature=secret");
    bus.publish(&nowhere).await;
    let (reason, code) = failed(bus.result("nowhere", &stager).await);
    assert_eq!(
        reason,
        format!("uploading the droplet to {base}/nowhere/droplet: 404 Not Found")
    );
    assert_eq!(code, 1);

    // Stopping: the running staging (with the cache of the first) finishes and reports,
    // nothing new is taken, and the process exits cleanly.
    bus.publish(&request("last", "tiny", &base, "/packages/slow"))
        .await;
    bus.wait_for(
        "the acceptance of `last`",
        Duration::from_secs(30),
        &stager,
        |subject, body| {
            (subject == kiln_bus::STAGING_ACCEPTED
                && kiln_bus::decode::<StagingAccepted>(subject, body)
                    .is_ok_and(|a| a.build_guid == "last"))
            .then_some(())
        },
    )
    .await;
    stager.signal(libc::SIGTERM);
    let draining = bus
        .wait_for(
            "the stopping stager's advertisement",
            Duration::from_secs(30),
            &stager,
            |subject, body| {
                (subject == kiln_bus::STAGER_ADVERTISE)
                    .then(|| kiln_bus::decode::<StagerAdvertise>(subject, body).expect("an ad"))
                    .filter(|a| a.id == stager.id && a.available == 0)
            },
        )
        .await;
    assert_eq!(draining.building, vec!["last".to_string()]);
    bus.publish(&request("too-late", "tiny", &base, "/packages/x"))
        .await;
    let outcome = bus.result("last", &stager).await;
    assert!(
        matches!(outcome, StagingOutcome::Staged(_)),
        "{outcome:?}\n{}",
        stager.log()
    );
    assert!(bus
        .log_lines("last")
        .iter()
        .any(|l| l.line.contains("Restoring the build cache")));
    let status = stager.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}\n{}", stager.log());
    // Whatever was still in flight on the bus has arrived by now.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(m) = bus.messages.next().await {
            bus.seen.push((
                m.subject.to_string(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            ));
        }
    })
    .await;
    assert!(!bus.accepted("too-late"), "{:?}", bus.seen);

    assert_nothing_left(dir.path(), INDEX).await;

    // A staging still running when the grace is over is abandoned: a failed result, its
    // container destroyed, and again nothing left.
    let buildpacks = sleeper_buildpacks(dir.path());
    let mut stager = StagerProcess::start(
        INDEX,
        dir.path(),
        &nats.url,
        "stager-2",
        &[
            OsStr::new("--buildpacks"),
            buildpacks.as_os_str(),
            OsStr::new("--shutdown-grace"),
            OsStr::new("1"),
        ],
    );
    bus.wait_for(
        "the second stager's advertisement",
        Duration::from_secs(120),
        &stager,
        |subject, body| {
            (subject == kiln_bus::STAGER_ADVERTISE)
                .then(|| kiln_bus::decode::<StagerAdvertise>(subject, body).expect("an ad"))
                .filter(|a| a.id == stager.id && a.available == 2)
        },
    )
    .await;
    let mut sleepy = request("sleepy", "tiny", &base, "/packages/x");
    sleepy.buildpacks = vec!["sleeper".into()];
    bus.publish(&sleepy).await;
    let sleeping_subject = kiln_bus::staging_log("sleepy");
    bus.wait_for(
        "the sleeper buildpack to sleep",
        Duration::from_secs(60),
        &stager,
        |subject, body| {
            (subject == sleeping_subject
                && kiln_bus::decode::<StagingLogLine>(subject, body)
                    .is_ok_and(|l| l.line == "sleeping"))
            .then_some(())
        },
    )
    .await;
    stager.signal(libc::SIGINT);
    let (reason, code) = failed(bus.result("sleepy", &stager).await);
    assert_eq!(
        reason,
        format!(
            "the stager {} stopped and gave up this staging after a 1 s grace; stage again",
            stager.id
        )
    );
    assert_eq!(code, 1);
    let status = stager.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}\n{}", stager.log());
    assert_nothing_left(dir.path(), INDEX).await;
    drop(stager);
    drop(nats);
}

/// A buildpacks folder with one buildpack that sleeps in its compile.
fn sleeper_buildpacks(dir: &Path) -> PathBuf {
    let root = dir.join("buildpacks");
    let bin = root.join("sleeper/bin");
    std::fs::create_dir_all(&bin).expect("buildpack dir");
    for (name, body) in [
        ("detect", "#!/bin/sh\necho sleeper\n"),
        ("compile", "#!/bin/sh\necho sleeping\nexec sleep 600\n"),
        ("release", "#!/bin/sh\necho '--- {}'\n"),
    ] {
        let path = bin.join(name);
        std::fs::write(&path, body).expect("buildpack script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    root
}
