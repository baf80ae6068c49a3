//! Against a real registry: Debian's `docker-registry` (distribution 2.8), started per test on
//! a free loopback port with its storage in a temporary directory, killed by its pid when the
//! test ends (also when it fails). Pushes the tiny stack's layout, pulls it back (by tag, by
//! digest, through an image index) and imports the pulled layout into a stack store; an
//! unknown tag, an unreachable registry, HTTPS to an HTTP registry, a corrupted blob and a
//! missing platform give typed errors naming the reference.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use kiln_registry::{
    pull_to_layout, push_layout, Platform, PullOptions, PushOptions, RegistryError,
};
use kiln_rootfs::layout::StackLayout;
use kiln_rootfs::{recipes, StackStore};

use kiln_testkit::Registry;

fn http() -> PullOptions {
    PullOptions {
        allow_http: true,
        ..PullOptions::default()
    }
}

fn push_http() -> PushOptions {
    PushOptions {
        allow_http: true,
        ..PushOptions::default()
    }
}

fn tiny(tmp: &tempfile::TempDir) -> StackLayout {
    recipes::build_tiny(&tmp.path().join("tiny")).expect("build tiny")
}

fn blob_names(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(layout.join("blobs/sha256"))
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn push_then_pull_gives_the_same_image_and_the_store_imports_it() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tiny(&tmp);
    let reference = registry.reference("kiln/tiny:v1");

    let pushed = push_layout(&layout.dir, &reference, &push_http())
        .await
        .expect("push");
    assert_eq!(pushed.manifest_digest, layout.manifest_digest);
    // A second push finds every blob already there.
    push_layout(&layout.dir, &reference, &push_http())
        .await
        .expect("push again");

    let out = tmp.path().join("pulled");
    let pulled = pull_to_layout(&reference, &out, &http())
        .await
        .expect("pull");
    assert_eq!(pulled.manifest_digest, layout.manifest_digest);
    assert_eq!(pulled.index_digest, None);
    assert_eq!(pulled.layout_dir, out);
    assert_eq!(blob_names(&out), blob_names(&layout.dir));

    let store = StackStore::open(tmp.path().join("store")).expect("open store");
    let image = store
        .import(&pulled.layout_dir, "tiny")
        .expect("import pulled");
    assert_eq!(image.digest, layout.manifest_digest);
    assert_eq!(image.user.as_deref(), Some("vcap"));
    assert!(image.rootfs.join("bin/busybox").is_file());

    let by_digest = registry.reference(&format!("kiln/tiny@{}", layout.manifest_digest));
    let pulled = pull_to_layout(&by_digest, &tmp.path().join("by-digest"), &http())
        .await
        .expect("pull by digest");
    assert_eq!(pulled.manifest_digest, layout.manifest_digest);
}

#[tokio::test]
async fn an_unknown_tag_or_repository_is_an_unknown_image() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tiny(&tmp);
    push_layout(
        &layout.dir,
        &registry.reference("kiln/tiny:v1"),
        &push_http(),
    )
    .await
    .expect("push");

    for missing in ["kiln/tiny:nope", "kiln/missing:v1"] {
        let reference = registry.reference(missing);
        let out = tmp.path().join("out");
        let err = pull_to_layout(&reference, &out, &http())
            .await
            .expect_err("unknown image");
        assert!(
            matches!(&err, RegistryError::UnknownImage { reference: r, .. } if *r == reference),
            "{err:?}"
        );
        assert!(err.to_string().contains(&reference), "{err}");
        assert!(!out.join("index.json").exists());
    }
}

#[tokio::test]
async fn a_corrupted_blob_in_the_registry_is_refused_and_not_kept() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tiny(&tmp);
    let reference = registry.reference("kiln/tiny:v1");
    push_layout(&layout.dir, &reference, &push_http())
        .await
        .expect("push");
    let image = kiln_rootfs::layout::read_image(&layout.dir, "tiny").expect("read tiny");
    let layer = image.manifest.layers()[0].digest().to_string();
    let data = registry.blob_data(&layer);
    let mut bytes = fs::read(&data).expect("registry blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&data, &bytes).expect("corrupt registry blob");

    let out = tmp.path().join("out");
    let err = pull_to_layout(&reference, &out, &http())
        .await
        .expect_err("corrupt layer");
    assert!(
        matches!(&err, RegistryError::DigestMismatch { digest, reference: r, .. } if *digest == layer && *r == reference),
        "{err:?}"
    );
    let hex = layer.trim_start_matches("sha256:");
    assert!(
        !blob_names(&out).iter().any(|n| n.contains(hex)),
        "{:?}",
        blob_names(&out)
    );
    assert!(!out.join("index.json").exists());
}

#[tokio::test]
async fn an_index_is_resolved_to_linux_amd64() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tiny(&tmp);
    push_layout(
        &layout.dir,
        &registry.reference("kiln/tiny:v1"),
        &push_http(),
    )
    .await
    .expect("push");
    let manifest_size = fs::metadata(
        layout
            .dir
            .join("blobs/sha256")
            .join(layout.manifest_digest.trim_start_matches("sha256:")),
    )
    .expect("manifest blob")
    .len();
    // An index listing the tiny manifest twice: as arm64 first, then as amd64.
    let entry = |arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": layout.manifest_digest,
            "size": manifest_size,
            "platform": {"os": "linux", "architecture": arch}
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64"), entry("amd64")]
    }))
    .expect("index JSON");
    let index_ref = registry.reference("kiln/tiny:multi");
    put_manifest(
        registry.port,
        "kiln/tiny",
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &index,
    );

    let pulled = pull_to_layout(&index_ref, &tmp.path().join("multi"), &http())
        .await
        .expect("pull index");
    assert_eq!(pulled.manifest_digest, layout.manifest_digest);
    assert!(pulled.index_digest.is_some());

    let s390x = PullOptions {
        platform: Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
        },
        ..http()
    };
    let err = pull_to_layout(&index_ref, &tmp.path().join("s390x"), &s390x)
        .await
        .expect_err("no s390x");
    assert!(
        matches!(&err, RegistryError::NoMatchingPlatform { available, .. } if available == &["linux/arm64", "linux/amd64"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_registry_and_https_to_an_http_registry_are_unreachable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let nobody = format!("127.0.0.1:{}/kiln/tiny:v1", kiln_testkit::free_port());
    let err = pull_to_layout(&nobody, &tmp.path().join("a"), &http())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(&err, RegistryError::Unreachable { reference, scheme: "http", .. } if *reference == nobody),
        "{err:?}"
    );
    assert!(err.to_string().contains(&nobody), "{err}");

    let registry = Registry::start();
    let reference = registry.reference("kiln/tiny:v1");
    let err = pull_to_layout(&reference, &tmp.path().join("b"), &PullOptions::default())
        .await
        .expect_err("HTTPS to a plain HTTP registry");
    assert!(
        matches!(
            &err,
            RegistryError::Unreachable {
                scheme: "https",
                ..
            }
        ),
        "{err:?}"
    );

    let err = pull_to_layout("not a reference!", &tmp.path().join("c"), &http())
        .await
        .expect_err("bad reference");
    assert!(
        matches!(err, RegistryError::InvalidReference { .. }),
        "{err:?}"
    );
}

/// `PUT /v2/<repo>/manifests/<tag>` with a raw body, as a registry client would.
fn put_manifest(port: u16, repo: &str, tag: &str, content_type: &str, body: &[u8]) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect registry");
    let head = format!(
        "PUT /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).expect("send head");
    conn.write_all(body).expect("send body");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("read answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}
