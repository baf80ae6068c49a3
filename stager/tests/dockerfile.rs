//! Dockerfile builds with real containers (root; test indexes 80-89; 86 also names the peer
//! namespace `ADD <url>` downloads from).

mod common;
#[path = "../../containers/tests/common/peer.rs"]
mod peer;

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::Fixture;
use kiln_containers::{NetOutRule, Protocol};
use kiln_rootfs::store::StackStore;
use kiln_stager::dockerfile::{build, BuildOptions, BuiltImage, DockerfileError};
use kiln_stager::{LogLine, LogSink};

/// Builds `dockerfile` with `files` as the context, in the fixture's dir: (result, log).
async fn build_in(
    fx: &Fixture,
    id: &str,
    dockerfile: &str,
    files: &[(&str, &str)],
) -> (Result<BuiltImage, DockerfileError>, Vec<String>) {
    build_with_egress(fx, id, dockerfile, files, Vec::new()).await
}

/// [`build_in`] with the egress rules `net_out`.
async fn build_with_egress(
    fx: &Fixture,
    id: &str,
    dockerfile: &str,
    files: &[(&str, &str)],
    net_out: Vec<NetOutRule>,
) -> (Result<BuiltImage, DockerfileError>, Vec<String>) {
    let context = fx.path(&format!("{id}-ctx"));
    common::app(&context, files);
    fs::write(context.join("Dockerfile"), dockerfile).unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    let sink: LogSink = Arc::new(move |l: &LogLine| seen.lock().unwrap().push(l.text.clone()));
    let store = StackStore::open(&fx.config.stacks_dir).unwrap();
    let mut opts = BuildOptions::new(
        id,
        &context,
        &fx.path("cache"),
        &fx.path(&format!("{id}-out")),
    );
    opts.net_out = net_out;
    let result = build(&fx.backend, &store, &opts, sink).await;
    let lines = lines.lock().unwrap().clone();
    (result, lines)
}

/// Imports the built layout into a store of its own and returns the unpacked tree.
fn unpack(fx: &Fixture, image: &BuiltImage, name: &str) -> std::path::PathBuf {
    let store = StackStore::open(fx.path(&format!("{name}-store"))).unwrap();
    store.import(&image.layout, "latest").unwrap().rootfs
}

const MULTI: &str = "\
ARG GREETING=hello
FROM tiny AS build
ARG GREETING
ENV OUT=/out
USER root
RUN mkdir -p $OUT && echo \"$GREETING from build\" > $OUT/greeting && head -c 16 /dev/urandom | od -x > $OUT/random
WORKDIR /src
COPY app.txt ./
RUN cp app.txt $OUT/app.txt && touch /src/doomed && rm /src/doomed && rm -f /bin/vi

