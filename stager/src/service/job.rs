//! One build: download the package (and the previous cache) and the admin buildpacks it
//! names, stage it (or build its Dockerfile, see [`super::dockerfile`]), upload the droplet
//! (and the new cache), publish the result. The log is published line by line as it is
//! written, in order, and always before the result. The build's files live in a temp dir of
//! their own, removed whatever happens (also when the build is abandoned at shutdown).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_bus::{StagedDroplet, StagingLogLine, StagingOutcome, StagingResult};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::buildpacks;
use super::convert::{self, Files};
use super::error::{with_causes, BuildError};
use super::server::{publish, Shared};
use super::transfer::{shown_url, WorkDir};
use crate::buildpack::builtin_names;
use crate::lifecycle::Stager;
use crate::log::{LogLine, LogSink, Stream, SOURCE};

/// How long the end of a build waits for its last log lines to be handed to the bus.
const LOG_FLUSH: Duration = Duration::from_secs(5);

/// Runs build `request`, which holds `slot` until it ends; `cancel` abandons it (the stager is
/// stopping and its grace is over). Publishes the result.
pub(crate) async fn run(
    shared: Arc<Shared>,
    request: kiln_bus::StagingRequest,
    cancel: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let log = BuildLog::start(&shared.client, &request);
    let ended = tokio::select! {
        ended = stage(&shared, &request, &log) => ended,
        () = cancel.cancelled() => Err(BuildError::Abandoned {
            stager: shared.settings.id.clone(),
            grace_secs: shared.settings.grace.as_secs(),
        }),
    };
    let outcome = match ended {
        Ok(staged) => {
            info!(droplet = %staged.sha256, size = staged.size, "staged");
            StagingOutcome::Staged(staged)
        }
        Err(e) => {
            warn!(error = %e, exit_code = e.exit_code(), "staging failed");
            for line in format!("Staging failed: {e}").lines() {
                log.line(Stream::Err, line);
            }
            StagingOutcome::Failed {
                reason: e.to_string(),
                exit_code: e.exit_code(),
            }
        }
    };
    log.finish().await;
    let staged = matches!(outcome, StagingOutcome::Staged(_));
    let result = StagingResult {
        build_guid: request.build_guid.clone(),
        stager_id: shared.settings.id.clone(),
        outcome,
    };
    publish(&shared.client, kiln_bus::STAGING_RESULT, &result).await;
    if let Err(e) = shared.client.flush().await {
        warn!(error = %e, "flushing the staging result to the bus");
    }
    let counts = shared.finished(&request.build_guid, staged);
    info!(
        running = counts.running,
        succeeded = counts.succeeded,
        failed = counts.failed,
        "staging finished"
    );
    drop(slot);
}

/// Everything of a build but its result.
/// The largest stack image a stager downloads.
const STACK_IMAGE_LIMIT: u64 = 16 << 30;

/// Makes sure the backend's stack store has `image`, downloading it from the controller's
/// image store the first time.
pub(super) async fn stack_image(
    shared: &Shared,
    image: &kiln_bus::StackImageRef,
    work: &WorkDir,
    log: &BuildLog,
) -> Result<(), BuildError> {
    fetch_image(
        shared,
        image,
        &format!("the stack image {}", image.digest),
        &work.file("stack-image.tar"),
        log,
    )
    .await
    .map_err(|message| BuildError::StackImage {
        digest: image.digest.clone(),
        message,
    })
}

/// Makes sure the backend's stack store has `image` (`what` names it in the log), downloading
/// it to `archive` and importing it (every blob verified) the first time; the error is why not.
pub(super) async fn fetch_image(
    shared: &Shared,
    image: &kiln_bus::StackImageRef,
    what: &str,
    archive: &std::path::Path,
    log: &BuildLog,
) -> Result<(), String> {
    let hex = image.digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("not a manifest digest (sha256:<64 hex digits>)".into());
    }
    if shared.backend.stack_image(&image.digest).is_some() {
        return Ok(());
    }
    log.line(Stream::Out, &format!("-----> Downloading {what}"));
    shared
        .transfers
        .download(&image.url, archive, STACK_IMAGE_LIMIT, false)
        .await
        .map_err(|e| format!("downloading from {}: {e}", shown_url(&image.url)))?;
    let imported = shared
        .backend
        .import_stack_image(archive, &image.digest)
        .await
        .map_err(|e| with_causes(&e));
    // The store keeps the image unpacked; the archive is not needed any more.
    let _ = std::fs::remove_file(archive);
    imported.map(drop)
}

