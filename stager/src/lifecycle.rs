//! The staging lifecycle: a container on the stack, the app and buildpacks copied in, detect,
//! the buildpacks' scripts as the unprivileged user, process types, then the droplet and the
//! cache copied out. The container is destroyed whatever happens.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use kiln_containers::{Backend, ContainerSpec, Limits, StreamInOptions};
use kiln_droplet::{StagingInfo, APP_DIR};
use tracing::{info, warn};

use crate::app_bits::{app_tar, dir_tar_at};
use crate::buildpack::{builtin_names, resolve, Buildpack};
use crate::container_guard::ContainerGuard;
use crate::error::{Phase, StagingError};
use crate::log::LogSink;
use crate::pack;
use crate::release::parse_procfile;
use crate::request::{DetectOutcome, StagingRequest, StagingResult};
use crate::session::{file_tar, Output, Session, Step};
use crate::{classic, native};

/// Where buildpack `k` is copied in the staging container.
pub(crate) fn buildpack_dir(k: usize) -> String {
    format!("/tmp/buildpacks/{k}")
}

/// The cache directory in the staging container.
pub(crate) const CACHE_DIR: &str = "/tmp/cache";
/// The Heroku `ENV_DIR`: one file per app environment variable.
pub(crate) const ENV_DIR: &str = "/tmp/env";
/// The Cloud Native Buildpacks platform dir (`env/` holds the app's variables).
pub(crate) const PLATFORM_DIR: &str = "/tmp/platform";
/// Scratch files of the stager in the container that buildpacks may write (detect plans).
pub(crate) const KILN_DIR: &str = "/tmp/kiln";
/// Scratch files of the stager that buildpacks must not touch (root only).
pub(crate) const ROOT_SCRATCH: &str = "/tmp/kiln-root";

/// Stages apps with a container backend and a folder of built-in buildpacks.
pub struct Stager<'a> {
    backend: &'a Backend,
    builtin_dir: PathBuf,
}

/// The buildpacks of a staging, copied into the container.
pub(crate) struct Candidates {
    /// Every buildpack copied in, in order; buildpack `k` is at [`buildpack_dir`]`(k)`.
    pub all: Vec<Buildpack>,
    /// Whether they were named (run all, in order) or are built-ins (first to detect wins).
    pub named: bool,
}

/// What the buildpacks produced.
pub(crate) struct Built {
    pub detect: Vec<DetectOutcome>,
    pub detected_buildpack: String,
    pub buildpacks: Vec<String>,
    pub process_types: BTreeMap<String, String>,
}

impl<'a> Stager<'a> {
    /// A stager on `backend` whose built-in buildpacks are the folders of `builtin_dir`.
    pub fn new(backend: &'a Backend, builtin_dir: impl Into<PathBuf>) -> Self {
        Stager {
            backend,
            builtin_dir: builtin_dir.into(),
        }
    }

    /// The built-in buildpacks, in detection order.
    pub fn builtin(&self) -> Vec<String> {
        builtin_names(&self.builtin_dir)
    }

