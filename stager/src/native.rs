//! Cloud Native Buildpacks: `bin/detect` with a build plan, `bin/build` with layers, then the
//! layers exported into the droplet: launch layers stay (their `env/`, `env.launch/`, `bin/`
//! and `lib/` become a `profile.d` script so the one launcher runs CNB droplets too), cache
//! layers go to the cache and are restored next time, build-only layers are dropped, and
//! `launch.toml` processes become process types.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kiln_droplet::{APP_DIR, DEPS_DIR, PROFILE_DIR};
use serde::Deserialize;

use crate::buildpack::{Buildpack, Contract};
use crate::error::{Phase, StagingError, Tail};
use crate::lifecycle::{buildpack_dir, Built, Candidates, CACHE_DIR, KILN_DIR, PLATFORM_DIR};
use crate::request::DetectOutcome;
use crate::session::{file_tar, Output, Session};

/// `detect` exit status of a buildpack that does not apply.
const DETECT_FAIL: i32 = 100;

fn ids(bp: &Buildpack) -> (String, String, String) {
    match &bp.contract {
        Contract::Native { id, version, api } => (id.clone(), version.clone(), api.clone()),
        Contract::Classic { .. } => (bp.name.clone(), String::new(), String::new()),
    }
}

fn env_for(k: usize, extra: &[(&str, String)]) -> Vec<String> {
    let mut env = vec![
        format!("CNB_PLATFORM_DIR={PLATFORM_DIR}"),
        format!("CNB_BUILDPACK_DIR={}", buildpack_dir(k)),
        format!("CNB_APP_DIR={APP_DIR}"),
        "CNB_TARGET_OS=linux".to_string(),
        format!(
            "CNB_TARGET_ARCH={}",
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64")
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

pub(crate) async fn run(
    session: &Session<'_>,
    candidates: &Candidates,
    phases: &mut Vec<(String, Duration)>,
) -> Result<Built, StagingError> {
    let t = Instant::now();
    session.say("-----> Detecting (Cloud Native Buildpacks)");
    let mut outcomes = Vec::new();
    let mut plans = Vec::new();
    for (k, bp) in candidates.all.iter().enumerate() {
        let plan = format!("{KILN_DIR}/plan-{k}.toml");
        let script = format!("{}/bin/detect", buildpack_dir(k));
        let env = env_for(k, &[("CNB_BUILD_PLAN_PATH", plan.clone())]);
        let out = session
            .sh(
                Phase::Detect,
                &bp.name,
                "vcap",
                ": > \"$1\" && shift && exec \"$@\"",
                &[&plan, &script, PLATFORM_DIR, &plan],
                &env,
                Output::Log,
            )
            .await?;
        let detected = out.status == 0;
        session.say(format!(
            "       {}: {}",
            bp.name,
            if detected { "pass" } else { "fail" }
        ));
        outcomes.push(DetectOutcome {
            buildpack: bp.name.clone(),
            detected,
            output: out.tail.clone(),
        });
        if out.status == DETECT_FAIL {
            return Err(StagingError::NoneDetected {
                tried: vec![bp.name.clone()],
                hint: format!(
                    "\n  {}: bin/detect exited 100 (does not apply to this app); every named Cloud Native Buildpack must pass{}",
                    bp.name,
                    Tail(out.tail)
                ),
            });
        }
        if !detected {
            return Err(StagingError::BuildpackFailed {
                phase: Phase::Detect,
                buildpack: bp.name.clone(),
                status: out.status,
                tail: Tail(out.tail),
            });
        }
        let text = session
            .sh(
                Phase::Detect,
                &bp.name,
                "vcap",
                "cat \"$1\"",
                &[&plan],
                &[],
                Output::Quiet,
            )
            .await?
            .stdout;
        plans.push(
            bp_plan(&text).map_err(|reason| StagingError::ContractViolated {
                phase: Phase::Detect,
                buildpack: bp.name.clone(),
                reason: format!("wrote an invalid build plan: {reason}"),
            })?,
        );
    }
    phases.push(("detect".to_string(), t.elapsed()));

    let t = Instant::now();
    let mut process_types = BTreeMap::new();
    let mut names = Vec::new();
    for (idx, bp) in candidates.all.iter().enumerate() {
        let (id, version, _) = ids(bp);
        names.push(format!("{id}@{version}"));
        let layers = format!("{DEPS_DIR}/{idx}");
        let cache = format!("{CACHE_DIR}/cnb/{}", id.replace('/', "_"));
        let bp_plan = format!("{KILN_DIR}/bp-plan-{idx}.toml");
        session
            .put(
                Phase::Build,
                KILN_DIR,
                "vcap",
                std::io::Cursor::new(file_tar(&[(
                    &format!("bp-plan-{idx}.toml"),
                    plans[idx].as_bytes(),
                    0o644,
                )])),
            )
            .await?;
        session
            .sh(
                Phase::Build,
                &bp.name,
                "vcap",
                "if [ -d \"$1\" ]; then cp -a \"$1\"/. \"$2\"/; fi",
                &[&cache, &layers],
                &[],
                Output::Log,
            )
            .await?;
        session.say(format!(
            "-----> Building with {} ({}/{})",
            bp.name,
            idx + 1,
            candidates.all.len()
        ));
        let env = env_for(
            idx,
            &[
                ("CNB_LAYERS_DIR", layers.clone()),
                ("CNB_BP_PLAN_PATH", bp_plan.clone()),
            ],
        );
        let script = format!("{}/bin/build", buildpack_dir(idx));
        let out = session
            .sh(
                Phase::Build,
                &bp.name,
                "vcap",
                "exec \"$@\"",
                &[&script, &layers, PLATFORM_DIR, &bp_plan],
                &env,
                Output::Log,
            )
            .await?;
        if out.status != 0 {
            return Err(StagingError::BuildpackFailed {
                phase: Phase::Build,
                buildpack: bp.name.clone(),
                status: out.status,
                tail: Tail(out.tail),
            });
        }
        let types = export_layers(session, bp, idx, &layers, &cache).await?;
        process_types.extend(types);
    }
    phases.push(("buildpacks".to_string(), t.elapsed()));
    Ok(Built {
        detect: outcomes,
        detected_buildpack: names.last().cloned().unwrap_or_default(),
        buildpacks: names,
        process_types,
    })
}

/// The buildpack plan for `bin/build`: the entries this buildpack required in its detect.
fn bp_plan(build_plan: &str) -> Result<String, String> {
    let plan: toml::Table = toml::from_str(build_plan).map_err(|e| e.message().to_string())?;
    let entries = plan
        .get("requires")
        .cloned()
        .unwrap_or(toml::Value::Array(Vec::new()));
    let mut out = toml::Table::new();
    out.insert("entries".into(), entries);
    toml::to_string(&out).map_err(|e| e.to_string())
}

/// The layers dir's metadata files and which layers have `bin/` or `lib/`.
#[derive(Default)]
struct LayerFiles {
    files: BTreeMap<String, String>,
    dirs: BTreeSet<String>,
}

const LIST_LAYERS: &str = r#"cd "$1" || exit 0
emit() { printf 'F%s\000' "$1"; cat "$1"; printf '\000'; }
for f in *.toml; do [ -f "$f" ] && emit "$f"; done
for l in */; do
  l=${l%/}
  for e in env env.launch; do for f in "$l/$e"/*; do [ -f "$f" ] && emit "$f"; done; done
  for d in bin lib; do [ -d "$l/$d" ] && printf 'D%s\000\000' "$l/$d"; done
done
exit 0"#;

fn parse_listing(text: &str) -> LayerFiles {
    let mut out = LayerFiles::default();
    let mut parts = text.split('\0');
    while let (Some(name), Some(content)) = (parts.next(), parts.next()) {
        if let Some(path) = name.strip_prefix('F') {
            out.files.insert(path.to_string(), content.to_string());
        } else if let Some(path) = name.strip_prefix('D') {
            out.dirs.insert(path.to_string());
        }
    }
    out
}

#[derive(Deserialize, Default)]
struct LayerToml {
    #[serde(default)]
    types: Option<LayerTypes>,
    #[serde(default)]
    launch: bool,
    #[serde(default)]
    build: bool,
    #[serde(default)]
    cache: bool,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct LayerTypes {
    #[serde(default)]
    launch: bool,
    #[serde(default)]
    cache: bool,
}

#[derive(Deserialize, Default)]
struct LaunchToml {
    #[serde(default)]
    processes: Vec<LaunchProcess>,
}

#[derive(Deserialize)]
struct LaunchProcess {
    #[serde(rename = "type")]
    kind: String,
    command: Command,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    default: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Command {
    Shell(String),
    Argv(Vec<String>),
}

/// Turns the layers of buildpack `idx` into droplet content; returns its process types.
async fn export_layers(
    session: &Session<'_>,
    bp: &Buildpack,
    idx: usize,
    layers: &str,
    cache: &str,
) -> Result<BTreeMap<String, String>, StagingError> {
    let violated = |reason: String| StagingError::ContractViolated {
        phase: Phase::Release,
        buildpack: bp.name.clone(),
        reason,
    };
    let listing = session
        .sh(
            Phase::Release,
            &bp.name,
            "vcap",
            LIST_LAYERS,
            &[layers],
            &[],
            Output::Quiet,
        )
        .await?;
    let found = parse_listing(&listing.stdout);
    let mut keep_cache = Vec::new();
    let mut drop = Vec::new();
    let mut profile = String::new();
    for (file, text) in &found.files {
        let Some(layer) = file.strip_suffix(".toml") else {
            continue;
        };
        if layer.contains('/') || ["launch", "build", "store"].contains(&layer) {
            continue;
        }
        let meta: LayerToml = toml::from_str(text)
            .map_err(|e| violated(format!("wrote an invalid {file}: {}", e.message())))?;
        let (launch, cache_it) = match meta.types {
            Some(t) => (t.launch, t.cache),
            None => (meta.launch, meta.cache),
        };
        let _ = meta.build;
        if cache_it {
            keep_cache.push(layer.to_string());
        }
        if launch {
            profile.push_str(&layer_profile(&found, layers, layer));
        } else {
            drop.push(layer.to_string());
        }
    }
    let mut script = format!("set -e\nrm -rf {c}\nmkdir -p {c}\n", c = sh_quote(cache));
    for layer in &keep_cache {
        let path = format!("{layers}/{layer}");
        script.push_str(&format!(
            "if [ -d {p} ]; then cp -a {p} {c}/; fi\ncp {p}.toml {c}/\n",
            p = sh_quote(&path),
            c = sh_quote(cache)
        ));
    }
    for layer in &drop {
        let path = format!("{layers}/{layer}");
        script.push_str(&format!("rm -rf {p} {p}.toml\n", p = sh_quote(&path)));
    }
    let out = session
        .sh(
            Phase::Release,
            &bp.name,
            "vcap",
            &script,
            &[],
            &[],
            Output::Log,
        )
        .await?;
    if out.status != 0 {
        return Err(violated(format!(
            "layers could not be exported: {}",
            out.tail.join(" / ")
        )));
    }
    if !profile.is_empty() {
        let name = format!("{idx}_cnb.sh");
        session
            .put(
                Phase::Release,
                PROFILE_DIR,
                "vcap",
                std::io::Cursor::new(file_tar(&[(&name, profile.as_bytes(), 0o644)])),
            )
            .await?;
    }
    let mut types = BTreeMap::new();
    if let Some(text) = found.files.get("launch.toml") {
        let launch: LaunchToml = toml::from_str(text)
            .map_err(|e| violated(format!("wrote an invalid launch.toml: {}", e.message())))?;
        for p in launch.processes {
            let mut argv = match p.command {
                Command::Shell(s) => vec![s],
                Command::Argv(v) => v.iter().map(|a| sh_quote(a)).collect(),
            };
            argv.extend(p.args.iter().map(|a| sh_quote(a)));
            let command = argv.join(" ");
            if p.default && !types.contains_key("web") {
                types.insert("web".to_string(), command.clone());
            }
            types.insert(p.kind, command);
        }
    }
    if !keep_cache.is_empty() {
        session.say(format!("       cached layers: {}", keep_cache.join(", ")));
    }
    Ok(types)
}

/// The `profile.d` lines of one launch layer: `bin/` on PATH, `lib/` on LD_LIBRARY_PATH, and
/// its `env/` then `env.launch/` files.
fn layer_profile(found: &LayerFiles, layers: &str, layer: &str) -> String {
    let mut out = String::new();
    let base = format!("{layers}/{layer}");
    if found.dirs.contains(&format!("{layer}/bin")) {
        out.push_str(&format!(
            "export PATH={}\"${{PATH:+:$PATH}}\"\n",
            sh_quote(&format!("{base}/bin"))
        ));
    }
    if found.dirs.contains(&format!("{layer}/lib")) {
        out.push_str(&format!(
            "export LD_LIBRARY_PATH={}\"${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\"\n",
            sh_quote(&format!("{base}/lib"))
        ));
    }
    for dir in ["env", "env.launch"] {
        let prefix = format!("{layer}/{dir}/");
        for (file, value) in found.files.range(prefix.clone()..) {
            let Some(name) = file.strip_prefix(&prefix) else {
                break;
            };
            let (var, action) = name.rsplit_once('.').unwrap_or((name, "override"));
            if action == "delim" || !is_identifier(var) {
                continue;
            }
            let delim = found
                .files
                .get(&format!("{prefix}{var}.delim"))
                .map(String::as_str)
                .unwrap_or("");
            let v = sh_quote(value);
            let d = sh_quote(delim);
            out.push_str(&match action {
                "default" => format!("if [ -z \"${{{var}+x}}\" ]; then export {var}={v}; fi\n"),
                "append" => format!("if [ -n \"${{{var}:-}}\" ]; then export {var}=\"${var}\"{d}{v}; else export {var}={v}; fi\n"),
                "prepend" => format!("if [ -n \"${{{var}:-}}\" ]; then export {var}={v}{d}\"${var}\"; else export {var}={v}; fi\n"),
                _ => format!("export {var}={v}\n"),
            });
        }
    }
    out
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Quotes `s` for POSIX sh.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_env_files_become_profile_lines_that_sh_understands() {
        let mut found = LayerFiles::default();
        found.dirs.insert("py/bin".into());
        for (k, v) in [
            ("py/env/A", "over'ride"),
            ("py/env/B.default", "dflt"),
            ("py/env/C.append", "tail"),
            ("py/env/C.delim", ":"),
            ("py/env.launch/D.prepend", "head"),
            ("py/env.launch/D.delim", ","),
            ("py/env/bad-name", "x"),
        ] {
            found.files.insert(k.into(), v.into());
        }
        let script = layer_profile(&found, "/L", "py");
        let out = std::process::Command::new("/bin/sh")
            .args([
                "-c",
                &format!("B=set; C=c0; D=d0; PATH=/bin\n{script}\necho \"$A|$B|$C|$D|$PATH\""),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "over'ride|set|c0:tail|head,d0|/L/py/bin:/bin"
        );
    }

    #[test]
    fn listings_and_plans_parse() {
        let found = parse_listing("Fa.toml\0[types]\nlaunch = true\n\0Da/bin\0\0");
        assert_eq!(found.files["a.toml"], "[types]\nlaunch = true\n");
        assert!(found.dirs.contains("a/bin"));
        let plan = bp_plan("[[provides]]\nname = \"x\"\n[[requires]]\nname = \"x\"\n").unwrap();
        assert!(
            plan.contains("[[entries]]") && plan.contains("name = \"x\""),
            "{plan}"
        );
        assert!(bp_plan("[[requires]\n").is_err());
    }
}
