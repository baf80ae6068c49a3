//! StreamIn and StreamOut through the backend: round trips, hostile tars refused by name, and
//! symlinks planted in the container never leading to host files.
mod common;

use std::io::{Cursor, Read};

use common::*;

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *body).expect("append");
    }
    b.into_inner().expect("tar")
}

fn raw_entry(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let bytes = h.as_old_mut();
        bytes.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            bytes.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[tokio::test]
async fn files_round_trip_and_hostile_tars_are_refused() {
    let t = TestBackend::new(12).await;
    t.container("s").await;
    t.backend
        .stream_in(
            "s",
            "/home/vcap/app",
            None,
            Cursor::new(tar_of(&[("hello.txt", b"hi there"), ("sub/x", b"x")])),
        )
        .await
        .expect("stream in");
    let (exit, out, _) = t
        .sh(
            "s",
            "vcap",
            "cat /home/vcap/app/hello.txt; stat -c %u /home/vcap/app/sub/x",
        )
        .await;
    assert_eq!((exit.code, out.as_str()), (0, "hi there2000\n"));

    let tar = t
        .backend
        .stream_out("s", "/home/vcap/app", Vec::new())
        .await
        .expect("stream out");
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(Cursor::new(tar));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().to_string();
        if name.ends_with("hello.txt") {
            let mut body = String::new();
            entry.read_to_string(&mut body).expect("read");
            assert_eq!(body, "hi there");
        }
        names.push(name);
    }
    assert!(names.iter().any(|n| n.ends_with("sub/x")), "{names:?}");

    let outside = t
        .config
        .data_dir
        .parent()
        .expect("parent")
        .join("outside-sentinel");
    std::fs::write(&outside, "untouched").expect("sentinel");
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "../../evil",
            raw_entry("../../evil", tar::EntryType::Regular, None),
        ),
        (
            "/etc/evil",
            raw_entry("/etc/evil", tar::EntryType::Regular, None),
        ),
        (
            "evil-soft",
            raw_entry("evil-soft", tar::EntryType::Symlink, Some("/etc")),
        ),
        (
            "evil-hard",
            raw_entry(
                "evil-hard",
                tar::EntryType::Link,
                Some("../../../../etc/shadow"),
            ),
        ),
    ];
    for (name, tar) in hostile {
        let err = t
            .backend
            .stream_in("s", "/home/vcap/app", None, Cursor::new(tar))
            .await
            .expect_err(name);
        assert!(
            err.to_string().contains(name),
            "error does not name {name}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&outside).expect("sentinel"),
        "untouched"
    );
}

#[tokio::test]
async fn symlinks_planted_in_the_container_never_reach_host_files() {
    let t = TestBackend::new(13).await;
    t.container("planted").await;
    let (exit, _, _) = t
        .sh("planted", "vcap", "ln -s /etc/shadow /tmp/shadow-link; ln -s / /tmp/rootlink; mkdir -p /home/vcap/x; ln -s /etc /home/vcap/x/etc")
        .await;
    assert_eq!(exit.code, 0);
    let host_shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    for path in ["/tmp/shadow-link", "/tmp/rootlink/etc/shadow"] {
        match t.backend.stream_out("planted", path, Vec::new()).await {
            Ok(tar) => assert!(
                host_shadow.is_empty()
                    || !tar
                        .windows(host_shadow.len().min(32))
                        .any(|w| w == &host_shadow[..host_shadow.len().min(32)]),
                "{path} streamed out the host's shadow"
            ),
            Err(e) => assert!(
                e.to_string().contains("shadow") || e.to_string().contains("not"),
                "{e}"
            ),
        }
    }
    // Streaming in as vcap through a symlink vcap planted (/home/vcap/x/etc -> /etc) writes
    // nowhere vcap could not: not into the container's root-owned /etc, never the host's.
    let marker = format!("kiln-planted-{}", std::process::id());
    let result = t
        .backend
        .stream_in(
            "planted",
            "/home/vcap/x/etc",
            None,
            Cursor::new(tar_of(&[(&marker, b"x")])),
        )
        .await;
    assert!(
        result.is_err(),
        "vcap's symlink let stream_in write into /etc"
    );
    assert!(
        !std::path::Path::new("/etc").join(&marker).exists(),
        "wrote into the host's /etc"
    );
    let (_, out, _) = t
        .sh(
            "planted",
            "root",
            &format!("ls /etc/{marker}; stat -c %u /etc/passwd"),
        )
        .await;
    assert_eq!(
        out, "0\n",
        "the container's /etc was written or chowned: {out}"
    );
    // The same stream as root is allowed: root owns /etc.
    t.backend
        .stream_in(
            "planted",
            "/home/vcap/x/etc",
            Some("root"),
            Cursor::new(tar_of(&[(&marker, b"x")])),
        )
        .await
        .expect("root may write its own /etc");
    let (_, out, _) = t.sh("planted", "root", &format!("cat /etc/{marker}")).await;
    assert_eq!(out, "x");
}

#[tokio::test]
async fn absolute_links_are_kept_only_when_asked_and_resolve_inside_the_container() {
    let t = TestBackend::new(17).await;
    t.container("links").await;
    let link = || {
        Cursor::new(raw_entry(
            "passwd",
            tar::EntryType::Symlink,
            Some("/etc/passwd"),
        ))
    };
    let refused = t
        .backend
        .stream_in("links", "/tmp", Some("vcap"), link())
        .await;
    assert!(refused.is_err(), "an absolute link is refused by default");
    let options = kiln_containers::StreamInOptions {
        user: Some("vcap"),
        absolute_links: true,
    };
    t.backend
        .stream_in_with("links", "/tmp", options, link())
        .await
        .expect("kept when asked");
    let (_, out, _) = t.sh("links", "vcap", "cat /tmp/passwd").await;
    assert!(
        out.contains("vcap:x:2000:2000"),
        "the container's passwd: {out}"
    );
    assert_ne!(out, std::fs::read_to_string("/etc/passwd").unwrap());
}
