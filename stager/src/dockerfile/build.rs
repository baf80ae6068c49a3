//! Executing a parsed Dockerfile: stage by stage, step by step, each layer-making step looked
//! up in the cache first, then the last stage written as an OCI image layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_containers::{Backend, Limits, NetOutRule};
use kiln_rootfs::layout::{write_layout_with_layers, LayerBlob};
use kiln_rootfs::store::{StackImage, StackStore};
use oci_spec::image::ImageConfiguration;

use super::cache::{Cache, CachedLayer};
use super::config::ImageState;
use super::copy::{copy_into, match_sources, sources_digest, CopyJob};
use super::error::DockerfileError;
use super::fetch::{self, Egress, Fetched};
use super::parse::{is_url, parse, Copy, Dockerfile, Instruction, Stage, Step};
use super::run::{run_step, RunJob};
use super::view::View;
use super::words::{expand, expand_words};
use crate::log::{LogLine, LogSink, Stream};

/// What to build, where, and within which limits.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Names the build's containers (`dockerfile-<id>-<step>`): unique among the backend's
    /// builds; letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// The build context: the app's files.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (read inside it).
    pub dockerfile: PathBuf,
    /// The layer cache, kept between builds.
    pub cache_dir: PathBuf,
    /// Mixed into every cache key: builds with different scopes share the cache's blobs and
    /// base layers but never a step's layer (the staging service gives each app its own, so
    /// no app is handed a `RUN` layer another app made, with its own egress). Empty: none.
    pub cache_scope: String,
    /// Names a `FROM` (or `COPY --from`) may use besides the store's, each mapped to a stack
    /// or image of the store by name or digest (an image fetched for this build, a stack
    /// whose image an operator swapped). Looked up after the earlier stages, before the store.
    pub images: BTreeMap<String, String>,
    /// Where the OCI image layout is written (created if missing).
    pub output_dir: PathBuf,
    /// The ref name of the image in `index.json`.
    pub image_name: String,
    /// `--build-arg`s: values for declared `ARG`s.
    pub build_args: BTreeMap<String, String>,
    /// Limits of each `RUN` container.
    pub limits: Limits,
    /// Egress allowed to `RUN` and to `ADD <url>` downloads (staging's rules; none means no
    /// network).
    pub net_out: Vec<NetOutRule>,
    /// Time for the whole build.
    pub timeout: Duration,
}

impl BuildOptions {
    /// A build of `<context>/Dockerfile` with staging's default limits (1 GiB memory, 4 GiB
    /// disk, 15 minutes) and no network.
    pub fn new(id: &str, context: &Path, cache_dir: &Path, output_dir: &Path) -> Self {
        BuildOptions {
            id: id.to_string(),
            context: context.to_path_buf(),
            dockerfile: PathBuf::from("Dockerfile"),
            cache_dir: cache_dir.to_path_buf(),
            cache_scope: String::new(),
            images: BTreeMap::new(),
            output_dir: output_dir.to_path_buf(),
            image_name: "latest".into(),
            build_args: BTreeMap::new(),
            limits: Limits {
                memory_bytes: 1 << 30,
                disk_bytes: 4 << 30,
                pids: 4096,
                ..Limits::default()
            },
            net_out: Vec::new(),
            timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// The image a build made.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`).
    pub layout: PathBuf,
    /// `sha256:<hex>` of its manifest.
    pub manifest_digest: String,
    /// Its config (`User`, `Env`, `WorkingDir`, `Cmd`, `Entrypoint`, `ExposedPorts`, `Labels`,
    /// `rootfs.diff_ids`).
    pub config: ImageConfiguration,
    /// Its layers, base first.
    pub layers: Vec<LayerBlob>,
    /// Instructions executed, `FROM`s included.
    pub steps: usize,
    /// Layer-making steps taken from the cache.
    pub cached: usize,
    /// `RUN`s that ran.
    pub ran: usize,
}

/// A stage as built so far.
#[derive(Debug, Clone)]
struct StageState {
    name: Option<String>,
    stack: StackImage,
    base_layer: LayerBlob,
    layers: Vec<CachedLayer>,
    config: ImageState,
    /// `ARG`s in scope: name -> value (`None`: declared without one).
    args: Vec<(String, Option<String>)>,
    /// The cache key of the last step.
    key: String,
}

impl StageState {
    fn lookup(&self, name: &str) -> Option<String> {
        self.config.env_value(name).or_else(|| {
            self.args
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| v.clone())
        })
    }

    fn layer_dirs(&self) -> Vec<PathBuf> {
        self.layers.iter().map(|l| l.dir.clone()).collect()
    }

    fn advance(&mut self, parts: &[&[u8]]) {
        self.key = Cache::key(&self.key, parts);
    }
}

/// The build in progress.
struct Builder<'a> {
    backend: &'a Backend,
    store: &'a StackStore,
    opts: &'a BuildOptions,
    sink: LogSink,
    cache: Cache,
    deadline: Instant,
    global: Vec<(String, Option<String>)>,
    stages: Vec<StageState>,
    step: usize,
    total: usize,
    cached: usize,
    ran: usize,
}