    /// Stages `request`, handing every log line to `sink` as it is written.
    #[tracing::instrument(skip_all, fields(staging = %request.id, stack = %request.stack))]
    pub async fn stage(
        &self,
        request: StagingRequest,
        sink: LogSink,
    ) -> Result<StagingResult, StagingError> {
        let handle = format!("staging-{}", request.id);
        let scratch = tempfile::Builder::new()
            .prefix("kiln-staging-")
            .tempdir()
            .map_err(StagingError::io(
                "creating a scratch dir in",
                std::env::temp_dir(),
            ))?;
        // Everything that can be refused on the host is refused before a container exists.
        let prepared = {
            let (builtin, request, scratch) = (
                self.builtin_dir.clone(),
                request.clone(),
                scratch.path().to_path_buf(),
            );
            tokio::task::spawn_blocking(move || {
                let found = candidates(&builtin, &request, &scratch)?;
                let app = app_tar(&request.app, &scratch, request.limits.disk_bytes)?;
                Ok::<_, StagingError>((found, app))
            })
            .await
        };
        let (candidates, app) = prepared.map_err(|e| StagingError::Platform {
            reason: format!("reading the app and buildpacks failed: {e}"),
        })??;

        let mut phases = Vec::new();
        let started = Instant::now();
        let spec = ContainerSpec {
            handle: handle.clone(),
            stack: request
                .stack_image
                .clone()
                .unwrap_or_else(|| request.stack.clone()),
            limits: Limits {
                memory_bytes: request.limits.memory_bytes,
                disk_bytes: request.limits.disk_bytes,
                pids: 4096,
                ..Limits::default()
            },
            net_out: request.egress.clone(),
            properties: [("kiln.role".to_string(), "staging".to_string())].into(),
            ..ContainerSpec::default()
        };
        self.backend
            .create(spec)
            .await
            .map_err(StagingError::sandbox(
                Phase::Create,
                format!("creating the staging container on stack {}", request.stack),
            ))?;
        phases.push(("create".to_string(), started.elapsed()));
        let mut guard = ContainerGuard::new(self.backend.clone(), handle.clone(), "staging");
        let mut session = Session::new(
            self.backend,
            handle.clone(),
            sink,
            request.limits.timeout,
            request.limits.memory_bytes,
        );
        session.env = staging_env(&request);
        let outcome = run(
            &session,
            &request,
            candidates,
            app,
            scratch.path(),
            &mut phases,
        )
        .await;
        guard.disarm();
        if let Err(e) = self.backend.destroy(&handle).await {
            warn!(error = %e, "destroying the staging container");
            session.warn(format!(
                "could not destroy the staging container {handle}: {e}"
            ));
        }
        let (built, droplet) = outcome?;
        info!(droplet = %droplet.sha256, size = droplet.size, "staged");
        Ok(StagingResult {
            droplet: request.droplet_out.clone(),
            droplet_sha256: droplet.sha256,
            droplet_size: droplet.size,
            detected_buildpack: built.detected_buildpack,
            buildpacks: built.buildpacks,
            detect: built.detect,
            start_command: built.process_types.get("web").cloned().unwrap_or_default(),
            process_types: built.process_types,
            cache: request.cache_out.clone().filter(|_| droplet.cache_written),
            phases,
            log: session.log(),
        })
    }
}

/// The buildpacks of `request`: the named ones, the given candidates for detection, or every
/// built-in for detection.
fn candidates(
    builtin_dir: &Path,
    request: &StagingRequest,
    scratch: &Path,
) -> Result<Candidates, StagingError> {
    if request.buildpacks.is_empty() {
        let names = builtin_names(builtin_dir);
        if names.is_empty() {
            return Err(StagingError::Platform {
                reason: format!(
                    "no buildpack given and no built-in buildpacks in {}",
                    builtin_dir.display()
                ),
            });
        }
        let all = names
            .iter()
            .map(|n| Buildpack::load(n, &builtin_dir.join(n)))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Candidates { all, named: false });
    }
    let mut all = request
        .buildpacks
        .iter()
        .enumerate()
        .map(|(i, arg)| resolve(arg, builtin_dir, scratch, i))
        .collect::<Result<Vec<_>, _>>()?;
    let natives = all.iter().filter(|b| b.is_native()).count();
    if request.detect {
        // Detection picks one classic buildpack; a Cloud Native Buildpack runs only when named
        // (its detect is part of a group that must all pass, not a first match).
        all.retain(|b| !b.is_native());
        if all.is_empty() {
            return Err(StagingError::Platform {
                reason: format!(
                    "no classic buildpack to detect among ({} are Cloud Native Buildpacks, which run only when named)",
                    request.buildpacks.len()
                ),
            });
        }
        return Ok(Candidates { all, named: false });
    }
    if natives > 0 && natives < all.len() {
        return Err(StagingError::InvalidBuildpack {
            buildpack: all
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: "Cloud Native Buildpacks and classic buildpacks cannot be mixed in one staging"
                .into(),
        });
    }
    Ok(Candidates { all, named: true })
}

