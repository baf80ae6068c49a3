//! Kernel-enforced limits: a fork bomb stops at the pids limit while the host stays
//! responsive, and writes past the disk limit fail inside the container.
mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln_containers::{Limits, ProcessSpec};

#[tokio::test]
async fn a_fork_bomb_is_stopped_by_the_pids_limit() {
    let t = TestBackend::new(10).await;
    let mut s = spec("bomb");
    s.limits = Limits {
        pids: 64,
        ..Limits::default()
    };
    t.backend.create(s).await.expect("create");

    let mut bomb = t
        .backend
        .run(
            "bomb",
            ProcessSpec {
                timeout: Some(Duration::from_secs(5)),
                ..ProcessSpec::new("/bin/sh", &["-c", "b() { b | b & }; b; sleep 10"])
            },
        )
        .await
        .expect("run bomb");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The host still answers quickly: spawning a host process works.
    let started = Instant::now();
    let status = std::process::Command::new("/bin/true")
        .status()
        .expect("host process");
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "host sluggish: {:?}",
        started.elapsed()
    );
    let pids = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids/kiln/{}/bomb/pids.current",
        t.backend.tag()
    ))
    .expect("pids.current");
    assert!(
        pids.trim().parse::<u64>().expect("number") <= 64,
        "pids {pids}"
    );
    let _ = bomb.wait().await;
    t.backend
        .stop("bomb", Duration::from_secs(1))
        .await
        .expect("stop");
    t.backend.destroy("bomb").await.expect("destroy");
    assert_eq!(t.backend.resources_on_machine(), Vec::<String>::new());
}

#[tokio::test]
async fn writes_past_the_disk_limit_fail_inside_the_container() {
    let t = TestBackend::new(11).await;
    let mut s = spec("disk");
    s.limits = Limits {
        disk_bytes: 16 << 20,
        ..Limits::default()
    };
    t.backend.create(s).await.expect("create");
    let empty = t.backend.metrics("disk").await.expect("metrics");
    assert!(empty.disk_bytes < 4 << 20, "{empty:?}");

    let (exit, _, err) = t
        .sh(
            "disk",
            "vcap",
            "dd if=/dev/zero of=/home/vcap/big bs=1M count=64",
        )
        .await;
    assert_ne!(exit.code, 0, "a 64 MiB write fit in a 16 MiB limit");
    assert!(err.contains("quota") || err.contains("space"), "{err}");
    let (exit, _, _) = t
        .sh(
            "disk",
            "vcap",
            "rm /home/vcap/big; dd if=/dev/zero of=/home/vcap/small bs=1M count=4 && sync",
        )
        .await;
    assert_eq!(exit.code, 0, "room again after deleting");
    let metrics = t.backend.metrics("disk").await.expect("metrics");
    assert!(
        metrics.disk_bytes >= 4 << 20 && metrics.disk_bytes < 16 << 20,
        "{metrics:?}"
    );
    // The figure is the qgroup's as sysfs shows it (read with no `btrfs` process).
    let sysfs: Vec<u64> = std::fs::read_dir("/sys/fs/btrfs")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|fs| {
            std::fs::read_dir(fs.path().join("qgroups"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter_map(|q| std::fs::read_to_string(q.path().join("referenced")).ok())
        .filter_map(|text| text.trim().parse().ok())
        .collect();
    assert!(
        sysfs.contains(&metrics.disk_bytes),
        "{} not among the qgroups of /sys/fs/btrfs: {sysfs:?}",
        metrics.disk_bytes
    );
}
