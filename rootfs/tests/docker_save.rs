//! `docker save` archives: built by hand here from the tiny stack's layer and a Docker-style
//! image config (with Docker's extra fields and nulls), imported through the store, converted
//! deterministically with `layout_from_archive`, picked by tag when there are several, and
//! refused with an error naming the file when a layer is corrupt or a path leaves the archive.
//! Needs root (the store chowns).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{raw_tar, Kind};
use flate2::read::GzDecoder;
use kiln_rootfs::layout::{
    layout_from_archive, read_image, ArchiveFormat, ImageArchiveError, LayoutError,
};
use kiln_rootfs::{recipes, StackStore, StoreError};
use serde_json::json;
use sha2::{Digest, Sha256};

const PATH_ENV: &str = "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The tiny stack's one layer, uncompressed.
fn tiny_layer_tar(dir: &Path) -> Vec<u8> {
    let layout = recipes::build_tiny(dir).expect("build tiny");
    let image = read_image(&layout.dir, "tiny").expect("read tiny");
    let [layer] = image.manifest.layers().as_slice() else {
        panic!("tiny has one layer");
    };
    let hex = layer.digest().to_string();
    let blob = fs::read(
        layout
            .dir
            .join("blobs/sha256")
            .join(hex.trim_start_matches("sha256:")),
    )
    .expect("layer blob");
    let mut tar = Vec::new();
    GzDecoder::new(blob.as_slice())
        .read_to_end(&mut tar)
        .expect("gunzip layer");
    tar
}

/// An image config as Docker writes it: its own extra fields, and nulls where Go has nil.
fn docker_config(diff_ids: &[String], user: &str, env: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "config": {
            "Hostname": "", "Domainname": "", "User": user, "AttachStdin": false,
            "ExposedPorts": {"8080/tcp": {}}, "Tty": false, "Env": env, "Cmd": ["sh"],
            "Image": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "Volumes": null, "WorkingDir": "/home/vcap", "Entrypoint": null, "OnBuild": null,
            "Labels": null
        },
        "container": "3f1cbd7a6d9c",
        "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD [\"sh\"]"], "Labels": null},
        "created": "2024-01-01T00:00:00Z",
        "docker_version": "20.10.24",
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:tiny in / "},
            {"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": true}
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .expect("config JSON")
}

/// One image of a hand-made `docker save` archive.
struct Saved {
    tags: Vec<&'static str>,
    config: Vec<u8>,
    /// (layer id, uncompressed tar)
    layers: Vec<(String, Vec<u8>)>,
}

