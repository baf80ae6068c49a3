//! The `bookworm` stack: a Debian 12 userland for apps, built with `debootstrap
//! --variant=minbase` from Debian's archive plus [`PACKAGES`] installed with `apt-get` inside
//! the new tree, a `vcap` user (2000:2000, home `/home/vcap`, shell `/bin/bash`), the
//! `en_US.UTF-8` locale generated next to glibc's built-in `C.UTF-8`, and no apt caches,
//! package lists, documentation (but each package's copyright), man pages or translations.
//!
//! The build needs root and the network (Debian's archive, nothing else) and takes minutes;
//! callers normally go through [`super::cached`], which builds it once per machine.
//!
//! # Steps
//!
//! 1. `debootstrap --variant=minbase bookworm <tree> <mirror>` in a scratch directory next to
//!    the output, run in a private mount namespace (`unshare --mount`), so the `/proc` and
//!    `/sys` it mounts in the tree vanish with it, even if it is killed.
//! 2. `apt-get install --no-install-recommends` of [`PACKAGES`] in the tree (debootstrap's own
//!    resolver does not follow `Provides`, which `npm`'s dependencies need), again in a
//!    private mount namespace with its own `/proc`, with a `policy-rc.d` that starts no
//!    service, and a dpkg config that leaves documentation out from then on.
//! 3. Locale, `vcap`, placeholder `/etc/hosts`, `/etc/hostname` and an empty
//!    `/etc/resolv.conf` (debootstrap copies the host's; the container runtime provides them).
//! 4. The package list (`dpkg-query -W`), then the clean-up, then checks run in the tree
//!    (`busybox --list` has `httpd`; python3 imports `ssl` and `venv`; node and npm run).
//! 5. One gzip layer from the tree ([`crate::layout::write_tree_layer`]): device nodes left
//!    out (`/dev` is empty), ownership, setuid bits, hard links and symlinks kept, mtimes
//!    clamped to the archive's `Release` date (files from packages keep theirs, so Python's
//!    `.pyc` files still match their sources; files made during the build get that date).
//!
//! The scratch directory is removed afterwards, on success or failure.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use oci_spec::image::{Arch, ConfigBuilder, ImageConfiguration, ImageConfigurationBuilder, Os};

use super::scratch::{remove_children, remove_stale, remove_tree, Scratch};
use super::{RecipeError, StackLayout};
use crate::layout::{write_layout_with_layers, write_tree_layer, LayoutError};
use crate::time::{parse_rfc2822_utc, rfc3339};

/// Bump whenever the recipe's output changes, so [`super::cached`] builds it again.
pub const RECIPE_VERSION: u32 = 1;
/// The Debian suite.
pub const SUITE: &str = "bookworm";
/// Debian's archive, the default mirror.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Installed on top of debootstrap's minbase (with their dependencies, without recommends).
/// `busybox` is Debian's dynamic one: its `httpd` applet is the stack's small web server.
pub const PACKAGES: &[&str] = &[
    "ca-certificates",
    "bash",
    "python3",
    "python3-pip",
    "python3-venv",
    "nodejs",
    "npm",
    "busybox",
    "tzdata",
    "locales",
];
/// Image config label: the stack's name (`bookworm`).
pub const LABEL_NAME: &str = "org.kiln.stack.name";
/// Image config label: every installed package as `name=version`, one a line, sorted.
pub const LABEL_PACKAGES: &str = "org.kiln.stack.packages";
/// Image config label: [`RECIPE_VERSION`].
pub const LABEL_RECIPE_VERSION: &str = "org.kiln.stack.recipe-version";
/// Image config label: the suite and mirror it was built from.
pub const LABEL_SOURCE: &str = "org.kiln.stack.source";
/// The image config's `Env`.
pub const ENV: &[&str] = &[
    "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    "LANG=C.UTF-8",
];

const VCAP: u32 = 2000;
const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
const CHROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How many lines of a failed command's output an error carries.
const TAIL_LINES: usize = 25;
/// Keeps documentation out of packages installed after debootstrap (and in derived images).
const DPKG_SLIM: &str =
    "# Kiln's bookworm stack: no documentation (but copyrights), man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
";
const POLICY_RC_D: &str = "#!/bin/sh\n# Kiln's stack build: start no services.\nexit 101\n";
/// Environment variables passed through to the tools (apt honours them).
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// How to build the `bookworm` stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookwormOptions {
    /// The Debian mirror ([`MIRROR`] by default).
    pub mirror: String,
    /// The debootstrap to run; `None` looks in `PATH`, `/usr/sbin` and `/sbin`.
    pub debootstrap: Option<PathBuf>,
}

