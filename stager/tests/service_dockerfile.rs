//! Dockerfile builds through the staging service end to end: a real `nats-server`, the
//! `kiln-stager` binary, the fake controller of `stager_service/`, real containers on tiny.
//! Test indexes 84 (builds: `examples/dockerfile` staged twice) and 85 (failures, and a `FROM`
//! of an image of the controller's image store): address pools `10.244.<i>.0/26`, ports
//! `40000 + 20 i`, uid ranges `(1<<28) + i * (16<<16)`.

mod stager_service;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use kiln_bus::{NamedImage, StackImageRef, StagedDroplet, StagingOutcome, StagingRequest};
use kiln_rootfs::layout::{
    layout_from_archive, read_image, write_layer, write_layout_with_layers, LayerBlob,
};
use kiln_testkit::Nats;
use sha2::{Digest, Sha256};
use stager_service::{
    assert_nothing_left, failed, request, start_controller, staticfile_zip, Bus, StagerProcess,
};

fn root_only() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the service tests need root (runc, mounts, iptables)"
    );
}

/// A zip of the files under `dir`, by their paths relative to it.
fn zip_dir(dir: &Path) -> Vec<u8> {
    fn add(zip: &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>, root: &Path, dir: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read the example")
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = path.strip_prefix(root).expect("below the root");
            if path.is_dir() {
                add(zip, root, &path);
            } else {
                zip.start_file(
                    name.to_string_lossy(),
                    zip::write::SimpleFileOptions::default(),
                )
                .expect("zip entry");
                zip.write_all(&std::fs::read(&path).expect("read a file"))
                    .expect("zip body");
            }
        }
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    add(&mut zip, dir, dir);
    zip.finish().expect("zip").into_inner()
}

/// A zip of `files` (name, content).
fn zip_files(files: &[(&str, &str)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, body) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("zip entry");
        zip.write_all(body.as_bytes()).expect("zip body");
    }
    zip.finish().expect("zip").into_inner()
}

fn staged(outcome: StagingOutcome, stager: &StagerProcess) -> StagedDroplet {
    match outcome {
        StagingOutcome::Staged(s) => s,
        StagingOutcome::Failed { reason, .. } => {
            panic!(
                "staging failed: {reason}\n--- stager log ---\n{}",
                stager.log()
            )
        }
    }
}

/// Waits for the stager's first advertisement.
async fn advertised(bus: &mut Bus, stager: &StagerProcess) {
    let id = stager.id.clone();
    bus.wait_for(
        "the stager's advertisement",
        Duration::from_secs(300),
        stager,
        |subject, body| {
            (subject == kiln_bus::STAGER_ADVERTISE)
                .then(|| kiln_bus::decode::<kiln_bus::StagerAdvertise>(subject, body).ok())
                .flatten()
                .filter(|a| a.id == id)
        },
    )
    .await;
}

