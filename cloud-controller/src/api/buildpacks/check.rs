//! The check of an uploaded buildpack before it is READY, without unpacking it: a zip the
//! stagers' unzip will take (no symlinks, no names leaving the folder, not too large
//! unpacked) that holds a buildpack, at its root or in one top folder: an executable
//! `bin/detect` and either `bin/compile`, `bin/supply` or `bin/finalize` (Heroku, Cloud
//! Foundry v2) or a `buildpack.toml` with `bin/build` (Cloud Native Buildpacks).

use std::collections::BTreeMap;
use std::path::{Component, Path};

/// Why an upload is not a buildpack (the 422's detail).
pub type Refusal = String;

/// Checks the zip at `path`, allowing `max_bytes` unpacked.
pub fn check(path: &Path, max_bytes: u64) -> Result<(), Refusal> {
    let file = std::fs::File::open(path).map_err(|e| format!("reading the upload: {e}"))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| format!("the upload is not a valid zip file: {e}"))?;
    // Every file entry by its clean name, with its unix mode when the zip keeps one.
    let mut files: BTreeMap<String, Option<u32>> = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let entry = zip
            .by_index(i)
            .map_err(|e| format!("the zip is damaged: {e}"))?;
        let raw = entry.name().to_string();
        let name = clean(&raw)
            .ok_or_else(|| format!("entry `{raw}` points outside the buildpack folder"))?;
        let mode = entry.unix_mode();
        if mode.is_some_and(|m| m & 0o170000 == 0o120000) {
            return Err(format!(
                "entry `{raw}` is a symlink; buildpack zips may not hold symlinks"
            ));
        }
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(format!(
                "the zip unpacks to more than {} MiB",
                max_bytes >> 20
            ));
        }
        if !entry.is_dir() && !name.is_empty() {
            files.insert(name, mode);
        }
    }
    let root = root(&files);
    let has = |p: &str| files.contains_key(&format!("{root}{p}"));
    let mut missing = Vec::new();
    match files.get(&format!("{root}bin/detect")) {
        None => missing.push("bin/detect"),
        Some(mode) if !mode.is_some_and(|m| m & 0o111 != 0) => {
            return Err(
                "bin/detect is not executable in the zip (chmod +x bin/* and zip on a unix system, which keeps the modes)"
                    .into(),
            )
        }
        Some(_) => {}
    }
    let classic = ["bin/compile", "bin/supply", "bin/finalize"]
        .iter()
        .any(|p| has(p));
    let native = has("buildpack.toml") && has("bin/build");
    if !classic && !native {
        missing.push(if has("buildpack.toml") {
            "bin/build (a buildpack.toml makes it a Cloud Native Buildpack)"
        } else {
            "bin/compile, bin/supply or bin/finalize (or a buildpack.toml with bin/build)"
        });
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the zip is not a buildpack: it has no {}",
            missing.join(" and no ")
        ))
    }
}

/// `raw` as a relative path without `.`, or None when it is absolute or has `..`.
fn clean(raw: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// Where the buildpack sits in the zip: `""`, or `"<top>/"` when every file is in one top
/// folder and `bin/detect` is not at the root (the stagers unpack it from inside that folder).
fn root(files: &BTreeMap<String, Option<u32>>) -> String {
    if files.contains_key("bin/detect") {
        return String::new();
    }
    let mut tops = files.keys().map(|n| n.split('/').next().unwrap_or(""));
    match tops.next() {
        Some(first) if files.keys().all(|n| n.starts_with(&format!("{first}/"))) => {
            format!("{first}/")
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zip_at(dir: &Path, files: &[(&str, u32)]) -> std::path::PathBuf {
        let path = dir.join("bp.zip");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (name, mode) in files {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*name, opts).unwrap();
            w.write_all(b"#!/bin/sh\n").unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn buildpacks_of_each_contract_pass_at_the_root_or_in_one_folder() {
        let dir = tempfile::tempdir().unwrap();
        for files in [
            &[("bin/detect", 0o755), ("bin/compile", 0o755)][..],
            &[("bin/detect", 0o755), ("bin/supply", 0o755)],
            &[("bp-1.0/bin/detect", 0o755), ("bp-1.0/bin/finalize", 0o755)],
            &[
                ("buildpack.toml", 0o644),
                ("bin/detect", 0o755),
                ("bin/build", 0o755),
            ],
        ] {
            check(&zip_at(dir.path(), files), 1 << 20).unwrap();
        }
    }

    #[test]
    fn what_is_not_a_buildpack_says_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |files: &[(&str, u32)]| check(&zip_at(dir.path(), files), 1 << 20);
        let err = refused(&[("index.html", 0o644)]).unwrap_err();
        assert!(
            err.contains("no bin/detect and no bin/compile, bin/supply or bin/finalize"),
            "{err}"
        );
        let err = refused(&[("bin/detect", 0o644), ("bin/compile", 0o755)]).unwrap_err();
        assert!(err.contains("bin/detect is not executable"), "{err}");
        let err = refused(&[("buildpack.toml", 0o644), ("bin/detect", 0o755)]).unwrap_err();
        assert!(err.contains("no bin/build"), "{err}");
        let err = refused(&[("../bin/detect", 0o755)]).unwrap_err();
        assert!(err.contains("outside the buildpack folder"), "{err}");
        let not_zip = dir.path().join("x.zip");
        std::fs::write(&not_zip, "plain text").unwrap();
        assert!(check(&not_zip, 1 << 20)
            .unwrap_err()
            .contains("not a valid zip"));
    }
}
