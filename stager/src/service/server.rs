//! The service loop: take staging requests from the stagers' queue group while a slot is free,
//! run each build in a task of its own, advertise the stager, and stop gracefully.
//!
//! A request is pulled from the subscription only when a slot is free, so a busy stager never
//! accepts more than `max_stagings`. Stopping: the subscription is drained and the requests
//! the bus had already routed here but that were not taken are published again for another
//! stager; running builds get `grace` to finish, then are abandoned (their containers
//! destroyed, a failed result published).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use kiln_bus::{
    StagerAdvertise, StagingAccepted, StagingOutcome, StagingResult, ADVERTISE_INTERVAL_SECS,
    STAGER_ADVERTISE, STAGER_QUEUE, STAGING_ACCEPTED, STAGING_REQUEST, STAGING_RESULT,
};
use kiln_containers::Backend;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use super::convert::check_guid;
use super::error::{BuildError, ServiceError};
use super::job;
use super::transfer::{Token, Transfers};

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This stager's id on the bus.
    pub id: String,
    /// The stacks it stages on (imported in the backend before [`run`]).
    pub stacks: Vec<String>,
    /// The folder of built-in buildpacks; requests may name only these.
    pub buildpacks_dir: PathBuf,
    /// How many stagings run at once (at least 1).
    pub max_stagings: usize,
    /// The internal credential sent to the controller's endpoints; none: no `Authorization`.
    pub token: Option<Token>,
    /// Where each build's temp dir is made.
    pub work_dir: PathBuf,
    /// Where admin buildpacks are kept, unpacked, by the sha256 of their zip.
    pub buildpack_cache: PathBuf,
    /// The layer cache of Dockerfile builds, kept across stagings (one for all apps; each
    /// app's steps keyed apart, see `BuildOptions::cache_scope`).
    pub dockerfile_cache: PathBuf,
    /// How long running stagings may take to finish once the service is asked to stop.
    pub grace: Duration,
    /// How often the stager advertises itself.
    pub advertise_interval: Duration,
}

impl Settings {
    /// The stacks requests may name: the stager's own, and `docker` (a Dockerfile build,
    /// whose `FROM` names the stack or image).
    pub fn served_stacks(&self) -> Vec<String> {
        let mut stacks = self.stacks.clone();
        if !stacks.iter().any(|s| s == kiln_bus::DOCKER_STACK) {
            stacks.push(kiln_bus::DOCKER_STACK.to_string());
        }
        stacks
    }

    /// Settings with 2 stagings at once, the system temp dir (also for the buildpack cache, in
    /// `kiln-stager-buildpacks`, and the Dockerfile layer cache, in
    /// `kiln-stager-dockerfile-cache`), a 60 s grace, no token, and the bus's advertisement
    /// interval.
    pub fn new(id: &str, stacks: Vec<String>, buildpacks_dir: impl Into<PathBuf>) -> Settings {
        Settings {
            id: id.to_string(),
            stacks,
            buildpacks_dir: buildpacks_dir.into(),
            max_stagings: 2,
            token: None,
            work_dir: std::env::temp_dir(),
            buildpack_cache: std::env::temp_dir().join("kiln-stager-buildpacks"),
            dockerfile_cache: std::env::temp_dir().join("kiln-stager-dockerfile-cache"),
            grace: Duration::from_secs(60),
            advertise_interval: Duration::from_secs(ADVERTISE_INTERVAL_SECS),
        }
    }
}

/// What the service did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Builds staged and uploaded.
    pub succeeded: u64,
    /// Builds taken that failed (abandoned ones included).
    pub failed: u64,
    /// Requests answered with a failure without being taken (unknown stack, invalid guid).
    pub refused: u64,
    /// Requests routed here but not taken when the service stopped, published again.
    pub handed_back: u64,
    /// Builds given up after the grace.
    pub abandoned: Vec<String>,
}

/// Counts of builds, as the logs and [`Summary`] give them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub running: usize,
    pub succeeded: u64,
    pub failed: u64,
}