/// Stops the stager with SIGTERM and checks it exits 0 and leaves nothing behind.
async fn stop(mut stager: StagerProcess, dir: &Path, index: u8) {
    stager.signal(libc::SIGTERM);
    let status = stager.wait(Duration::from_secs(120)).await;
    assert!(status.success(), "{status}\n{}", stager.log());
    assert_nothing_left(dir, index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dockerfile_app_becomes_an_image_droplet_and_a_second_staging_is_cached() {
    const INDEX: u8 = 84;
    root_only();
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = Nats::start();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dockerfile");
    let (addr, controller) = start_controller(zip_dir(&example)).await;
    let base = format!("http://{addr}");
    let mut bus = Bus::connect(&nats.url).await;
    let stager = StagerProcess::start(INDEX, dir.path(), &nats.url, "stager", &[]);
    advertised(&mut bus, &stager).await;

    // On tiny with no buildpack named: the Dockerfile at the root is built.
    let mut first = request("web-1", "tiny", &base, "/packages/x");
    first.app_guid = "app-web".into();
    bus.publish(&first).await;
    let one = staged(bus.result("web-1", &stager).await, &stager);
    let digest = one.image_digest.clone().expect("an image droplet");
    assert_eq!(one.detected_buildpack, "dockerfile");
    assert!(one.buildpacks.is_empty());
    let command = "httpd -f -v -p 0.0.0.0:8080 -h /srv/www";
    assert_eq!(one.start_command, command);
    assert_eq!(
        one.process_types.get("web").map(String::as_str),
        Some(command)
    );
    let lines: Vec<String> = bus.log_lines("web-1").into_iter().map(|l| l.line).collect();
    assert!(
        lines.contains(&"-----> Building the Dockerfile (docker build)".to_string()),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Step 1/") && l.contains("FROM tiny AS build")),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("CACHED")), "{lines:#?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("-----> Uploading the droplet"),
        "every line comes before the result"
    );

    // The droplet is the image's layout as a tar, whose manifest is the digest reported.
    let (content_type, droplet) = controller
        .uploads
        .lock()
        .unwrap()
        .get("droplet/web-1")
        .cloned()
        .expect("the droplet was uploaded");
    assert_eq!(content_type, "application/x-tar");
    assert_eq!(one.sha256, hex::encode(Sha256::digest(&droplet)));
    assert_eq!(one.size, droplet.len() as u64);
    let tar = dir.path().join("droplet.tar");
    std::fs::write(&tar, &droplet).expect("write the droplet");
    let layout = layout_from_archive(&tar, &dir.path().join("droplet-layout"), None)
        .expect("the droplet is an image layout");
    let image = read_image(&layout.dir, "latest").expect("every blob verifies");
    assert_eq!(image.manifest_digest, digest);
    let config = image.config.config().clone().expect("a config");
    assert_eq!(config.user().as_deref(), Some("vcap"));
    assert_eq!(
        config.exposed_ports().clone().unwrap_or_default(),
        ["8080/tcp"]
    );
    assert!(config
        .env()
        .clone()
        .unwrap_or_default()
        .contains(&"SITE_DIR=/srv/www".to_string()));
    assert!(
        !controller.uploads.lock().unwrap().contains_key("cache/app"),
        "a Dockerfile build uploads no build cache"
    );

    // The same app and files again, now asking for the docker stack: every step is cached and
    // the image is the same.
    let mut second = request("web-2", kiln_bus::DOCKER_STACK, &base, "/packages/x");
    second.app_guid = "app-web".into();
    bus.publish(&second).await;
    let two = staged(bus.result("web-2", &stager).await, &stager);
    let lines: Vec<String> = bus.log_lines("web-2").into_iter().map(|l| l.line).collect();
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with(" ---> CACHED"))
            .count()
            >= 3,
        "{lines:#?}"
    );
    assert_eq!(two.image_digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        two.sha256, one.sha256,
        "the same image packs into the same droplet"
    );

    stop(stager, dir.path(), INDEX).await;
    drop(nats);
}

/// Tiny plus one layer (`etc/kiln-release` = `from the image store`) as a tar of its OCI
/// layout, and its manifest digest.
fn image_archive(dir: &Path) -> (Vec<u8>, String) {
    let tiny = kiln_rootfs::recipes::cached("tiny").expect("the tiny stack");
    let image = read_image(&tiny.dir, "tiny").expect("read tiny");
    let layout = dir.join("image-layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let diff_ids = image.config.rootfs().diff_ids().clone();
    let mut layers = Vec::new();
    for (desc, diff_id) in image.manifest.layers().iter().zip(diff_ids) {
        let digest = desc.digest().to_string();
        let hex = digest.trim_start_matches("sha256:");
        std::fs::copy(tiny.dir.join("blobs/sha256").join(hex), blobs.join(hex))
            .expect("copy a blob");
        layers.push(LayerBlob {
            descriptor: desc.clone(),
            diff_id,
        });
    }
    let mut tar = tar::Builder::new(Vec::new());
    let content = b"from the image store\n";
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(content.len() as u64);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, "etc/kiln-release", &content[..])
        .expect("layer entry");
    let tar = tar.into_inner().expect("layer tar");
    layers.push(write_layer(&layout, &tar).expect("write the layer"));
    let written =
        write_layout_with_layers(&layout, "base", image.config, &layers).expect("write layout");
    let mut archive = tar::Builder::new(Vec::new());
    archive
        .append_dir_all(".", &layout)
        .expect("tar the layout");
    (archive.into_inner().expect("tar"), written.manifest_digest)
}

/// A request for `build` on tiny whose package is `/files/<build>.zip`.
fn dockerfile_request(build: &str, base: &str) -> StagingRequest {
    let mut r = request(build, "tiny", base, &format!("/files/{build}.zip"));
    r.cache_download_url = None;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dockerfile_failures_are_clear_and_from_fetches_images_of_the_image_store() {
    const INDEX: u8 = 85;
    root_only();
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = Nats::start();
    let (addr, controller) = start_controller(staticfile_zip()).await;
    let base = format!("http://{addr}");
    let mut bus = Bus::connect(&nats.url).await;
    let stager = StagerProcess::start(INDEX, dir.path(), &nats.url, "stager", &[]);
    let (archive, image_digest) = image_archive(dir.path());
    let serve = |name: &str, body: Vec<u8>| {
        controller
            .files
            .lock()
            .unwrap()
            .insert(name.to_string(), body);
    };
    serve("base.tar", archive);
    for (build, dockerfile) in [
        ("unsupported", "FROM tiny\nRUN true\nHEALTHCHECK CMD true\n"),
        ("unknown", "FROM tiny AS one\nFROM nosuch\n"),
        ("from-image", "FROM base\nRUN cat /etc/kiln-release\n"),
    ] {
        serve(
            &format!("{build}.zip"),
            zip_files(&[("Dockerfile", dockerfile), ("index.html", "<p>hi</p>\n")]),
        );
    }
    let named = NamedImage {
        name: "base".into(),
        image: StackImageRef {
            digest: image_digest.clone(),
            url: format!("{base}/files/base.tar"),
        },
    };
    advertised(&mut bus, &stager).await;

    // An instruction Kiln does not build: refused with its line, before anything runs.
    bus.publish(&dockerfile_request("unsupported", &base)).await;
    let (reason, code) = failed(bus.result("unsupported", &stager).await);
    assert!(
        reason
            .starts_with("building the Dockerfile: line 3: HEALTHCHECK is not supported by Kiln: "),
        "{reason}"
    );
    assert_eq!(code, 223);
    assert!(
        bus.log_lines("unsupported")
            .iter()
            .any(|l| l.stream == "ERR"
                && l.line
                    .starts_with("Staging failed: building the Dockerfile: line 3")),
        "{:?}",
        bus.log_lines("unsupported")
    );

    // The docker stack without a Dockerfile.
    bus.publish(&request(
        "no-dockerfile",
        kiln_bus::DOCKER_STACK,
        &base,
        "/packages/x",
    ))
    .await;
    let (reason, code) = failed(bus.result("no-dockerfile", &stager).await);
    assert_eq!(
        reason,
        "the app has no Dockerfile at its root: push it with a Dockerfile or choose a buildpack stack (kiln stacks)"
    );
    assert_eq!(code, 222);

    // A FROM nobody has: what there is is listed.
    let mut unknown = dockerfile_request("unknown", &base);
    unknown.images = vec![named.clone()];
    bus.publish(&unknown).await;
    let (reason, code) = failed(bus.result("unknown", &stager).await);
    assert_eq!(
        reason,
        "building the Dockerfile: line 2: FROM: `nosuch` is neither an earlier stage nor a stack or image of this platform: there are the stacks tiny (kiln stacks) and the images base (kiln admin images)"
    );
    assert_eq!(code, 223);

    // A FROM naming an image of the controller's image store: fetched, then built on.
    let mut from_image = dockerfile_request("from-image", &base);
    from_image.images = vec![named];
    bus.publish(&from_image).await;
    let built = staged(bus.result("from-image", &stager).await, &stager);
    assert!(built.image_digest.is_some());
    let lines: Vec<String> = bus
        .log_lines("from-image")
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert!(
        lines.contains(&format!(
            "-----> Downloading the image base ({image_digest})"
        )),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"from the image store".to_string()),
        "{lines:#?}"
    );

    stop(stager, dir.path(), INDEX).await;
    drop(nats);
}