/// The environment of every buildpack step.
fn staging_env(request: &StagingRequest) -> Vec<String> {
    let mut env = vec![
        format!("CF_STACK={}", request.stack),
        "HOME=/home/vcap".to_string(),
        "TMPDIR=/tmp".to_string(),
        "LANG=C.UTF-8".to_string(),
        "STAGING=true".to_string(),
    ];
    env.extend(request.env.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

/// The droplet (and cache) as written on the host.
pub(crate) struct DropletFile {
    pub sha256: String,
    pub size: u64,
    pub cache_written: bool,
}

async fn run(
    session: &Session<'_>,
    request: &StagingRequest,
    candidates: Candidates,
    app: crate::app_bits::AppTar,
    scratch: &Path,
    phases: &mut Vec<(String, Duration)>,
) -> Result<(Built, DropletFile), StagingError> {
    let t = Instant::now();
    copy_in(session, request, &candidates, app, scratch).await?;
    phases.push(("app in".to_string(), t.elapsed()));

    let built = if candidates.all.first().is_some_and(Buildpack::is_native) {
        native::run(session, &candidates, phases).await?
    } else {
        classic::run(session, &candidates, phases).await?
    };
    let mut built = built;
    let t = Instant::now();
    apply_procfile(session, &mut built.process_types).await?;
    if let Some(command) = &request.start_command {
        built
            .process_types
            .insert("web".to_string(), command.clone());
    }
    match built.process_types.get("web") {
        Some(web) => session.say(format!("-----> Start command: {web}")),
        None => session.warn(
            "warning: no start command: add a Procfile with `web: <command>`, or give one with -c",
        ),
    }
    let info = StagingInfo {
        detected_buildpack: built.detected_buildpack.clone(),
        start_command: built.process_types.get("web").cloned().unwrap_or_default(),
        process_types: built.process_types.clone(),
        buildpacks: built.buildpacks.clone(),
    };
    let yaml = info.to_yaml();
    session
        .put(
            Phase::DropletOut,
            "/home/vcap",
            "vcap",
            std::io::Cursor::new(file_tar(&[(
                kiln_droplet::STAGING_INFO,
                yaml.as_bytes(),
                0o644,
            )])),
        )
        .await?;
    let droplet = pack::droplet_out(session, &request.droplet_out, scratch).await?;
    // The droplet is what was asked for; a cache that cannot be written costs only speed.
    let cache_written = match &request.cache_out {
        Some(out) => match pack::cache_out(session, out).await {
            Ok(written) => written,
            Err(e) => {
                warn!(error = %e, "writing the cache");
                session.warn(format!("warning: the build cache was not saved: {e}"));
                false
            }
        },
        None => false,
    };
    session.say(format!(
        "-----> Droplet: {} ({})",
        request.droplet_out.display(),
        human_size(droplet.1)
    ));
    phases.push(("droplet out".to_string(), t.elapsed()));
    Ok((
        built,
        DropletFile {
            sha256: droplet.0,
            size: droplet.1,
            cache_written,
        },
    ))
}

/// Makes the directories, then copies in the app, the buildpacks, the env files and the cache.
async fn copy_in(
    session: &Session<'_>,
    request: &StagingRequest,
    candidates: &Candidates,
    app: crate::app_bits::AppTar,
    scratch: &Path,
) -> Result<(), StagingError> {
    let deps: Vec<String> = (0..candidates.all.len().max(1))
        .map(|i| format!("/home/vcap/deps/{i}"))
        .collect();
    let script = format!(
        "set -e
mkdir -p {APP_DIR} /home/vcap/profile.d /home/vcap/tmp /home/vcap/logs {CACHE_DIR} {ENV_DIR} {PLATFORM_DIR}/env {KILN_DIR} {deps} /tmp/buildpacks
chown vcap:vcap {APP_DIR} /home/vcap/deps /home/vcap/profile.d /home/vcap/tmp /home/vcap/logs {CACHE_DIR} {ENV_DIR} {PLATFORM_DIR} {PLATFORM_DIR}/env {KILN_DIR} {deps}
chmod 755 /tmp/buildpacks
mkdir -m 700 {ROOT_SCRATCH}",
        deps = deps.join(" ")
    );
    let setup = session
        .sh(Step::new(Phase::AppIn, "(setup)", "root", &script).dir("/"))
        .await?;
    if setup.status != 0 {
        return Err(StagingError::Platform {
            reason: format!(
                "the stack {} could not set up the staging directories (is it a stack with a vcap user?): {}",
                request.stack,
                setup.tail.join(" / ")
            ),
        });
    }
    session
        .put(Phase::AppIn, APP_DIR, "vcap", app)
        .await
        .map_err(|e| match e {
            StagingError::Sandbox { source, .. }
                if matches!(*source, kiln_containers::Error::Archive(_)) =>
            {
                StagingError::InvalidApp {
                    reason: format!("{source}; nothing was staged"),
                }
            }
            other => other,
        })?;
    for (k, bp) in candidates.all.iter().enumerate() {
        let (dir, path) = (bp.dir.clone(), scratch.join(format!("buildpack-{k}.tar")));
        let tar = tokio::task::spawn_blocking(move || dir_tar_at(&dir, &path))
            .await
            .map_err(|e| StagingError::Platform {
                reason: format!("archiving buildpack {}: {e}", bp.name),
            })??;
        session
            .put(Phase::AppIn, &buildpack_dir(k), "root", tar)
            .await?;
    }
    let files: Vec<(String, Vec<u8>)> = request
        .env
        .iter()
        .filter(|(k, _)| !k.is_empty() && !k.contains('/') && k != "." && k != "..")
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    let entries: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice(), 0o644))
        .collect();
    session
        .put(
            Phase::AppIn,
            ENV_DIR,
            "vcap",
            std::io::Cursor::new(file_tar(&entries)),
        )
        .await?;
    session
        .put(
            Phase::AppIn,
            &format!("{PLATFORM_DIR}/env"),
            "vcap",
            std::io::Cursor::new(file_tar(&entries)),
        )
        .await?;
    if let Some(cache) = &request.cache_in {
        restore_cache(session, cache).await?;
    }
    Ok(())
}

