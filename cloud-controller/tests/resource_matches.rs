//! Resource matching over real HTTP (each test on SQLite and on PostgreSQL): the pool filled by
//! uploads, `POST /v3/resource_matches`, and uploads that name pooled files instead of sending
//! them.

mod common;

use std::io::Read;

use common::{error_title, send, zip_of, zip_with_modes, Controller, Db};
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde_json::{json, Value};
use sha1::Digest;

fn sha1_of(b: &[u8]) -> String {
    hex::encode(sha1::Sha1::digest(b))
}

/// A V3 resource entry for `body` at `path`.
fn entry(path: &str, body: &[u8], mode: &str) -> Value {
    json!({"checksum": {"value": sha1_of(body)}, "size_in_bytes": body.len(), "path": path, "mode": mode})
}

/// An upload form: `resources` and, if given, `bits`.
fn form(resources: &str, bits: Option<Vec<u8>>) -> Form {
    let f = Form::new().text("resources", resources.to_string());
    match bits {
        Some(b) => f.part("bits", Part::bytes(b).file_name("app.zip")),
        None => f,
    }
}

/// Every entry of a zip: (name, unix mode & 0o777, content).
fn unzip(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut e = zip.by_index(i).unwrap();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        out.push((
            e.name().to_string(),
            e.unix_mode().unwrap_or(0) & 0o777,
            body,
        ));
    }
    out.sort();
    out
}

