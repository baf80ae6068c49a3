//! Buildpacks as found on the host: resolving `-b` arguments (directory, zip, built-in name),
//! telling the contracts apart, and refusing author mistakes before anything runs.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::StagingError;

/// Built-in buildpacks in detection priority order; other directories in the built-in folder
/// come after these, by name.
pub const BUILTIN_ORDER: &[&str] = &["staticfile", "binary", "python", "nodejs", "procfile"];

/// Which contract a buildpack speaks.
#[derive(Debug, Clone, PartialEq)]
pub enum Contract {
    /// Heroku / Cloud Foundry v2 scripts: detect, supply, finalize, compile, release.
    Classic {
        /// Has `bin/supply`.
        supply: bool,
        /// Has `bin/finalize`.
        finalize: bool,
        /// Has `bin/compile`.
        compile: bool,
        /// Has `bin/release`.
        release: bool,
    },
    /// A Cloud Native Buildpack (`buildpack.toml`, `bin/detect`, `bin/build`).
    Native {
        /// `[buildpack] id`.
        id: String,
        /// `[buildpack] version`.
        version: String,
        /// `api`.
        api: String,
    },
}

/// A buildpack on the host, checked and ready to be copied into a staging container.
#[derive(Debug, Clone)]
pub struct Buildpack {
    /// How it is named in the log and errors.
    pub name: String,
    /// Its directory on the host.
    pub dir: PathBuf,
    /// Its contract.
    pub contract: Contract,
}

#[derive(Deserialize)]
struct BuildpackToml {
    api: Option<String>,
    buildpack: Option<BuildpackTable>,
}

#[derive(Deserialize)]
struct BuildpackTable {
    id: Option<String>,
    version: Option<String>,
}

impl Buildpack {
    /// Reads and checks the buildpack in `dir`.
    pub fn load(name: &str, dir: &Path) -> Result<Buildpack, StagingError> {
        let invalid = |reason: String| StagingError::InvalidBuildpack {
            buildpack: name.to_string(),
            reason,
        };
        let toml_path = dir.join("buildpack.toml");
        let contract = if toml_path.exists() {
            let text =
                fs::read_to_string(&toml_path).map_err(StagingError::io("reading", &toml_path))?;
            let parsed: BuildpackToml = toml::from_str(&text).map_err(|e| {
                invalid(format!("buildpack.toml is not valid TOML: {}", e.message()))
            })?;
            let table = parsed.buildpack.ok_or_else(|| {
                invalid("buildpack.toml has no [buildpack] table (id, version)".into())
            })?;
            let id = table
                .id
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("buildpack.toml has no [buildpack] id".into()))?;
            Contract::Native {
                id,
                version: table.version.unwrap_or_else(|| "0.0.0".into()),
                api: parsed.api.unwrap_or_else(|| "0.10".into()),
            }
        } else {
            if dir.join("bin/build").exists()
                && !dir.join("bin/compile").exists()
                && !dir.join("bin/finalize").exists()
            {
                return Err(invalid(
                    "has bin/build but no buildpack.toml: a Cloud Native Buildpack needs a buildpack.toml with `api` and [buildpack] id, version".into(),
                ));
            }
            Contract::Classic {
                supply: script(name, dir, "supply")?,
                finalize: script(name, dir, "finalize")?,
                compile: script(name, dir, "compile")?,
                release: script(name, dir, "release")?,
            }
        };
        if !script(name, dir, "detect")? {
            return Err(invalid(format!(
                "has no bin/detect ({} is missing)",
                dir.join("bin/detect").display()
            )));
        }
        if let Contract::Native { .. } = contract {
            if !script(name, dir, "build")? {
                return Err(invalid(
                    "is a Cloud Native Buildpack without bin/build".into(),
                ));
            }
        } else if let Contract::Classic {
            supply,
            finalize,
            compile,
            ..
        } = contract
        {
            if !(supply || finalize || compile) {
                return Err(invalid(
                    "has none of bin/supply, bin/finalize, bin/compile".into(),
                ));
            }
        }
        Ok(Buildpack {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            contract,
        })
    }

    /// Whether it is a Cloud Native Buildpack.
    pub fn is_native(&self) -> bool {
        matches!(self.contract, Contract::Native { .. })
    }
}

