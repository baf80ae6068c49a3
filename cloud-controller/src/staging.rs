//! Staging over the bus: a build becomes a [`kiln_bus::StagingRequest`] for the stagers'
//! queue group; accepted, result and advertisement messages move it to STAGED or FAILED. A
//! watchdog fails, with the reason, builds nobody took within the accept timeout and builds
//! whose stager went silent or forgot them, so no build stays STAGING forever (also across a
//! controller restart).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_bus::{StagerAdvertise, StagingAccepted, StagingOutcome, StagingResult};

use crate::api::apps::AppRow;
use crate::api::builds::BuildRow;
use crate::error::ApiResult;
use crate::state::{now, AppState};

/// Publishes the staging request of `build`, whose buildpacks resolved to `buildpack_refs`.
pub async fn request(
    s: &AppState,
    build: &BuildRow,
    app: &AppRow,
    buildpack_refs: Vec<kiln_bus::BuildpackRef>,
) -> ApiResult<()> {
    let internal = &s.internal_url;
    let cache_url = format!(
        "{internal}/internal/v1/apps/{}/cache/{}",
        app.guid, build.stack
    );
    let request = kiln_bus::StagingRequest {
        build_guid: build.guid.clone(),
        app_guid: app.guid.clone(),
        stack: build.stack.clone(),
        buildpacks: serde_json::from_str(&build.buildpacks).unwrap_or_default(),
        buildpack_refs,
        env: app.env_map(),
        package_url: format!(
            "{internal}/internal/v1/packages/{}/bits",
            build.package_guid
        ),
        droplet_upload_url: format!("{internal}/internal/v1/builds/{}/droplet", build.guid),
        cache_download_url: Some(cache_url.clone()),
        cache_upload_url: cache_url,
        memory_mb: s.config.staging_memory_mb,
        disk_mb: s.config.staging_disk_mb,
        timeout_secs: s.config.staging_timeout_secs,
        start_command: None,
        egress: Vec::new(),
        stack_image: stack_image(s, &build.stack).await?,
        images: named_images(s).await?,
    };
    let sent = s
        .nats
        .publish(kiln_bus::STAGING_REQUEST, kiln_bus::encode(&request).into())
        .await;
    if let Err(e) = sent {
        fail(
            s,
            &build.guid,
            &format!("the bus did not take the staging request: {e}"),
        )
        .await?;
    }
    Ok(())
}

/// The image an operator set for `stack`, as stagers fetch it.
pub async fn stack_image(
    s: &AppState,
    stack: &str,
) -> Result<Option<kiln_bus::StackImageRef>, sqlx::Error> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT image_digest FROM stacks WHERE name = $1")
            .bind(stack)
            .fetch_optional(&s.db)
            .await?;
    Ok(row
        .and_then(|(d,)| d)
        .map(|digest| kiln_bus::StackImageRef {
            url: format!("{}/internal/v1/images/{digest}/archive", s.internal_url),
            digest,
        }))
}

/// The named images of the store, for a Dockerfile's `FROM`.
async fn named_images(s: &AppState) -> ApiResult<Vec<kiln_bus::NamedImage>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, digest FROM images WHERE state = 'READY' AND name IS NOT NULL AND digest IS NOT NULL ORDER BY name",
    )
    .fetch_all(&s.db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, digest)| kiln_bus::NamedImage {
            name,
            image: kiln_bus::StackImageRef {
                url: format!("{}/internal/v1/images/{digest}/archive", s.internal_url),
                digest,
            },
        })
        .collect())
}