impl Saved {
    fn new(tags: &[&'static str], layer: &[u8], user: &str, env: &[&str]) -> Saved {
        let diff_id = format!("sha256:{}", sha256_hex(layer));
        Saved {
            tags: tags.to_vec(),
            config: docker_config(&[diff_id], user, env),
            layers: vec![(sha256_hex(layer), layer.to_vec())],
        }
    }

    fn config_path(&self) -> String {
        format!("{}.json", sha256_hex(&self.config))
    }
}

/// A tar laid out as `docker save` (before Docker 25) writes it: `<id>/layer.tar` (+ `VERSION`,
/// `json`) per layer, `<config hex>.json`, `manifest.json` and `repositories`.
fn docker_save_tar(images: &[Saved], manifest: Option<serde_json::Value>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_704_067_200);
        builder
            .append_data(&mut h, name, data)
            .expect("append entry");
    };
    let mut repositories = serde_json::Map::new();
    for image in images {
        add(&image.config_path(), &image.config);
        for (id, tar) in &image.layers {
            add(&format!("{id}/VERSION"), b"1.0");
            add(&format!("{id}/json"), b"{}");
            add(&format!("{id}/layer.tar"), tar);
        }
        for tag in &image.tags {
            let (repo, tag) = tag.rsplit_once(':').expect("repo:tag");
            let top = image.layers.last().map(|l| l.0.clone()).unwrap_or_default();
            repositories.insert(repo.to_string(), json!({ tag: top }));
        }
    }
    let manifest = manifest.unwrap_or_else(|| {
        json!(images
            .iter()
            .map(|i| json!({
                "Config": i.config_path(),
                "RepoTags": if i.tags.is_empty() { json!(null) } else { json!(i.tags) },
                "Layers": i.layers.iter().map(|(id, _)| format!("{id}/layer.tar")).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>())
    });
    add(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("manifest"),
    );
    add(
        "repositories",
        &serde_json::to_vec(&repositories).expect("repositories"),
    );
    builder.into_inner().expect("finish tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

struct Setup {
    tmp: tempfile::TempDir,
    layer: Vec<u8>,
    store: StackStore,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layer = tiny_layer_tar(&tmp.path().join("tiny-layout"));
    let store = StackStore::open(tmp.path().join("store")).expect("open store");
    Setup { tmp, layer, store }
}

impl Setup {
    fn write(&self, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = self.tmp.path().join(name);
        fs::write(&path, bytes).expect("write archive");
        path
    }

    fn tiny(&self) -> Saved {
        Saved::new(
            &["kiln/tiny:latest"],
            &self.layer,
            "vcap",
            &[PATH_ENV, "LANG=C.UTF-8"],
        )
    }
}

#[test]
fn a_docker_save_archive_imports_with_its_config() {
    let s = setup();
    let archive = s.write("tiny.tar", &docker_save_tar(&[s.tiny()], None));
    let image = s
        .store
        .import_archive(&archive, "tiny")
        .expect("import docker save");

    assert_eq!(image.user.as_deref(), Some("vcap"));
    assert_eq!(image.working_dir.as_deref(), Some("/home/vcap"));
    assert_eq!(image.env, vec![PATH_ENV.to_string(), "LANG=C.UTF-8".into()]);
    let rootfs = &image.rootfs;
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).expect("readlink"),
        Path::new("busybox")
    );
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).expect("passwd");
    assert!(
        passwd.contains("vcap:x:2000:2000::/home/vcap:/bin/sh"),
        "{passwd}"
    );
    let home = fs::metadata(rootfs.join("home/vcap")).expect("home");
    assert_eq!((home.uid(), home.gid()), (2000, 2000));
    assert_eq!(s.store.resolve("tiny").expect("by name"), image);
    assert!(entries(&s.store.root().join("tmp")).is_empty());
}

#[test]
fn conversion_is_deterministic_keeps_the_config_and_uses_oci_media_types() {
    let s = setup();
    let saved = s.tiny();
    let config_digest = format!("sha256:{}", sha256_hex(&saved.config));
    let diff_id = format!("sha256:{}", sha256_hex(&s.layer));
    let archive = s.write("tiny.tar.gz", &gzip(&docker_save_tar(&[saved], None)));

    let mut digests = Vec::new();
    for work in ["work-a", "work-b"] {
        let converted =
            layout_from_archive(&archive, &s.tmp.path().join(work), None).expect("convert");
        assert_eq!(
            converted.format,
            ArchiveFormat::DockerSave {
                repo_tags: vec!["kiln/tiny:latest".into()]
            }
        );
        assert!(converted.dir.starts_with(s.tmp.path().join(work)));
        let image = read_image(&converted.dir, "any").expect("read converted layout");
        let manifest = &image.manifest;
        assert_eq!(
            manifest.media_type().as_ref().map(ToString::to_string),
            Some("application/vnd.oci.image.manifest.v1+json".into())
        );
        assert_eq!(
            manifest.config().media_type().to_string(),
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(manifest.config().digest().to_string(), config_digest);
        let [layer] = manifest.layers().as_slice() else {
            panic!("one layer: {manifest:?}");
        };
        assert_eq!(
            layer.media_type().to_string(),
            "application/vnd.oci.image.layer.v1.tar"
        );
        assert_eq!(layer.digest().to_string(), diff_id);
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(converted.dir.join("index.json")).expect("index"))
                .expect("index JSON");
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "kiln/tiny:latest"
        );
        digests.push(image.manifest_digest);
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn an_oci_layout_archive_is_used_as_it_is() {
    let s = setup();
    let layout = recipes::build_tiny(&s.tmp.path().join("layout")).expect("build tiny");
    let archive = s.tmp.path().join("layout.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).expect("create tar"));
    builder
        .append_dir_all("tiny-layout", &layout.dir)
        .expect("tar layout");
    builder.into_inner().expect("finish tar");
    let found = layout_from_archive(&archive, &s.tmp.path().join("work"), None).expect("layout");
    assert_eq!(found.format, ArchiveFormat::OciLayout);
    let image = read_image(&found.dir, "tiny").expect("read layout");
    assert_eq!(image.manifest_digest, layout.manifest_digest);
}

#[test]
fn several_images_are_picked_by_tag() {
    let s = setup();
    let other = Saved::new(
        &["example.com/team/other:latest", "other:v2"],
        &s.layer,
        "root",
        &[PATH_ENV],
    );
    let untagged = Saved::new(&[], &s.layer, "nobody", &[PATH_ENV]);
    let untagged_config = untagged.config_path();
    let archive = s.write(
        "three.tar",
        &docker_save_tar(&[s.tiny(), other, untagged], None),
    );

    let tiny = s.store.import_archive(&archive, "tiny").expect("tiny");
    assert_eq!(tiny.user.as_deref(), Some("vcap"));
    let other = s.store.import_archive(&archive, "other").expect("other");
    assert_eq!(other.user.as_deref(), Some("root"));
    assert_ne!(tiny.digest, other.digest);

    let err = layout_from_archive(&archive, &s.tmp.path().join("work"), None)
        .expect_err("several images, none named");
    let LayoutError::Archive(ImageArchiveError::SeveralImages { available, .. }) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        available,
        &vec![
            "kiln/tiny:latest".to_string(),
            "example.com/team/other:latest,other:v2".into(),
            format!("untagged image {untagged_config}"),
        ]
    );
    let err = s
        .store
        .import_archive(&archive, "nope")
        .expect_err("no image tagged nope");
    assert!(
        matches!(
            &err,
            StoreError::Layout(LayoutError::Archive(ImageArchiveError::NoMatchingImage { wanted, .. })) if wanted == "nope"
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("kiln/tiny:latest"), "{err}");
    assert!(entries(&s.store.root().join("tmp")).is_empty());
}

#[test]
fn a_corrupted_layer_is_refused_naming_the_layer() {
    let s = setup();
    let saved = s.tiny();
    let layer_path = format!("{}/layer.tar", saved.layers[0].0);
    let mut corrupt = saved;
    let middle = corrupt.layers[0].1.len() / 2;
    corrupt.layers[0].1[middle] ^= 0x20;
    let archive = s.write("corrupt.tar", &docker_save_tar(&[corrupt], None));

    let err = s
        .store
        .import_archive(&archive, "tiny")
        .expect_err("corrupt layer");
    let StoreError::Layout(LayoutError::Archive(ImageArchiveError::LayerCorrupt {
        layer,
        expected,
        ..
    })) = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(layer, &layer_path);
    assert_eq!(expected, &format!("sha256:{}", sha256_hex(&s.layer)));
    assert!(err.to_string().contains(&layer_path), "{err}");
    assert!(s.store.list().expect("list").is_empty());
    assert!(entries(&s.store.root().join("tmp")).is_empty());
}

#[test]
fn paths_leaving_the_archive_and_junk_are_refused() {
    let s = setup();
    let saved = s.tiny();
    let cases = [
        json!([{"Config": saved.config_path(), "RepoTags": null, "Layers": ["../../../../etc/passwd"]}]),
        json!([{"Config": "/etc/passwd", "RepoTags": null, "Layers": []}]),
        json!([{"Config": saved.config_path(), "RepoTags": null, "Layers": ["missing/layer.tar"]}]),
    ];
    for (i, manifest) in cases.into_iter().enumerate() {
        let archive = s.write(
            &format!("hostile-{i}.tar"),
            &docker_save_tar(&[s.tiny()], Some(manifest)),
        );
        let err = layout_from_archive(&archive, &s.tmp.path().join(format!("work-{i}")), None)
            .expect_err("path outside the archive");
        assert!(
            matches!(err, LayoutError::Archive(ImageArchiveError::BadPath { .. })),
            "{err:?}"
        );
    }

    let archive = s.write(
        "mismatch.tar",
        &docker_save_tar(
            &[s.tiny()],
            Some(json!([{"Config": saved.config_path(), "RepoTags": null, "Layers": []}])),
        ),
    );
    let err = layout_from_archive(&archive, &s.tmp.path().join("work-count"), None)
        .expect_err("layer count");
    assert!(
        matches!(
            err,
            LayoutError::Archive(ImageArchiveError::LayerCount {
                layers: 0,
                diff_ids: 1,
                ..
            })
        ),
        "{err:?}"
    );

    let junk = s.write("junk.tar", &raw_tar(&[("hello.txt", Kind::File(b"hi"))]));
    let err = layout_from_archive(&junk, &s.tmp.path().join("work-junk"), None).expect_err("junk");
    assert!(
        err.to_string()
            .contains("is neither an OCI image layout nor a docker save archive"),
        "{err}"
    );
    assert!(err.to_string().contains("hello.txt"), "{err}");
    let err = s
        .store
        .import_archive(&junk, "junk")
        .expect_err("junk through the store");
    assert!(matches!(err, StoreError::NotALayout { .. }), "{err:?}");
}
