//! Admin buildpacks over real HTTP against a real controller (each test once on SQLite and
//! once on PostgreSQL): the built-ins seeded in detection order, create and upload, positions
//! kept 1..n, filters, every refusal, the internal download, and how a build resolves its
//! buildpacks into the staging request.

mod common;

use common::{error_title, send, zip_of, Controller, Db};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;

const BUILTIN: [&str; 5] = ["python", "nodejs", "binary", "procfile", "staticfile"];

/// A tiny shell buildpack (executable `bin/detect` and `bin/compile`) under `prefix`.
fn buildpack_zip(prefix: &str, says: &str) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let exec = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    for (name, body) in [
        ("bin/detect", format!("#!/bin/sh\necho {says}\n")),
        ("bin/compile", "#!/bin/sh\nexit 0\n".to_string()),
    ] {
        w.start_file(format!("{prefix}{name}"), exec).unwrap();
        w.write_all(body.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn detail(body: &Value) -> &str {
    body["errors"][0]["detail"].as_str().unwrap_or_default()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `(name, position)` of every buildpack, in list order.
async fn order(cc: &Controller) -> Vec<(String, i64)> {
    let (status, list) = cc.get("/v3/buildpacks?per_page=100").await;
    assert_eq!(status, 200, "{list}");
    list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["position"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The names in list order, checking the positions are exactly 1..n.
async fn names(cc: &Controller) -> Vec<String> {
    let order = order(cc).await;
    let positions: Vec<i64> = order.iter().map(|(_, p)| *p).collect();
    let expected: Vec<i64> = (1..=i64::try_from(order.len()).unwrap()).collect();
    assert_eq!(positions, expected, "positions 1..n: {order:?}");
    order.into_iter().map(|(n, _)| n).collect()
}

async fn create(cc: &Controller, body: Value) -> String {
    let (status, bp) = cc.post("/v3/buildpacks", body).await;
    assert_eq!(status, 201, "{bp}");
    bp["guid"].as_str().unwrap().to_string()
}

async fn upload(cc: &Controller, guid: &str, bytes: Vec<u8>, file: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "bits",
        reqwest::multipart::Part::bytes(bytes).file_name(file.to_string()),
    );
    send(
        cc.req(Method::POST, &format!("/v3/buildpacks/{guid}/upload"))
            .multipart(form),
    )
    .await
}

async fn patch(cc: &Controller, guid: &str, body: Value) -> (u16, Value) {
    cc.call(Method::PATCH, &format!("/v3/buildpacks/{guid}"), Some(body))
        .await
}

async fn guid_of(cc: &Controller, name: &str) -> String {
    let (_, list) = cc.get(&format!("/v3/buildpacks?names={name}")).await;
    list["resources"][0]["guid"].as_str().unwrap().to_string()
}

async fn built_ins_are_listed_in_detection_order_and_seeded_once(db: Db) {
    let mut config = None;
    let cc = Controller::start_with(db, |c| config = Some(c.clone())).await;
    assert_eq!(names(&cc).await, BUILTIN);
    let (_, list) = cc.get("/v3/buildpacks").await;
    let python = &list["resources"][0];
    for (field, value) in [
        ("state", json!("READY")),
        ("stack", json!(null)),
        ("enabled", json!(true)),
        ("locked", json!(false)),
        ("filename", json!(null)),
        ("lifecycle", json!("buildpack")),
    ] {
        assert_eq!(python[field], value, "{field}: {python}");
    }
    let guid = python["guid"].as_str().unwrap();
    assert!(python["links"]["self"]["href"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/v3/buildpacks/{guid}")));
    assert_eq!(python["links"]["upload"]["method"], "POST");

    // Another start on the same database adds only what is missing, at the end.
    let mut again = config.expect("the config");
    again.listen = "127.0.0.1:0".parse().unwrap();
    again.builtin_buildpacks.push("extra".into());
    let second = kiln_cloud_controller::start(again)
        .await
        .expect("a second start");
    second.server.abort();
    let mut expected = BUILTIN.map(String::from).to_vec();
    expected.push("extra".into());
    assert_eq!(names(&cc).await, expected);
}

async fn a_zip_buildpack_is_created_uploaded_and_ready_with_its_sha256(db: Db) {
    let cc = Controller::start(db).await;
    let (status, bp) = cc.post("/v3/buildpacks", json!({"name": "mine"})).await;
    assert_eq!(status, 201, "{bp}");
    assert_eq!(
        (&bp["state"], &bp["position"], &bp["stack"], &bp["filename"]),
        (
            &json!("AWAITING_UPLOAD"),
            &json!(6),
            &json!(null),
            &json!(null)
        )
    );
    let guid = bp["guid"].as_str().unwrap().to_string();
    let zip = buildpack_zip("", "mine");
    let resp = cc
        .req(Method::POST, &format!("/v3/buildpacks/{guid}/upload"))
        .multipart(reqwest::multipart::Form::new().part(
            "bits",
            reqwest::multipart::Part::bytes(zip.clone()).file_name("dir/mine-1.0.zip"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .contains("/v3/jobs/"));
    let bp: Value = resp.json().await.unwrap();
    assert_eq!(bp["state"], "READY", "{bp}");
    assert_eq!(bp["filename"], "mine-1.0.zip");
    assert_eq!(bp["checksum"]["value"], sha(&zip));
    assert_eq!(cc.get(&format!("/v3/buildpacks/{guid}")).await.1, bp);

    // Stagers fetch the bits with the internal credential; users cannot.
    let internal = kiln_cloud_controller::internal_token(&cc.data_dir).unwrap();
    let bits = format!("{}/internal/v1/buildpacks/{guid}/bits", cc.url);
    let resp = cc
        .http
        .get(&bits)
        .bearer_auth(&internal)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), zip.as_slice());
    let (status, _) = send(cc.http.get(&bits).bearer_auth(&cc.token)).await;
    assert_eq!(status, 403);
    let python = guid_of(&cc, "python").await;
    let (status, _) = send(
        cc.http
            .get(format!("{}/internal/v1/buildpacks/{python}/bits", cc.url))
            .bearer_auth(&internal),
    )
    .await;
    assert_eq!(status, 404, "a built-in has no bits here");

    // A buildpack in one top folder, as GitHub release zips are, is one too; uploading again
    // replaces the bits.
    let folder = buildpack_zip("mine-2.0/", "mine");
    let (status, bp) = upload(&cc, &guid, folder.clone(), "mine-2.0.zip").await;
    assert_eq!(status, 202, "{bp}");
    assert_eq!(bp["checksum"]["value"], sha(&folder));
}

async fn positions_stay_one_to_n_through_inserts_moves_and_deletes(db: Db) {
    let cc = Controller::start(db).await;
    let a = create(&cc, json!({"name": "a", "position": 1})).await;
    let b = create(&cc, json!({"name": "b", "position": 99})).await;
    let c = create(&cc, json!({"name": "c", "position": 3})).await;
    assert_eq!(
        names(&cc).await,
        [
            "a",
            "python",
            "c",
            "nodejs",
            "binary",
            "procfile",
            "staticfile",
            "b"
        ]
    );
    let (status, moved) = patch(&cc, &c, json!({"position": 1})).await;
    assert_eq!((status, &moved["position"]), (200, &json!(1)), "{moved}");
    let (status, _) = patch(&cc, &a, json!({"position": 1000})).await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&cc).await,
        [
            "c",
            "python",
            "nodejs",
            "binary",
            "procfile",
            "staticfile",
            "b",
            "a"
        ]
    );
    let resp = cc
        .req(Method::DELETE, &format!("/v3/buildpacks/{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert!(resp.headers().contains_key("location"));
    assert_eq!(
        names(&cc).await,
        [
            "c",
            "python",
            "nodejs",
            "binary",
            "procfile",
            "staticfile",
            "a"
        ]
    );

    // Built-ins can be disabled, locked and moved, not renamed or deleted.
    let staticfile = guid_of(&cc, "staticfile").await;
    let (status, body) = patch(
        &cc,
        &staticfile,
        json!({"enabled": false, "locked": true, "position": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["enabled"], &body["locked"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(
        names(&cc).await,
        [
            "c",
            "staticfile",
            "python",
            "nodejs",
            "binary",
            "procfile",
            "a"
        ]
    );
    let (status, body) = patch(&cc, &staticfile, json!({"name": "static"})).await;
    assert_eq!(status, 422);
    assert!(detail(&body).contains("cannot be renamed"), "{body}");
    let (status, body) = cc
        .call(
            Method::DELETE,
            &format!("/v3/buildpacks/{staticfile}"),
            None,
        )
        .await;
    assert_eq!(status, 422);
    assert!(detail(&body).contains("disable it instead"), "{body}");
    let (status, body) = patch(&cc, &a, json!({"name": "renamed"})).await;
    assert_eq!((status, &body["name"]), (200, &json!("renamed")));

    // Changes at the same time wait for each other: no gap, no duplicate.
    let creates = (0..8).map(|i| {
        cc.post(
            "/v3/buildpacks",
            json!({"name": format!("p{i}"), "position": 2}),
        )
    });
    for (status, body) in futures::future::join_all(creates).await {
        assert_eq!(status, 201, "{body}");
    }
    let cc = &cc;
    let moves = ["c", "python", "renamed"].map(|n| async move {
        let guid = guid_of(cc, n).await;
        patch(cc, &guid, json!({"position": 3})).await
    });
    for (status, body) in futures::future::join_all(moves).await {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(names(cc).await.len(), 15);
}

async fn filters_select_by_name_and_stack_and_one_name_per_stack(db: Db) {
    let cc = Controller::start(db).await;
    create(&cc, json!({"name": "x", "stack": "tiny"})).await;
    create(&cc, json!({"name": "x", "stack": "bookworm"})).await;
    create(&cc, json!({"name": "x"})).await;
    let (status, body) = cc
        .post("/v3/buildpacks", json!({"name": "x", "stack": "tiny"}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        detail(&body),
        "Buildpack with name 'x' and stack 'tiny' already exists"
    );
    let (status, body) = cc.post("/v3/buildpacks", json!({"name": "x"})).await;
    assert_eq!(status, 422);
    assert!(detail(&body).contains("an unassigned stack"), "{body}");
    let (status, body) = cc
        .post("/v3/buildpacks", json!({"name": "y", "stack": "mars"}))
        .await;
    assert_eq!(status, 422);
    assert!(
        detail(&body).contains("Stack 'mars' does not exist"),
        "{body}"
    );

    let total = |body: Value| body["pagination"]["total_results"].as_i64();
    assert_eq!(total(cc.get("/v3/buildpacks?names=x").await.1), Some(3));
    assert_eq!(total(cc.get("/v3/buildpacks?stacks=tiny").await.1), Some(1));
    let (_, both) = cc
        .get("/v3/buildpacks?names=x,python&stacks=bookworm")
        .await;
    assert_eq!(total(both.clone()), Some(1));
    assert_eq!(both["resources"][0]["stack"], "bookworm");
    let (_, page) = cc.get("/v3/buildpacks?names=x&per_page=2").await;
    assert_eq!(page["pagination"]["total_pages"], 2);
    assert!(
        page["pagination"]["next"]["href"]
            .as_str()
            .unwrap()
            .contains("names=x&page=2&per_page=2"),
        "{page}"
    );

    // A stack is set once: from none to one, never to another.
    let any = create(&cc, json!({"name": "z"})).await;
    let (status, body) = patch(&cc, &any, json!({"stack": "tiny"})).await;
    assert_eq!((status, &body["stack"]), (200, &json!("tiny")));
    let (status, body) = patch(&cc, &any, json!({"stack": "bookworm"})).await;
    assert_eq!(status, 422);
    assert!(detail(&body).contains("cannot be changed"), "{body}");
}

async fn refusals_are_422s_naming_the_problem_and_unknown_guids_404s(db: Db) {
    let cc = Controller::start(db).await;
    for (body, says) in [
        (json!({}), "Name can't be blank"),
        (json!({"name": "a b"}), "Name can only contain"),
        (json!({"name": "ok", "position": 0}), "Position must be"),
        (
            json!({"name": "ok", "color": "red"}),
            "unknown field `color`",
        ),
        (
            json!({"name": "ok", "lifecycle": "cnb"}),
            "Lifecycle must be",
        ),
    ] {
        let (status, err) = cc.post("/v3/buildpacks", body).await;
        assert_eq!((status, error_title(&err)), (422, "CF-UnprocessableEntity"));
        assert!(detail(&err).contains(says), "{err}");
    }
    let guid = create(&cc, json!({"name": "mine"})).await;
    for (bytes, says) in [
        (b"not a zip".to_vec(), "not a valid zip"),
        (
            zip_of(&[("index.html", "hi")]),
            "the zip is not a buildpack: it has no bin/detect",
        ),
    ] {
        let (status, err) = upload(&cc, &guid, bytes, "bp.zip").await;
        assert_eq!(status, 422, "{err}");
        assert!(detail(&err).contains(says), "{err}");
        let (_, bp) = cc.get(&format!("/v3/buildpacks/{guid}")).await;
        assert_eq!(
            bp["state"], "AWAITING_UPLOAD",
            "a refused upload changes nothing"
        );
    }
    let good = buildpack_zip("", "mine");
    assert_eq!(upload(&cc, &guid, good.clone(), "bp.zip").await.0, 202);
    let (status, _) = upload(&cc, &guid, b"junk".to_vec(), "bp.zip").await;
    assert_eq!(status, 422);
    let (_, bp) = cc.get(&format!("/v3/buildpacks/{guid}")).await;
    assert_eq!(
        (&bp["state"], &bp["checksum"]["value"]),
        (&json!("READY"), &json!(sha(&good)))
    );
    let form = reqwest::multipart::Form::new().text("resources", "[]");
    let (status, err) = send(
        cc.req(Method::POST, &format!("/v3/buildpacks/{guid}/upload"))
            .multipart(form),
    )
    .await;
    assert_eq!(status, 422);
    assert!(detail(&err).contains("field `bits`"), "{err}");

    assert_eq!(patch(&cc, &guid, json!({"locked": true})).await.0, 200);
    let (status, err) = upload(&cc, &guid, good.clone(), "bp.zip").await;
    assert_eq!(status, 422);
    assert!(detail(&err).contains("locked"), "{err}");
    let python = guid_of(&cc, "python").await;
    let (status, err) = upload(&cc, &python, good.clone(), "bp.zip").await;
    assert_eq!(status, 422);
    assert!(detail(&err).contains("built-in"), "{err}");

    let missing = "/v3/buildpacks/no-such-guid";
    for (status, body) in [
        cc.get(missing).await,
        patch(&cc, "no-such-guid", json!({"enabled": false})).await,
        cc.call(Method::DELETE, missing, None).await,
        upload(&cc, "no-such-guid", good, "bp.zip").await,
    ] {
        assert_eq!((status, error_title(&body)), (404, "CF-ResourceNotFound"));
    }
    let (status, _) = send(cc.http.get(format!("{}/v3/buildpacks", cc.url))).await;
    assert_eq!(status, 401);
}

/// The next staging request on the bus.
async fn next_request(requests: &mut async_nats::Subscriber) -> kiln_bus::StagingRequest {
    let m = tokio::time::timeout(std::time::Duration::from_secs(5), requests.next())
        .await
        .expect("a staging request")
        .unwrap();
    kiln_bus::decode(&m.subject, &m.payload).unwrap()
}

async fn builds_resolve_their_buildpacks_or_are_refused_naming_the_usable_ones(db: Db) {
    let cc = Controller::start(db).await;
    let mine = create(&cc, json!({"name": "mine"})).await;
    let mine_zip = buildpack_zip("", "mine");
    assert_eq!(upload(&cc, &mine, mine_zip.clone(), "m.zip").await.0, 202);
    // Of two with one name, the one of the build's stack wins.
    let anywhere = create(&cc, json!({"name": "special"})).await;
    let on_tiny = create(&cc, json!({"name": "special", "stack": "tiny"})).await;
    let tiny_zip = buildpack_zip("", "special-tiny");
    upload(&cc, &anywhere, buildpack_zip("", "special-any"), "s.zip").await;
    upload(&cc, &on_tiny, tiny_zip.clone(), "s.zip").await;
    create(&cc, json!({"name": "empty"})).await;
    let nodejs = guid_of(&cc, "nodejs").await;
    assert_eq!(patch(&cc, &nodejs, json!({"enabled": false})).await.0, 200);

    let app = cc.app("built").await;
    let (_, package) = cc.upload(&app, zip_of(&[("index.html", "x")])).await;
    let bus = async_nats::connect(&cc.nats.url).await.unwrap();
    let mut requests = bus.subscribe(kiln_bus::STAGING_REQUEST).await.unwrap();
    kiln_bus::round_trip(&bus, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .unwrap();
    let build = |buildpacks: Value| json!({"package": {"guid": package["guid"]}, "lifecycle": {"type": "buildpack", "data": {"buildpacks": buildpacks}}});

    for refused in [json!(["nope", "mine"]), json!(["nodejs"]), json!(["empty"])] {
        let (status, err) = cc.post("/v3/builds", build(refused.clone())).await;
        assert_eq!(status, 422, "{refused}: {err}");
        assert!(
            detail(&err).ends_with(
                "for stack 'tiny'. Available: python, binary, procfile, staticfile, mine, special"
            ),
            "{err}"
        );
    }
    let (_, err) = cc.post("/v3/builds", build(json!(["nope", "mine"]))).await;
    assert!(
        detail(&err).starts_with("Buildpack 'nope' must be"),
        "{err}"
    );

    let (status, body) = cc
        .post("/v3/builds", build(json!(["special", "python"])))
        .await;
    assert_eq!(status, 201, "{body}");
    let request = next_request(&mut requests).await;
    assert_eq!(request.buildpacks, ["special", "python"]);
    let special = &request.buildpack_refs[0];
    assert_eq!(special.sha256.as_deref(), Some(sha(&tiny_zip).as_str()));
    assert!(
        special
            .url
            .as_deref()
            .unwrap()
            .ends_with(&format!("/internal/v1/buildpacks/{on_tiny}/bits")),
        "{special:?}"
    );
    let python = kiln_bus::BuildpackRef {
        name: "python".into(),
        sha256: None,
        url: None,
    };
    assert_eq!(request.buildpack_refs[1], python);

    // Nothing named: every usable one, in position order, for detection.
    let (status, _) = cc
        .post("/v3/builds", json!({"package": {"guid": package["guid"]}}))
        .await;
    assert_eq!(status, 201);
    let request = next_request(&mut requests).await;
    assert!(request.buildpacks.is_empty());
    let names: Vec<&str> = request
        .buildpack_refs
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "python",
            "binary",
            "procfile",
            "staticfile",
            "mine",
            "special"
        ]
    );
    assert_eq!(
        request.buildpack_refs[4].sha256.as_deref(),
        Some(sha(&mine_zip).as_str())
    );
    assert_eq!(request.buildpack_refs[5].sha256, special.sha256);
}

// Every test runs against SQLite and against PostgreSQL.
both!(
    built_ins_are_listed_in_detection_order_and_seeded_once,
    a_zip_buildpack_is_created_uploaded_and_ready_with_its_sha256,
    positions_stay_one_to_n_through_inserts_moves_and_deletes,
    filters_select_by_name_and_stack_and_one_name_per_stack,
    refusals_are_422s_naming_the_problem_and_unknown_guids_404s,
    builds_resolve_their_buildpacks_or_are_refused_naming_the_usable_ones,
);