/// Builds the Dockerfile of `opts`: see the [module docs](super).
pub async fn build(
    backend: &Backend,
    store: &StackStore,
    opts: &BuildOptions,
    sink: LogSink,
) -> Result<BuiltImage, DockerfileError> {
    let text = read_dockerfile(&opts.context, &opts.dockerfile)?;
    let dockerfile = parse(&text)?;
    let cache = Cache::open(&opts.cache_dir)?;
    let mut builder = Builder {
        backend,
        store,
        opts,
        sink,
        cache,
        deadline: Instant::now() + opts.timeout,
        global: Vec::new(),
        stages: Vec::new(),
        step: 0,
        total: dockerfile.stages.iter().map(|s| s.steps.len() + 1).sum(),
        cached: 0,
        ran: 0,
    };
    builder.run(&dockerfile).await?;
    builder.finish().await
}

/// The text of `dockerfile` (relative to `context`), read inside the context: a symlink
/// cannot point it at a file outside. At most 1 MiB.
pub fn read_dockerfile(context: &Path, dockerfile: &Path) -> Result<String, DockerfileError> {
    let mut tar = Vec::new();
    let in_root = Path::new("/").join(dockerfile);
    kiln_rootfs::archive::archive_from_root(context, &in_root, &mut tar).map_err(|source| {
        DockerfileError::Archive {
            line: 0,
            what: format!("reading {}", dockerfile.display()),
            source: Box::new(source),
        }
    })?;
    let mut archive = tar::Archive::new(&tar[..]);
    let mut text = String::new();
    if let Some(Ok(mut entry)) = archive.entries().ok().and_then(|mut e| e.next()) {
        if entry.header().entry_type().is_file() && entry.size() <= 1 << 20 {
            std::io::Read::read_to_string(&mut entry, &mut text)
                .map_err(DockerfileError::io("reading", context.join(dockerfile)))?;
            return Ok(text);
        }
    }
    Err(DockerfileError::Syntax {
        line: 0,
        reason: format!("{} is not a file of at most 1 MiB", dockerfile.display()),
    })
}

