//! Extra read-only layers (`ContainerSpec::layers`): a directory unpacked once on the host is
//! seen in the container above the stack, owned by container uids, writable by copy-up into the
//! container's own layer, and left untouched on the host; destroy unmounts it.
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

#[tokio::test]
async fn a_layer_is_shared_read_only_and_written_by_copy_up() {
    let t = TestBackend::new(18).await;
    let layer = tempfile::tempdir().expect("layer dir");
    // Laid out like a root filesystem, with container uids on disk (vcap is 2000).
    let app = layer.path().join("home/vcap/app");
    std::fs::create_dir_all(&app).expect("mkdir");
    std::fs::write(app.join("hello.txt"), "from the layer\n").expect("write");
    for dir in [layer.path().join("home/vcap"), app.clone()] {
        std::os::unix::fs::chown(&dir, Some(2000), Some(2000)).expect("chown");
    }
    std::os::unix::fs::chown(app.join("hello.txt"), Some(2000), Some(2000)).expect("chown");
    std::fs::set_permissions(layer.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut s = spec("layered");
    s.layers = vec![layer.path().to_path_buf()];
    t.backend.create(s.clone()).await.expect("create");
    let mut other = spec("layered2");
    other.layers = vec![layer.path().to_path_buf()];
    t.backend.create(other).await.expect("create a second");

    let (exit, out, err) = t
        .sh(
            "layered",
            "vcap",
            "stat -c '%u %n' /home/vcap/app/hello.txt; cat /home/vcap/app/hello.txt; \
             echo changed > /home/vcap/app/hello.txt && cat /home/vcap/app/hello.txt; \
             echo new > /home/vcap/app/new.txt && ls /bin/sh",
        )
        .await;
    assert_eq!(exit.code, 0, "{err}");
    assert_eq!(
        out,
        "2000 /home/vcap/app/hello.txt\nfrom the layer\nchanged\n/bin/sh\n"
    );
    // The other container and the host still see the layer as it was.
    let (_, out, _) = t
        .sh(
            "layered2",
            "vcap",
            "cat /home/vcap/app/hello.txt; ls /home/vcap/app",
        )
        .await;
    assert_eq!(out, "from the layer\nhello.txt\n");
    assert_eq!(
        std::fs::read_to_string(app.join("hello.txt")).expect("read"),
        "from the layer\n"
    );
    assert!(!app.join("new.txt").exists());
    assert_eq!(
        std::fs::metadata(app.join("hello.txt"))
            .expect("stat")
            .uid(),
        2000
    );

    // A missing layer is refused before anything is made.
    let mut bad = spec("bad-layer");
    bad.layers = vec![layer.path().join("missing")];
    let e = t.backend.create(bad).await.expect_err("missing layer");
    assert!(
        e.to_string().contains("must be an existing directory"),
        "{e}"
    );

    for handle in ["layered", "layered2"] {
        t.backend.destroy(handle).await.expect("destroy");
    }
    assert_eq!(t.backend.resources_on_machine(), Vec::<String>::new());
}
