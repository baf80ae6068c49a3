//! Create, run, stop and destroy on real runc; typed errors for bad specs; nothing left behind.
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use kiln_containers::{ContainerState, Error, Limits, NetIn};

#[tokio::test]
async fn a_container_runs_processes_and_destroy_leaves_nothing() {
    let t = TestBackend::new(1).await;
    let mut s = spec("life");
    s.properties = BTreeMap::from([("app".to_string(), "a1".to_string())]);
    let info = t.backend.create(s).await.expect("create");
    assert_eq!(info.state, ContainerState::Active);
    assert_eq!(info.container_ip.octets()[..3], [10, 244, 1]);

    let (exit, out, _) = t.sh("life", "vcap", "id -u; id -g; pwd; echo $HOME").await;
    assert_eq!(exit.code, 0);
    assert_eq!(out, "2000\n2000\n/home/vcap\n/home/vcap\n");
    let (exit, out, _) = t.sh("life", "root", "id -u; cat /etc/hostname").await;
    assert_eq!((exit.code, out.as_str()), (0, "0\nlife\n"));

    assert_eq!(
        t.backend
            .list(&BTreeMap::from([("app".into(), "a1".into())])),
        vec!["life"]
    );
    assert!(t
        .backend
        .list(&BTreeMap::from([("app".into(), "other".into())]))
        .is_empty());
    let metrics = t.backend.metrics("life").await.expect("metrics");
    assert!(metrics.cpu_time_ns > 0, "{metrics:?}");
    assert!(metrics.memory_bytes > 0, "{metrics:?}");
    // A later reading shows the usage since (the counters are kept open and read again).
    let (exit, _, _) = t
        .sh(
            "life",
            "vcap",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
        )
        .await;
    assert_eq!(exit.code, 0);
    let later = t.backend.metrics("life").await.expect("metrics");
    assert!(
        later.cpu_time_ns > metrics.cpu_time_ns,
        "{metrics:?} then {later:?}"
    );
    assert!(t.backend.capacity().max_containers >= 1);

    // The audit sees every kind of resource a live container holds...
    let held = t.backend.resources_on_machine();
    for kind in [
        "runc container life",
        "mount ",
        "network interface ",
        "iptables -A POSTROUTING",
        "iptables -A INPUT",
        "cgroup ",
    ] {
        assert!(
            held.iter().any(|r| r.starts_with(kind)),
            "no {kind:?} in {held:?}"
        );
    }

    // stop gives processes their grace: a TERM handler runs to its end.
    let mut graceful = t
        .backend
        .run(
            "life",
            kiln_containers::ProcessSpec::new(
                "/bin/sh",
                &["-c", "trap 'sleep 0.3; echo cleaned-up; exit 0' TERM; echo ready; while :; do sleep 0.1; done"],
            ),
        )
        .await
        .expect("run");
    let mut out = tokio::io::BufReader::new(graceful.take_stdout().expect("stdout"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
        .await
        .expect("read");
    assert_eq!(line, "ready\n");
    t.backend
        .stop("life", Duration::from_secs(5))
        .await
        .expect("stop");
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out, &mut rest)
        .await
        .expect("read");
    assert_eq!(
        rest, "cleaned-up\n",
        "the process was not given its grace period"
    );
    assert_eq!(graceful.wait().await.expect("wait").code, 0);
    assert_eq!(
        t.backend.info("life").expect("info").state,
        ContainerState::Stopped
    );
    assert!(matches!(
        t.backend
            .run("life", kiln_containers::ProcessSpec::new("/bin/true", &[]))
            .await,
        Err(Error::NotActive { .. })
    ));

    // ...and none of them after destroy.
    t.backend.destroy("life").await.expect("destroy");
    assert!(matches!(t.backend.info("life"), Err(Error::NotFound(_))));
    assert_eq!(t.backend.resources_on_machine(), Vec::<String>::new());
    assert!(matches!(
        t.backend.destroy("life").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn bad_specs_get_typed_errors_and_reserve_nothing() {
    let t = TestBackend::new(2).await;
    let mut s = spec("bad");
    s.stack = "no-such-stack".into();
    let err = t.backend.create(s).await.expect_err("unknown stack");
    assert!(matches!(err, Error::UnknownStack { .. }), "{err}");
    assert!(
        err.to_string().contains("tiny"),
        "names the known stacks: {err}"
    );

    for limits in [
        Limits {
            memory_bytes: 1024,
            ..Limits::default()
        },
        Limits {
            pids: 0,
            ..Limits::default()
        },
        Limits {
            cpu_shares: 0,
            ..Limits::default()
        },
        Limits {
            disk_bytes: 10,
            ..Limits::default()
        },
    ] {
        let mut s = spec("bad");
        s.limits = limits;
        assert!(matches!(
            t.backend.create(s).await,
            Err(Error::InvalidLimits(_))
        ));
    }
    for handle in ["", "../x", "a/b", ".hidden"] {
        assert!(matches!(
            t.backend.create(spec(handle)).await,
            Err(Error::InvalidHandle { .. })
        ));
    }

    t.container("taken").await;
    assert!(matches!(
        t.backend.create(spec("taken")).await,
        Err(Error::HandleTaken(_))
    ));

    // A port of the range taken by someone else (the first one free here: the machine may
    // have handed any of them out as a connection's local port).
    let range = t.config.port_range_start..t.config.port_range_start + t.config.port_range_size;
    let (listener, taken) = range
        .filter_map(|port| Some((std::net::TcpListener::bind(("0.0.0.0", port)).ok()?, port)))
        .next()
        .expect("a free port in the test's range");
    let mut s = spec("port");
    s.net_in = vec![NetIn {
        host_port: Some(taken),
        container_port: 8080,
    }];
    assert!(matches!(
        t.backend.create(s).await,
        Err(Error::PortInUse(_))
    ));
    drop(listener);
    assert_eq!(t.backend.list(&BTreeMap::new()), vec!["taken"]);
    t.backend.destroy("taken").await.expect("destroy");
    assert_eq!(t.backend.resources_on_machine(), Vec::<String>::new());
}

// Worker threads: should the test fail while the abandoned create runs, the backend's create
// task goes on to its end there and lets go of the backend, so that the clean-up (on this
// thread, which it would otherwise block) can open the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_create_leaves_nothing_behind() {
    let t = TestBackend::new(14).await;
    // The caller gives up while the container is being made (a timeout, a cancelled
    // staging): its create future is dropped once the backend lists it as `Creating`.
    let mut tries = 0;
    loop {
        tries += 1;
        let create = t.backend.create(spec("abandoned"));
        tokio::pin!(create);
        let abandoned = loop {
            tokio::select! {
                created = &mut create => break created.map(|_| false),
                () = tokio::time::sleep(Duration::from_millis(1)) => {
                    if matches!(t.backend.info("abandoned"), Ok(i) if i.state == ContainerState::Creating) {
                        break Ok(true);
                    }
                }
            }
        };
        match abandoned {
            Ok(true) => break,
            // Made before a look found it being made (a very busy machine): again.
            Ok(false) if tries < 5 => t.backend.destroy("abandoned").await.expect("destroy"),
            other => panic!("no create to abandon in {tries} tries: {other:?}"),
        }
    }

    // The backend finishes the create and, nobody waiting for it, destroys the container:
    // nothing of it is left on the machine, and its handle, slot and address are free again
    // (the handle once the destroy has also removed its directory, a moment after the rest).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let info = loop {
        let gone = matches!(t.backend.info("abandoned"), Err(Error::NotFound(_)));
        if gone && t.backend.resources_on_machine().is_empty() {
            match t.backend.create(spec("abandoned")).await {
                Ok(info) => break info,
                Err(Error::HandleTaken(_)) => {}
                Err(e) => panic!("create again: {e}"),
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an abandoned create left {:?} (info: {:?})",
            t.backend.resources_on_machine(),
            t.backend.info("abandoned").map(|i| i.state)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(info.state, ContainerState::Active);
    t.backend.destroy("abandoned").await.expect("destroy");
    assert_eq!(t.backend.resources_on_machine(), Vec::<String>::new());
}