/// Restores the previous cache. A cache that cannot be restored is dropped with a warning
/// (the staging then runs cold), never a reason to fail.
async fn restore_cache(session: &Session<'_>, cache: &Path) -> Result<(), StagingError> {
    let file = match fs::File::open(cache) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StagingError::io("opening the cache", cache)(e)),
    };
    session.say("-----> Restoring the build cache");
    let options = StreamInOptions {
        user: Some("vcap"),
        // The cache is what an earlier staging of this app left, links and all.
        absolute_links: true,
    };
    let restored = session
        .backend
        .stream_in_with(
            &session.handle,
            CACHE_DIR,
            options,
            GzDecoder::new(std::io::BufReader::new(file)),
        )
        .await;
    if let Err(e) = restored {
        warn!(error = %e, "restoring the cache");
        session.warn(format!(
            "warning: the build cache could not be restored ({e}); staging without it"
        ));
        session
            .sh(Step::new(
                Phase::AppIn,
                "(cache)",
                "vcap",
                "rm -rf /tmp/cache && mkdir /tmp/cache",
            )
            .dir("/"))
            .await?;
    }
    Ok(())
}

/// Reads the app's Procfile after the buildpacks ran; its types override the release's.
async fn apply_procfile(
    session: &Session<'_>,
    types: &mut BTreeMap<String, String>,
) -> Result<(), StagingError> {
    let out = session
        .sh(Step::new(
            Phase::Release,
            "(Procfile)",
            "vcap",
            "if [ -f Procfile ]; then cat Procfile; else exit 3; fi",
        )
        .output(Output::Quiet))
        .await?;
    match out.status {
        0 => {}
        3 => return Ok(()),
        status => {
            return Err(StagingError::InvalidApp {
                reason: format!(
                    "the Procfile could not be read (status {status}): {}",
                    out.tail.join(" / ")
                ),
            })
        }
    }
    let procfile =
        parse_procfile(&out.stdout).map_err(|reason| StagingError::InvalidApp { reason })?;
    if !procfile.is_empty() {
        session.say(format!(
            "-----> Procfile declares types: {}",
            procfile.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    types.extend(procfile);
    Ok(())
}

/// `12.3 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
