//! Stacks (configured and advertised by stagers) and the audit trail, over real HTTP against a
//! real controller; each test once on SQLite and once on PostgreSQL.

mod common;

use common::{error_title, Controller, Db};
use serde_json::{json, Value};

fn names(list: &Value, field: &str) -> Vec<String> {
    list["resources"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| x[field].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn stacks_come_from_config_and_stagers_and_unknown_ones_are_refused(db: Db) {
    let cc = Controller::start(db).await;
    let (status, list) = cc.get("/v3/stacks").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(names(&list, "name"), ["bookworm", "docker", "tiny"]);
    let docker = &list["resources"][1];
    assert!(docker["description"]
        .as_str()
        .unwrap()
        .contains("Dockerfile"));
    let tiny = &list["resources"][2];
    assert_eq!(tiny["default"], true, "the test's default stack is tiny");
    assert!(tiny["description"].as_str().unwrap().contains("busybox"));
    let (status, one) = cc
        .get(&format!("/v3/stacks/{}", tiny["guid"].as_str().unwrap()))
        .await;
    assert_eq!((status, one["name"].as_str()), (200, Some("tiny")));
    let (status, none) = cc.get("/v3/stacks/no-such-guid").await;
    assert_eq!((status, error_title(&none)), (404, "CF-ResourceNotFound"));
    let (_, filtered) = cc.get("/v3/stacks?names=bookworm").await;
    assert_eq!(names(&filtered, "name"), ["bookworm"]);

    // An app on a stack nobody has is refused, and the error lists the stacks there are.
    let space = cc.space().await;
    let (status, body) = cc
        .post(
            "/v3/apps",
            json!({"name": "a", "relationships": {"space": {"data": {"guid": space}}},
                   "lifecycle": {"type": "buildpack", "data": {"stack": "windows2016"}}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let detail = body["errors"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("windows2016") && detail.contains("bookworm, docker, tiny"),
        "{detail}"
    );
    let app = cc.app("a").await;
    let (status, body) = cc
        .call(
            reqwest::Method::PATCH,
            &format!("/v3/apps/{app}"),
            Some(json!({"lifecycle": {"type": "buildpack", "data": {"stack": "nope"}}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");

    // A stager advertising a stack adds it.
    let bus = async_nats::connect(&cc.nats.url).await.unwrap();
    let advert = kiln_bus::StagerAdvertise {
        id: "stager-x".into(),
        stacks: vec!["custom".into(), "tiny".into()],
        building: vec![],
        available: 1,
    };
    bus.publish(kiln_bus::STAGER_ADVERTISE, kiln_bus::encode(&advert).into())
        .await
        .unwrap();
    bus.flush().await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = names(&cc.get("/v3/stacks").await.1, "name");
        if seen.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ["bookworm", "custom", "docker", "tiny"]);
    let (_, custom) = cc.get("/v3/stacks?names=custom").await;
    assert!(custom["resources"][0]["description"]
        .as_str()
        .unwrap()
        .contains("stager-x"));
}

async fn the_audit_trail_records_who_did_what_without_secrets(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("audited").await;
    let (status, _) = cc
        .call(
            reqwest::Method::PATCH,
            &format!("/v3/apps/{app}/environment_variables"),
            Some(json!({"var": {"DB_PASSWORD": "hunter2"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = cc
        .post(
            &format!("/v3/apps/{app}/processes/web/actions/scale"),
            json!({"instances": 3}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = cc
        .call(reqwest::Method::DELETE, &format!("/v3/apps/{app}"), None)
        .await;
    assert_eq!(status, 202);

    let (status, events) = cc
        .get(&format!("/v3/audit_events?target_guids={app}"))
        .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(
        names(&events, "type"),
        [
            "audit.app.create",
            "audit.app.update",
            "audit.app.process.scale",
            "audit.app.delete-request"
        ]
    );
    let first = &events["resources"][0];
    assert_eq!(first["actor"]["name"], "admin");
    assert_eq!(first["actor"]["type"], "user");
    assert_eq!(
        first["target"],
        json!({"guid": app, "type": "app", "name": "audited"})
    );
    assert_eq!(events["resources"][2]["data"]["request"]["instances"], 3);
    assert!(
        !events.to_string().contains("hunter2"),
        "an environment value leaked into the audit trail: {events}"
    );

    let (_, scaled) = cc
        .get(&format!(
            "/v3/audit_events?types=audit.app.process.scale&target_guids={app}"
        ))
        .await;
    assert_eq!(names(&scaled, "type"), ["audit.app.process.scale"]);
    let guid = scaled["resources"][0]["guid"].as_str().unwrap();
    let (status, one) = cc.get(&format!("/v3/audit_events/{guid}")).await;
    assert_eq!(
        (status, one["type"].as_str()),
        (200, Some("audit.app.process.scale"))
    );
    // Route creation is audited too (the app's default route was made with it).
    let (_, routes) = cc.get("/v3/audit_events?types=audit.route.create").await;
    assert_eq!(routes["pagination"]["total_results"], 1, "{routes}");
}

both!(
    stacks_come_from_config_and_stagers_and_unknown_ones_are_refused,
    the_audit_trail_records_who_did_what_without_secrets,
);
