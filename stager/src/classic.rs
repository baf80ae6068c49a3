//! The Heroku and Cloud Foundry v2 contracts: `bin/detect`, `bin/supply` for every buildpack
//! but the last, `bin/finalize` (or `bin/compile`) for the last, then its `bin/release`.

use std::time::{Duration, Instant};

use kiln_droplet::{APP_DIR, DEPS_DIR, PROFILE_DIR};

use crate::buildpack::{Buildpack, Contract};
use crate::error::{Phase, StagingError};
use crate::lifecycle::{buildpack_dir, Built, Candidates, CACHE_DIR, ENV_DIR, ROOT_SCRATCH};
use crate::release::parse_release;
use crate::request::DetectOutcome;
use crate::session::{Output, Session, Step};

/// A detect that ran.
struct Detected {
    outcome: DetectOutcome,
    /// The name it printed (first stdout line), or the buildpack's name.
    name: String,
}

async fn detect(session: &Session<'_>, k: usize, bp: &Buildpack) -> Result<Detected, StagingError> {
    let script = format!("{}/bin/detect", buildpack_dir(k));
    let out = session
        .sh(Step::new(Phase::Detect, &bp.name, "vcap", "exec \"$@\"")
            .args(&[&script, APP_DIR])
            .output(Output::Quiet))
        .await?;
    let detected = out.status == 0;
    // The name a detect prints counts only when it accepted the app.
    let name = out
        .stdout
        .lines()
        .next()
        .map(str::trim)
        .filter(|l| detected && !l.is_empty())
        .unwrap_or(&bp.name)
        .to_string();
    let reason: Vec<String> = out
        .tail
        .iter()
        .filter(|l| !(detected && l.trim() == name))
        .cloned()
        .collect();
    let why = if reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", reason.join("; "))
    };
    session.say(format!(
        "       {}: {}{why}",
        bp.name,
        if detected { "detected" } else { "no" }
    ));
    Ok(Detected {
        outcome: DetectOutcome {
            buildpack: bp.name.clone(),
            detected,
            output: reason,
        },
        name,
    })
}

pub(crate) async fn run(
    session: &Session<'_>,
    candidates: &Candidates,
    phases: &mut Vec<(String, Duration)>,
) -> Result<Built, StagingError> {
    let t = Instant::now();
    session.say("-----> Detecting buildpacks");
    let mut outcomes = Vec::new();
    // (slot of the buildpack in the container, buildpack, detected name)
    let mut chosen: Vec<(usize, &Buildpack, String)> = Vec::new();
    for (k, bp) in candidates.all.iter().enumerate() {
        let d = detect(session, k, bp).await?;
        outcomes.push(d.outcome.clone());
        if candidates.named {
            if !d.outcome.detected {
                session.warn(format!(
                    "       {}: its detect rejected the app; running it anyway because it was named",
                    bp.name
                ));
            }
            chosen.push((k, bp, d.name));
        } else if d.outcome.detected {
            chosen.push((k, bp, d.name));
            break;
        }
    }
    if chosen.is_empty() {
        let reasons: Vec<String> = outcomes
            .iter()
            .map(|o| format!("\n  {}: {}", o.buildpack, o.output.join("; ")))
            .collect();
        return Err(StagingError::NoneDetected {
            tried: outcomes.iter().map(|o| o.buildpack.clone()).collect(),
            hint: format!(
                "{}\n  name a buildpack with -b, or add what one of them looks for",
                reasons.concat()
            ),
        });
    }
    phases.push(("detect".to_string(), t.elapsed()));
    check_positions(&chosen)?;

    let t = Instant::now();
    let last = chosen.len() - 1;
    let mut process_types = Default::default();
    for (idx, (k, bp, _)) in chosen.iter().enumerate() {
        let Contract::Classic {
            supply,
            finalize,
            compile,
            release,
        } = bp.contract
        else {
            continue;
        };
        let dir = buildpack_dir(*k);
        let idx_s = idx.to_string();
        if supply {
            session.say(format!(
                "-----> Supplying with {} ({}/{})",
                bp.name,
                idx + 1,
                chosen.len()
            ));
            run_supply(session, bp, &dir, &idx_s).await?;
        } else if idx != last {
            return Err(StagingError::InvalidBuildpack {
                buildpack: bp.name.clone(),
                reason: format!(
                    "has no bin/supply, so it can only be the last buildpack (it is {} of {})",
                    idx + 1,
                    chosen.len()
                ),
            });
        }
        if idx != last {
            continue;
        }
        if finalize {
            session.say(format!("-----> Finalizing with {}", bp.name));
            let script = format!("{dir}/bin/finalize");
            let args = [
                script.as_str(),
                APP_DIR,
                CACHE_DIR,
                DEPS_DIR,
                &idx_s,
                PROFILE_DIR,
            ];
            step(session, Phase::Finalize, bp, &args).await?;
        } else if compile {
            session.say(format!("-----> Compiling with {}", bp.name));
            let script = format!("{dir}/bin/compile");
            step(
                session,
                Phase::Compile,
                bp,
                &[&script, APP_DIR, CACHE_DIR, ENV_DIR],
            )
            .await?;
        }
        if release {
            let script = format!("{dir}/bin/release");
            let out = session
                .sh(Step::new(Phase::Release, &bp.name, "vcap", "exec \"$@\"")
                    .args(&[&script, APP_DIR])
                    .output(Output::Capture))
                .await?;
            let out = out.succeeded(Phase::Release, &bp.name)?;
            process_types =
                parse_release(&out.stdout).map_err(|reason| StagingError::ContractViolated {
                    phase: Phase::Release,
                    buildpack: bp.name.clone(),
                    reason: format!("{reason}; it printed:\n{}", indent(&out.stdout)),
                })?;
        }
    }
    collect_profile_scripts(session).await?;
    phases.push(("buildpacks".to_string(), t.elapsed()));
    let names: Vec<String> = chosen.iter().map(|(_, _, name)| name.clone()).collect();
    Ok(Built {
        detect: outcomes,
        detected_buildpack: names.last().cloned().unwrap_or_default(),
        buildpacks: names,
        process_types,
    })
}

