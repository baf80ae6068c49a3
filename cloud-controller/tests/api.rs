//! The API over real HTTP against a real controller (blobstore, NATS; each test once on SQLite
//! and once on PostgreSQL): auth, apps, packages, builds without a stager, and the V3 error
//! bodies.

mod common;

use common::{error_title, send, zip_of, Controller, Db};
use reqwest::Method;
use serde_json::json;

async fn every_endpoint_but_root_and_token_needs_a_valid_unexpired_token(db: Db) {
    let cc = Controller::start(db).await;
    let (status, root) = send(cc.http.get(format!("{}/", cc.url))).await;
    assert_eq!(status, 200);
    assert!(root["links"]["cloud_controller_v3"]["href"]
        .as_str()
        .unwrap()
        .ends_with("/v3"));
    // Without a configured apps port, app routes are served on 80.
    assert_eq!(root["links"]["app_routes"]["meta"]["port"], 80);
    assert_eq!(
        root["links"]["app_routes"]["href"],
        "http://apps.kiln.local"
    );
    let on_8081 = Controller::start_with(db, |c| c.apps_port = Some(8081)).await;
    let (_, root) = send(on_8081.http.get(format!("{}/", on_8081.url))).await;
    assert_eq!(
        root["links"]["app_routes"]["href"],
        "http://apps.kiln.local:8081"
    );
    drop(on_8081);

    let (status, body) = send(cc.http.get(format!("{}/v3/apps", cc.url))).await;
    assert_eq!((status, error_title(&body)), (401, "CF-NotAuthenticated"));
    let (status, body) = send(
        cc.http
            .get(format!("{}/v3/apps", cc.url))
            .bearer_auth("not.a-token"),
    )
    .await;
    assert_eq!((status, error_title(&body)), (401, "CF-InvalidAuthToken"));

    let key = kiln_cloud_controller::auth::TokenKey::load_or_create(&cc.data_dir.join("token-key"))
        .unwrap();
    let expired = key.sign(&kiln_cloud_controller::auth::Claims {
        sub: "x".into(),
        user_name: "admin".into(),
        exp: 1,
        kind: "access".into(),
    });
    let (status, body) = send(
        cc.http
            .get(format!("{}/v3/apps", cc.url))
            .bearer_auth(expired),
    )
    .await;
    assert_eq!((status, error_title(&body)), (401, "CF-InvalidAuthToken"));
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    let (status, body) = send(cc.http.post(format!("{}/oauth/token", cc.url)).form(&[
        ("grant_type", "password"),
        ("username", "admin"),
        ("password", "wrong"),
    ]))
    .await;
    // The token endpoint answers in UAA's OAuth shape, as the cf CLI expects.
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, body) = send(cc.http.post(format!("{}/oauth/token", cc.url)).form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", "not-a-token"),
    ]))
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    let (status, body) = send(
        cc.http
            .post(format!("{}/oauth/token", cc.url))
            .form(&[("grant_type", "client_credentials")]),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type")),
        "{body}"
    );
    let (status, body) = send(
        cc.http
            .post(format!("{}/oauth/token", cc.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("username=admin"),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );

    let password = std::fs::read_to_string(cc.data_dir.join("admin-password")).unwrap();
    let tokens = common::login(&cc.http, &cc.url, "admin", password.trim()).await;
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, refreshed) = send(
        cc.http
            .post(format!("{}/oauth/token", cc.url))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)]),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let (status, _) = send(
        cc.http
            .get(format!("{}/v3/apps", cc.url))
            .bearer_auth(refreshed["access_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    let mode = std::os::unix::fs::MetadataExt::mode(
        &std::fs::metadata(cc.data_dir.join("admin-password")).unwrap(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

async fn apps_are_created_listed_filtered_paged_updated_and_deleted(db: Db) {
    let cc = Controller::start(db).await;
    let space = cc.space().await;
    let (status, body) = cc.post("/v3/apps", json!({"name": "alpha", "relationships": {"space": {"data": {"guid": space}}}, "environment_variables": {"A": "1"}})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "STOPPED");
    assert_eq!(body["lifecycle"]["data"]["stack"], "tiny");
    let alpha = body["guid"].as_str().unwrap().to_string();
    cc.app("beta").await;

    let (status, body) = cc
        .post(
            "/v3/apps",
            json!({"name": "alpha", "relationships": {"space": {"data": {"guid": space}}}}),
        )
        .await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity")
    );
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("alpha"),
        "{body}"
    );
    let (status, body) = cc
        .post(
            "/v3/apps",
            json!({"name": "x", "relationships": {"space": {"data": {"guid": "nope"}}}}),
        )
        .await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity")
    );
    let (status, body) = cc
        .post("/v3/apps", json!({"name": 5, "relationships": {}}))
        .await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity"),
        "{body}"
    );
    let (status, body) = send(
        cc.req(Method::POST, "/v3/apps")
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(
        (status, error_title(&body)),
        (400, "CF-MessageParseError"),
        "malformed JSON is never a 500"
    );

    let (_, list) = cc.get("/v3/apps?names=alpha").await;
    assert_eq!(list["pagination"]["total_results"], 1);
    assert_eq!(list["resources"][0]["guid"], alpha);
    let (_, page) = cc.get("/v3/apps?per_page=1").await;
    assert_eq!(page["pagination"]["total_results"], 2);
    assert_eq!(page["pagination"]["total_pages"], 2);
    assert!(
        page["pagination"]["next"]["href"]
            .as_str()
            .unwrap()
            .contains("page=2&per_page=1"),
        "{page}"
    );
    let (status, body) = cc.get("/v3/apps?per_page=0").await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity")
    );
    let (status, body) = cc.get("/v3/apps?page=abc").await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity"),
        "{body}"
    );
    let (status, _) = cc.get("/v3/apps?page=9223372036854775807").await;
    assert_eq!(status, 422, "a huge page is refused, not overflowed");
    let (_, by_space) = cc.get(&format!("/v3/apps?space_guids={space}")).await;
    assert_eq!(by_space["pagination"]["total_results"], 2);

    let (status, body) = cc
        .call(
            Method::PATCH,
            &format!("/v3/apps/{alpha}"),
            Some(json!({"name": "gamma"})),
        )
        .await;
    assert_eq!((status, body["name"].as_str()), (200, Some("gamma")));
    let (status, env) = cc
        .call(
            Method::PATCH,
            &format!("/v3/apps/{alpha}/environment_variables"),
            Some(json!({"var": {"B": "2", "A": null}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(env["var"], json!({"B": "2"}));
    let (status, body) = cc
        .call(
            Method::PATCH,
            &format!("/v3/apps/{alpha}/environment_variables"),
            Some(json!({"var": {"VCAP_SERVICES": "x"}})),
        )
        .await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity")
    );
    let (status, body) = cc
        .post(&format!("/v3/apps/{alpha}/actions/start"), json!({}))
        .await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity"),
        "no droplet yet"
    );

    let resp = cc
        .req(Method::DELETE, &format!("/v3/apps/{alpha}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let job = resp.headers()["location"].to_str().unwrap().to_string();
    let (status, job) = send(cc.http.get(job).bearer_auth(&cc.token)).await;
    assert_eq!((status, job["state"].as_str()), (200, Some("COMPLETE")));
    let (status, body) = cc.get(&format!("/v3/apps/{alpha}")).await;
    assert_eq!((status, error_title(&body)), (404, "CF-ResourceNotFound"));
}

async fn packages_upload_check_and_download_their_bits(db: Db) {
    let cc = Controller::start_with(db, |c| c.max_upload_bytes = 1 << 20).await;
    // Clients learn the limit before they send anything.
    let (_, root) = send(cc.http.get(format!("{}/", cc.url))).await;
    assert_eq!(
        root["links"]["cloud_controller_v3"]["meta"]["max_upload_bytes"],
        1 << 20
    );
    let app = cc.app("bits").await;
    let zip = zip_of(&[("index.html", "<h1>hi</h1>")]);
    let (status, package) = cc.upload(&app, zip.clone()).await;
    assert_eq!(status, 200, "{package}");
    assert_eq!(package["state"], "READY");
    let sha = package["data"]["checksum"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    use sha2::Digest;
    assert_eq!(sha, hex::encode(sha2::Sha256::digest(&zip)));
    let guid = package["guid"].as_str().unwrap();
    let bytes = cc
        .req(Method::GET, &format!("/v3/packages/{guid}/download"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), zip.as_slice());
    let form =
        reqwest::multipart::Form::new().part("bits", reqwest::multipart::Part::bytes(zip.clone()));
    let (status, body) = send(
        cc.req(Method::POST, &format!("/v3/packages/{guid}/upload"))
            .multipart(form),
    )
    .await;
    assert_eq!((status, error_title(&body)), (409, "CF-Conflict"));

    // Small bodies everywhere but uploads: 2 MiB of JSON, even without a token, is refused.
    let big = "x".repeat(2 << 20);
    let (status, _) = send(
        cc.http
            .post(format!("{}/oauth/token", cc.url))
            .form(&[("grant_type", big.as_str())]),
    )
    .await;
    assert_eq!(status, 413);

    let (status, hostile) = cc.upload(&app, zip_of(&[("../../escape.txt", "x")])).await;
    assert_eq!(status, 200);
    assert_eq!(hostile["state"], "FAILED");
    assert!(
        hostile["data"]["error"]
            .as_str()
            .unwrap()
            .contains("outside the app folder"),
        "{hostile}"
    );
    assert!(
        !cc.data_dir.join("../escape.txt").exists() && !cc.data_dir.join("escape.txt").exists()
    );

    let (status, body) = cc.upload(&app, vec![7u8; 2 << 20]).await;
    assert_eq!(
        (status, error_title(&body)),
        (413, "CF-RequestEntityTooLarge"),
        "{body}"
    );
    assert_eq!(
        std::fs::read_dir(cc.data_dir.join("blobs/tmp"))
            .unwrap()
            .count(),
        0,
        "no partial blob left"
    );
}

async fn a_build_no_stager_takes_fails_with_the_reason(db: Db) {
    let cc = Controller::start_with(db, |c| c.accept_timeout_secs = 1).await;
    let app = cc.app("lonely").await;
    let (_, package) = cc.upload(&app, zip_of(&[("index.html", "x")])).await;
    let (status, build) = cc
        .post("/v3/builds", json!({"package": {"guid": package["guid"]}}))
        .await;
    assert_eq!(status, 201, "{build}");
    assert_eq!(build["state"], "STAGING");
    let guid = build["guid"].as_str().unwrap();
    let mut last = json!(null);
    for _ in 0..100 {
        last = cc.get(&format!("/v3/builds/{guid}")).await.1;
        if last["state"] == "FAILED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "FAILED", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("no stager took the build"),
        "{last}"
    );
    assert!(
        last["error"].as_str().unwrap().contains("stack tiny"),
        "{last}"
    );

    let (status, body) = cc
        .post("/v3/builds", json!({"package": {"guid": "nope"}}))
        .await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity")
    );
}

async fn a_build_whose_stager_goes_silent_fails_naming_the_stager(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("orphaned").await;
    let (_, package) = cc.upload(&app, zip_of(&[("index.html", "x")])).await;
    let bus = async_nats::connect(&cc.nats.url).await.unwrap();
    let mut requests = bus.subscribe(kiln_bus::STAGING_REQUEST).await.unwrap();
    kiln_bus::round_trip(&bus, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    let (_, build) = cc
        .post("/v3/builds", json!({"package": {"guid": package["guid"]}}))
        .await;
    let guid = build["guid"].as_str().unwrap().to_string();
    // A stager takes it, then is never heard of again.
    use futures::StreamExt;
    let request = tokio::time::timeout(std::time::Duration::from_secs(5), requests.next())
        .await
        .unwrap()
        .unwrap();
    let request: kiln_bus::StagingRequest =
        kiln_bus::decode(&request.subject, &request.payload).unwrap();
    assert_eq!(request.build_guid, guid);
    assert!(
        request.package_url.contains("/internal/v1/packages/"),
        "{request:?}"
    );
    let accepted = kiln_bus::StagingAccepted {
        build_guid: guid.clone(),
        stager_id: "ghost".into(),
    };
    bus.publish(
        kiln_bus::STAGING_ACCEPTED,
        kiln_bus::encode(&accepted).into(),
    )
    .await
    .unwrap();
    bus.flush().await.unwrap();
    let mut last = json!(null);
    for _ in 0..300 {
        last = cc.get(&format!("/v3/builds/{guid}")).await.1;
        if last["state"] != "STAGING" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "FAILED", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("stager ghost stopped answering"),
        "{last}"
    );

    // The internal endpoints want the internal credential, which users do not have.
    let (status, _) = send(cc.req(
        Method::GET,
        &format!(
            "/internal/v1/packages/{}/bits",
            package["guid"].as_str().unwrap()
        ),
    ))
    .await;
    assert_eq!(status, 403);
}

async fn apps_get_a_web_process_and_a_default_route_and_both_can_be_changed(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("Web App").await;
    let (_, processes) = cc.get(&format!("/v3/apps/{app}/processes")).await;
    assert_eq!(processes["pagination"]["total_results"], 1, "{processes}");
    let web = &processes["resources"][0];
    assert_eq!(
        (web["type"].as_str(), web["instances"].as_i64()),
        (Some("web"), Some(1))
    );
    let web_guid = web["guid"].as_str().unwrap().to_string();
    let (_, routes) = cc.get(&format!("/v3/apps/{app}/routes")).await;
    assert_eq!(
        routes["resources"][0]["url"], "web-app.apps.kiln.local",
        "{routes}"
    );

    // The same host for another app is refused, and that app is not left half made.
    let space = cc.space().await;
    let (status, body) = cc
        .post(
            "/v3/apps",
            json!({"name": "web-app", "relationships": {"space": {"data": {"guid": space}}}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("web-app.apps.kiln.local is taken"),
        "{body}"
    );
    assert_eq!(
        cc.get("/v3/apps?names=web-app").await.1["pagination"]["total_results"],
        0
    );
    let (status, _) = cc.post("/v3/apps", json!({"name": "web-app", "no_route": true, "relationships": {"space": {"data": {"guid": space}}}})).await;
    assert_eq!(status, 201);

    let (status, scaled) = cc
        .post(
            &format!("/v3/processes/{web_guid}/actions/scale"),
            json!({"instances": 3, "memory_in_mb": 512}),
        )
        .await;
    assert_eq!(
        (
            status,
            scaled["instances"].as_i64(),
            scaled["memory_in_mb"].as_i64()
        ),
        (200, Some(3), Some(512))
    );
    let (status, body) = cc
        .post(
            &format!("/v3/apps/{app}/processes/web/actions/scale"),
            json!({"instances": -1}),
        )
        .await;
    assert_eq!(
        (status, error_title(&body)),
        (422, "CF-UnprocessableEntity")
    );
    let (_, stats) = cc.get(&format!("/v3/processes/{web_guid}/stats")).await;
    assert_eq!(stats["resources"].as_array().unwrap().len(), 3);

    let (_, domains) = cc.get("/v3/domains").await;
    let domain = domains["resources"][0]["guid"].clone();
    let route_body = json!({"host": "api", "path": "/v1", "relationships": {"domain": {"data": {"guid": domain}}, "space": {"data": {"guid": space}}}});
    let (status, route) = cc.post("/v3/routes", route_body.clone()).await;
    assert_eq!(status, 201, "{route}");
    assert_eq!(route["url"], "api.apps.kiln.local/v1");
    let (status, _) = cc.post("/v3/routes", route_body).await;
    assert_eq!(status, 422, "a route exists once");
    let (status, _) = cc.post("/v3/routes", json!({"host": "Bad_Host", "relationships": {"domain": {"data": {"guid": domain}}, "space": {"data": {"guid": space}}}})).await;
    assert_eq!(status, 422);
    let route_guid = route["guid"].as_str().unwrap();
    let (status, dests) = cc
        .post(
            &format!("/v3/routes/{route_guid}/destinations"),
            json!({"destinations": [{"app": {"guid": app}}]}),
        )
        .await;
    assert_eq!(status, 200, "{dests}");
    let (_, mine) = cc.get(&format!("/v3/routes?app_guids={app}")).await;
    assert_eq!(mine["pagination"]["total_results"], 2, "{mine}");
    let (status, _) = cc
        .call(Method::DELETE, &format!("/v3/routes/{route_guid}"), None)
        .await;
    assert_eq!(status, 202);
    let (status, _) = cc.get(&format!("/v3/routes/{route_guid}")).await;
    assert_eq!(status, 404);
}

async fn staging_log_lines_on_the_bus_are_kept_and_streamed_per_app(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("chatty").await;
    let other = cc.app("quiet").await;
    let bus = async_nats::connect(&cc.nats.url).await.unwrap();
    let line = |app: &str, text: &str| kiln_bus::StagingLogLine {
        build_guid: "b".into(),
        app_guid: app.into(),
        source: "STG".into(),
        stream: "OUT".into(),
        line: text.into(),
        timestamp_ns: 1,
    };
    let publish = |l: kiln_bus::StagingLogLine| {
        let bus = bus.clone();
        async move {
            bus.publish(kiln_bus::staging_log("b"), kiln_bus::encode(&l).into())
                .await
                .unwrap();
            bus.flush().await.unwrap();
        }
    };
    publish(line(&app, "-----> Detecting buildpacks")).await;
    publish(line(&other, "not mine")).await;
    let mut recent = json!(null);
    for _ in 0..50 {
        recent = cc.get(&format!("/v3/apps/{app}/logs/recent")).await.1;
        if recent["resources"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(recent["resources"].as_array().unwrap().len(), 1, "{recent}");
    assert_eq!(recent["resources"][0]["source"], "STG");
    assert_eq!(
        recent["resources"][0]["message"],
        "-----> Detecting buildpacks"
    );

    let mut stream = cc
        .req(Method::GET, &format!("/v3/apps/{app}/logs/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    publish(line(&other, "still not mine")).await;
    publish(line(&app, "-----> Droplet ready")).await;
    let mut seen = String::new();
    while !seen.contains("Droplet ready") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.contains("event: log") && !seen.contains("still not mine"),
        "{seen}"
    );
}

// Every test runs against SQLite and against PostgreSQL.
async fn a_process_takes_a_command_and_a_health_check_and_refuses_bad_ones(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("tuned").await;
    let (_, web) = cc.get(&format!("/v3/apps/{app}/processes/web")).await;
    let guid = web["guid"].as_str().unwrap().to_string();
    assert_eq!(web["health_check"]["type"], "port");
    assert_eq!(web["command"], serde_json::Value::Null);
    let path = format!("/v3/processes/{guid}");

    let (status, p) = cc
        .call(
            Method::PATCH,
            &path,
            Some(
                json!({"command": "bin/serve --port $PORT", "health_check": {"type": "http",
                "data": {"endpoint": "/ready", "timeout": 90, "invocation_timeout": 3}}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    let (_, p) = cc.get(&path).await;
    assert_eq!(p["command"], "bin/serve --port $PORT");
    assert_eq!(p["health_check"]["type"], "http");
    assert_eq!(p["health_check"]["data"]["endpoint"], "/ready");
    assert_eq!(p["health_check"]["data"]["timeout"], 90);
    assert_eq!(p["health_check"]["data"]["invocation_timeout"], 3);

    // Refused, and nothing changes.
    for (body, words) in [
        (json!({"health_check": {"type": "tcp"}}), "must be \"port\""),
        (
            json!({"health_check": {"type": "port"}}),
            "endpoint can only be set with the \"http\"",
        ),
        (
            json!({"health_check": {"data": {"endpoint": "ready"}}}),
            "starting with \"/\"",
        ),
        (
            json!({"health_check": {"data": {"timeout": 0}}}),
            "between 1 and 180",
        ),
    ] {
        let (status, e) = cc.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(status, 422, "{body} → {e}");
        let detail = e["errors"][0]["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "{body} → {e}");
    }
    let (status, e) = cc
        .call(Method::PATCH, &path, Some(json!({"instances": 3})))
        .await;
    assert_eq!(status, 422, "{e}");
    assert!(e.to_string().contains("unknown field `instances`"), "{e}");
    let (_, unchanged) = cc.get(&path).await;
    assert_eq!(unchanged["health_check"], p["health_check"]);

    // Back to the droplet's command and a port check.
    let (status, p) = cc
        .call(
            Method::PATCH,
            &path,
            Some(json!({"command": null, "health_check": {"type": "port", "data": {"endpoint": null}}})),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["command"], serde_json::Value::Null);
    assert_eq!(
        p["health_check"]["data"]["endpoint"],
        serde_json::Value::Null
    );
    assert_eq!(p["health_check"]["data"]["timeout"], 90);

    let (_, events) = cc
        .get(&format!(
            "/v3/audit_events?types=audit.app.process.update&target_guids={app}"
        ))
        .await;
    let events = events["resources"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        !events[0].to_string().contains("bin/serve"),
        "{}",
        events[0]
    );
    let (status, _) = cc
        .call(Method::PATCH, "/v3/processes/nope", Some(json!({})))
        .await;
    assert_eq!(status, 404);
}

both!(
    every_endpoint_but_root_and_token_needs_a_valid_unexpired_token,
    apps_are_created_listed_filtered_paged_updated_and_deleted,
    packages_upload_check_and_download_their_bits,
    a_build_no_stager_takes_fails_with_the_reason,
    a_build_whose_stager_goes_silent_fails_naming_the_stager,
    apps_get_a_web_process_and_a_default_route_and_both_can_be_changed,
    staging_log_lines_on_the_bus_are_kept_and_streamed_per_app,
    a_process_takes_a_command_and_a_health_check_and_refuses_bad_ones,
);
