//! The three buildpack contracts, staged for real in containers on the tiny stack, and the
//! droplets they produce run through the launcher.

mod common;

use common::{app, buildpack, droplet_entries, droplet_file, Fixture};
use kiln_stager::Stream;

#[tokio::test]
async fn heroku_buildpack_compiles_as_vcap_and_its_release_and_procfile_give_the_process_types() {
    let fx = Fixture::new(40).await;
    let bp = buildpack(
        &fx.path("heroku-bp"),
        &[
            ("detect", "#!/bin/sh\n[ -f \"$1/hello.txt\" ] && echo hello-heroku\n"),
            (
                "compile",
                "#!/bin/sh\nset -e\necho \"-----> compiling as $(id -u)\"\necho to-stderr >&2\n\
                 cat \"$3/GREETING\" > \"$1/greeting\"\nid -u > \"$1/built-by\"\nmkdir -p \"$2/c\" && echo cached > \"$2/c/file\"\n",
            ),
            ("release", "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: cat greeting\\n  worker: sleep 1\\n'\n"),
        ],
    );
    let src = app(
        &fx.path("app"),
        &[("hello.txt", "hi"), ("Procfile", "worker: echo work\n")],
    );
    let mut req = fx.request("heroku", &src);
    req.buildpacks = vec![bp.display().to_string()];
    req.env = vec![("GREETING".into(), "bonjour".into())];
    req.cache_out = Some(fx.path("heroku-cache.tgz"));
    let (result, lines) = fx.stage(&common::builtin_dir(), req).await;
    let r = result.unwrap_or_else(|e| panic!("staging failed: {e}"));

    assert_eq!(r.detected_buildpack, "hello-heroku");
    assert_eq!(r.start_command, "cat greeting");
    assert_eq!(
        r.process_types["worker"], "echo work",
        "the Procfile wins over release"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == Stream::Out && l.text == "-----> compiling as 2000"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == Stream::Err && l.text == "to-stderr"),
        "{lines:?}"
    );
    let entries = droplet_entries(&r.droplet);
    for top in [
        "app/",
        "deps/",
        "profile.d/",
        "tmp/",
        "logs/",
        "staging_info.yml",
    ] {
        assert!(
            entries.iter().any(|e| e == top),
            "{top} missing in {entries:?}"
        );
    }
    assert!(
        entries
            .iter()
            .all(|e| kiln_droplet::ENTRIES.iter().any(|t| e.starts_with(t))),
        "{entries:?}"
    );
    assert_eq!(
        droplet_file(&r.droplet, "app/built-by").as_deref(),
        Some("2000\n")
    );
    let info =
        kiln_droplet::StagingInfo::parse(&droplet_file(&r.droplet, "staging_info.yml").unwrap())
            .unwrap();
    assert_eq!(info.detected_buildpack, "hello-heroku");
    assert_eq!(info.start_command, "cat greeting");
    assert_eq!(r.droplet_size, std::fs::metadata(&r.droplet).unwrap().len());
    assert!(r.cache.is_some());

    let (code, out, err) = fx.run_droplet("tiny", &r.droplet, &r.start_command).await;
    assert_eq!((code, out.as_str()), (0, "bonjour"), "stderr: {err}");
}

