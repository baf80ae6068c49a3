//! `RUN`: one container per step, on the stage's stack with the stage's layers stacked over
//! it (read-only, idmapped), the build's limits and egress rules, the command run as the
//! stage's `USER` in its `WORKDIR` with its `ENV` and `ARG`s, its output streamed to the log.
//! Then the container is stopped, what it wrote is exported as the next layer (see
//! `kiln_containers::Backend::export_changes`), and the container destroyed, also when any of
//! this fails, and in the background when the build is dropped (cancelled) while it runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_containers::{Backend, ChangesSummary, ContainerSpec, Limits, NetOutRule, ProcessSpec};

use super::error::DockerfileError;
use super::parse::Command;
use crate::container_guard::ContainerGuard;
use crate::error::{Phase, Tail};
use crate::log::LogSink;
use crate::session::{Output, Session};

/// One `RUN`.
pub(crate) struct RunJob<'a> {
    pub line: usize,
    pub command: &'a Command,
    /// The instruction as written, for errors.
    pub text: String,
    pub handle: String,
    /// The stack at the bottom, by digest.
    pub stack: String,
    /// The stage's layers (overlay form), bottom first.
    pub layers: Vec<PathBuf>,
    /// `KEY=VALUE`: `ENV` and the `ARG`s in scope.
    pub env: Vec<String>,
    /// A user name or uid of the image.
    pub user: String,
    pub workdir: String,
    pub limits: Limits,
    pub net_out: Vec<NetOutRule>,
    /// What is left of the build's time.
    pub timeout: Duration,
    pub sink: LogSink,
}

/// Runs `job` and writes its changes into `out/layer` (overlay form) and `out/oci`.
pub(crate) async fn run_step(
    backend: &Backend,
    job: &RunJob<'_>,
    out: &Path,
) -> Result<ChangesSummary, DockerfileError> {
    let sandbox = |what: &str| {
        let what = what.to_string();
        move |source| DockerfileError::Sandbox {
            line: job.line,
            what,
            source: Box::new(source),
        }
    };
    backend
        .create(ContainerSpec {
            handle: job.handle.clone(),
            stack: job.stack.clone(),
            limits: job.limits,
            layers: job.layers.clone(),
            net_out: job.net_out.clone(),
            properties: [("kiln.dockerfile-step".to_string(), job.line.to_string())].into(),
            ..ContainerSpec::default()
        })
        .await
        .map_err(sandbox("creating the RUN container"))?;
    let mut guard = ContainerGuard::new(backend.clone(), job.handle.clone(), "RUN");
    let result = run_in(backend, job, out).await;
    guard.disarm();
    let destroyed = backend
        .destroy(&job.handle)
        .await
        .map_err(sandbox("destroying the RUN container"));
    let summary = result?;
    destroyed?;
    Ok(summary)
}

async fn run_in(
    backend: &Backend,
    job: &RunJob<'_>,
    out: &Path,
) -> Result<ChangesSummary, DockerfileError> {
    let argv = job.command.argv();
    let Some((path, args)) = argv.split_first() else {
        return Err(DockerfileError::Syntax {
            line: job.line,
            reason: "RUN with an empty command".into(),
        });
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut spec = ProcessSpec::new(path.clone(), &args).user(&job.user);
    spec.env = job.env.clone();
    spec.dir = Some(job.workdir.clone());
    let session = Session::new(
        backend,
        job.handle.clone(),
        job.sink.clone(),
        job.timeout,
        job.limits.memory_bytes,
    );
    let output = session
        .run(Phase::Build, "RUN", spec, Output::Log)
        .await
        .map_err(|source| DockerfileError::Run {
            line: job.line,
            command: job.text.clone(),
            source: Box::new(source),
        })?;
    if output.status != 0 {
        return Err(DockerfileError::RunFailed {
            line: job.line,
            command: job.text.clone(),
            code: output.status,
            tail: Tail(output.tail),
        });
    }
    let sandbox = |what: &'static str| {
        move |source| DockerfileError::Sandbox {
            line: job.line,
            what: what.to_string(),
            source: Box::new(source),
        }
    };
    backend
        .stop(&job.handle, Duration::ZERO)
        .await
        .map_err(sandbox("stopping the RUN container"))?;
    backend
        .export_changes(&job.handle, &out.join("layer"), &out.join("oci"))
        .await
        .map_err(sandbox("exporting what RUN wrote"))
}