FROM tiny
ENV MODE=production
COPY --from=build /out /srv/out
COPY --chown=vcap static/ /srv/static/
WORKDIR /srv
USER vcap
EXPOSE 8080
LABEL org.example.name=\"multi stage\"
CMD [\"/bin/httpd\", \"-f\", \"-p\", \"8080\"]
";

#[tokio::test]
async fn a_multi_stage_build_makes_the_image_and_a_second_is_fully_cached() {
    let fx = Fixture::new(80).await;
    let files = [
        ("app.txt", "the app\n"),
        ("static/index.html", "<h1>hi</h1>\n"),
    ];
    let (first, log) = build_in(&fx, "multi", MULTI, &files).await;
    let first = first.unwrap_or_else(|e| panic!("build: {e}\n{}", log.join("\n")));
    assert!(
        log.iter()
            .any(|l| l.starts_with("Step 1/17 : FROM tiny AS build")),
        "{log:#?}"
    );
    assert_eq!(first.ran, 2);

    let config = first.config.config().clone().expect("a config");
    assert_eq!(config.user().as_deref(), Some("vcap"));
    assert_eq!(config.working_dir().as_deref(), Some("/srv"));
    let env = config.env().clone().unwrap_or_default();
    assert!(env.contains(&"MODE=production".to_string()), "{env:?}");
    assert_eq!(
        config.cmd().clone().unwrap_or_default(),
        ["/bin/httpd", "-f", "-p", "8080"]
    );
    assert_eq!(
        config.exposed_ports().clone().unwrap_or_default(),
        ["8080/tcp"]
    );
    assert_eq!(
        config
            .labels()
            .clone()
            .unwrap_or_default()
            .get("org.example.name")
            .map(String::as_str),
        Some("multi stage")
    );

    let tree = unpack(&fx, &first, "multi");
    assert_eq!(
        fs::read_to_string(tree.join("srv/out/greeting")).unwrap(),
        "hello from build\n"
    );
    assert_eq!(
        fs::read_to_string(tree.join("srv/out/app.txt")).unwrap(),
        "the app\n"
    );
    assert_eq!(
        fs::read_to_string(tree.join("srv/static/index.html")).unwrap(),
        "<h1>hi</h1>\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(tree.join("srv/static/index.html"))
            .unwrap()
            .uid(),
        2000
    );
    assert_eq!(
        fs::metadata(tree.join("srv/out/greeting")).unwrap().uid(),
        0
    );

    // Again: nothing runs, same image.
    let (second, log) = build_in(&fx, "multi", MULTI, &files).await;
    let second = second.unwrap_or_else(|e| panic!("second build: {e}\n{}", log.join("\n")));
    assert_eq!(second.ran, 0, "{log:#?}");
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert!(
        log.iter().filter(|l| l.contains("CACHED")).count() >= 4,
        "{log:#?}"
    );
    let tree2 = unpack(&fx, &second, "multi2");
    assert_eq!(
        fs::read(tree.join("srv/out/random")).unwrap(),
        fs::read(tree2.join("srv/out/random")).unwrap()
    );
}

#[tokio::test]
async fn a_deleted_file_is_absent_from_the_image() {
    let fx = Fixture::new(81).await;
    let dockerfile = "FROM tiny\nUSER root\nRUN mkdir /data && echo x > /data/keep && echo y > /data/gone\nRUN rm /data/gone /bin/vi && rm -r /home\n";
    let (image, log) = build_in(&fx, "delete", dockerfile, &[]).await;
    let image = image.unwrap_or_else(|e| panic!("build: {e}\n{}", log.join("\n")));
    let tree = unpack(&fx, &image, "delete");
    assert!(tree.join("data/keep").exists());
    assert!(!tree.join("data/gone").exists());
    assert!(fs::symlink_metadata(tree.join("bin/vi")).is_err());
    assert!(!tree.join("home").exists());
    assert!(tree.join("bin/sh").exists());
}

#[tokio::test]
async fn failures_name_their_line() {
    let fx = Fixture::new(82).await;
    let (result, _) = build_in(
        &fx,
        "unsupported",
        "FROM tiny\nRUN true\nVOLUME /data\n",
        &[],
    )
    .await;
    let e = result.unwrap_err().to_string();
    assert!(
        e.starts_with("line 3: VOLUME is not supported by Kiln"),
        "{e}"
    );

    let (result, log) = build_in(
        &fx,
        "failing",
        "FROM tiny\nENV A=1\n\nRUN echo about to fail && exit 7\n",
        &[],
    )
    .await;
    let e = result.unwrap_err().to_string();
    assert!(
        e.starts_with("line 4: RUN echo about to fail && exit 7 failed with exit code 7"),
        "{e}"
    );
    assert!(log.iter().any(|l| l == "about to fail"), "{log:#?}");
    assert!(
        fx.backend.list(&Default::default()).is_empty(),
        "the RUN container is gone"
    );
}

#[tokio::test]
async fn files_of_a_root_run_are_owned_by_0_in_the_layer_and_by_the_shifted_uid_on_the_host() {
    let fx = Fixture::new(83).await;
    let store_dir = fx.config.data_dir.join("store");
    let host_uid = Arc::new(Mutex::new(None));
    let seen = host_uid.clone();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let all = lines.clone();
    let sink: LogSink = Arc::new(move |l: &LogLine| {
        all.lock().unwrap().push(l.text.clone());
        if l.text == "CHECK-HOST" {
            use std::os::unix::fs::MetadataExt;
            for entry in fs::read_dir(&store_dir).unwrap().flatten() {
                if let Ok(m) = fs::metadata(entry.path().join("upper/owned")) {
                    *seen.lock().unwrap() = Some(m.uid());
                }
            }
        }
    });
    let context = fx.path("owner-ctx");
    common::app(
        &context,
        &[(
            "Dockerfile",
            "FROM tiny\nUSER root\nRUN touch /owned && echo CHECK-HOST && sleep 1\n",
        )],
    );
    let store = StackStore::open(&fx.config.stacks_dir).unwrap();
    let opts = BuildOptions::new("owner", &context, &fx.path("cache"), &fx.path("owner-out"));
    let image = build(&fx.backend, &store, &opts, sink).await;
    let image = image.unwrap_or_else(|e| panic!("build: {e}\n{:#?}", lines.lock().unwrap()));
    let host = host_uid
        .lock()
        .unwrap()
        .expect("seen on the host while RUN ran");
    assert!(
        host >= fx.config.uid_range_start,
        "shifted on the host: {host}"
    );

    let top = image.layers.last().unwrap();
    let blob = image.layout.join("blobs/sha256").join(
        top.descriptor
            .digest()
            .to_string()
            .trim_start_matches("sha256:"),
    );
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(blob).unwrap()));
    let owned = tar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap() == Path::new("owned"))
        .expect("owned in the RUN layer");
    assert_eq!(owned.header().uid().unwrap(), 0);
    assert_eq!(owned.header().gid().unwrap(), 0);
}