async fn stage(
    shared: &Shared,
    r: &kiln_bus::StagingRequest,
    log: &BuildLog,
) -> Result<StagedDroplet, BuildError> {
    let settings = &shared.settings;
    let work = WorkDir::new(&settings.work_dir).map_err(|source| BuildError::WorkDir {
        path: settings.work_dir.clone(),
        source,
    })?;
    let files = Files {
        package: work.file("package"),
        cache_in: None,
        droplet: work.file("droplet.tgz"),
        cache_out: work.file("cache.tgz"),
    };
    // Refused before anything is downloaded.
    let mut request = convert::staging_request(r, files, &builtin_names(&settings.buildpacks_dir))?;
    let limit = request.limits.disk_bytes;

    log.line(Stream::Out, "-----> Downloading the app package");
    shared
        .transfers
        .download(&r.package_url, &request.app, limit, false)
        .await
        .map_err(|source| BuildError::Package {
            url: shown_url(&r.package_url),
            source,
        })?;
    if super::dockerfile::chosen(r, &request.app, &work).await? {
        return super::dockerfile::stage(shared, r, &request, &work, log).await;
    }
    if let Some(image) = &r.stack_image {
        stack_image(shared, image, &work, log).await?;
        // The container's root: the image by digest instead of the stager's own copy.
        request.stack_image = Some(image.digest.clone());
    }
    if let Some(url) = &r.cache_download_url {
        let path = work.file("cache-in.tgz");
        // A cache that cannot be fetched costs only speed, like one that cannot be restored.
        match shared.transfers.download(url, &path, limit, true).await {
            Ok(true) => request.cache_in = Some(path),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "downloading the build cache");
                log.line(
                    Stream::Err,
                    &format!(
                        "warning: the build cache could not be downloaded from {} ({e}); staging without it",
                        shown_url(url)
                    ),
                );
            }
        }
    }

    if !r.buildpack_refs.is_empty() {
        request.buildpacks = buildpacks::prepare(
            &shared.transfers,
            &settings.buildpack_cache,
            &settings.buildpacks_dir,
            &r.buildpack_refs,
            &work,
            limit,
            |line| log.line(Stream::Out, line),
        )
        .await?;
    }

    let result = Stager::new(&shared.backend, &settings.buildpacks_dir)
        .stage(request, log.sink())
        .await?;

    log.line(Stream::Out, "-----> Uploading the droplet");
    shared
        .transfers
        .upload(&result.droplet, &r.droplet_upload_url)
        .await
        .map_err(|source| BuildError::DropletUpload {
            url: shown_url(&r.droplet_upload_url),
            source,
        })?;
    if let Some(cache) = &result.cache {
        if let Err(e) = shared.transfers.upload(cache, &r.cache_upload_url).await {
            warn!(error = %e, "uploading the build cache");
            log.line(
                Stream::Err,
                &format!(
                    "warning: the build cache was not saved: uploading it to {}: {e}",
                    shown_url(&r.cache_upload_url)
                ),
            );
        }
    }
    Ok(convert::staged(&result))
}

/// The log of one build on its subject: lines go through an unbounded channel (the stager's
/// sink is a sync callback) to one task that publishes them in order.
pub(super) struct BuildLog {
    lines: UnboundedSender<StagingLogLine>,
    publisher: JoinHandle<()>,
    build_guid: String,
    app_guid: String,
}

impl BuildLog {
    fn start(client: &async_nats::Client, request: &kiln_bus::StagingRequest) -> BuildLog {
        let (lines, mut rx) = unbounded_channel::<StagingLogLine>();
        let (client, subject) = (client.clone(), kiln_bus::staging_log(&request.build_guid));
        let publisher = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                publish(&client, subject.as_str(), &line).await;
            }
        });
        BuildLog {
            lines,
            publisher,
            build_guid: request.build_guid.clone(),
            app_guid: request.app_guid.clone(),
        }
    }

    /// The sink handed to the stager.
    pub(super) fn sink(&self) -> LogSink {
        let (lines, build_guid, app_guid) = (
            self.lines.clone(),
            self.build_guid.clone(),
            self.app_guid.clone(),
        );
        Arc::new(move |line: &LogLine| {
            // The publisher lives as long as any sender; a send fails only after it stopped.
            let _ = lines.send(bus_line(&build_guid, &app_guid, line.stream, &line.text));
        })
    }

    /// A line of the service's own (downloads, uploads, the failure).
    pub(super) fn line(&self, stream: Stream, text: &str) {
        let _ = self
            .lines
            .send(bus_line(&self.build_guid, &self.app_guid, stream, text));
    }

    /// Waits (a little) for every line to be handed to the bus.
    async fn finish(self) {
        let BuildLog {
            lines, publisher, ..
        } = self;
        drop(lines);
        if tokio::time::timeout(LOG_FLUSH, publisher).await.is_err() {
            warn!("the last log lines of the staging were still being published when it ended");
        }
    }
}

fn bus_line(build_guid: &str, app_guid: &str, stream: Stream, text: &str) -> StagingLogLine {
    StagingLogLine {
        build_guid: build_guid.to_string(),
        app_guid: app_guid.to_string(),
        source: SOURCE.to_string(),
        stream: match stream {
            Stream::Out => "OUT",
            Stream::Err => "ERR",
        }
        .to_string(),
        line: text.to_string(),
        timestamp_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    }
}