/// Refuses, before any script runs, a buildpack before the last without `bin/supply` and a last
/// buildpack with neither `bin/finalize` nor `bin/compile`.
fn check_positions(chosen: &[(usize, &Buildpack, String)]) -> Result<(), StagingError> {
    let last = chosen.len().saturating_sub(1);
    for (idx, (_, bp, _)) in chosen.iter().enumerate() {
        let Contract::Classic {
            supply,
            finalize,
            compile,
            ..
        } = bp.contract
        else {
            continue;
        };
        let reason = if idx != last && !supply {
            format!(
                "has no bin/supply, so it can only be the last buildpack (it is {} of {})",
                idx + 1,
                chosen.len()
            )
        } else if idx == last && !finalize && !compile {
            "is the last buildpack but has neither bin/finalize nor bin/compile".to_string()
        } else {
            continue;
        };
        return Err(StagingError::InvalidBuildpack {
            buildpack: bp.name.clone(),
            reason,
        });
    }
    Ok(())
}

/// Lists everything a supply must not touch with its ctime (nanoseconds) and size, sorted.
const SNAPSHOT: &str = "find /home/vcap/app /home/vcap/profile.d /home/vcap/deps /home/vcap/tmp /home/vcap/logs -path \"$1\" -prune -o -exec stat -c '%n|%z|%s' {} + | sort > \"$2\"";

/// Runs `bin/supply` and then checks that it wrote nothing outside `deps/<idx>`: a snapshot of
/// the app, `profile.d` and the other deps dirs (taken as root, out of the buildpack's reach)
/// before and after must be the same.
async fn run_supply(
    session: &Session<'_>,
    bp: &Buildpack,
    dir: &str,
    idx: &str,
) -> Result<(), StagingError> {
    let own = format!("{DEPS_DIR}/{idx}");
    let before = format!("{ROOT_SCRATCH}/supply-{idx}.before");
    let after = format!("{ROOT_SCRATCH}/supply-{idx}.after");
    let snap = session
        .sh(Step::new(Phase::Supply, &bp.name, "root", SNAPSHOT).args(&[&own, &before]))
        .await?;
    snap.or_violation(
        Phase::Supply,
        "(kiln)",
        "could not list the app before supply",
    )?;
    let script = format!("{dir}/bin/supply");
    let out = session
        .sh(Step::new(Phase::Supply, &bp.name, "vcap", "exec \"$@\"")
            .args(&[&script, APP_DIR, CACHE_DIR, DEPS_DIR, idx]))
        .await?;
    out.succeeded(Phase::Supply, &bp.name)?;
    let check = format!(
        "{SNAPSHOT}\ndiff -u \"$3\" \"$2\" | sed -n 's/^[-+]\\(\\/[^|]*\\)|.*/\\1/p' | sort -u | head -n 10"
    );
    let changed = session
        .sh(Step::new(Phase::Supply, &bp.name, "root", &check)
            .args(&[&own, &after, &before])
            .output(Output::Quiet))
        .await?;
    let written: Vec<&str> = changed.stdout.lines().filter(|l| !l.is_empty()).collect();
    if !written.is_empty() {
        return Err(StagingError::ContractViolated {
            phase: Phase::Supply,
            buildpack: bp.name.clone(),
            reason: format!(
                "wrote outside its deps dir {own} (a supply may write only there): {}",
                written.join(", ")
            ),
        });
    }
    Ok(())
}

/// Runs one buildpack script as vcap, streaming its output; a non-zero exit fails `phase`.
async fn step(
    session: &Session<'_>,
    phase: Phase,
    bp: &Buildpack,
    args: &[&str],
) -> Result<(), StagingError> {
    let out = session
        .sh(Step::new(phase, &bp.name, "vcap", "exec \"$@\"").args(args))
        .await?;
    out.succeeded(phase, &bp.name)?;
    Ok(())
}

/// Copies `deps/<idx>/profile.d/*.sh` into the droplet's `profile.d` as `<idx>_<name>`.
async fn collect_profile_scripts(session: &Session<'_>) -> Result<(), StagingError> {
    let script = "for d in /home/vcap/deps/*; do
  i=${d##*/}
  for f in \"$d\"/profile.d/*.sh; do
    [ -f \"$f\" ] && cp \"$f\" \"/home/vcap/profile.d/${i}_${f##*/}\"
  done
done
exit 0";
    let out = session
        .sh(Step::new(Phase::Finalize, "(profile.d)", "vcap", script))
        .await?;
    out.or_violation(
        Phase::Finalize,
        "(profile.d)",
        "profile.d scripts could not be collected",
    )?;
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .take(10)
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