impl Builder<'_> {
    fn say(&self, text: String) {
        (self.sink)(&LogLine {
            stream: Stream::Out,
            text,
        });
    }

    fn announce(&mut self, text: &str) {
        self.step += 1;
        self.say(format!("Step {}/{} : {text}", self.step, self.total));
    }

    async fn run(&mut self, dockerfile: &Dockerfile) -> Result<(), DockerfileError> {
        for arg in &dockerfile.global_args {
            let value = self.arg_value(&arg.name, arg.default.as_deref(), None, 0)?;
            self.global.push((arg.name.clone(), value));
        }
        for stage in &dockerfile.stages {
            let mut state = self.from(stage).await?;
            for step in &stage.steps {
                self.announce(&step.text);
                self.step_in(&mut state, step).await?;
            }
            self.stages.push(state);
        }
        Ok(())
    }

    /// The value of `ARG name[=default]`: a build arg, else the default (expanded), else
    /// `inherited` (a global ARG's).
    fn arg_value(
        &self,
        name: &str,
        default: Option<&str>,
        state: Option<&StageState>,
        line: usize,
    ) -> Result<Option<String>, DockerfileError> {
        if let Some(v) = self.opts.build_args.get(name) {
            return Ok(Some(v.clone()));
        }
        if let Some(raw) = default {
            let global = |n: &str| self.global_value(n);
            let staged = |n: &str| state.and_then(|s| s.lookup(n));
            let lookup: &dyn Fn(&str) -> Option<String> = match state {
                Some(_) => &staged,
                None => &global,
            };
            return expand(raw, lookup)
                .map(Some)
                .map_err(|reason| DockerfileError::Syntax { line, reason });
        }
        Ok(self.global_value(name))
    }

    fn global_value(&self, name: &str) -> Option<String> {
        self.global
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    }

    async fn from(&mut self, stage: &Stage) -> Result<StageState, DockerfileError> {
        let alias = stage
            .name
            .as_ref()
            .map(|n| format!(" AS {n}"))
            .unwrap_or_default();
        self.announce(&format!("FROM {}{alias}", stage.from));
        let line = stage.line;
        let image = expand(&stage.from, &|n: &str| self.global_value(n))
            .map_err(|reason| DockerfileError::Syntax { line, reason })?;
        if let Some(earlier) = self.stage_by_ref(&image) {
            let mut state = earlier.clone();
            state.name = stage.name.clone();
            state.args.clear();
            state.config.cmd_set_here = false;
            return Ok(state);
        }
        let stack =
            self.store
                .resolve(self.reference(&image))
                .map_err(|e| DockerfileError::Invalid {
                    line,
                    instruction: "FROM",
                    reason: format!(
                "{image} is neither an earlier stage nor a stack or image of this platform ({e})"
            ),
                })?;
        let cache = self.cache.clone();
        let (digest, rootfs) = (stack.digest.clone(), stack.rootfs.clone());
        let base_layer =
            tokio::task::spawn_blocking(move || cache.base(&digest, &rootfs)).await??;
        Ok(StageState {
            name: stage.name.clone(),
            config: ImageState::from_stack(&stack),
            key: Cache::key(
                "base",
                &[stack.digest.as_bytes(), self.opts.cache_scope.as_bytes()],
            ),
            stack,
            base_layer,
            layers: Vec::new(),
            args: Vec::new(),
        })
    }

    /// What the store is asked for when a `FROM` names `image`: its mapping in
    /// [`BuildOptions::images`], else the name itself.
    fn reference<'r>(&'r self, image: &'r str) -> &'r str {
        self.opts.images.get(image).map_or(image, String::as_str)
    }

    /// An earlier stage by name or index.
    fn stage_by_ref(&self, r: &str) -> Option<&StageState> {
        let lower = r.to_lowercase();
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| r.parse::<usize>().ok().and_then(|i| self.stages.get(i)))
    }

    async fn step_in(&mut self, st: &mut StageState, step: &Step) -> Result<(), DockerfileError> {
        let line = step.line;
        let syntax = |reason: String| DockerfileError::Syntax { line, reason };
        let expand_in =
            |st: &StageState, raw: &str| expand(raw, &|n: &str| st.lookup(n)).map_err(syntax);
        match &step.instruction {
            Instruction::Arg(arg) => {
                let value = self.arg_value(&arg.name, arg.default.as_deref(), Some(st), line)?;
                let text = format!("{}={}", arg.name, value.clone().unwrap_or_default());
                st.args.push((arg.name.clone(), value));
                st.advance(&[b"ARG", text.as_bytes()]);
            }
            Instruction::Env(pairs) => {
                let mut text = String::new();
                for (k, raw) in pairs {
                    let v = expand_in(st, raw)?;
                    text.push_str(&format!("{k}={v}\0"));
                    st.config.set_env(k, &v);
                }
                st.advance(&[b"ENV", text.as_bytes()]);
            }
            Instruction::Label(pairs) => {
                for (k, v) in pairs {
                    let (k, v) = (expand_in(st, k)?, expand_in(st, v)?);
                    st.advance(&[b"LABEL", k.as_bytes(), v.as_bytes()]);
                    st.config.labels.insert(k, v);
                }
            }
            Instruction::User(raw) => {
                let user = expand_in(st, raw)?;
                if user.is_empty() {
                    return Err(syntax("USER needs a user name or uid".into()));
                }
                st.advance(&[b"USER", user.as_bytes()]);
                st.config.user = Some(user);
            }
            Instruction::Expose(raw) => {
                let words = expand_words(raw, &|n: &str| st.lookup(n)).map_err(syntax)?;
                for word in words {
                    let port = normalize_port(&word).ok_or_else(|| {
                        syntax(format!(
                            "EXPOSE {word}: not a port (8080, 8080/tcp, 53/udp)"
                        ))
                    })?;
                    st.advance(&[b"EXPOSE", port.as_bytes()]);
                    st.config.exposed.insert(port);
                }
            }
            Instruction::Cmd(cmd) => {
                let argv = cmd.argv();
                st.advance(&[b"CMD", argv.join("\0").as_bytes()]);
                st.config.cmd = Some(argv);
                st.config.cmd_set_here = true;
            }
            Instruction::Entrypoint(ep) => {
                let argv = ep.argv();
                st.advance(&[b"ENTRYPOINT", argv.join("\0").as_bytes()]);
                st.config.entrypoint = Some(argv);
                if !st.config.cmd_set_here {
                    st.config.cmd = None;
                }
            }
            Instruction::Workdir(raw) => {
                let dir = absolute(st.config.workdir.as_deref(), &expand_in(st, raw)?);
                st.advance(&[b"WORKDIR", dir.as_bytes()]);
                st.config.workdir = Some(dir.clone());
                self.workdir_layer(st, &dir).await?;
            }
            Instruction::Run(command) => {
                let mut args: Vec<String> = st
                    .args
                    .iter()
                    .filter_map(|(n, v)| v.as_ref().map(|v| format!("{n}={v}")))
                    .collect();
                args.sort();
                let argv = command.argv();
                st.advance(&[
                    b"RUN",
                    argv.join("\0").as_bytes(),
                    args.join("\0").as_bytes(),
                ]);
                if let Some(layer) = self.cache.get(&st.key)? {
                    self.hit(st, layer);
                    return Ok(());
                }
                let user = st.config.user.clone().unwrap_or_else(|| "root".into());
                let (user, group) = match user.split_once(':') {
                    Some((u, g)) => (u.to_string(), Some(g.to_string())),
                    None => (user, None),
                };
                if let Some(group) = group.filter(|g| *g != user) {
                    self.say(format!(
                        " ---> note: RUN runs with {user}'s own group, not {group}"
                    ));
                }
                let mut env = st.config.env_list();
                for (n, v) in &st.args {
                    if let (Some(v), None) = (v, st.config.env_value(n)) {
                        env.push(format!("{n}={v}"));
                    }
                }
                let job = RunJob {
                    line,
                    command,
                    text: step
                        .text
                        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                        .trim()
                        .to_string(),
                    handle: self.handle(),
                    stack: st.stack.digest.clone(),
                    layers: st.layer_dirs(),
                    env,
                    user,
                    workdir: st.config.workdir.clone().unwrap_or_else(|| "/".into()),
                    limits: self.opts.limits,
                    net_out: self.opts.net_out.clone(),
                    timeout: self.deadline.saturating_duration_since(Instant::now()),
                    sink: self.sink.clone(),
                };
                let scratch = self.cache.scratch()?;
                run_step(self.backend, &job, scratch.path()).await?;
                self.ran += 1;
                let (cache, key) = (self.cache.clone(), st.key.clone());
                let layer =
                    tokio::task::spawn_blocking(move || cache.put(&key, scratch, true, u64::MAX))
                        .await??;
                self.say(format!(
                    " ---> {}",
                    short(layer.blob.descriptor.digest().as_ref())
                ));
                st.layers.push(layer);
            }
            Instruction::Copy(copy) => self.copy(st, step, copy).await?,
        }
        Ok(())
    }

    fn hit(&mut self, st: &mut StageState, layer: CachedLayer) {
        self.cached += 1;
        self.say(format!(
            " ---> CACHED {}",
            short(layer.blob.descriptor.digest().as_ref())
        ));
        st.layers.push(layer);
    }

    /// A container handle for the current step.
    fn handle(&self) -> String {
        let id: String = self
            .opts
            .id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(40)
            .collect();
        format!("dockerfile-{id}-{}", self.step)
    }

    /// Makes `dir` (absolute) if the stage's tree lacks it: a layer with it, owned by root.
    async fn workdir_layer(
        &mut self,
        st: &mut StageState,
        dir: &str,
    ) -> Result<(), DockerfileError> {
        if let Some(layer) = self.cache.get(&st.key)? {
            self.hit(st, layer);
            return Ok(());
        }
        let (cache, key) = (self.cache.clone(), st.key.clone());
        let (base, layers) = (st.stack.rootfs.clone(), st.layer_dirs());
        let dir = dir.to_string();
        let made =
            tokio::task::spawn_blocking(move || -> Result<Option<CachedLayer>, DockerfileError> {
                let view = View::open(&base, &layers, &cache.root().join("tmp"))?;
                let rel = view.resolve(&dir, true);
                if view.metadata(&rel).is_some_and(|m| m.is_dir()) {
                    return Ok(None);
                }
                drop(view);
                let scratch = cache.scratch()?;
                let path = scratch.path().join("layer").join(&rel);
                std::fs::create_dir_all(&path).map_err(DockerfileError::io("creating", &path))?;
                cache.put(&key, scratch, false, 0).map(Some)
            })
            .await??;
        if let Some(layer) = made {
            st.layers.push(layer);
        }
        Ok(())
    }

    async fn copy(
        &mut self,
        st: &mut StageState,
        step: &Step,
        copy: &Copy,
    ) -> Result<(), DockerfileError> {
        let line = step.line;
        let what = if copy.add { "ADD" } else { "COPY" };
        let syntax = |reason: String| DockerfileError::Syntax { line, reason };
        let lookup = |n: &str| st.lookup(n);
        let mut sources = Vec::new();
        for s in &copy.sources {
            sources.extend(expand_words(s, &lookup).map_err(syntax)?);
        }
        let dest_raw = expand(&copy.dest, &lookup).map_err(syntax)?;
        let url = sources.iter().find(|s| is_url(s)).cloned();
        if let Some(url) = &url {
            if !copy.add {
                return Err(syntax(format!(
                    "COPY cannot copy from a URL ({url}); only from the app's files"
                )));
            }
            if sources.len() > 1 || copy.from.is_some() {
                return Err(DockerfileError::Invalid {
                    line,
                    instruction: what,
                    reason: format!(
                        "{url} must be the only source of its ADD; write one ADD per URL"
                    ),
                });
            }
        }
        let chown = copy
            .chown
            .as_deref()
            .map(|c| expand(c, &lookup))
            .transpose()
            .map_err(syntax)?;
        let mode = match copy.chmod.as_deref() {
            None => None,
            Some(raw) => {
                let text = expand(raw, &lookup).map_err(syntax)?;
                Some(
                    u32::from_str_radix(&text, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            syntax(format!("{what} --chmod={text}: not an octal mode"))
                        })?,
                )
            }
        };
        // Where sources come from, and what identifies their content in the key.
        let from = copy
            .from
            .as_deref()
            .map(|f| expand(f, &lookup))
            .transpose()
            .map_err(syntax)?;
        let (root, layers, identity): (PathBuf, Vec<PathBuf>, Option<String>) = match &from {
            None => (self.opts.context.clone(), Vec::new(), None),
            Some(f) => match self.stage_by_ref(f) {
                Some(s) => (s.stack.rootfs.clone(), s.layer_dirs(), Some(s.key.clone())),
                None => {
                    let image = self.store.resolve(self.reference(f)).map_err(|e| DockerfileError::Invalid {
                        line,
                        instruction: what,
                        reason: format!("--from={f} is neither an earlier stage nor an image of this platform ({e})"),
                    })?;
                    (image.rootfs.clone(), Vec::new(), Some(image.digest.clone()))
                }
            },
        };
        let into_dir = dest_raw.ends_with('/')
            || (url.is_none()
                && (sources.len() > 1 || copy.sources.iter().any(|s| s.contains(['*', '?', '[']))));
        let dest = absolute(st.config.workdir.as_deref(), &dest_raw);
        let download = match &url {
            Some(url) => Some(self.download(line, url).await?),
            None => None,
        };
        let cache = self.cache.clone();
        let (base, stage_layers, parent_key) =
            (st.stack.rootfs.clone(), st.layer_dirs(), st.key.clone());
        let (extract, text) = (copy.add, step.text.clone());
        let result = tokio::task::spawn_blocking(
            move || -> Result<(String, Option<CachedLayer>, CopyParts), DockerfileError> {
                let scratch_dir = cache.root().join("tmp");
                // Sources from a stage are read from its tree; a download from its dir.
                let source_view = match (&download, &identity) {
                    (Some(d), _) => View::plain(d.dir.path()),
                    (None, Some(_)) => View::open(&root, &layers, &scratch_dir)?,
                    (None, None) => View::plain(&root),
                };
                let matched = match &download {
                    Some(d) => vec![PathBuf::from(&d.file)],
                    None => match_sources(source_view.root(), &sources, line, what)?,
                };
                let content = match (&download, &identity) {
                    (Some(d), _) => format!("{}\0{}", d.url, d.fetched.digest),
                    (None, Some(id)) => id.clone(),
                    (None, None) => sources_digest(source_view.root(), &matched, line, what)?.0,
                };
                let key = Cache::key(
                    &parent_key,
                    &[
                        what.as_bytes(),
                        text.as_bytes(),
                        dest.as_bytes(),
                        content.as_bytes(),
                    ],
                );
                if let Some(layer) = cache.get(&key)? {
                    return Ok((key, Some(layer), CopyParts::default()));
                }
                let latest = match &download {
                    Some(d) => d.prepare(mode)?,
                    None => sources_digest(source_view.root(), &matched, line, what)?.1,
                };
                let view = View::open(&base, &stage_layers, &scratch_dir)?;
                let dest_rel = view.resolve(&dest, true);
                let into_dir = into_dir || view.metadata(&dest_rel).is_some_and(|m| m.is_dir());
                if let Some(d) = download.as_ref().filter(|d| into_dir && !d.named) {
                    return Err(DockerfileError::Invalid {
                        line,
                        instruction: what,
                        reason: format!(
                            "{} names no file to save it as; give the destination's file name \
                             (ADD {} {}/<name>)",
                            d.url,
                            d.url,
                            dest_raw.trim_end_matches('/')
                        ),
                    });
                }
                let owner = match chown.as_deref() {
                    Some(spec) => Some(resolve_owner(&view, spec).ok_or_else(|| {
                        DockerfileError::Invalid {
                            line,
                            instruction: what,
                            reason: format!("--chown={spec}: no such user or group in the image"),
                        }
                    })?),
                    None if identity.is_none() => Some((0, 0)),
                    None => None,
                };
                let scratch = cache.scratch()?;
                let layer_dir = scratch.path().join("layer");
                std::fs::create_dir(&layer_dir)
                    .map_err(DockerfileError::io("creating", &layer_dir))?;
                let job = CopyJob {
                    line,
                    what,
                    root: source_view.root(),
                    sources: matched,
                    dest: dest_rel,
                    into_dir,
                    owner,
                    // A download has its mode already, and is never extracted.
                    mode: mode.filter(|_| download.is_none()),
                    extract_archives: extract && download.is_none(),
                };
                copy_into(&job, &view, &layer_dir)?;
                drop(view);
                drop(source_view);
                drop(download);
                let layer = cache.put(&key, scratch, false, latest)?;
                Ok((key, None, CopyParts { made: Some(layer) }))
            },
        )
        .await??;
        let (key, hit, parts) = result;
        st.key = key;
        match (hit, parts.made) {
            (Some(layer), _) => self.hit(st, layer),
            (None, Some(layer)) => {
                self.say(format!(
                    " ---> {}",
                    short(layer.blob.descriptor.digest().as_ref())
                ));
                st.layers.push(layer);
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// Downloads `url` for `ADD` (see [`fetch`]) into a scratch dir and logs its size.
    async fn download(&self, line: usize, url: &str) -> Result<Download, DockerfileError> {
        let egress =
            Egress::new(&self.opts.net_out, &self.backend.config().network_pool).map_err(|e| {
                DockerfileError::Fetch {
                    line,
                    url: url.to_string(),
                    reason: format!("cannot list the staging host's addresses: {e}"),
                }
            })?;
        let dir = self.cache.scratch()?;
        let name = fetch::file_name(url);
        let file = name.clone().unwrap_or_else(|| "download".into());
        let check = |addr| egress.check(addr);
        let fetched = fetch::fetch(
            line,
            url,
            &check,
            self.opts.limits.disk_bytes,
            self.deadline,
            &dir.path().join(&file),
        )
        .await?;
        self.say(format!(
            " ---> downloaded {} bytes ({})",
            fetched.bytes,
            short(&fetched.digest)
        ));
        Ok(Download {
            url: url.to_string(),
            dir,
            file,
            named: name.is_some(),
            fetched,
        })
    }

    /// Writes the last stage as an OCI image layout.
    async fn finish(self) -> Result<BuiltImage, DockerfileError> {
        let Some(last) = self.stages.last() else {
            return Err(DockerfileError::Syntax {
                line: 1,
                reason: "the Dockerfile has no FROM instruction".into(),
            });
        };
        let mut layers = vec![last.base_layer.clone()];
        layers.extend(last.layers.iter().map(|l| l.blob.clone()));
        let mut config =
            last.config
                .to_oci()
                .map_err(|source| kiln_rootfs::layout::LayoutError::Build {
                    what: "image config",
                    source,
                })?;
        let out = self.opts.output_dir.clone();
        let name = self.opts.image_name.clone();
        let cache = self.cache.clone();
        let written = {
            let (layers, config) = (layers.clone(), config.clone());
            tokio::task::spawn_blocking(move || -> Result<_, DockerfileError> {
                let blobs = out.join("blobs/sha256");
                std::fs::create_dir_all(&blobs).map_err(DockerfileError::io("creating", &blobs))?;
                for layer in &layers {
                    let digest = layer.descriptor.digest().to_string();
                    let from = cache.blob_path(&digest);
                    let to = blobs.join(digest.trim_start_matches("sha256:"));
                    if to.exists() {
                        continue;
                    }
                    if std::fs::hard_link(&from, &to).is_err() {
                        std::fs::copy(&from, &to).map_err(DockerfileError::io("copying", &from))?;
                    }
                }
                Ok(write_layout_with_layers(&out, &name, config, &layers)?)
            })
            .await??
        };
        config
            .rootfs_mut()
            .set_diff_ids(layers.iter().map(|l| l.diff_id.clone()).collect());
        self.say(format!("Successfully built {}", written.manifest_digest));
        Ok(BuiltImage {
            layout: written.dir,
            manifest_digest: written.manifest_digest,
            config,
            layers,
            steps: self.step,
            cached: self.cached,
            ran: self.ran,
        })
    }
}

#[derive(Default)]
struct CopyParts {
    made: Option<CachedLayer>,
}

/// The file an `ADD <url>` downloaded, in a scratch dir of its own (removed on drop).
#[derive(Debug)]
struct Download {
    /// The URL, variables substituted.
    url: String,
    dir: tempfile::TempDir,
    /// The file's name in `dir`: the URL's last path segment, else `download`.
    file: String,
    /// Whether the URL gave the name.
    named: bool,
    fetched: Fetched,
}

impl Download {
    /// Gives the file `--chmod`'s mode, else Docker's for downloads (0600), and mtime 0, so
    /// that one content always makes one layer; returns that mtime (the layer's clamp).
    fn prepare(&self, chmod: Option<u32>) -> Result<u64, DockerfileError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.path().join(&self.file);
        let mode = chmod.unwrap_or(0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(DockerfileError::io("chmod", &path))?;
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(std::time::UNIX_EPOCH))
            .map_err(DockerfileError::io("setting the time of", &path))?;
        Ok(0)
    }
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// `path` made absolute against `workdir` and cleaned lexically.
fn absolute(workdir: Option<&str>, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", workdir.unwrap_or("/"))
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `8080` -> `8080/tcp`; `53/udp` stays.
fn normalize_port(word: &str) -> Option<String> {
    let (port, proto) = word.split_once('/').unwrap_or((word, "tcp"));
    let proto = proto.to_ascii_lowercase();
    (port.parse::<u16>().is_ok() && matches!(proto.as_str(), "tcp" | "udp" | "sctp"))
        .then(|| format!("{port}/{proto}"))
}

/// `user[:group]` by name (the image's `/etc/passwd` and `/etc/group`) or number.
fn resolve_owner(view: &View, spec: &str) -> Option<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = view.read("/etc/passwd").unwrap_or_default();
    let find = |text: &str, name: &str, field: usize| {
        text.lines().find_map(|l| {
            let cols: Vec<&str> = l.split(':').collect();
            (cols.first() == Some(&name))
                .then(|| cols.get(field).and_then(|v| v.parse::<u32>().ok()))
                .flatten()
        })
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => (find(&passwd, user, 2)?, find(&passwd, user, 3)?),
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => find(&view.read("/etc/group").unwrap_or_default(), g, 2)?,
        },
    };
    Some((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ports() {
        assert_eq!(absolute(Some("/app"), "src/../bin"), "/app/bin");
        assert_eq!(absolute(None, "x"), "/x");
        assert_eq!(absolute(Some("/app"), "/srv/"), "/srv");
        assert_eq!(normalize_port("8080").as_deref(), Some("8080/tcp"));
        assert_eq!(normalize_port("53/UDP").as_deref(), Some("53/udp"));
        assert_eq!(normalize_port("http"), None);
    }
}