fn no_temp_files(cc: &Controller) {
    let left = std::fs::read_dir(cc.data_dir.join("blobs/tmp"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "no partial file left in the blobstore");
}

async fn an_empty_pool_matches_nothing_and_bad_input_is_refused(db: Db) {
    let cc = Controller::start(db).await;
    let asked =
        json!({"resources": [entry("a.txt", b"alpha", "644"), entry("b", b"bravo", "0755")]});
    let (status, body) = cc.post("/v3/resource_matches", asked.clone()).await;
    assert_eq!(
        (status, body.clone()),
        (201, json!({"resources": []})),
        "{body}"
    );
    let (status, _) = send(
        cc.http
            .post(format!("{}/v3/resource_matches", cc.url))
            .json(&asked),
    )
    .await;
    assert_eq!(status, 401);

    let bad = |resources: Value| json!({ "resources": resources });
    let cases = [
        (
            bad(json!([{"checksum": {"value": "abc"}, "size_in_bytes": 1}])),
            "resources[0].checksum.value",
        ),
        (
            bad(json!([{"checksum": {"value": sha1_of(b"x")}, "size_in_bytes": -1}])),
            "resources[0].size_in_bytes",
        ),
        (
            bad(json!([{"checksum": {"value": sha1_of(b"x")}, "size_in_bytes": "1"}])),
            "resources[0].size_in_bytes",
        ),
        (bad(json!({"not": "a list"})), "resources must be a list"),
        (json!({}), "resources must be a list"),
    ];
    for (body, named) in cases {
        let (status, answer) = cc.post("/v3/resource_matches", body).await;
        assert_eq!(
            (status, error_title(&answer)),
            (422, "CF-UnprocessableEntity"),
            "{answer}"
        );
        let detail = answer["errors"][0]["detail"].as_str().unwrap();
        assert!(detail.contains(named), "{detail}");
    }
    let many: Vec<Value> = (0..10_001).map(|_| entry("a", b"a", "644")).collect();
    let (status, answer) = cc
        .post("/v3/resource_matches", json!({ "resources": many }))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["errors"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("at most 10000"));
    let (status, answer) = send(
        cc.req(Method::POST, "/v3/resource_matches")
            .header("content-type", "application/json")
            .body("{\"resources\": ["),
    )
    .await;
    assert_eq!(
        (status, error_title(&answer)),
        (400, "CF-MessageParseError"),
        "{answer}"
    );
}

async fn uploaded_files_are_matched_by_sha1_and_size(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("pooled").await;
    let files: [(&str, &[u8], u32); 3] = [
        ("a.txt", b"alpha", 0o644),
        ("lib/b.txt", b"bravo bravo", 0o755),
        ("empty", b"", 0o644),
    ];
    let (status, package) = cc.upload(&app, zip_with_modes(&files)).await;
    assert_eq!(
        (status, package["state"].as_str()),
        (200, Some("READY")),
        "{package}"
    );

    let a = entry("a.txt", b"alpha", "644");
    let b = json!({"checksum": {"value": sha1_of(b"bravo bravo").to_uppercase()}, "size_in_bytes": 11, "path": "elsewhere/b", "mode": "0755"});
    let wrong_size =
        json!({"checksum": {"value": sha1_of(b"alpha")}, "size_in_bytes": 6, "path": "a2"});
    let unknown = entry("c", b"charlie", "644");
    let empty = entry("empty", b"", "644");
    let (status, body) = cc
        .post(
            "/v3/resource_matches",
            json!({"resources": [a, wrong_size, b, unknown, empty]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({"resources": [a, b]}),
        "exactly the pooled files, as sent"
    );
    let sha = sha1_of(b"alpha");
    let pooled = cc.data_dir.join(format!(
        "blobs/resources/{}/{}/{sha}",
        &sha[..2],
        &sha[2..4]
    ));
    assert_eq!(std::fs::read(pooled).unwrap(), b"alpha");

    // A FAILED package adds nothing to the pool.
    let hostile = zip_of(&[("../up.txt", "hostile"), ("ok.txt", "fine")]);
    let (_, failed) = cc.upload(&app, hostile).await;
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let (_, body) = cc
        .post(
            "/v3/resource_matches",
            json!({"resources": [entry("ok.txt", b"fine", "644")]}),
        )
        .await;
    assert_eq!(body, json!({"resources": []}));
}

async fn a_second_upload_takes_unchanged_files_from_the_pool(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("twice").await;
    let data = vec![b'd'; 100_000];
    let first: [(&str, &[u8], u32); 3] = [
        ("index.html", b"<h1>one</h1>", 0o644),
        ("bin/run", b"#!/bin/sh\necho hi\n", 0o755),
        ("lib/data", &data, 0o600),
    ];
    let (_, package) = cc.upload(&app, zip_with_modes(&first)).await;
    assert_eq!(package["state"], "READY", "{package}");

    // The cf CLI's way: the changed file in the zip, the rest named (V3 and v6 shapes).
    let resources = json!([
        entry("bin/run", b"#!/bin/sh\necho hi\n", "0755"),
        {"fn": "lib/data", "sha1": sha1_of(&data), "size": data.len(), "mode": "640"},
    ]);
    let bits = zip_with_modes(&[("index.html", b"<h1>two</h1>", 0o644)]);
    let (status, package) = cc
        .upload_form(&app, form(&resources.to_string(), Some(bits)))
        .await;
    assert_eq!(
        (status, package["state"].as_str()),
        (200, Some("READY")),
        "{package}"
    );
    let guid = package["guid"].as_str().unwrap();
    let zip = cc.download(&format!("/v3/packages/{guid}/download")).await;
    use sha2::Digest as _;
    assert_eq!(
        package["data"]["checksum"]["value"],
        hex::encode(sha2::Sha256::digest(&zip))
    );
    let expected = vec![
        (
            "bin/run".to_string(),
            0o755,
            b"#!/bin/sh\necho hi\n".to_vec(),
        ),
        ("index.html".to_string(), 0o644, b"<h1>two</h1>".to_vec()),
        ("lib/data".to_string(), 0o640, data.clone()),
    ];
    assert_eq!(unzip(&zip), expected);

    // Everything matched: no `bits` part at all.
    let all = json!([
        entry("index.html", b"<h1>two</h1>", "644"),
        entry("bin/run", b"#!/bin/sh\necho hi\n", "755"),
    ]);
    let (status, package) = cc.upload_form(&app, form(&all.to_string(), None)).await;
    assert_eq!(
        (status, package["state"].as_str()),
        (200, Some("READY")),
        "{package}"
    );
    let guid = package["guid"].as_str().unwrap();
    let zip = cc.download(&format!("/v3/packages/{guid}/download")).await;
    let names: Vec<String> = unzip(&zip).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, ["bin/run", "index.html"]);
    no_temp_files(&cc);
}

async fn an_unknown_resource_fails_the_package_naming_it(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("unknown").await;
    let (_, package) = cc.upload(&app, zip_of(&[("known.txt", "known")])).await;
    assert_eq!(package["state"], "READY");
    for resource in [
        entry("src/missing.rb", b"never uploaded", "644"),
        json!({"checksum": {"value": sha1_of(b"known")}, "size_in_bytes": 4, "path": "src/missing.rb"}),
    ] {
        let sha = resource["checksum"]["value"].as_str().unwrap().to_string();
        let resources = json!([resource]).to_string();
        let bits = zip_of(&[("index.html", "x")]);
        let (status, package) = cc.upload_form(&app, form(&resources, Some(bits))).await;
        assert_eq!(
            (status, package["state"].as_str()),
            (200, Some("FAILED")),
            "{package}"
        );
        let error = package["data"]["error"].as_str().unwrap();
        assert!(
            error.contains("`src/missing.rb`") && error.contains(&sha),
            "{error}"
        );
        assert!(
            error.contains("upload it again with the file included"),
            "{error}"
        );
    }
    no_temp_files(&cc);
}

async fn bad_resources_are_refused_with_422s(db: Db) {
    let cc = Controller::start(db).await;
    let app = cc.app("refused").await;
    let (_, package) = cc.upload(&app, zip_of(&[("index.html", "pooled")])).await;
    assert_eq!(package["state"], "READY");
    let pooled = |path: &str| json!([entry(path, b"pooled", "644")]).to_string();
    let cases = [
        ("not json".to_string(), "resources must be a JSON list"),
        (
            json!([{"checksum": {"value": "xyz"}, "size_in_bytes": 1, "path": "a"}]).to_string(),
            "resources[0].checksum.value",
        ),
        (
            json!([{"checksum": {"value": sha1_of(b"a")}, "size_in_bytes": -5, "path": "a"}])
                .to_string(),
            "resources[0].size_in_bytes",
        ),
        (pooled("../x"), "outside the app folder"),
        (pooled("/etc/passwd"), "outside the app folder"),
        (
            pooled("index.html"),
            "both in the uploaded zip and in the resources",
        ),
        (
            pooled("./index.html"),
            "both in the uploaded zip and in the resources",
        ),
    ];
    for (resources, named) in cases {
        let bits = zip_of(&[("index.html", "new")]);
        let (status, body) = cc.upload_form(&app, form(&resources, Some(bits))).await;
        assert_eq!(
            (status, error_title(&body)),
            (422, "CF-UnprocessableEntity"),
            "{resources}: {body}"
        );
        let detail = body["errors"][0]["detail"].as_str().unwrap();
        assert!(detail.contains(named), "{resources}: {detail}");
    }
    // A tar.gz goes whole: resources are for zips.
    let mut tgz = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        Default::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    tgz.append_data(&mut header, "app.txt", &b"app"[..])
        .unwrap();
    let tgz = tgz.into_inner().unwrap().finish().unwrap();
    let (status, body) = cc
        .upload_form(&app, form(&pooled("more.txt"), Some(tgz)))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("zip"),
        "{body}"
    );
    // Nothing at all is still the old 422, and the package says why.
    let (status, body) = cc.upload_form(&app, form("[]", None)).await;
    assert_eq!(status, 422, "{body}");
    let (_, packages) = cc
        .get(&format!("/v3/apps/{app}/packages?per_page=100"))
        .await;
    let failed = packages["resources"].as_array().unwrap().iter().any(|p| {
        p["state"] == "FAILED"
            && p["data"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("Bits must be sent"))
    });
    assert!(failed, "{packages}");
    no_temp_files(&cc);
}

both!(
    an_empty_pool_matches_nothing_and_bad_input_is_refused,
    uploaded_files_are_matched_by_sha1_and_size,
    a_second_upload_takes_unchanged_files_from_the_pool,
    an_unknown_resource_fails_the_package_naming_it,
    bad_resources_are_refused_with_422s,
);