/// Whether `bin/<name>` exists; an existing one that is not an executable file is an error.
fn script(buildpack: &str, dir: &Path, name: &str) -> Result<bool, StagingError> {
    let path = dir.join("bin").join(name);
    match fs::metadata(&path) {
        Ok(meta) if !meta.is_file() => Err(StagingError::InvalidBuildpack {
            buildpack: buildpack.to_string(),
            reason: format!("bin/{name} is not a file"),
        }),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Err(StagingError::InvalidBuildpack {
            buildpack: buildpack.to_string(),
            reason: format!("bin/{name} is not executable (chmod +x bin/{name})"),
        }),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StagingError::io("reading", path)(e)),
    }
}

/// The built-in buildpacks in `dir`, in detection order.
pub fn builtin_names(dir: &Path) -> Vec<String> {
    let mut others: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("bin/detect").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !BUILTIN_ORDER.contains(&n.as_str()))
        .collect();
    others.sort();
    BUILTIN_ORDER
        .iter()
        .map(|s| s.to_string())
        .filter(|n| dir.join(n).join("bin/detect").exists())
        .chain(others)
        .collect()
}

/// Resolves one `-b` argument: a directory, a `.zip` (unpacked under `scratch`), or the name
/// of a built-in buildpack in `builtin_dir`.
pub fn resolve(
    arg: &str,
    builtin_dir: &Path,
    scratch: &Path,
    index: usize,
) -> Result<Buildpack, StagingError> {
    let path = Path::new(arg);
    if path.is_dir() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_string());
        return Buildpack::load(&name, path);
    }
    if path.is_file() {
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| arg.to_string());
        let target = scratch.join(format!("buildpack-{index}"));
        unzip_buildpack(&name, path, &target)?;
        return Buildpack::load(&name, &target);
    }
    let builtin = builtin_dir.join(arg);
    if !arg.contains('/') && builtin.join("bin").is_dir() {
        return Buildpack::load(arg, &builtin);
    }
    Err(StagingError::UnknownBuildpack {
        name: arg.to_string(),
        known: builtin_names(builtin_dir).join(", "),
    })
}

/// Unpacks a buildpack zip, refusing entries that would land outside `target`. A zip whose
/// files all sit in one top folder is unpacked from inside that folder.
pub(crate) fn unzip_buildpack(
    name: &str,
    zip_path: &Path,
    target: &Path,
) -> Result<(), StagingError> {
    let invalid = |reason: String| StagingError::InvalidBuildpack {
        buildpack: name.to_string(),
        reason,
    };
    let file = fs::File::open(zip_path).map_err(StagingError::io("opening", zip_path))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| invalid(format!("{} is not a zip file: {e}", zip_path.display())))?;
    crate::app_bits::unzip_into(&mut archive, target, 1 << 30).map_err(invalid)?;
    // One top-level directory holding bin/: use it.
    if !target.join("bin").exists() {
        let entries: Vec<_> = fs::read_dir(target)
            .map_err(StagingError::io("reading", target))?
            .flatten()
            .collect();
        if let [only] = entries.as_slice() {
            if only.path().join("bin").is_dir() {
                let inner = only.path();
                let moved = target.with_extension("inner");
                fs::rename(&inner, &moved).map_err(StagingError::io("unpacking", &inner))?;
                fs::remove_dir_all(target).map_err(StagingError::io("unpacking", target))?;
                fs::rename(&moved, target).map_err(StagingError::io("unpacking", &moved))?;
            }
        }
    }
    Ok(())
}
