//! Processes: output streamed as written, stdout and stderr apart, exit codes, signals,
//! timeouts, and the kernel's memory limit reported as an OOM kill.
mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln_containers::{Limits, ProcessSpec};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn output_streams_as_written_and_exit_codes_are_reported() {
    let t = TestBackend::new(3).await;
    t.container("p").await;

    let mut p = t
        .backend
        .run(
            "p",
            ProcessSpec::new(
                "/bin/sh",
                &[
                    "-c",
                    "echo first; echo oops >&2; sleep 2; echo second; exit 7",
                ],
            ),
        )
        .await
        .expect("run");
    let mut out = BufReader::new(p.take_stdout().expect("stdout")).lines();
    let mut err = BufReader::new(p.take_stderr().expect("stderr")).lines();
    let started = Instant::now();
    assert_eq!(
        out.next_line().await.expect("read").as_deref(),
        Some("first")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "first line came only at exit"
    );
    assert_eq!(
        err.next_line().await.expect("read").as_deref(),
        Some("oops")
    );
    assert_eq!(
        out.next_line().await.expect("read").as_deref(),
        Some("second")
    );
    assert_eq!(out.next_line().await.expect("read"), None);
    let exit = p.wait().await.expect("wait");
    assert_eq!(
        (exit.code, exit.oom_killed, exit.timed_out),
        (7, false, false)
    );

    let (exit, out, _) = run(
        &t.backend,
        "p",
        ProcessSpec {
            env: vec!["GREETING=hi".into()],
            dir: Some("/tmp".into()),
            ..ProcessSpec::new("/bin/sh", &["-c", "echo $GREETING $(pwd)"])
        },
    )
    .await;
    assert_eq!((exit.code, out.as_str()), (0, "hi /tmp\n"));

    let (exit, out, _) = run(
        &t.backend,
        "p",
        ProcessSpec {
            rlimits: vec![kiln_containers::Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 64,
                hard: 128,
            }],
            ..ProcessSpec::new("/bin/sh", &["-c", "ulimit -n; ulimit -Hn"])
        },
    )
    .await;
    assert_eq!((exit.code, out.as_str()), (0, "64\n128\n"));

    let err = t
        .backend
        .run("p", ProcessSpec::new("/bin/true", &[]).user("nobody-here"))
        .await
        .expect_err("unknown user");
    assert!(err.to_string().contains("nobody-here"), "{err}");
}

#[tokio::test]
async fn signals_reach_the_process_and_timeouts_kill_it() {
    let t = TestBackend::new(4).await;
    t.container("sig").await;

    let mut p = t
        .backend
        .run(
            "sig",
            ProcessSpec::new(
                "/bin/sh",
                &[
                    "-c",
                    "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
                ],
            ),
        )
        .await
        .expect("run");
    let mut out = BufReader::new(p.take_stdout().expect("stdout")).lines();
    assert_eq!(
        out.next_line().await.expect("read").as_deref(),
        Some("ready")
    );
    assert_eq!(
        t.backend.info("sig").expect("info").processes,
        vec![p.id().to_string()]
    );
    p.signal(libc::SIGTERM).await.expect("signal");
    assert_eq!(
        out.next_line().await.expect("read").as_deref(),
        Some("got-term")
    );
    assert_eq!(p.wait().await.expect("wait").code, 3);

    let mut p = t
        .backend
        .run("sig", ProcessSpec::new("/bin/sleep", &["100"]))
        .await
        .expect("run");
    p.signal(libc::SIGKILL).await.expect("kill");
    assert_eq!(p.wait().await.expect("wait").code, 128 + libc::SIGKILL);

    let started = Instant::now();
    let mut p = t
        .backend
        .run(
            "sig",
            ProcessSpec {
                timeout: Some(Duration::from_millis(500)),
                ..ProcessSpec::new("/bin/sleep", &["100"])
            },
        )
        .await
        .expect("run");
    let exit = p.wait().await.expect("wait");
    assert!(exit.timed_out && !exit.oom_killed, "{exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(t.backend.info("sig").expect("info").processes.is_empty());
}

#[tokio::test]
async fn memory_limit_ends_in_a_reported_oom_kill() {
    let t = TestBackend::new(5).await;
    let mut s = spec("oom");
    s.limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    t.backend.create(s).await.expect("create");
    // Holds 256 MiB in a shell variable: far over the 32 MiB limit.
    let (exit, _, _) = t
        .sh(
            "oom",
            "vcap",
            "x=$(head -c 268435456 /dev/zero | tr '\\0' a); echo ${#x}",
        )
        .await;
    assert!(exit.oom_killed, "{exit:?}");
    let (exit, out, _) = t.sh("oom", "vcap", "echo alive").await;
    assert_eq!(
        (exit.code, out.as_str()),
        (0, "alive\n"),
        "the container survives its OOM"
    );
}