#[tokio::test]
async fn add_of_a_url_downloads_only_what_the_staging_egress_rules_allow() {
    let fx = Fixture::new(86).await;
    let peer = peer::Peer::new(86);
    let body = Arc::new(Mutex::new(b"remote v1\n".to_vec()));
    peer.serve_http(9086, body.clone());
    let url = format!("http://{}:9086/files/tool.txt", peer.address);
    let dockerfile = format!(
        "FROM tiny\nUSER root\n\nADD {url} /opt/\nADD --chmod=640 {url} /opt/renamed\n\
         ADD --chmod=644 {url} /srv/files/\n"
    );

    // No rule: refused before connecting, naming the line and the address.
    let (result, _) = build_in(&fx, "url-closed", &dockerfile, &[]).await;
    assert_eq!(
        result.unwrap_err().to_string(),
        format!(
            "line 4: ADD {url}: the staging egress rules do not allow {}:9086 (allow it with a \
             staging security group)",
            peer.address
        )
    );
    // A rule for another port allows nothing either.
    let rule = |port: u16| NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![peer.address.to_string()],
        ports: vec![(port, port)],
    };
    let (result, _) = build_with_egress(&fx, "url-port", &dockerfile, &[], vec![rule(9087)]).await;
    let e = result.unwrap_err().to_string();
    assert!(
        e.starts_with("line 4: ") && e.contains("do not allow"),
        "{e}"
    );

    // Allowed: downloaded, mode 0600 and owned by root, or --chmod's mode (the file's only).
    let open = vec![rule(9086)];
    let (first, log) = build_with_egress(&fx, "url-open", &dockerfile, &[], open.clone()).await;
    let first = first.unwrap_or_else(|e| panic!("build: {e}\n{}", log.join("\n")));
    assert!(
        log.iter()
            .any(|l| *l == format!("Step 3/5 : ADD {url} /opt/")),
        "{log:#?}"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with(" ---> downloaded 10 bytes ("))
            .count(),
        3,
        "{log:#?}"
    );
    assert_eq!(first.cached, 0);
    let tree = unpack(&fx, &first, "url-open");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = |path: &str| fs::metadata(tree.join(path)).unwrap().permissions().mode() & 0o7777;
    for path in ["opt/tool.txt", "opt/renamed", "srv/files/tool.txt"] {
        assert_eq!(fs::read(tree.join(path)).unwrap(), b"remote v1\n", "{path}");
        let meta = fs::metadata(tree.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path}");
    }
    assert_eq!(mode("opt/tool.txt"), 0o600);
    assert_eq!(mode("opt/renamed"), 0o640);
    assert_eq!(mode("srv/files/tool.txt"), 0o644);
    assert_eq!(
        mode("srv/files"),
        0o755,
        "the made directory keeps its mode"
    );

    // The same content again: downloaded, then every step from the cache, the same image.
    let (second, log) = build_with_egress(&fx, "url-open", &dockerfile, &[], open.clone()).await;
    let second = second.unwrap_or_else(|e| panic!("second build: {e}\n{}", log.join("\n")));
    assert_eq!(second.cached, 3, "{log:#?}");
    assert_eq!(second.manifest_digest, first.manifest_digest);

    // Changed remote content, a gzipped tar this time: a miss, and the file as downloaded
    // (never extracted).
    let mut tgz = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    tgz.append_data(&mut header, "inside", &b"in\n"[..])
        .unwrap();
    let tgz = tgz.into_inner().unwrap().finish().unwrap();
    *body.lock().unwrap() = tgz.clone();
    let (third, log) = build_with_egress(&fx, "url-open", &dockerfile, &[], open).await;
    let third = third.unwrap_or_else(|e| panic!("third build: {e}\n{}", log.join("\n")));
    assert_eq!(third.cached, 0, "{log:#?}");
    assert_ne!(third.manifest_digest, first.manifest_digest);
    let tree = unpack(&fx, &third, "url-changed");
    assert_eq!(fs::read(tree.join("opt/tool.txt")).unwrap(), tgz);
    assert!(!tree.join("opt/inside").exists() && !tree.join("srv/files/inside").exists());
}