async fn fail(s: &AppState, build: &str, reason: &str) -> Result<(), sqlx::Error> {
    tracing::warn!(build, reason, "build failed");
    let t = now();
    let mut tx = s.db.begin().await?;
    sqlx::query("UPDATE builds SET state = 'FAILED', error = $1, updated_at = $2 WHERE guid = $3 AND state = 'STAGING'")
        .bind(reason)
        .bind(&t)
        .bind(build)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE droplets SET state = 'FAILED', error = $1, updated_at = $2 WHERE build_guid = $3 AND state = 'STAGING'")
        .bind(reason)
        .bind(&t)
        .bind(build)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// What the controller knows of stagers: when each was last heard, its stacks, what it
/// builds, and how many advertisements in a row left out a build it had taken.
#[derive(Default)]
struct Stagers {
    seen: HashMap<String, Heard>,
    missing: HashMap<String, u32>,
}

#[derive(Clone)]
struct Heard {
    at: Instant,
    stacks: Vec<String>,
    building: Vec<String>,
}

impl Stagers {
    /// Records an advertisement; true when the stager is new or its stacks changed.
    fn advertised(&mut self, a: StagerAdvertise) -> bool {
        if let Some(before) = self.seen.get(&a.id) {
            for build in &before.building {
                if a.building.contains(build) {
                    self.missing.remove(build);
                } else {
                    *self.missing.entry(build.clone()).or_default() += 1;
                }
            }
        }
        let building = self
            .seen
            .get(&a.id)
            .map(|h| h.building.clone())
            .unwrap_or_default();
        // Builds accepted but not yet advertised stay known until an advertisement omits them.
        let mut merged = a.building.clone();
        merged.extend(
            building
                .into_iter()
                .filter(|b| self.missing.get(b).is_some_and(|n| *n < 2)),
        );
        let known = self.seen.get(&a.id).is_some_and(|h| h.stacks == a.stacks);
        self.seen.insert(
            a.id,
            Heard {
                at: Instant::now(),
                stacks: a.stacks,
                building: merged,
            },
        );
        !known
    }

    fn accepted(&mut self, a: &StagingAccepted) {
        let heard = self.seen.entry(a.stager_id.clone()).or_insert(Heard {
            at: Instant::now(),
            stacks: Vec::new(),
            building: Vec::new(),
        });
        heard.building.push(a.build_guid.clone());
        self.missing.remove(&a.build_guid);
    }

    /// Whether a stager heard from recently advertises `stack`.
    fn serves(&self, stack: &str, ttl: Duration) -> bool {
        self.seen
            .values()
            .any(|h| h.at.elapsed() < ttl && h.stacks.iter().any(|s| s == stack))
    }
}

/// Runs the bus side of staging until the connection closes. Results are handled before
/// anything else that is ready, so an advertisement never overtakes the result it follows.
pub async fn run(s: AppState) -> anyhow::Result<()> {
    let stagers = Mutex::new(Stagers::default());
    let started = Instant::now();
    let mut accepted = s.nats.subscribe(kiln_bus::STAGING_ACCEPTED).await?;
    let mut results = s.nats.subscribe(kiln_bus::STAGING_RESULT).await?;
    let mut adverts = s.nats.subscribe(kiln_bus::STAGER_ADVERTISE).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            biased;
            Some(m) = results.next() => match kiln_bus::decode::<StagingResult>(&m.subject, &m.payload) {
                Ok(r) => {
                    if let Err(e) = finish(&s, r).await {
                        tracing::error!(error = %e, "recording a staging result");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = accepted.next() => match kiln_bus::decode::<StagingAccepted>(&m.subject, &m.payload) {
                Ok(a) => {
                    if let Ok(mut st) = stagers.lock() {
                        st.accepted(&a);
                    }
                    let _ = sqlx::query("UPDATE builds SET stager_id = $1, updated_at = $2 WHERE guid = $3 AND state = 'STAGING'")
                        .bind(&a.stager_id)
                        .bind(now())
                        .bind(&a.build_guid)
                        .execute(&s.db)
                        .await;
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            Some(m) = adverts.next() => match kiln_bus::decode::<StagerAdvertise>(&m.subject, &m.payload) {
                Ok(a) => {
                    let (id, stacks) = (a.id.clone(), a.stacks.clone());
                    let new_stacks = stagers.lock().map(|mut st| st.advertised(a)).unwrap_or(false);
                    if new_stacks {
                        if let Err(e) = crate::api::stacks::record_advertised(&s.db, &id, &stacks).await {
                            tracing::error!(error = %e, stager = %id, "recording advertised stacks");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a message"),
            },
            _ = tick.tick() => {
                if let Err(e) = watchdog(&s, &stagers, started).await {
                    tracing::error!(error = %e, "staging watchdog");
                }
            }
            else => return Ok(()),
        }
    }
}

async fn finish(s: &AppState, r: StagingResult) -> Result<(), sqlx::Error> {
    let d = match r.outcome {
        StagingOutcome::Failed { reason, exit_code } => {
            let reason = format!("StagingError - {reason} (exit code {exit_code})");
            return fail(s, &r.build_guid, &reason).await;
        }
        StagingOutcome::Staged(d) => d,
    };
    let uploaded: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT guid, sha256 FROM droplets WHERE build_guid = $1")
            .bind(&r.build_guid)
            .fetch_optional(&s.db)
            .await?;
    let droplet = match uploaded {
        Some((guid, Some(sha))) if sha == d.sha256 => guid,
        Some((_, sha)) => {
            let reason = format!(
                "the stager reported droplet sha256 {} but uploaded {}",
                d.sha256,
                sha.unwrap_or_default()
            );
            return fail(s, &r.build_guid, &reason).await;
        }
        None => {
            return fail(
                s,
                &r.build_guid,
                "the stager reported success but uploaded no droplet",
            )
            .await
        }
    };
    // An image droplet becomes an image of the store (checked, its config read), which is
    // what cells fetch it from.
    if let Some(expected) = &d.image_digest {
        let registered = crate::api::images::register(s, &d.sha256, d.size, None).await;
        let found = match registered {
            Ok((image, _)) => image.digest.unwrap_or_default(),
            Err(e) => {
                let why = match e {
                    crate::error::ApiError::Internal(m) => m,
                    other => other.to_string(),
                };
                let reason = format!("the droplet is not a valid image: {why}");
                return fail(s, &r.build_guid, &reason).await;
            }
        };
        if &found != expected {
            let reason =
                format!("the stager reported image {expected} but the droplet holds {found}");
            return fail(s, &r.build_guid, &reason).await;
        }
    }
    let t = now();
    let mut tx = s.db.begin().await?;
    // The build first: a result for a build already FAILED (by the watchdog) changes nothing,
    // and its droplet never becomes STAGED.
    let build = sqlx::query("UPDATE builds SET state = 'STAGED', droplet_guid = $1, updated_at = $2 WHERE guid = $3 AND state = 'STAGING'")
        .bind(&droplet)
        .bind(&t)
        .bind(&r.build_guid)
        .execute(&mut *tx)
        .await?;
    if build.rows_affected() != 1 {
        tracing::warn!(build = %r.build_guid, "a staging result for a build that is no longer STAGING");
        return Ok(());
    }
    sqlx::query("UPDATE droplets SET state = 'STAGED', detected_buildpack = $1, buildpacks = $2, process_types = $3, start_command = $4, updated_at = $5, image_digest = $6 WHERE guid = $7")
        .bind(&d.detected_buildpack)
        .bind(serde_json::to_string(&d.buildpacks).unwrap_or_default())
        .bind(serde_json::to_string(&d.process_types).unwrap_or_default())
        .bind(&d.start_command)
        .bind(&t)
        .bind(&d.image_digest)
        .bind(&droplet)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(build = %r.build_guid, droplet, "staged");
    let app: Option<(String, String, String)> = sqlx::query_as(
        "SELECT a.guid, a.name, a.space_guid FROM apps a JOIN builds b ON b.app_guid = a.guid WHERE b.guid = $1",
    )
    .bind(&r.build_guid)
    .fetch_optional(&s.db)
    .await?;
    if let Some((guid, name, space)) = app {
        let data = serde_json::json!({"droplet_guid": droplet, "build_guid": r.build_guid, "buildpacks": d.buildpacks});
        let actor = crate::audit::Actor::System("stager");
        crate::audit::record(
            s,
            "audit.app.droplet.create",
            actor,
            crate::audit::app(&guid, &name),
            Some(&space),
            data,
        )
        .await;
    }
    Ok(())
}

fn age_secs(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map_or(i64::MAX, |t| chrono::Utc::now().timestamp() - t.timestamp())
}

/// Fails builds that will not finish: nobody took them within the accept timeout (while no
/// live stager serves their stack; with one that does, they may be queued behind its current
/// stagings, up to the staging time limit more), or their stager went silent or left them out
/// of two advertisements in a row.
async fn watchdog(
    s: &AppState,
    stagers: &Mutex<Stagers>,
    started: Instant,
) -> Result<(), sqlx::Error> {
    let staging: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT guid, stack, stager_id, updated_at FROM builds WHERE state = 'STAGING'",
    )
    .fetch_all(&s.db)
    .await?;
    let ttl = Duration::from_secs(kiln_bus::STAGER_TTL_SECS);
    let accept = i64::try_from(s.config.accept_timeout_secs).unwrap_or(i64::MAX);
    let queued =
        accept.saturating_add(i64::try_from(s.config.staging_timeout_secs).unwrap_or(i64::MAX));
    if let Ok(mut st) = stagers.lock() {
        st.missing
            .retain(|b, _| staging.iter().any(|(g, ..)| g == b));
    }
    for (build, stack, stager, updated) in staging {
        let age = age_secs(&updated);
        let reason = {
            let Ok(st) = stagers.lock() else { continue };
            match stager {
                None if age > queued || (age > accept && !st.serves(&stack, ttl)) => Some(format!(
                    "no stager took the build within {} s: is a stager for stack {stack} running and connected to the bus?",
                    if age > queued { queued } else { accept }
                )),
                None => None,
                // Pulled by the controller itself: only the time limit applies.
                Some(id) if id == crate::api::image_builds::PULLER => (age > queued)
                    .then(|| format!("the image pull did not finish within {queued} s")),
                Some(id) => match st.seen.get(&id) {
                    Some(h) if h.at.elapsed() > ttl => Some(format!(
                        "stager {id} stopped answering while staging (silent for {} s)",
                        h.at.elapsed().as_secs()
                    )),
                    None if started.elapsed() > ttl => Some(format!("stager {id} stopped answering while staging")),
                    Some(_) if st.missing.get(&build).is_some_and(|n| *n >= 2) => {
                        Some(format!("stager {id} is no longer staging this build (it restarted?)"))
                    }
                    _ => None,
                },
            }
        };
        if let Some(reason) = reason {
            fail(s, &build, &reason).await?;
        }
    }
    Ok(())
}
