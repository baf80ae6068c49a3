//! Cloud Native Buildpacks: `bin/detect` with a build plan for every buildpack of the group,
//! then `bin/build` of each with its layers dir at `/home/vcap/deps/<idx>` (the same path at
//! run time), later buildpacks seeing earlier build layers; the layers are then exported into
//! the droplet ([`layers`]) so the one launcher runs CNB droplets too.

mod layers;
mod plan;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kiln_droplet::{APP_DIR, DEPS_DIR};

use crate::buildpack::{Buildpack, Contract};
use crate::error::{Phase, StagingError, Tail};
use crate::lifecycle::{buildpack_dir, Built, Candidates, CACHE_DIR, KILN_DIR, PLATFORM_DIR};
use crate::request::DetectOutcome;
use crate::session::{file_tar, Output, Session, Step};
use plan::{buildpack_plans, DetectPlan};

/// How `bin/build` runs: with the build layers of earlier buildpacks of the group.
const BUILD: &str =
    "if [ -f /tmp/kiln/build-env.sh ]; then . /tmp/kiln/build-env.sh; fi; exec \"$@\"";

/// `detect` exit status of a buildpack that does not apply.
const DETECT_FAIL: i32 = 100;

/// A Cloud Native Buildpack's id and version.
fn ids(bp: &Buildpack) -> (String, String) {
    match &bp.contract {
        Contract::Native { id, version, .. } => (id.clone(), version.clone()),
        Contract::Classic { .. } => (bp.name.clone(), String::new()),
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
            .sh(Step::new(
                Phase::Detect,
                &bp.name,
                "vcap",
                ": > \"$1\" && shift && exec \"$@\"",
            )
            .args(&[&plan, &script, PLATFORM_DIR, &plan])
            .env(&env))
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
            .sh(Step::new(Phase::Detect, &bp.name, "vcap", "cat \"$1\"")
                .args(&[&plan])
                .output(Output::Quiet))
            .await?
            .stdout;
        plans.push(
            DetectPlan::parse(&text).map_err(|reason| StagingError::ContractViolated {
                phase: Phase::Detect,
                buildpack: bp.name.clone(),
                reason: format!("wrote an invalid build plan: {reason}"),
            })?,
        );
    }
    let plans = buildpack_plans(&plans).map_err(|(i, entry)| StagingError::NoneDetected {
        tried: candidates.all.iter().map(|b| b.name.clone()).collect(),
        hint: format!(
            "\n  {} requires `{entry}` but no buildpack of the group provides it",
            candidates.all[i].name
        ),
    })?;
    phases.push(("detect".to_string(), t.elapsed()));

    let t = Instant::now();
    let mut process_types = BTreeMap::new();
    let mut names = Vec::new();
    let mut build_env = String::new();
    let mut drop = Vec::new();
    for (idx, bp) in candidates.all.iter().enumerate() {
        let (id, version) = ids(bp);
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
            .sh(Step::new(
                Phase::Build,
                &bp.name,
                "vcap",
                "if [ -d \"$1\" ]; then cp -a \"$1\"/. \"$2\"/; fi",
            )
            .args(&[&cache, &layers]))
            .await?;
        if !build_env.is_empty() {
            session
                .put(
                    Phase::Build,
                    KILN_DIR,
                    "vcap",
                    std::io::Cursor::new(file_tar(&[(
                        "build-env.sh",
                        build_env.as_bytes(),
                        0o644,
                    )])),
                )
                .await?;
        }
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
            .sh(Step::new(Phase::Build, &bp.name, "vcap", BUILD)
                .args(&[&script, &layers, PLATFORM_DIR, &bp_plan])
                .env(&env))
            .await?;
        out.succeeded(Phase::Build, &bp.name)?;
        let exported = layers::export(session, bp, idx, &layers, &cache).await?;
        process_types.extend(exported.process_types);
        build_env.push_str(&exported.build_env);
        drop.extend(exported.drop);
    }
    if !drop.is_empty() {
        let quoted: Vec<String> = drop.iter().map(|p| layers::sh_quote(p)).collect();
        let out = session
            .sh(Step::new(
                Phase::Release,
                "(layers)",
                "vcap",
                &format!("rm -rf {}", quoted.join(" ")),
            ))
            .await?;
        out.or_violation(
            Phase::Release,
            "(layers)",
            "build-only layers could not be removed",
        )?;
    }
    phases.push(("buildpacks".to_string(), t.elapsed()));
    Ok(Built {
        detect: outcomes,
        detected_buildpack: names.last().cloned().unwrap_or_default(),
        buildpacks: names,
        process_types,
    })
}
