//! `COPY` and `ADD` without a container: sources from the app's files (the build context) or
//! from an earlier stage's tree, written straight into a new layer directory.
//!
//! Sources are paths relative to their root (a leading `/` is ignored); one that climbs out of
//! it with `..` is refused. `*`, `?` and `[...]` match within one path component. Every read
//! goes through `kiln_rootfs::archive::archive_from_root`, which resolves symlinks inside the
//! root only, and every write through `extract_in_root` into the layer. As in Docker: a
//! directory source copies its contents; a file source lands in the destination when that ends
//! with `/`, is an existing directory of the image, or there are several sources, and is the
//! destination otherwise; a relative destination is relative to `WORKDIR`. Files from the app
//! are owned by 0:0 unless `--chown`; files from a stage keep their owners unless `--chown`.
//! `ADD` of a local tar (plain or gzip) extracts it; other compressions are copied as files.
//! `ADD <url>` copies the file [`super::fetch`] downloaded the same way, never extracted.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use kiln_rootfs::archive::{archive_from_root, extract_in_root, ArchiveError, ExtractOptions};
use sha2::{Digest as _, Sha256};

use super::error::DockerfileError;
use super::view::View;

/// What one `COPY`/`ADD` copies, resolved.
#[derive(Debug)]
pub(crate) struct CopyJob<'a> {
    pub line: usize,
    /// `COPY` or `ADD`.
    pub what: &'static str,
    /// Where sources are read: the context dir or a stage's view.
    pub root: &'a Path,
    /// Source paths relative to `root`, globs expanded.
    pub sources: Vec<PathBuf>,
    /// The destination, resolved in the stage's tree (relative to its root).
    pub dest: PathBuf,
    /// Sources go into `dest` rather than becoming it.
    pub into_dir: bool,
    /// Owner of everything copied; `None` keeps the owners of the source.
    pub owner: Option<(u32, u32)>,
    /// `--chmod`.
    pub mode: Option<u32>,
    /// `ADD`: extract local tar archives.
    pub extract_archives: bool,
}

/// Expands `patterns` (already variable-expanded) into paths relative to `root`.
pub(crate) fn match_sources(
    root: &Path,
    patterns: &[String],
    line: usize,
    what: &'static str,
) -> Result<Vec<PathBuf>, DockerfileError> {
    let invalid = |reason: String| DockerfileError::Invalid {
        line,
        instruction: what,
        reason,
    };
    let mut out = Vec::new();
    for pattern in patterns {
        let mut parts: Vec<String> = Vec::new();
        for c in Path::new(pattern).components() {
            match c {
                Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
                Component::ParentDir if parts.pop().is_none() => {
                    return Err(invalid(format!(
                        "{pattern} is outside the app's files; sources must be inside them"
                    )));
                }
                _ => {}
            }
        }
        if !parts.iter().any(|p| is_glob(p)) {
            let path: PathBuf = parts.iter().collect();
            if !exists_in(root, &path) {
                return Err(invalid(format!("{pattern}: no such file or directory")));
            }
            out.push(path);
            continue;
        }
        let mut matches = vec![PathBuf::new()];
        for part in &parts {
            let mut next = Vec::new();
            for base in &matches {
                if !is_glob(part) {
                    next.push(base.join(part));
                    continue;
                }
                // List only real directories: never through a symlink.
                let dir = root.join(base);
                let is_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
                if !is_dir {
                    continue;
                }
                let mut names: Vec<String> = fs::read_dir(&dir)
                    .map_err(DockerfileError::io("listing", &dir))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| glob_match(part, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| base.join(n)));
            }
            matches = next;
        }
        matches.retain(|m| exists_in(root, m));
        if matches.is_empty() {
            return Err(invalid(format!("{pattern}: no file matches")));
        }
        out.extend(matches);
    }
    Ok(out)
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Whether `rel` exists inside `root` (resolved in it).
fn exists_in(root: &Path, rel: &Path) -> bool {
    let view = View::plain(root);
    let resolved = view.resolve(&format!("/{}", rel.display()), true);
    view.metadata(&resolved).is_some()
}

