//! Isolation: no host files, no mounts, no dangerous syscalls, no view of other containers,
//! no reach into the host's own services, and a host uid range of each container's own.
mod common;

use std::io::Cursor;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::*;

/// The syscall probe, compiled static so it runs on any stack.
fn probe_tar() -> Vec<u8> {
    let out =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("probe-{}", std::process::id()));
    let status = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/probe/probe.c"))
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling the probe failed");
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_path_with_name(&out, "probe")
        .expect("tar probe");
    let _ = std::fs::remove_file(&out);
    builder.into_inner().expect("tar")
}

#[tokio::test]
async fn container_root_gets_neither_host_files_nor_dangerous_syscalls() {
    let t = TestBackend::new(6).await;
    t.container("iso").await;
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let host_line = shadow.lines().next().unwrap_or_default().to_string();
    assert!(
        !host_line.is_empty(),
        "the host has no /etc/shadow to compare with"
    );

    for path in [
        "/etc/shadow",
        "/proc/1/root/etc/shadow",
        "/proc/self/root/../../../etc/shadow",
        "/proc/1/cwd/../etc/shadow",
    ] {
        let (_, out, _) = t.sh("iso", "root", &format!("cat {path}")).await;
        assert!(!out.contains(&host_line), "{path} showed the host's shadow");
    }
    let (exit, _, err) = t.sh("iso", "root", "mount -t tmpfs none /mnt").await;
    assert_ne!(exit.code, 0, "mount succeeded: {err}");

    t.backend
        .stream_in("iso", "/tmp", Some("root"), Cursor::new(probe_tar()))
        .await
        .expect("stream in probe");
    // A file written on the host can be held open for a moment by a child another test's
    // thread forks meanwhile (the fd is closed at its exec): its exec may then see ETXTBSY.
    let mut run = t.sh("iso", "root", "/tmp/probe").await;
    for _ in 0..20 {
        if !run.2.contains("Text file busy") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        run = t.sh("iso", "root", "/tmp/probe").await;
    }
    let (exit, out, err) = run;
    assert_eq!(exit.code, 0, "{err}");
    for expected in [
        "keyctl=EPERM",
        "add_key=EPERM",
        "unshare_user=EPERM",
        "unshare_net=EPERM",
        "mount=EPERM",
        "clone3=ENOSYS",
        "clone_newuser=EPERM",
        "bpf=EPERM",
        "userfaultfd=EPERM",
        "io_uring_setup=EPERM",
        "raw_socket=EPERM",
        "removexattr=ok",
    ] {
        assert!(
            out.lines().any(|l| l == expected),
            "expected {expected}, probe said:\n{out}"
        );
    }
    let (_, out, _) = t
        .sh(
            "iso",
            "vcap",
            "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status",
        )
        .await;
    assert!(out.contains("Seccomp:\t2"), "no seccomp filter: {out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("CapEff:\t0000000000000000"),
        "vcap has capabilities: {out}"
    );
    let (_, out, _) = t.sh("iso", "vcap", "/tmp/probe").await;
    assert!(out.contains("unshare_user=EPERM"), "{out}");
}

#[tokio::test]
async fn containers_see_neither_each_other_nor_the_hosts_services() {
    let t = TestBackend::new(7).await;
    let a = t.container("a").await;
    let b = t.container("b").await;

    let (exit, _, _) = t.sh("a", "vcap", "echo secret > /tmp/a-secret").await;
    assert_eq!(exit.code, 0);
    let _sleeper = t
        .backend
        .run(
            "a",
            kiln_containers::ProcessSpec::new("/bin/sleep", &["1000"]),
        )
        .await
        .expect("run");
    let _server_in_a = t
        .backend
        .run(
            "a",
            kiln_containers::ProcessSpec::new("/bin/httpd", &["-f", "-p", "8080", "-h", "/tmp"]),
        )
        .await
        .expect("run");
    let (_, out, _) = t.sh("b", "vcap", "ls /tmp; ps -o comm").await;
    assert!(!out.contains("a-secret"), "b sees a's file: {out}");
    assert!(!out.contains("sleep"), "b sees a's process: {out}");

    // Each container writes as a uid of its own range on the host.
    let owner = |handle: &str| {
        std::fs::metadata(
            t.config
                .data_dir
                .join("containers")
                .join(handle)
                .join("rootfs/tmp/mine"),
        )
        .expect("stat")
        .uid()
    };
    t.sh("a", "vcap", "touch /tmp/mine").await;
    t.sh("b", "vcap", "touch /tmp/mine").await;
    assert_ne!(owner("a"), owner("b"));
    assert!(
        owner("a") >= t.config.uid_range_start + 2000,
        "uid {} is not in the container range",
        owner("a")
    );

    // a's web server answers inside a (the control), but not to b directly.
    let fetch = format!(
        "printf 'GET /a-secret HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} 8080; echo rc=$?",
        a.container_ip
    );
    let mut answered = false;
    for _ in 0..20 {
        let (_, out, _) = t.sh("a", "vcap", &fetch).await;
        if out.contains("secret") {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answered, "a's server never answered inside a");
    let (_, out, _) = t.sh("b", "vcap", &fetch).await;
    assert!(
        !out.contains("secret") && !out.contains("rc=0"),
        "b reached a: {out}"
    );

    // The host's own services stay unreachable, even once egress is allowed everywhere.
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    t.backend
        .net_out(
            "a",
            kiln_containers::NetOutRule {
                protocol: kiln_containers::Protocol::All,
                networks: vec!["0.0.0.0/0".into()],
                ports: vec![],
            },
        )
        .await
        .expect("net_out");
    for target in [a.host_ip.to_string(), b.host_ip.to_string()] {
        let script = format!("echo x | nc -w 2 {target} {port}; echo rc=$?");
        let (_, out, _) = t.sh("a", "vcap", &script).await;
        assert!(
            !out.contains("rc=0"),
            "container reached the host at {target}: {out}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection"
    );

    // No IPv6 on the host end of the veth: no link-local way around the IPv4 rules.
    for resource in t.backend.resources_on_machine() {
        if let Some(veth) = resource.strip_prefix("network interface ") {
            let out = std::process::Command::new("ip")
                .args(["-6", "addr", "show", "dev", veth])
                .output()
                .expect("ip");
            assert!(
                out.stdout.is_empty(),
                "{veth} has IPv6: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[tokio::test]
async fn bind_mounts_are_visible_and_read_only() {
    let t = TestBackend::new(16).await;
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("droplet.txt"), "from the host").expect("write");
    let mut s = spec("bind");
    s.bind_mounts = vec![kiln_containers::BindMount {
        host_path: shared.path().to_path_buf(),
        container_path: "/home/vcap/shared".into(),
    }];
    t.backend.create(s).await.expect("create");
    let (exit, out, _) = t
        .sh("bind", "root", "cat /home/vcap/shared/droplet.txt")
        .await;
    assert_eq!((exit.code, out.as_str()), (0, "from the host"));
    let (exit, _, _) = t
        .sh(
            "bind",
            "root",
            "echo changed > /home/vcap/shared/droplet.txt",
        )
        .await;
    assert_ne!(
        exit.code, 0,
        "container root wrote through a read-only bind mount"
    );
    assert_eq!(
        std::fs::read_to_string(shared.path().join("droplet.txt")).expect("read"),
        "from the host"
    );
}