/// What every build task shares with the loop.
pub(crate) struct Shared {
    pub client: async_nats::Client,
    pub backend: Backend,
    pub settings: Settings,
    pub transfers: Transfers,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Builds taken and not finished.
    building: BTreeSet<String>,
    succeeded: u64,
    failed: u64,
    refused: u64,
    /// Set once the service stops taking work: it advertises no free slot.
    draining: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every lock (plain counters and a set).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the end of build `guid`.
    pub(crate) fn finished(&self, guid: &str, staged: bool) -> Counts {
        let mut state = self.state();
        state.building.remove(guid);
        if staged {
            state.succeeded += 1;
        } else {
            state.failed += 1;
        }
        Counts {
            running: state.building.len(),
            succeeded: state.succeeded,
            failed: state.failed,
        }
    }

    fn advertisement(&self) -> StagerAdvertise {
        let state = self.state();
        let free = self
            .settings
            .max_stagings
            .saturating_sub(state.building.len());
        StagerAdvertise {
            id: self.settings.id.clone(),
            stacks: self.settings.served_stacks(),
            building: state.building.iter().cloned().collect(),
            available: if state.draining {
                0
            } else {
                u32::try_from(free).unwrap_or(u32::MAX)
            },
        }
    }
}

/// Publishes `message` on `subject`; a failure is logged (the bus client reconnects by itself).
pub(crate) async fn publish<T: Serialize>(client: &async_nats::Client, subject: &str, message: &T) {
    if let Err(e) = client
        .publish(subject.to_string(), kiln_bus::encode(message).into())
        .await
    {
        warn!(error = %e, subject, "publishing on the bus");
    }
}

async fn advertise(shared: &Shared) {
    let ad = shared.advertisement();
    {
        let state = shared.state();
        debug!(
            running = ad.building.len(),
            available = ad.available,
            succeeded = state.succeeded,
            failed = state.failed,
            "advertising"
        );
    }
    publish(&shared.client, STAGER_ADVERTISE, &ad).await;
}

