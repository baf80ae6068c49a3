//! Which files of an app folder are pushed: everything but cf's defaults (`.cfignore`,
//! `_darcs`, `.DS_Store`, `.git`, `.gitignore`, `.hg`, `/manifest.yml`, `.svn`, and Kiln's
//! `.kilnignore`) and what the folder's `.cfignore` and `.kilnignore` exclude (gitignore
//! syntax).

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// cf's default exclusions, in gitignore syntax.
pub const DEFAULTS: &[&str] = &[
    ".cfignore",
    ".kilnignore",
    "_darcs",
    ".DS_Store",
    ".git",
    ".gitignore",
    ".hg",
    "/manifest.yml",
    ".svn",
];

/// A file (or link) to push.
#[derive(Debug, Clone)]
pub struct AppFile {
    /// Its path on disk.
    pub full: PathBuf,
    /// Its path in the app, `/`-separated.
    pub rel: String,
    /// Unix mode bits (permission part).
    pub mode: u32,
    /// Size in bytes (0 for a link).
    pub size: u64,
    /// A symlink's target, if it is one.
    pub link: Option<PathBuf>,
}

/// Errors walking the app.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The app folder is not there.
    #[error("the app path {0} does not exist")]
    Missing(PathBuf),
    /// An ignore file is not valid.
    #[error("{path}: {reason}")]
    BadIgnore {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading the folder failed.
    #[error("reading {path}: {source}")]
    Io {
        /// What.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The matcher of `root`: the defaults plus its `.cfignore` and `.kilnignore`.
pub fn matcher(root: &Path) -> Result<Gitignore, WalkError> {
    let mut b = GitignoreBuilder::new(root);
    for line in DEFAULTS {
        b.add_line(None, line).map_err(|e| WalkError::BadIgnore {
            path: root.into(),
            reason: e.to_string(),
        })?;
    }
    for name in [".cfignore", ".kilnignore"] {
        let p = root.join(name);
        if p.is_file() {
            if let Some(e) = b.add(&p) {
                return Err(WalkError::BadIgnore {
                    path: p,
                    reason: e.to_string(),
                });
            }
        }
    }
    b.build().map_err(|e| WalkError::BadIgnore {
        path: root.into(),
        reason: e.to_string(),
    })
}

/// The files of `root` to push, sorted by path.
pub fn files(root: &Path) -> Result<Vec<AppFile>, WalkError> {
    use std::os::unix::fs::PermissionsExt;
    if !root.is_dir() {
        return Err(WalkError::Missing(root.to_path_buf()));
    }
    let m = matcher(root)?;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let io = |source| WalkError::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let full = entry.path();
            let meta = std::fs::symlink_metadata(&full).map_err(|source| WalkError::Io {
                path: full.clone(),
                source,
            })?;
            let is_dir = meta.is_dir();
            if m.matched_path_or_any_parents(&full, is_dir).is_ignore() {
                continue;
            }
            let Ok(rel) = full.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if is_dir {
                stack.push(full);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&full).map_err(|source| WalkError::Io {
                    path: full.clone(),
                    source,
                })?;
                out.push(AppFile {
                    full,
                    rel,
                    mode: 0o777,
                    size: 0,
                    link: Some(target),
                });
            } else if meta.is_file() {
                out.push(AppFile {
                    full,
                    rel,
                    mode: meta.permissions().mode() & 0o7777,
                    size: meta.len(),
                    link: None,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_cfignore_are_left_out() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "index.html",
            "manifest.yml",
            "sub/manifest.yml",
            ".git/HEAD",
            "secret.key",
            "logs/a.log",
            "keep/x",
        ] {
            std::fs::create_dir_all(r.join(f).parent().unwrap()).unwrap();
            std::fs::write(r.join(f), "x").unwrap();
        }
        std::fs::write(r.join(".cfignore"), "*.key\nlogs/\n").unwrap();
        let names: Vec<String> = files(r).unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(names, ["index.html", "keep/x", "sub/manifest.yml"]);
    }
}