impl Default for BookwormOptions {
    fn default() -> Self {
        Self {
            mirror: MIRROR.to_string(),
            debootstrap: None,
        }
    }
}

/// Builds the `bookworm` stack into `out_dir` (created if missing) with the default options,
/// logging progress at `info` level. Needs root and Debian's archive; takes minutes.
pub fn build_bookworm(out_dir: &Path) -> Result<StackLayout, RecipeError> {
    build_bookworm_with(out_dir, &BookwormOptions::default(), &mut |line| {
        tracing::info!(recipe = "bookworm", "{line}");
    })
}

/// Builds the `bookworm` stack into `out_dir` (created if missing), passing every line of
/// progress (phases, and the output of debootstrap and apt-get) to `progress`. The tree is
/// built in a scratch directory next to `out_dir`, removed afterwards even on failure.
pub fn build_bookworm_with(
    out_dir: &Path,
    opts: &BookwormOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<StackLayout, RecipeError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RecipeError::NeedsRoot { recipe: "bookworm" });
    }
    let debootstrap = match &opts.debootstrap {
        Some(path) if path.is_file() => path.clone(),
        Some(_) => return Err(missing("debootstrap", "debootstrap")),
        None => find_program("debootstrap").ok_or_else(|| missing("debootstrap", "debootstrap"))?,
    };
    let tools = Tools {
        unshare: find_program("unshare").ok_or_else(|| missing("unshare", "util-linux"))?,
        chroot: find_program("chroot").ok_or_else(|| missing("chroot", "coreutils"))?,
    };
    let started = Instant::now();
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let out_name = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let prefix = format!(".{out_name}.bookworm-");
    remove_stale(parent, &prefix);
    let scratch = Scratch::create(parent, &prefix).map_err(io_err(parent))?;
    let tree = scratch.path().join("tree");

    let phase = |progress: &mut dyn FnMut(&str), text: &str| {
        progress(&format!(
            "==> [{:>4} s] {text}",
            started.elapsed().as_secs()
        ));
    };
    phase(
        progress,
        &format!(
            "[1/6] debootstrap --variant=minbase {SUITE} from {}",
            opts.mirror
        ),
    );
    let mut cmd = Command::new(&tools.unshare);
    cmd.args(["--mount", "--propagation", "private", "--"])
        .arg(&debootstrap)
        .args(["--variant=minbase", SUITE])
        .arg(&tree)
        .arg(&opts.mirror)
        .env("PATH", CHROOT_PATH)
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_streamed(cmd, "debootstrap", progress, |status, output_tail| {
        RecipeError::Debootstrap {
            status,
            log_tail: debootstrap_log_tail(&tree, &output_tail),
        }
    })?;

    let release = release_date(&tree).unwrap_or_else(|| {
        progress("warning: no Date in the suite's Release file; clamping mtimes to now");
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let env = ChrootEnv::new(release);

    phase(
        progress,
        &format!(
            "[2/6] apt-get install {} (with dependencies)",
            PACKAGES.join(" ")
        ),
    );
    write_file(&tree, "etc/dpkg/dpkg.cfg.d/kiln-slim", DPKG_SLIM, 0o644)?;
    write_file(&tree, "usr/sbin/policy-rc.d", POLICY_RC_D, 0o755)?;
    let mut cmd = Command::new(&tools.unshare);
    cmd.args(["--mount", "--propagation", "private"])
        .arg(format!("--mount-proc={}", tree.join("proc").display()))
        .arg("--")
        .arg(&tools.chroot)
        .arg(&tree)
        .args([
            "apt-get",
            "install",
            "--yes",
            "--no-install-recommends",
            "-o",
            "Dpkg::Use-Pty=0",
        ])
        .args(PACKAGES);
    env.apply(&mut cmd);
    run_streamed(cmd, "apt-get install", progress, |status, output_tail| {
        RecipeError::Step {
            step: "apt-get install in the new tree".to_string(),
            status,
            output_tail,
        }
    })?;
    remove_tree(&tree.join("usr/sbin/policy-rc.d")).map_err(io_err(&tree))?;

    phase(progress, "[3/6] locales, the vcap user, /etc placeholders");
    configure(&tree, &tools, &env, progress)?;

    phase(progress, "[4/6] package list, clean-up, checks");
    let packages = package_list(&tree, &tools, &env)?;
    progress(&format!("{} packages installed", packages.lines().count()));
    clean(&tree)?;
    check(&tree, &tools, &env)?;
    // Last, after the checks ran in the tree: runc provides /dev.
    remove_children(&tree.join("dev"), |_| true).map_err(io_err(&tree.join("dev")))?;

    phase(progress, "[5/6] writing the layer (gzip)");
    let layer = write_tree_layer(out_dir, &tree, release)?;
    let s = &layer.summary;
    progress(&format!(
        "layer: {} files, {} dirs, {} symlinks, {} hard links, {} skipped; {} MiB of content, \
         {} MiB compressed",
        s.files,
        s.dirs,
        s.symlinks,
        s.hardlinks,
        s.skipped,
        s.bytes >> 20,
        layer.blob.descriptor.size() >> 20
    ));

    phase(progress, "[6/6] image config and manifest");
    let config = image_config(&packages, &opts.mirror, release)?;
    let layout = write_layout_with_layers(out_dir, "bookworm", config, &[layer.blob])?;
    drop(scratch);
    progress(&format!(
        "built bookworm in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        layout.manifest_digest
    ));
    Ok(layout)
}

/// The host tools the build runs.
struct Tools {
    unshare: PathBuf,
    chroot: PathBuf,
}

/// The environment of every command run in the tree.
struct ChrootEnv {
    vars: Vec<(String, String)>,
}

impl ChrootEnv {
    fn new(source_date_epoch: u64) -> Self {
        let mut vars: Vec<(String, String)> = [
            ("PATH", CHROOT_PATH),
            ("LC_ALL", "C"),
            ("HOME", "/root"),
            ("DEBIAN_FRONTEND", "noninteractive"),
            ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.push((
            "SOURCE_DATE_EPOCH".to_string(),
            source_date_epoch.to_string(),
        ));
        for var in PROXY_VARS {
            if let Ok(value) = std::env::var(var) {
                vars.push((var.to_string(), value));
            }
        }
        Self { vars }
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env_clear();
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
    }

    /// `chroot <tree> <args...>` with this environment.
    fn chroot(&self, tools: &Tools, tree: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&tools.chroot);
        cmd.arg(tree).args(args);
        self.apply(&mut cmd);
        cmd
    }
}

fn missing(program: &'static str, package: &'static str) -> RecipeError {
    RecipeError::ToolMissing { program, package }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecipeError + '_ {
    move |source| RecipeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `program` in `PATH`, else in `/usr/sbin` or `/sbin` (a non-login root shell may lack them).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Writes `content` to `rel` below `tree` with `mode`, creating parent directories.
fn write_file(tree: &Path, rel: &str, content: &str, mode: u32) -> Result<(), RecipeError> {
    let path = tree.join(rel);
    let result = (|| {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        // Never write through a symlink the packages left there.
        match fs::symlink_metadata(&path) {
            Ok(m) if !m.is_file() => remove_tree(&path)?,
            _ => {}
        }
        fs::write(&path, content)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
    })();
    result.map_err(io_err(&path))
}

/// Runs `cmd` with stdout and stderr on one pipe, passing each line to `progress`; on a
/// non-zero exit builds the error from the exit status and the last lines of output.
fn run_streamed(
    mut cmd: Command,
    program: &str,
    progress: &mut dyn FnMut(&str),
    on_failure: impl FnOnce(String, String) -> RecipeError,
) -> Result<(), RecipeError> {
    let spawn_err = |source| RecipeError::Spawn {
        program: program.to_string(),
        source,
    };
    let (reader, writer) = io::pipe().map_err(spawn_err)?;
    let writer2 = writer.try_clone().map_err(spawn_err)?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The command holds the pipe's write ends: drop them, or the reads below never see EOF.
    drop(cmd);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_err(e));
            }
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        progress(line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
    }
    let status = child.wait().map_err(spawn_err)?;
    if status.success() {
        Ok(())
    } else {
        Err(on_failure(describe(status), Vec::from(tail).join("\n")))
    }
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is a [`RecipeError::Step`]
/// carrying the end of its stderr.
fn run_captured(mut cmd: Command, step: &str) -> Result<String, RecipeError> {
    let out = cmd.output().map_err(|source| RecipeError::Spawn {
        program: step.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(RecipeError::Step {
            step: step.to_string(),
            status: describe(out.status),
            output_tail: last_lines(&String::from_utf8_lossy(&out.stderr), TAIL_LINES),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(status: ExitStatus) -> String {
    status.to_string()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The end of debootstrap's own log (left in the tree on failure; it holds dpkg's errors),
/// after the end of what it printed.
fn debootstrap_log_tail(tree: &Path, output_tail: &str) -> String {
    let log = fs::read(tree.join("debootstrap/debootstrap.log"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let printed = last_lines(output_tail, 10);
    if log.trim().is_empty() {
        printed
    } else {
        format!(
            "{printed}\n--- debootstrap/debootstrap.log ---\n{}",
            last_lines(&log, TAIL_LINES)
        )
    }
}

/// The `Date:` of the suite's (In)Release file debootstrap fetched, in seconds.
fn release_date(tree: &Path) -> Option<u64> {
    let lists = tree.join("var/lib/apt/lists");
    let mut files: Vec<PathBuf> = fs::read_dir(&lists)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("_InRelease") || n.ends_with("_Release"))
        })
        .collect();
    files.sort();
    files.iter().find_map(|f| {
        let text = fs::read_to_string(f).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("Date:"))
            .and_then(parse_rfc2822_utc)
    })
}

/// Locale, `vcap`, and the /etc files the host leaked or the runtime provides.
fn configure(
    tree: &Path,
    tools: &Tools,
    env: &ChrootEnv,
    progress: &mut dyn FnMut(&str),
) -> Result<(), RecipeError> {
    // C.UTF-8 is built into Debian's glibc (/usr/lib/locale/C.utf8); generate en_US.UTF-8.
    let locale_gen = tree.join("etc/locale.gen");
    let text = fs::read_to_string(&locale_gen).unwrap_or_default();
    let wanted = "en_US.UTF-8 UTF-8";
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start_matches('#').trim() {
            t if t == wanted => wanted.to_string(),
            _ => l.to_string(),
        })
        .collect();
    if !lines.iter().any(|l| l == wanted) {
        lines.push(wanted.to_string());
    }
    write_file(tree, "etc/locale.gen", &(lines.join("\n") + "\n"), 0o644)?;
    let out = run_captured(env.chroot(tools, tree, &["locale-gen"]), "locale-gen")?;
    for line in out.lines() {
        progress(line);
    }
    write_file(tree, "etc/default/locale", "LANG=C.UTF-8\n", 0o644)?;

    let vcap = VCAP.to_string();
    run_captured(
        env.chroot(tools, tree, &["groupadd", "--gid", &vcap, "vcap"]),
        "groupadd vcap",
    )?;
    run_captured(
        env.chroot(
            tools,
            tree,
            &[
                "useradd",
                "--uid",
                &vcap,
                "--gid",
                &vcap,
                "--home-dir",
                "/home/vcap",
                "--create-home",
                "--shell",
                "/bin/bash",
                "--comment",
                "Kiln app user",
                "vcap",
            ],
        ),
        "useradd vcap",
    )?;
    let home = tree.join("home/vcap");
    chown(&home, Some(VCAP), Some(VCAP)).map_err(io_err(&home))?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).map_err(io_err(&home))?;

    write_file(tree, "etc/hostname", "localhost\n", 0o644)?;
    write_file(tree, "etc/hosts", HOSTS, 0o644)?;
    write_file(tree, "etc/resolv.conf", "", 0o644)?;
    Ok(())
}

/// `name=version` of every installed package, one a line, sorted.
fn package_list(tree: &Path, tools: &Tools, env: &ChrootEnv) -> Result<String, RecipeError> {
    let out = run_captured(
        env.chroot(
            tools,
            tree,
            &[
                "dpkg-query",
                "--show",
                "--showformat=${Package}=${Version}\\n",
            ],
        ),
        "dpkg-query",
    )?;
    let mut lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.sort_unstable();
    lines.dedup();
    Ok(lines.join("\n"))
}

/// Removes apt's caches and lists, documentation (keeping copyrights), man and info pages,
/// translations, logs and the other leftovers of the build.
fn clean(tree: &Path) -> Result<(), RecipeError> {
    type Remove = fn(&str) -> bool;
    let all: Remove = |_| true;
    let steps: [(&str, Remove); 14] = [
        ("var/cache/apt", |n| n.ends_with(".bin")),
        ("var/cache/apt/archives", |n| n.ends_with(".deb")),
        ("var/cache/apt/archives/partial", all),
        ("var/lib/apt/lists", all),
        ("usr/share/man", all),
        ("usr/share/info", all),
        ("usr/share/lintian", all),
        ("usr/share/locale", |n| n != "locale.alias"),
        ("var/cache/debconf", |n| n.ends_with("-old")),
        ("var/lib/dpkg", |n| n.ends_with("-old")),
        ("var/cache/ldconfig", |n| n == "aux-cache"),
        ("tmp", all),
        ("var/tmp", all),
        ("root", |n| n == ".cache" || n == ".npm"),
    ];
    for (dir, remove) in &steps {
        let path = tree.join(dir);
        remove_children(&path, remove).map_err(io_err(&path))?;
    }
    // Documentation: each package's directory keeps only its copyright.
    let doc = tree.join("usr/share/doc");
    if let Ok(entries) = fs::read_dir(&doc) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    remove_children(&path, |n| n != "copyright").map_err(io_err(&path))?
                }
                Ok(m) if m.is_file() => remove_tree(&path).map_err(io_err(&path))?,
                _ => {}
            }
        }
    }
    // Logs: empty the files, keep the directories (packages expect /var/log/apt etc.).
    clean_logs(&tree.join("var/log"))
}