/// Shell-style matching of one path component: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let tokens = glob_tokens(pattern);
    let n: Vec<char> = name.chars().collect();
    // Iterative, backtracking only to the last `*`: linear in practice, never exponential
    // (a pattern with many `*`s against a long name cannot pin the build).
    let (mut ti, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match tokens.get(ti) {
            Some(Glob::Star) => {
                star = Some((ti, ni));
                ti += 1;
            }
            Some(token) if token.matches(n[ni]) => {
                ti += 1;
                ni += 1;
            }
            _ => match star {
                Some((st, sn)) => {
                    ti = st + 1;
                    ni = sn + 1;
                    star = Some((st, sn + 1));
                }
                None => return false,
            },
        }
    }
    tokens[ti..].iter().all(|t| matches!(t, Glob::Star))
}

/// One element of a glob pattern.
enum Glob {
    Star,
    Any,
    Char(char),
    /// `[...]`: single characters and ranges, negated by a leading `!` or `^`.
    Class {
        items: Vec<(char, char)>,
        negate: bool,
    },
}

impl Glob {
    fn matches(&self, c: char) -> bool {
        match self {
            Glob::Star => true,
            Glob::Any => true,
            Glob::Char(x) => *x == c,
            Glob::Class { items, negate } => {
                items.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate
            }
        }
    }
}

fn glob_tokens(pattern: &str) -> Vec<Glob> {
    let p: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => tokens.push(Glob::Star),
            '?' => tokens.push(Glob::Any),
            '[' => match p[i + 1..].iter().position(|c| *c == ']').map(|k| i + 1 + k) {
                // No closing bracket: a literal `[`.
                None => tokens.push(Glob::Char('[')),
                Some(close) => {
                    let mut set = &p[i + 1..close];
                    let negate = matches!(set.first(), Some('!' | '^'));
                    if negate {
                        set = &set[1..];
                    }
                    let mut items = Vec::new();
                    let mut k = 0;
                    while k < set.len() {
                        if k + 2 < set.len() && set[k + 1] == '-' {
                            items.push((set[k], set[k + 2]));
                            k += 3;
                        } else {
                            items.push((set[k], set[k]));
                            k += 1;
                        }
                    }
                    tokens.push(Glob::Class { items, negate });
                    i = close;
                }
            },
            c => tokens.push(Glob::Char(c)),
        }
        i += 1;
    }
    tokens
}