#[tokio::test]
async fn cf_multi_buildpack_supplies_then_finalizes_and_profile_scripts_reach_the_launcher() {
    let fx = Fixture::new(41).await;
    let supplier = buildpack(
        &fx.path("supplier"),
        &[
            ("detect", "#!/bin/sh\nexit 1\n"),
            (
                "supply",
                "#!/bin/sh\nset -e\nmkdir -p \"$3/$4/bin\" \"$3/$4/profile.d\"\n\
                 printf '#!/bin/sh\\necho tool-from-deps\\n' > \"$3/$4/bin/tool\"\nchmod +x \"$3/$4/bin/tool\"\n\
                 echo \"export PATH=\\$DEPS_DIR/$4/bin:\\$PATH\" > \"$3/$4/profile.d/tool.sh\"\necho supplied idx $4\n",
            ),
        ],
    );
    let finalizer = buildpack(
        &fx.path("finalizer"),
        &[
            ("detect", "#!/bin/sh\necho finalizer\n"),
            ("supply", "#!/bin/sh\necho final-supply idx $4\n"),
            ("finalize", "#!/bin/sh\nset -e\n[ -x \"$3/0/bin/tool\" ]\necho 'export FROM_FINALIZE=yes' > \"$5/final.sh\"\necho finalized idx $4\n"),
            ("release", "#!/bin/sh\necho 'default_process_types: {web: \"tool; echo $FROM_FINALIZE\"}'\n"),
        ],
    );
    let src = app(&fx.path("app"), &[("x", "1")]);
    let mut req = fx.request("multi", &src);
    req.buildpacks = vec![
        supplier.display().to_string(),
        finalizer.display().to_string(),
    ];
    let (result, lines) = fx.stage(&common::builtin_dir(), req).await;
    let r = result.unwrap_or_else(|e| panic!("staging failed: {e}"));
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let pos = |t: &str| {
        texts
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("{t} not in {texts:?}"))
    };
    assert!(
        pos("supplied idx 0") < pos("final-supply idx 1")
            && pos("final-supply idx 1") < pos("finalized idx 1")
    );
    assert!(
        texts.iter().any(|t| t.contains("supplier: no")),
        "named buildpacks show their detect: {texts:?}"
    );
    assert_eq!(
        r.buildpacks,
        vec!["supplier".to_string(), "finalizer".to_string()]
    );
    let entries = droplet_entries(&r.droplet);
    assert!(
        entries.contains(&"profile.d/0_tool.sh".to_string()),
        "{entries:?}"
    );
    assert!(
        entries.contains(&"deps/0/bin/tool".to_string()),
        "{entries:?}"
    );

    let (code, out, err) = fx.run_droplet("tiny", &r.droplet, &r.start_command).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "tool-from-deps\nyes\n"),
        "stderr: {err}"
    );
}

#[tokio::test]
async fn a_supply_that_writes_into_the_app_fails_staging_with_exit_code_225() {
    let fx = Fixture::new(42).await;
    let bad = buildpack(
        &fx.path("bad-supply"),
        &[
            ("detect", "#!/bin/sh\necho bad\n"),
            ("supply", "#!/bin/sh\necho oops > \"$1/sneaky.txt\"\n"),
        ],
    );
    let last = buildpack(
        &fx.path("last"),
        &[
            ("detect", "#!/bin/sh\necho last\n"),
            ("compile", "#!/bin/sh\ntrue\n"),
        ],
    );
    let src = app(&fx.path("app"), &[("x", "1")]);
    let mut req = fx.request("bad-supply", &src);
    req.buildpacks = vec![bad.display().to_string(), last.display().to_string()];
    let (result, _) = fx.stage(&common::builtin_dir(), req).await;
    let err = result.expect_err("must fail");
    assert_eq!(err.exit_code(), 225);
    let msg = err.to_string();
    assert!(
        msg.contains("buildpack bad-supply wrote outside its deps dir /home/vcap/deps/0"),
        "{msg}"
    );
    assert!(msg.contains("/home/vcap/app/sneaky.txt"), "{msg}");
}