fn clean_logs(dir: &Path) -> Result<(), RecipeError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if meta.is_dir() {
            clean_logs(&path)?;
        } else {
            remove_tree(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Checks the tree has what the stack promises, running its own binaries in it.
fn check(tree: &Path, tools: &Tools, env: &ChrootEnv) -> Result<(), RecipeError> {
    let incomplete = |what: String| RecipeError::Incomplete {
        recipe: "bookworm",
        what,
    };
    for path in [
        "usr/bin/bash",
        "usr/bin/python3",
        "usr/bin/pip3",
        "usr/bin/node",
        "usr/bin/npm",
        "usr/bin/busybox",
        "usr/lib/locale/C.utf8",
        "usr/lib/locale/locale-archive",
        "etc/ssl/certs/ca-certificates.crt",
        "usr/share/zoneinfo/Etc/UTC",
    ] {
        if fs::symlink_metadata(tree.join(path)).is_err() {
            return Err(incomplete(format!("/{path} is missing")));
        }
    }
    let applets = run_captured(
        env.chroot(tools, tree, &["busybox", "--list"]),
        "busybox --list",
    )?;
    if !applets.lines().any(|a| a.trim() == "httpd") {
        return Err(incomplete(
            "Debian's busybox has no httpd applet (the stack's web server)".to_string(),
        ));
    }
    run_captured(
        env.chroot(
            tools,
            tree,
            &[
                "python3",
                "-c",
                "import ssl, venv, pip; print(ssl.OPENSSL_VERSION)",
            ],
        ),
        "python3 -c 'import ssl, venv, pip' in the new tree",
    )?;
    run_captured(
        env.chroot(tools, tree, &["node", "-e", "require('https')"]),
        "node -e \"require('https')\" in the new tree",
    )?;
    run_captured(
        env.chroot(tools, tree, &["npm", "--version"]),
        "npm --version in the new tree",
    )?;
    // npm may have left a cache in root's home.
    remove_children(&tree.join("root"), |n| n == ".npm" || n == ".cache")
        .map_err(io_err(&tree.join("root")))
}

fn image_config(
    packages: &str,
    mirror: &str,
    release: u64,
) -> Result<ImageConfiguration, RecipeError> {
    let build_err = |source| {
        RecipeError::Layout(LayoutError::Build {
            what: "image config",
            source,
        })
    };
    let labels = HashMap::from([
        (LABEL_NAME.to_string(), "bookworm".to_string()),
        (LABEL_PACKAGES.to_string(), packages.to_string()),
        (LABEL_RECIPE_VERSION.to_string(), RECIPE_VERSION.to_string()),
        (
            LABEL_SOURCE.to_string(),
            format!("debootstrap --variant=minbase {SUITE} {mirror}"),
        ),
    ]);
    let config = ConfigBuilder::default()
        .user("vcap")
        .env(ENV.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .working_dir("/home/vcap")
        .labels(labels)
        .build()
        .map_err(build_err)?;
    ImageConfigurationBuilder::default()
        .created(rfc3339(
            UNIX_EPOCH + std::time::Duration::from_secs(release),
        ))
        .architecture(Arch::default())
        .os(Os::Linux)
        .config(config)
        .build()
        .map_err(build_err)
}
