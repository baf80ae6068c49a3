//! `kiln` against a real controller over HTTP, no stager: login, target, pushes with
//! `--no-start` (manifest with two apps, `.cfignore`, resource matching), the app commands,
//! `--json`, and refused input with its exit code.

mod remote_common;

use remote_common::{zip_names, Platform};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_refuses_a_bad_password_and_saves_a_private_token() {
    let p = Platform::start().await;
    let bad = p
        .kiln(&["login", "-a", &p.url, "-u", "admin", "-p", "wrong"])
        .await
        .failed();
    assert!(bad.stderr.contains("Bad credentials"), "{}", bad.stderr);
    let nobody = p.kiln(&["apps"]).await.failed();
    assert!(nobody.stderr.contains("kiln login"), "{}", nobody.stderr);
    p.login().await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &std::path::Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&p.home().join("config.json")), 0o600);
    assert_eq!(mode(&p.home()), 0o700);
    let t = p.kiln(&["target"]).await.ok();
    assert!(
        t.stdout.contains(&p.url) && t.stdout.contains("admin"),
        "{}",
        t.stdout
    );
    assert!(
        t.stdout.contains("default") && t.stdout.contains("dev"),
        "{}",
        t.stdout
    );
    let j = p.kiln(&["target", "--json"]).await.ok().json();
    assert_eq!(j["space"], "dev");

    // An expired access token is renewed with the refresh token.
    let path = p.home().join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    c["access_token"] = "garbage".into();
    std::fs::write(&path, c.to_string()).unwrap();
    p.kiln(&["apps"]).await.ok();
    let c2: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_ne!(c2["access_token"], "garbage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_api_that_is_not_there_is_named() {
    let p = Platform::start().await;
    let r = p
        .kiln(&["login", "-a", "http://127.0.0.1:9", "-u", "a", "-p", "b"])
        .await
        .failed();
    assert!(
        r.stderr.contains("http://127.0.0.1:9") && r.stderr.contains("kiln login -a"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_with_two_apps_is_pushed_honouring_cfignore_and_matching_resources() {
    let p = Platform::start().await;
    p.login().await;
    let big = "x".repeat(10_000);
    let root = p.app_dir(
        "two",
        &[
            ("manifest.yml", "applications:\n- name: front\n  path: front\n  memory: 128M\n  instances: 2\n  env: {GREETING: hi, N: 3}\n  routes: [{route: www.apps.kiln.local}]\n- name: back\n  path: back\n  no-route: true\n  disk_quota: 512M\n  command: ./run --serve\n  health-check-type: http\n  health-check-http-endpoint: /up\n  timeout: 90\n"),
            ("front/index.html", "<h1>front</h1>"),
            ("front/big.txt", &big),
            ("front/secret.key", "no"),
            ("front/.cfignore", "*.key\n"),
            ("front/.git/HEAD", "ref"),
            ("back/Procfile", "web: ./run"),
            ("back/run", "#!/bin/sh\n"),
        ],
    );
    let r = p.kiln_in(&root, &["push", "--no-start"]).await.ok();
    assert!(
        r.stdout.contains("Creating app front") && r.stdout.contains("Creating app back"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("0 files matched, 2 files uploaded"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("www.apps.kiln.local"), "{}", r.stdout);

    // The package lacks the ignored files.
    let app = p.kiln(&["app", "front", "--json"]).await.ok().json();
    let guid = app["app"]["guid"].as_str().unwrap().to_string();
    let packages = p.get(&format!("/v3/apps/{guid}/packages")).await;
    let pkg = packages["resources"][0]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let names = zip_names(&p.get_bytes(&format!("/v3/packages/{pkg}/download")).await);
    assert_eq!(names, ["big.txt", "index.html"]);

    // The manifest's command and health check are the web process's.
    let back = p.kiln(&["app", "back", "--json"]).await.ok().json();
    let back = back["app"]["guid"].as_str().unwrap().to_string();
    let web = p.get(&format!("/v3/apps/{back}/processes/web")).await;
    assert_eq!(web["command"], "./run --serve", "{web}");
    assert_eq!(web["health_check"]["type"], "http", "{web}");
    assert_eq!(web["health_check"]["data"]["endpoint"], "/up", "{web}");
    assert_eq!(web["health_check"]["data"]["timeout"], 90, "{web}");

    // A second push sends only the changed file.
    std::fs::write(root.join("front/index.html"), "<h1>front v2</h1>").unwrap();
    let r = p
        .kiln_in(&root, &["push", "front", "--no-start", "--json"])
        .await
        .ok();
    let j = r.json();
    assert_eq!(
        (j["matched"].as_u64(), j["uploaded"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    assert!(j["zip_bytes"].as_u64().unwrap() < 1000, "{j}");
    let packages = p.get(&format!("/v3/apps/{guid}/packages")).await;
    let newest = packages["resources"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|p| p["created_at"].as_str().unwrap_or("").to_string())
        .unwrap()["guid"]
        .as_str()
        .unwrap()
        .to_string();
    let names = zip_names(
        &p.get_bytes(&format!("/v3/packages/{newest}/download"))
            .await,
    );
    assert_eq!(names, ["big.txt", "index.html"]);

    // What the app commands show.
    let apps = p.kiln(&["apps"]).await.ok();
    assert!(
        apps.stdout.contains("front") && apps.stdout.contains("back"),
        "{}",
        apps.stdout
    );
    let env = p.kiln(&["env", "front"]).await.ok();
    assert!(
        env.stdout.contains("GREETING: hi") && env.stdout.contains("N: 3"),
        "{}",
        env.stdout
    );
    p.kiln(&["set-env", "front", "COLOR", "blue"]).await.ok();
    p.kiln(&["unset-env", "front", "GREETING"]).await.ok();
    let env = p.kiln(&["env", "front", "--json"]).await.ok().json();
    assert_eq!(env["environment_variables"]["COLOR"], "blue");
    assert!(
        env["environment_variables"].get("GREETING").is_none(),
        "{env}"
    );
    let scaled = p
        .kiln(&["scale", "front", "-i", "3", "-m", "256M", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (
            scaled["instances"].as_u64(),
            scaled["memory_in_mb"].as_u64()
        ),
        (Some(3), Some(256))
    );
    let routes = p.kiln(&["routes"]).await.ok();
    assert!(
        routes.stdout.contains("www") && routes.stdout.contains("front"),
        "{}",
        routes.stdout
    );
    let back_routes = p.kiln(&["app", "back"]).await.ok();
    assert!(
        back_routes.stdout.contains("routes:"),
        "{}",
        back_routes.stdout
    );
    assert!(
        !back_routes.stdout.contains("back.apps.kiln.local"),
        "{}",
        back_routes.stdout
    );
    let domains = p.kiln(&["domains"]).await.ok();
    assert!(
        domains.stdout.contains("apps.kiln.local"),
        "{}",
        domains.stdout
    );
    let stacks = p.kiln(&["stacks"]).await.ok();
    assert!(
        stacks.stdout.contains("tiny") && stacks.stdout.contains("bookworm"),
        "{}",
        stacks.stdout
    );
    let bps = p.kiln(&["buildpacks", "--json"]).await.ok().json();
    assert!(bps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["name"] == "staticfile"));
    let events = p.kiln(&["events", "front"]).await.ok();
    for e in [
        "audit.app.create",
        "audit.app.upload-bits",
        "audit.app.process.scale",
    ] {
        assert!(events.stdout.contains(e), "{e}: {}", events.stdout);
    }
    let apps = p.kiln(&["apps", "--json"]).await.ok().json();
    assert_eq!(apps["resources"].as_array().unwrap().len(), 2);

    // Delete with its routes, without asking.
    p.kiln(&["delete", "front"]).await.failed();
    p.kiln(&["delete", "front", "-r", "-f"]).await.ok();
    let routes = p.kiln(&["routes", "--json"]).await.ok().json();
    assert!(
        routes["resources"].as_array().unwrap().is_empty(),
        "{routes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_the_reason() {
    let p = Platform::start().await;
    p.login().await;
    let r = p
        .kiln(&["push", "x", "-p", "/nonexistent/app"])
        .await
        .failed();
    assert!(r.stderr.contains("/nonexistent/app"), "{}", r.stderr);
    let app = p.app_dir("a", &[("index.html", "hi")]);
    let app = app.to_str().unwrap();
    let r = p
        .kiln(&["push", "a", "-p", app, "-s", "nosuch", "--no-start"])
        .await
        .failed();
    assert!(
        r.stderr.contains("nosuch") && r.stderr.contains("tiny") && r.stderr.contains("bookworm"),
        "{}",
        r.stderr
    );
    let r = p
        .kiln(&["push", "a", "-p", app, "-m", "lots"])
        .await
        .failed();
    assert!(r.stderr.contains("lots"), "{}", r.stderr);
    let r = p.kiln(&["push", "-p", app]).await.failed();
    assert!(r.stderr.contains("no app name"), "{}", r.stderr);
    let r = p.kiln(&["app", "ghost"]).await.failed();
    assert!(r.stderr.contains("ghost"), "{}", r.stderr);
    let r = p
        .kiln(&["push", "-f", "/nonexistent/manifest.yml"])
        .await
        .failed();
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    let bash = p.kiln(&["completion", "bash"]).await.ok();
    assert!(bash.stdout.contains("kiln"), "{}", bash.stdout);
}