#[tokio::test]
async fn cloud_native_buildpack_layers_launch_and_cache_and_the_cache_is_reused() {
    let fx = Fixture::new(43).await;
    let cnb = buildpack(
        &fx.path("cnb"),
        &[
            ("buildpack.toml", "api = \"0.10\"\n[buildpack]\nid = \"kiln/greeter\"\nversion = \"1.2.3\"\n"),
            (
                "detect",
                "#!/bin/sh\n[ -f greet.txt ] || exit 100\nprintf '[[provides]]\\nname = \"greeter\"\\n[[requires]]\\nname = \"greeter\"\\n' > \"$CNB_BUILD_PLAN_PATH\"\n",
            ),
            (
                "build",
                "#!/bin/sh\nset -e\nL=$CNB_LAYERS_DIR\ngrep -q greeter \"$CNB_BP_PLAN_PATH\"\n\
                 mkdir -p \"$L/tools/bin\" \"$L/tools/env.launch\"\n\
                 printf '#!/bin/sh\\necho \"$GREETING from tools\"\\n' > \"$L/tools/bin/greet\"\nchmod +x \"$L/tools/bin/greet\"\n\
                 printf 'hola' > \"$L/tools/env.launch/GREETING\"\nprintf '[types]\\nlaunch = true\\n' > \"$L/tools.toml\"\n\
                 if [ -f \"$L/downloads/data\" ]; then echo cache hit; else echo cache miss; mkdir -p \"$L/downloads\"; echo big > \"$L/downloads/data\"; fi\n\
                 printf '[types]\\ncache = true\\n' > \"$L/downloads.toml\"\n\
                 printf '[[processes]]\\ntype = \"web\"\\ncommand = [\"greet\"]\\ndefault = true\\n' > \"$L/launch.toml\"\n",
            ),
        ],
    );
    let src = app(&fx.path("app"), &[("greet.txt", "1")]);
    let stage = |name: &str, cache_in: Option<std::path::PathBuf>| {
        let mut req = fx.request(name, &src);
        req.buildpacks = vec![cnb.display().to_string()];
        req.cache_in = cache_in;
        req.cache_out = Some(fx.path(&format!("{name}-cache.tgz")));
        req
    };
    let (first, lines) = fx.stage(&common::builtin_dir(), stage("cnb1", None)).await;
    let first = first.unwrap_or_else(|e| panic!("staging failed: {e}"));
    assert!(lines.iter().any(|l| l.text == "cache miss"), "{lines:?}");
    assert_eq!(first.detected_buildpack, "kiln/greeter@1.2.3");
    assert_eq!(first.start_command, "'greet'");
    let entries = droplet_entries(&first.droplet);
    assert!(
        entries.contains(&"deps/0/tools/bin/greet".to_string()),
        "{entries:?}"
    );
    assert!(
        !entries.iter().any(|e| e.contains("downloads")),
        "cache-only layers stay out of the droplet: {entries:?}"
    );

    let (second, lines) = fx
        .stage(&common::builtin_dir(), stage("cnb2", first.cache.clone()))
        .await;
    second.unwrap_or_else(|e| panic!("second staging failed: {e}"));
    assert!(lines.iter().any(|l| l.text == "cache hit"), "{lines:?}");

    let (code, out, err) = fx
        .run_droplet("tiny", &first.droplet, &first.start_command)
        .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "hola from tools\n"),
        "stderr: {err}"
    );
}

#[tokio::test]
async fn the_log_is_streamed_while_the_buildpack_runs() {
    let fx = Fixture::new(44).await;
    let bp = buildpack(
        &fx.path("slow"),
        &[
            ("detect", "#!/bin/sh\necho slow\n"),
            ("compile", "#!/bin/sh\necho first\nsleep 2\necho second\n"),
        ],
    );
    let src = app(&fx.path("app"), &[("x", "1")]);
    let mut req = fx.request("slow", &src);
    req.buildpacks = vec![bp.display().to_string()];
    let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = times.clone();
    let sink: kiln_stager::LogSink = std::sync::Arc::new(move |l: &kiln_stager::LogLine| {
        if l.text == "first" || l.text == "second" {
            seen.lock().unwrap().push(std::time::Instant::now());
        }
    });
    fx.stager(&common::builtin_dir())
        .stage(req, sink)
        .await
        .expect("stages");
    let times = times.lock().unwrap();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= std::time::Duration::from_secs(1),
        "`first` arrived only at the end"
    );
}

