//! Docker packages (the image reference a Dockerfile/OCI lifecycle will run): READY at
//! creation, no bits, refused input named. Each test once on SQLite and once on PostgreSQL.

mod common;

use common::{error_title, send, zip_of, Controller, Db};
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

both!(docker_packages_hold_an_image_reference_and_no_bits);