/// A digest of what the sources hold (names, types, modes, link targets, contents; not
/// owners or mtimes), and their latest mtime.
pub(crate) fn sources_digest(
    root: &Path,
    sources: &[PathBuf],
    line: usize,
    what: &'static str,
) -> Result<(String, u64), DockerfileError> {
    let mut hasher = Sha256::new();
    let mut latest = 0u64;
    for source in sources {
        hasher.update(source.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        with_tar(root, source, line, what, |tar| {
            let mut archive = tar::Archive::new(tar);
            for entry in archive.entries()? {
                let mut entry = entry?;
                let header = entry.header();
                latest = latest.max(header.mtime().unwrap_or(0));
                hasher.update(entry.path_bytes());
                hasher.update([0, header.entry_type().as_byte()]);
                hasher.update(header.mode().unwrap_or(0).to_le_bytes());
                if let Some(link) = entry.link_name_bytes() {
                    hasher.update(&link);
                    hasher.update([0]);
                }
                hasher.update(header.size().unwrap_or(0).to_le_bytes());
                io::copy(&mut entry, &mut HashWriter(&mut hasher))?;
            }
            Ok(())
        })?;
    }
    Ok((hex::encode(hasher.finalize()), latest))
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `read` on a tar of `source` (inside `root`) streamed through a pipe.
fn with_tar(
    root: &Path,
    source: &Path,
    line: usize,
    what: &'static str,
    read: impl FnOnce(&mut io::PipeReader) -> io::Result<()>,
) -> Result<(), DockerfileError> {
    let archive_err = |source_err: ArchiveError| DockerfileError::Archive {
        line,
        what: format!("{what} {}", source.display()),
        source: Box::new(source_err),
    };
    let (mut reader, writer) =
        io::pipe().map_err(DockerfileError::io("making a pipe for", root))?;
    let in_root = Path::new("/").join(source);
    std::thread::scope(|s| {
        let writing = s.spawn(move || archive_from_root(root, &in_root, writer));
        let read_result = read(&mut reader);
        // Unblock the writer if the reader stopped early.
        drop(reader);
        let written = writing
            .join()
            .map_err(|_| DockerfileError::Task("the archiving thread panicked".into()))?;
        written.map_err(archive_err)?;
        read_result.map_err(DockerfileError::io("reading the sources in", root))
    })
}

/// Writes `job` into the fresh layer directory `layer` (overlay form; no whiteouts), fixing
/// the directories above the destination that `view` (the stage's tree) already has.
pub(crate) fn copy_into(
    job: &CopyJob<'_>,
    view: &View,
    layer: &Path,
) -> Result<(), DockerfileError> {
    let opts = ExtractOptions {
        owner: job.owner,
        ..ExtractOptions::default()
    };
    let archive_err = |what: String| {
        move |source: ArchiveError| DockerfileError::Archive {
            line: job.line,
            what,
            source: Box::new(source),
        }
    };
    let in_layer = |rel: &Path| Path::new("/").join(rel);
    for source in &job.sources {
        let src_view = View::plain(job.root);
        let resolved = src_view.resolve(&format!("/{}", source.display()), true);
        let is_dir = src_view.metadata(&resolved).is_some_and(|m| m.is_dir());
        if job.extract_archives && !is_dir {
            if let Some(compressed) = tar_kind(&job.root.join(&resolved)) {
                let file = fs::File::open(job.root.join(&resolved))
                    .map_err(DockerfileError::io("opening", job.root.join(&resolved)))?;
                let reader: Box<dyn Read> = if compressed {
                    Box::new(flate2::read::GzDecoder::new(file))
                } else {
                    Box::new(file)
                };
                extract_in_root(layer, &in_layer(&job.dest), reader, &opts)
                    .map_err(archive_err(format!("extracting {}", source.display())))?;
                continue;
            }
        }
        let (target, rename) = if is_dir || job.into_dir {
            (job.dest.clone(), None)
        } else {
            let parent = job.dest.parent().map(Path::to_path_buf).unwrap_or_default();
            let name = source.file_name().map(PathBuf::from).unwrap_or_default();
            (
                parent,
                job.dest.file_name().map(|n| (name, PathBuf::from(n))),
            )
        };
        with_tar(job.root, source, job.line, job.what, |tar| {
            extract_in_root(layer, &in_layer(&target), tar, &opts)
                .map(|_| ())
                .map_err(|e| io::Error::other(e.to_string()))
        })?;
        if let Some((from, to)) = rename {
            if from != to {
                let dir = layer.join(&target);
                fs::rename(dir.join(&from), dir.join(&to)).map_err(DockerfileError::io(
                    "renaming in the layer",
                    dir.join(&from),
                ))?;
            }
        }
    }
    if let Some(mode) = job.mode {
        chmod_tree(&layer.join(&job.dest), mode)?;
    }
    // Directories the image has keep their owner, mode and time.
    let mut ancestors: Vec<&Path> = job
        .dest
        .ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .collect();
    if !job.into_dir && job.sources.len() == 1 {
        ancestors.retain(|a| *a != job.dest.as_path() || layer.join(a).is_dir());
    }
    for dir in ancestors {
        let (Some(image), Ok(ours)) = (view.metadata(dir), fs::symlink_metadata(layer.join(dir)))
        else {
            continue;
        };
        if !(image.is_dir() && ours.is_dir()) {
            continue;
        }
        let path = layer.join(dir);
        std::os::unix::fs::chown(&path, Some(image.uid()), Some(image.gid()))
            .map_err(DockerfileError::io("chown", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(image.mode() & 0o7777))
            .map_err(DockerfileError::io("chmod", &path))?;
        let times = fs::FileTimes::new().set_modified(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(image.mtime().max(0) as u64),
        );
        fs::File::open(&path)
            .and_then(|f| f.set_times(times))
            .map_err(DockerfileError::io("setting the time of", &path))?;
    }
    Ok(())
}

/// `Some(gzip?)` if `path` starts like a tar (plain or gzip) archive.
fn tar_kind(path: &Path) -> Option<bool> {
    let mut head = [0u8; 512];
    let mut file = fs::File::open(path).ok()?;
    let n = file.read(&mut head).ok()?;
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        return Some(true);
    }
    (n >= 262 && &head[257..262] == b"ustar").then_some(false)
}

fn chmod_tree(path: &Path, mode: u32) -> Result<(), DockerfileError> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(DockerfileError::io("chmod", path))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(DockerfileError::io("listing", path))? {
            let entry = entry.map_err(DockerfileError::io("listing", path))?;
            chmod_tree(&entry.path(), mode)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_a_component() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "a.txt.bak"));
        assert!(glob_match("file?.md", "file1.md"));
        assert!(glob_match("[ab]*", "beta"));
        assert!(!glob_match("[!ab]*", "beta"));
        assert!(glob_match("[a-c]x", "cx"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc") && !glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("[x", "[x") && glob_match("**.md", "a.md"));
        // Many stars against a long name that does not match (a naive matcher would not
        // finish this in years).
        assert!(!glob_match(
            &format!("{}b", "*a".repeat(20)),
            &"a".repeat(300)
        ));
        assert!(glob_match(
            &format!("{}b", "*a".repeat(20)),
            &format!("{}b", "a".repeat(30))
        ));
    }

    #[test]
    fn sources_outside_the_context_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a.txt"), b"a").unwrap();
        fs::write(tmp.path().join("b.txt"), b"b").unwrap();
        fs::write(tmp.path().join("c.md"), b"c").unwrap();
        let err = match_sources(tmp.path(), &["../etc/passwd".into()], 3, "COPY").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("line 3: COPY: ../etc/passwd is outside"),
            "{err}"
        );
        let found = match_sources(tmp.path(), &["/*.txt".into()], 3, "COPY").unwrap();
        assert_eq!(found, [PathBuf::from("a.txt"), PathBuf::from("b.txt")]);
        let err = match_sources(tmp.path(), &["nope".into()], 4, "COPY").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("line 4: COPY: nope: no such file"),
            "{err}"
        );
    }

    #[test]
    fn the_digest_follows_contents_not_times() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        fs::write(tmp.path().join("d/f"), b"one").unwrap();
        let src = [PathBuf::from("d")];
        let (first, _) = sources_digest(tmp.path(), &src, 1, "COPY").unwrap();
        let f = fs::File::options()
            .write(true)
            .open(tmp.path().join("d/f"))
            .unwrap();
        f.set_modified(std::time::UNIX_EPOCH).unwrap();
        let (touched, latest) = sources_digest(tmp.path(), &src, 1, "COPY").unwrap();
        assert_eq!(first, touched);
        assert_eq!(latest, 0, "the latest mtime of the entries");
        fs::write(tmp.path().join("d/f"), b"two").unwrap();
        let (changed, _) = sources_digest(tmp.path(), &src, 1, "COPY").unwrap();
        assert_ne!(first, changed);
    }
}