/// Serves staging requests from `client` with `backend` until `shutdown` completes, then
/// stops as the module says. The backend must hold `settings.stacks`; it is left for the
/// caller to destroy (after dropping it, `Backend::destroy_all`).
pub async fn run(
    client: async_nats::Client,
    backend: Backend,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, ServiceError> {
    let mut settings = settings;
    settings.max_stagings = settings.max_stagings.max(1);
    let transfers = Transfers::new(settings.token.clone())?;
    super::buildpacks::sweep(&settings.buildpack_cache);
    crate::dockerfile::sweep_cache(&settings.dockerfile_cache);
    let mut requests = client
        .queue_subscribe(STAGING_REQUEST, STAGER_QUEUE.to_string())
        .await
        .map_err(|source| ServiceError::Subscribe {
            subject: STAGING_REQUEST,
            source,
        })?;
    // In place on the server before the stager says it is there.
    kiln_bus::round_trip(&client, kiln_bus::ROUND_TRIP_TIMEOUT)
        .await
        .map_err(ServiceError::RoundTrip)?;
    let (grace, max) = (settings.grace, settings.max_stagings);
    let shared = Arc::new(Shared {
        client: client.clone(),
        backend,
        settings,
        transfers,
        state: Mutex::new(State::default()),
    });
    info!(
        stager = %shared.settings.id,
        stacks = %shared.settings.stacks.join(","),
        max_stagings = max,
        "taking staging requests"
    );

    let advertiser = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut tick = tokio::time::interval(shared.settings.advertise_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                advertise(&shared).await;
            }
        }
    });

    let slots = Arc::new(Semaphore::new(max));
    let builds = TaskTracker::new();
    let abandon = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let ended = loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break None,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                // Never closed.
                Err(_) => break None,
            },
        };
        let message = tokio::select! {
            biased;
            () = &mut shutdown => break None,
            message = requests.next() => message,
        };
        let Some(message) = message else {
            break Some(ServiceError::SubscriptionEnded(STAGING_REQUEST));
        };
        let request: kiln_bus::StagingRequest =
            match kiln_bus::decode(message.subject.as_str(), &message.payload) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "skipping a staging request that is not valid");
                    continue;
                }
            };
        let span = info_span!("build", build = %request.build_guid, app = %request.app_guid);
        if take(&shared, &request).instrument(span.clone()).await {
            builds.spawn(
                job::run(shared.clone(), request, abandon.child_token(), slot).instrument(span),
            );
        }
    };

    // Stop taking work.
    shared.state().draining = true;
    info!("stopping: no new stagings");
    let drained = requests.drain().await;
    advertise(&shared).await;
    let handed_back = match drained {
        Ok(()) => hand_back(&client, requests).await,
        Err(e) => {
            warn!(error = %e, "unsubscribing from staging requests");
            0
        }
    };
    builds.close();
    let running: Vec<String> = shared.state().building.iter().cloned().collect();
    let mut abandoned = Vec::new();
    if !running.is_empty() {
        info!(builds = %running.join(","), grace_secs = grace.as_secs(), "waiting for running stagings");
    }
    if tokio::time::timeout(grace, builds.wait()).await.is_err() {
        abandoned = shared.state().building.iter().cloned().collect();
        warn!(builds = %abandoned.join(","), "grace over: abandoning the running stagings");
        abandon.cancel();
        if tokio::time::timeout(Duration::from_secs(30), builds.wait())
            .await
            .is_err()
        {
            warn!("abandoned stagings did not end within 30 s");
        }
    }
    advertiser.abort();
    advertise(&shared).await;
    if let Err(e) = client.flush().await {
        warn!(error = %e, "flushing the last messages to the bus");
    }
    let state = shared.state();
    let summary = Summary {
        succeeded: state.succeeded,
        failed: state.failed,
        refused: state.refused,
        handed_back,
        abandoned,
    };
    drop(state);
    info!(
        succeeded = summary.succeeded,
        failed = summary.failed,
        refused = summary.refused,
        handed_back = summary.handed_back,
        "stopped"
    );
    match ended {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Decides whether to take `request`: refuses (with a failed result) a guid that cannot be
/// used and a stack this stager lacks, ignores a build already running here, and publishes
/// the acceptance of the others.
async fn take(shared: &Shared, request: &kiln_bus::StagingRequest) -> bool {
    let settings = &shared.settings;
    let refusal = match check_guid(&request.build_guid) {
        Err(e) => Some(e),
        Ok(()) if !settings.served_stacks().contains(&request.stack) => {
            Some(BuildError::UnknownStack {
                stager: settings.id.clone(),
                stack: request.stack.clone(),
                stacks: settings.served_stacks(),
            })
        }
        Ok(()) => None,
    };
    if let Some(e) = refusal {
        warn!(error = %e, "refusing the staging request");
        shared.state().refused += 1;
        let result = StagingResult {
            build_guid: request.build_guid.clone(),
            stager_id: settings.id.clone(),
            outcome: StagingOutcome::Failed {
                reason: e.to_string(),
                exit_code: e.exit_code(),
            },
        };
        publish(&shared.client, STAGING_RESULT, &result).await;
        return false;
    }
    if !shared.state().building.insert(request.build_guid.clone()) {
        warn!("this build is already staging here; ignoring the repeated request");
        return false;
    }
    info!(stack = %request.stack, "staging accepted");
    let accepted = StagingAccepted {
        build_guid: request.build_guid.clone(),
        stager_id: settings.id.clone(),
    };
    publish(&shared.client, STAGING_ACCEPTED, &accepted).await;
    true
}

/// Publishes again every request the bus routed here that was not taken, from the draining
/// subscription. The unsubscription went out first, so they reach the other stagers (or
/// nobody).
async fn hand_back(client: &async_nats::Client, mut requests: async_nats::Subscriber) -> u64 {
    let mut handed_back = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), requests.next()).await {
            Ok(Some(message)) => {
                let build = kiln_bus::decode::<kiln_bus::StagingRequest>(
                    message.subject.as_str(),
                    &message.payload,
                )
                .map(|r| r.build_guid)
                .unwrap_or_default();
                info!(build, "handing a staging request back to the other stagers");
                if let Err(e) = client.publish(message.subject, message.payload).await {
                    warn!(error = %e, build, "handing a staging request back");
                } else {
                    handed_back += 1;
                }
            }
            Ok(None) => break,
            Err(_) => {
                warn!("the subscription to staging requests did not drain within 5 s");
                break;
            }
        }
    }
    handed_back
}
