//! Docker packages (`kiln push --docker-image`): READY at creation with an image reference
//! and no bits, refused input named; a store image stages at once into an image droplet.
//! Each test once on SQLite and once on PostgreSQL.

mod common;

use common::{error_title, send, zip_of, Controller, Db};
use std::time::Duration;

use serde_json::json;

async fn docker_packages_hold_an_image_reference_and_no_bits(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("imaged").await;
    let rel = json!({"app": {"data": {"guid": app}}});
    let (status, package) = cc
        .post(
            "/v3/packages",
            json!({"type": "docker", "relationships": rel, "data": {"image": "registry.local/team/web:1.2"}}),
        )
        .await;
    assert_eq!(status, 201, "{package}");
    assert_eq!(package["state"], "READY");
    assert_eq!(package["type"], "docker");
    assert_eq!(package["data"]["image"], "registry.local/team/web:1.2");
    let guid = package["guid"].as_str().unwrap();

    let form = reqwest::multipart::Form::new().part(
        "bits",
        reqwest::multipart::Part::bytes(zip_of(&[("a", "b")])).file_name("app.zip"),
    );
    let (status, body) = send(
        cc.req(
            reqwest::Method::POST,
            &format!("/v3/packages/{guid}/upload"),
        )
        .multipart(form),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("no bits"), "{body}");
    let (status, body) = cc
        .post("/v3/builds", json!({"package": {"guid": guid}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("registry.local/team/web:1.2"),
        "{body}"
    );

    for (data, field) in [
        (json!({}), "image"),
        (json!({"image": "has space"}), "image"),
        (json!({"image": "-rm"}), "image"),
        (
            json!({"image": "a/b", "username": "u", "password": "p"}),
            "credentials",
        ),
    ] {
        let (status, body) = cc
            .post(
                "/v3/packages",
                json!({"type": "docker", "relationships": rel, "data": data}),
            )
            .await;
        assert_eq!(
            (status, error_title(&body)),
            (422, "CF-UnprocessableEntity"),
            "{body}"
        );
        assert!(body.to_string().contains(field), "{field}: {body}");
    }
    let (status, body) = cc
        .post("/v3/packages", json!({"type": "git", "relationships": rel}))
        .await;
    assert_eq!(status, 422, "{body}");
    let (_, events) = cc
        .get(&format!(
            "/v3/audit_events?types=audit.app.package.create&target_guids={app}"
        ))
        .await;
    assert_eq!(events["pagination"]["total_results"], 1, "{events}");
}

/// An app image as a tar of its layout: tiny with a page and a command (`EXPOSE 5000`).
fn app_image_archive(dir: &std::path::Path) -> Vec<u8> {
    let tiny = kiln_rootfs::recipes::cached("tiny").expect("the tiny stack");
    let layout = dir.join("layout");
    let files: &[kiln_rootfs::layout::LayerFile<'_>] = &[("srv/www/index.html", b"hi\n", 0o644)];
    kiln_rootfs::layout::derive_layout(&tiny.dir, "tiny", &layout, files, |c| {
        c.set_cmd(Some(
            ["httpd", "-f", "-p", "0.0.0.0:5000", "-h", "/srv/www"]
                .map(String::from)
                .to_vec(),
        ));
        c.set_exposed_ports(Some(vec!["5000/tcp".into()]));
    })
    .expect("image");
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all(".", &layout).expect("tar");
    tar.into_inner().expect("tar")
}

async fn a_docker_package_of_a_store_image_stages_into_an_image_droplet(db: Db) {
    let cc = Controller::start(db).await;
    let scratch = tempfile::tempdir().unwrap();
    let archive = app_image_archive(scratch.path());
    let (status, image) = send(
        cc.req(reqwest::Method::POST, "/v3/images?name=web-image")
            .body(archive),
    )
    .await;
    assert_eq!(status, 201, "{image}");
    let digest = image["digest"].as_str().unwrap().to_string();

    // An app of the docker lifecycle is on the docker stack.
    let space = cc.space().await;
    let (status, app) = cc
        .post(
            "/v3/apps",
            json!({"name": "imaged", "relationships": {"space": {"data": {"guid": space}}},
                   "lifecycle": {"type": "docker", "data": {}}}),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    assert_eq!(app["lifecycle"]["type"], "docker");
    let rel = json!({"app": {"data": {"guid": app["guid"]}}});
    let (_, package) = cc
        .post(
            "/v3/packages",
            json!({"type": "docker", "relationships": rel, "data": {"image": "web-image"}}),
        )
        .await;
    let (status, build) = cc
        .post("/v3/builds", json!({"package": {"guid": package["guid"]}}))
        .await;
    assert_eq!(status, 201, "{build}");
    assert_eq!(
        build["state"], "STAGED",
        "a store image stages at once: {build}"
    );
    let droplet = build["droplet"]["guid"].as_str().unwrap();
    let (_, droplet) = cc.get(&format!("/v3/droplets/{droplet}")).await;
    assert_eq!(droplet["state"], "STAGED");
    assert_eq!(droplet["image"], digest.as_str());
    assert_eq!(droplet["lifecycle"]["type"], "docker");
    assert_eq!(
        droplet["process_types"]["web"],
        "httpd -f -p 0.0.0.0:5000 -h /srv/www"
    );

    // An image neither in the store nor in a configured registry: the build is refused.
    let (_, package) = cc
        .post(
            "/v3/packages",
            json!({"type": "docker", "relationships": rel, "data": {"image": "no-such-image"}}),
        )
        .await;
    let (status, body) = cc
        .post("/v3/builds", json!({"package": {"guid": package["guid"]}}))
        .await;
    assert_eq!(status, 422, "{body}");
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("no-such-image") && detail.contains("no registry is configured"),
        "{detail}"
    );
}

async fn an_unnamed_image_is_forgotten_once_no_droplet_runs_it(db: Db) {
    let cc = Controller::start_with(db, |c| {
        c.blob_gc_interval_secs = 1;
        c.blob_gc_grace_secs = 1;
    })
    .await;
    let scratch = tempfile::tempdir().unwrap();
    let archive = app_image_archive(scratch.path());
    // Unnamed, as `kiln push --docker-image FILE` stores it.
    let (status, image) = send(cc.req(reqwest::Method::POST, "/v3/images").body(archive)).await;
    assert_eq!(status, 201, "{image}");
    let digest = image["digest"].as_str().unwrap().to_string();
    let app = cc.app("short-lived").await;
    let rel = json!({"app": {"data": {"guid": app}}});
    let (_, package) = cc
        .post(
            "/v3/packages",
            json!({"type": "docker", "relationships": rel, "data": {"image": digest}}),
        )
        .await;
    let (status, build) = cc
        .post("/v3/builds", json!({"package": {"guid": package["guid"]}}))
        .await;
    assert_eq!(
        (status, build["state"].as_str()),
        (201, Some("STAGED")),
        "{build}"
    );
    // While a droplet runs it, it stays.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = cc.get(&format!("/v3/images/{digest}")).await;
    assert_eq!(status, 200, "an image a droplet runs was forgotten");
    let (status, _) = cc
        .call(reqwest::Method::DELETE, &format!("/v3/apps/{app}"), None)
        .await;
    assert_eq!(status, 202);
    let mut forgotten = false;
    for _ in 0..100 {
        if cc.get(&format!("/v3/images/{digest}")).await.0 == 404 {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        forgotten,
        "the deleted app's unnamed image is still in the store"
    );
}

both!(
    docker_packages_hold_an_image_reference_and_no_bits,
    a_docker_package_of_a_store_image_stages_into_an_image_droplet,
    an_unnamed_image_is_forgotten_once_no_droplet_runs_it
);
