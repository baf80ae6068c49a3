//! An image droplet (a Dockerfile build or a pushed OCI image) on real runc and NATS (test
//! index 90: pool 10.244.90.0/26, ports 41800-41819): the cell fetches the image once, runs
//! its command as its user in its directory with its environment and its port as `PORT`, the
//! app answers on it; an image whose user is root is root inside its user namespace only.
mod common;

use std::time::Duration;

use common::cell::{exec, Cell};
use common::*;
use kiln_bus::cell::{self, ImageProcess, InstanceStop};
use kiln_bus::StackImageRef;
use kiln_rootfs::layout::{derive_layout, LayerFile};

/// tiny with `/srv/www/index.html`, as a tar of its layout: (archive, manifest digest).
fn app_image(dir: &std::path::Path) -> (Vec<u8>, String) {
    let tiny = kiln_rootfs::recipes::cached("tiny").expect("the tiny stack");
    let layout = dir.join("app-image");
    let files: &[LayerFile<'_>] = &[("srv/www/index.html", b"hello from an image\n", 0o644)];
    let derived = derive_layout(&tiny.dir, "tiny", &layout, files, |_| {}).expect("image");
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all(".", &layout).expect("tar");
    (tar.into_inner().expect("tar"), derived.manifest_digest)
}

#[test]
fn an_image_droplet_runs_its_own_command_user_and_port() {
    let c = Cell::new(90);
    let scratch = tempfile::tempdir().expect("scratch");
    let (archive, digest) = app_image(scratch.path());
    let url = c.droplets.add("image", archive);
    let command = "httpd -f -p 0.0.0.0:5000 -h /srv/www";
    let mut start = start("app1", "inst-1", "", "", command);
    start.stack_image = Some(StackImageRef {
        digest: digest.clone(),
        url,
    });
    start.image = Some(ImageProcess {
        command: command.split(' ').map(str::to_string).collect(),
        user: String::new(),
        working_dir: "/srv".into(),
        env: vec!["IMAGE_VAR=from-the-image".into(), "GREETING=image".into()],
        port: 5000,
    });
    let wait = Duration::from_secs(60);
    c.block_on(async {
        let subject = cell::start_subject(&c.config.cell_id);
        c.send(subject, &start).await;
        let (_, running) = c.bus.state("inst-1", "RUNNING", wait).await;
        assert_eq!(running["stack_digest"], digest.as_str(), "{running}");
        let port = running["port"].as_u64().expect("port") as u16;
        let answer = http_get(port, "/index.html").await;
        assert!(answer.contains("hello from an image"), "{answer}");

        // Its user (root inside), directory, environment (the app's over the image's) and
        // port.
        let script = "id -u; pwd; echo $PORT $IMAGE_VAR $GREETING";
        let r = exec(&c, "inst-1", &["sh", "-c", script], 10).await;
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        assert_eq!(r.stdout, "0\n/srv\n5000 from-the-image hi\n", "{r:?}");
        // No buildpack layout: HOME is the image user's, VCAP_APPLICATION names its port.
        let script = "echo $HOME; echo $TMPDIR; echo $VCAP_APPLICATION";
        let r = exec(&c, "inst-1", &["sh", "-c", script], 10).await;
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_ne!(lines[0], "/home/vcap/app", "{r:?}");
        assert_eq!(lines[1], "", "{r:?}");
        assert!(lines[2].contains("\"port\":5000"), "{r:?}");

        // Root inside is an unprivileged user of the host: its uid 0 maps to a high host uid,
        // and what only the host's root may do is refused.
        let r = exec(&c, "inst-1", &["cat", "/proc/self/uid_map"], 10).await;
        let map: Vec<u64> = r
            .stdout
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect();
        assert_eq!(map[0], 0, "{r:?}");
        assert!(map[1] >= 1 << 28, "uid 0 is host uid {}: {r:?}", map[1]);
        let script = "mount -t tmpfs none /mnt 2>/dev/null && echo mounted; \
                      echo b > /proc/sysrq-trigger 2>/dev/null && echo sysrq; \
                      touch /sys/kernel/kiln 2>/dev/null && echo sys; \
                      hostname intruder 2>/dev/null && echo hostname; echo done";
        let r = exec(&c, "inst-1", &["sh", "-c", script], 10).await;
        assert_eq!(
            r.stdout, "done\n",
            "root inside did what only the host's may: {r:?}"
        );

        c.send(
            cell::stop_subject(&c.config.cell_id),
            &InstanceStop {
                instance_guid: "inst-1".into(),
            },
        )
        .await;
        c.bus.state("inst-1", "STOPPED", wait).await;
    });
    assert!(
        c.backend().list(&Default::default()).is_empty(),
        "no container is left"
    );
}
