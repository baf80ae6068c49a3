//! The tiny recipe: deterministic, with the promised files, users and applets; clear errors
//! when busybox is missing or the recipe is unknown.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use kiln_rootfs::recipes::{self, RecipeError, REQUIRED_APPLETS};
use serde_json::Value;

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::read(dir.join("blobs/sha256").join(hex)).expect("read blob")
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

struct Entry {
    kind: tar::EntryType,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    link: Option<String>,
    data: Vec<u8>,
}

fn layer_entries(dir: &Path, manifest: &Value) -> BTreeMap<String, Entry> {
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "tiny has one layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let gz = blob(dir, layers[0]["digest"].as_str().expect("digest"));
    let mut archive = tar::Archive::new(GzDecoder::new(&gz[..]));
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_end_matches('/')
            .to_string();
        let h = entry.header().clone();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read entry");
        let entry = Entry {
            kind: h.entry_type(),
            mode: h.mode().expect("mode"),
            owner: (h.uid().expect("uid"), h.gid().expect("gid")),
            mtime: h.mtime().expect("mtime"),
            link,
            data,
        };
        assert!(
            out.insert(name.clone(), entry).is_none(),
            "duplicate entry {name}"
        );
    }
    out
}

#[test]
fn tiny_builds_the_same_digest_twice_with_the_promised_config() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let first = recipes::build_tiny(&a.path().join("out")).expect("build tiny");
    let second = recipes::build("tiny", &b.path().join("out")).expect("build tiny again");
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert!(first.manifest_digest.starts_with("sha256:"));
    assert_eq!(first.dir, a.path().join("out"));

    let dir = &first.dir;
    assert_eq!(
        json(&std::fs::read(dir.join("oci-layout")).expect("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&std::fs::read(dir.join("index.json")).expect("index.json"));
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], first.manifest_digest.as_str());
    assert_eq!(
        manifests[0]["annotations"]["org.opencontainers.image.ref.name"],
        "tiny"
    );

    let manifest = json(&blob(dir, &first.manifest_digest));
    let config = json(&blob(
        dir,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["User"], "vcap");
    assert_eq!(config["config"]["WorkingDir"], "/home/vcap");
    let env = config["config"]["Env"].as_array().expect("Env");
    assert!(env.iter().any(|e| e
        .as_str()
        .is_some_and(|e| e.starts_with("PATH=") && e.contains("/bin"))));
    assert_eq!(
        config["rootfs"]["diff_ids"]
            .as_array()
            .expect("diff_ids")
            .len(),
        1
    );
}

#[test]
fn tiny_layer_has_busybox_applets_users_and_dirs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = recipes::build_tiny(tmp.path()).expect("build tiny");
    let manifest = json(&blob(&layout.dir, &layout.manifest_digest));
    let entries = layer_entries(&layout.dir, &manifest);

    let busybox = &entries["bin/busybox"];
    assert_eq!(
        (busybox.kind, busybox.mode, busybox.owner),
        (tar::EntryType::Regular, 0o755, (0, 0))
    );
    assert_eq!(
        busybox.data,
        std::fs::read("/bin/busybox").expect("host busybox")
    );
    for applet in REQUIRED_APPLETS {
        let e = entries
            .get(&format!("bin/{applet}"))
            .unwrap_or_else(|| panic!("no bin/{applet}"));
        assert_eq!(e.kind, tar::EntryType::Symlink, "{applet}");
        assert_eq!(e.link.as_deref(), Some("busybox"), "{applet}");
    }
    assert_eq!(entries["usr/bin/env"].link.as_deref(), Some("/bin/env"));

    let passwd = String::from_utf8_lossy(&entries["etc/passwd"].data).into_owned();
    assert!(
        passwd
            .lines()
            .any(|l| l == "vcap:x:2000:2000::/home/vcap:/bin/sh"),
        "{passwd}"
    );
    assert!(
        passwd.lines().any(|l| l.starts_with("root:x:0:0:")),
        "{passwd}"
    );
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nobody:x:65534:65534:")),
        "{passwd}"
    );
    let group = String::from_utf8_lossy(&entries["etc/group"].data).into_owned();
    assert!(group.lines().any(|l| l == "vcap:x:2000:"), "{group}");
    assert!(entries.contains_key("etc/hosts"));

    let dir = |name: &str| {
        let e = entries.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(e.kind, tar::EntryType::Directory, "{name}");
        (e.mode, e.owner)
    };
    assert_eq!(dir("home/vcap"), (0o755, (2000, 2000)));
    assert_eq!(dir("tmp"), (0o1777, (0, 0)));
    assert_eq!(dir("root"), (0o700, (0, 0)));
    for name in ["proc", "sys", "dev", "etc", "var/tmp"] {
        assert_eq!(dir(name).1, (0, 0), "{name}");
    }
    for (name, e) in &entries {
        if name != "home/vcap" {
            assert_eq!(e.owner, (0, 0), "{name} must be root-owned");
        }
        assert_eq!(
            e.mtime, entries["bin/busybox"].mtime,
            "{name} has a fixed mtime"
        );
    }
}

#[test]
fn unknown_recipe_names_the_known_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = recipes::build("huge", tmp.path()).expect_err("no such recipe");
    assert!(matches!(err, RecipeError::UnknownRecipe { ref name } if name == "huge"));
    assert!(err.to_string().contains("tiny"), "{err}");
}

#[test]
fn missing_or_dynamic_busybox_says_to_install_busybox_static() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-busybox");
    let err = recipes::build_tiny_with(&missing, &tmp.path().join("out")).expect_err("missing");
    assert!(matches!(err, RecipeError::BusyboxMissing { ref path } if path == &missing));
    assert!(
        err.to_string()
            .contains("install busybox-static (deploy/setup)"),
        "{err}"
    );

    let err = recipes::build_tiny_with(Path::new("/bin/ls"), &tmp.path().join("out"))
        .expect_err("dynamic");
    assert!(
        matches!(err, RecipeError::BusyboxNotStatic { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("install busybox-static"), "{err}");
    assert!(
        !tmp.path().join("out").exists(),
        "nothing written on failure"
    );
}