#[tokio::test]
async fn a_cloud_native_group_passes_build_layers_and_plan_entries_to_later_buildpacks() {
    let fx = Fixture::new(57).await;
    let provider = buildpack(
        &fx.path("provider"),
        &[
            ("buildpack.toml", "api = \"0.10\"\n[buildpack]\nid = \"kiln/tool\"\nversion = \"1\"\n"),
            ("detect", "#!/bin/sh\nprintf '[[provides]]\\nname = \"tool\"\\n' > \"$CNB_BUILD_PLAN_PATH\"\n"),
            (
                "build",
                "#!/bin/sh\nset -e\nL=$CNB_LAYERS_DIR\ngrep -q 'flavour = \"mint\"' \"$CNB_BP_PLAN_PATH\"\n\
                 mkdir -p \"$L/tool/bin\" \"$L/tool/env.build\" \"$L/junk\"\n\
                 printf '#!/bin/sh\\necho built-with-tool\\n' > \"$L/tool/bin/tool\"\nchmod +x \"$L/tool/bin/tool\"\n\
                 printf 'from-build-layer' > \"$L/tool/env.build/TOOL_FLAVOUR\"\n\
                 printf '[types]\\nbuild = true\\n' > \"$L/tool.toml\"\n",
            ),
        ],
    );
    let user = buildpack(
        &fx.path("user"),
        &[
            ("buildpack.toml", "api = \"0.10\"\n[buildpack]\nid = \"kiln/user\"\nversion = \"2\"\n"),
            (
                "detect",
                "#!/bin/sh\nprintf '[[requires]]\\nname = \"tool\"\\n[requires.metadata]\\nflavour = \"mint\"\\n' > \"$CNB_BUILD_PLAN_PATH\"\n",
            ),
            (
                "build",
                "#!/bin/sh\nset -e\nL=$CNB_LAYERS_DIR\nmkdir -p \"$L/out\"\n\
                 echo \"$(tool) $TOOL_FLAVOUR\" > \"$L/out/result\"\nprintf '[types]\\nlaunch = true\\n' > \"$L/out.toml\"\n\
                 printf '[[processes]]\\ntype = \"web\"\\ncommand = \"cat %s/out/result\"\\n' \"$L\" > \"$L/launch.toml\"\n",
            ),
        ],
    );
    let src = app(&fx.path("app"), &[("x", "1")]);
    let mut req = fx.request("group", &src);
    req.buildpacks = vec![provider.display().to_string(), user.display().to_string()];
    let (result, lines) = fx.stage(&common::builtin_dir(), req).await;
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let r = result.unwrap_or_else(|e| panic!("staging failed: {e}\n{}", texts.join("\n")));
    assert_eq!(
        r.buildpacks,
        vec!["kiln/tool@1".to_string(), "kiln/user@2".to_string()]
    );
    let entries = droplet_entries(&r.droplet);
    assert!(
        entries.contains(&"deps/1/out/result".to_string()),
        "{entries:?}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e.starts_with("deps/0/tool") || e.contains("junk")),
        "build-only and undeclared layers stay out: {entries:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("layer junk has no junk.toml")),
        "{texts:?}"
    );
    let (code, out, err) = fx.run_droplet("tiny", &r.droplet, &r.start_command).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "built-with-tool from-build-layer\n"),
        "stderr: {err}"
    );

    // A require nobody provides fails detection and says which.
    let mut req = fx.request("orphan", &src);
    req.buildpacks = vec![user.display().to_string()];
    let err = fx
        .stage(&common::builtin_dir(), req)
        .await
        .0
        .expect_err("no provider");
    assert_eq!(err.exit_code(), 222);
    assert!(
        err.to_string()
            .contains("user requires `tool` but no buildpack of the group provides it"),
        "{err}"
    );
}
