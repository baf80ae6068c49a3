//! Each built-in buildpack stages its example under `examples/` on its stack, detects only its
//! own app, and the droplet answers HTTP when run.

mod common;

use std::path::PathBuf;

use common::Fixture;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// Stages `examples/<name>` on `stack` by detection, checks the detected buildpack, runs the
/// droplet and checks the page. Returns the staging log.
async fn stage_and_serve(fx: &Fixture, name: &str, stack: &str) -> Vec<String> {
    let mut req = fx.request(name, &example(name));
    req.stack = stack.to_string();
    req.cache_out = Some(fx.path(&format!("{name}-cache.tgz")));
    let (result, lines) = fx.stage(&common::builtin_dir(), req).await;
    let texts: Vec<String> = lines.iter().map(|l| l.text.clone()).collect();
    let r =
        result.unwrap_or_else(|e| panic!("staging {name} failed: {e}\nlog:\n{}", texts.join("\n")));
    assert_eq!(r.detected_buildpack, name, "{texts:?}");
    let detected: Vec<&str> = r
        .detect
        .iter()
        .filter(|d| d.detected)
        .map(|d| d.buildpack.as_str())
        .collect();
    assert_eq!(detected, vec![name], "only {name} detects its example");
    let (status, body, output) = fx
        .http_get_droplet(stack, &r.droplet, &r.start_command)
        .await;
    assert!(status.contains(" 200"), "{status}\n{output}");
    assert!(
        body.contains(&format!("Hello from {name}")),
        "{body}\n{output}"
    );
    texts
}

#[tokio::test]
async fn staticfile_binary_and_procfile_examples_run_on_tiny() {
    let fx = Fixture::new(50).await;
    for name in ["staticfile", "binary", "procfile"] {
        stage_and_serve(&fx, name, "tiny").await;
    }
}

#[tokio::test]
async fn python_example_installs_its_vendored_wheels_offline_on_bookworm_and_reuses_the_cache() {
    let fx = Fixture::new(51).await;
    fx.import("bookworm").await;
    let log = stage_and_serve(&fx, "python", "bookworm").await;
    assert!(log.iter().any(|l| l.contains("cache miss")), "{log:?}");
    let mut req = fx.request("python-warm", &example("python"));
    req.stack = "bookworm".into();
    req.cache_in = Some(fx.path("python-cache.tgz"));
    let (result, lines) = fx.stage(&common::builtin_dir(), req).await;
    result.expect("warm staging");
    assert!(
        lines.iter().any(|l| l.text.contains("cache hit")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn nodejs_example_uses_its_vendored_modules_on_bookworm() {
    let fx = Fixture::new(52).await;
    fx.import("bookworm").await;
    stage_and_serve(&fx, "nodejs", "bookworm").await;
}

#[tokio::test]
async fn python_on_tiny_fails_saying_which_stack_to_use() {
    let fx = Fixture::new(53).await;
    let mut req = fx.request("py-tiny", &example("python"));
    req.buildpacks = vec!["python".into()];
    let err = fx
        .stage(&common::builtin_dir(), req)
        .await
        .0
        .expect_err("tiny has no python");
    assert!(err.to_string().contains("bookworm"), "{err}");
}
