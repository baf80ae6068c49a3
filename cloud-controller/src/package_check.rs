//! Checks of uploaded app bits before they are READY: a zip or a gzip tar whose every entry
//! stays inside the app folder (no `..`, no absolute names, no links leaving it), within a
//! total uncompressed size. Nothing is unpacked here; the stager unpacks inside its container.

use std::io::Read;
use std::path::{Component, Path};

/// Why a package is refused (becomes the package's error).
pub type Refusal = String;

/// Checks the package file at `path` (zip or tar.gz), allowing `max_bytes` uncompressed.
pub fn check(path: &Path, max_bytes: u64) -> Result<(), Refusal> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| format!("reading the package: {e}"))?;
    let n = f
        .read(&mut magic)
        .map_err(|e| format!("reading the package: {e}"))?;
    match &magic[..n] {
        [0x50, 0x4b, ..] => check_zip(path, max_bytes),
        [0x1f, 0x8b, ..] => check_tgz(path, max_bytes),
        _ => Err("the package is neither a zip nor a gzip tar".into()),
    }
}

/// Whether a relative `name` (and a link from it to `target`) stays inside the folder.
fn stays_inside(name: &str, link_target: Option<&str>) -> Result<(), Refusal> {
    let depth = |p: &Path, start: i64| -> Option<i64> {
        let mut d = start;
        for c in p.components() {
            match c {
                Component::Normal(_) => d += 1,
                Component::CurDir => {}
                Component::ParentDir => {
                    d -= 1;
                    if d < 0 {
                        return None;
                    }
                }
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(d)
    };
    let name_path = Path::new(name);
    let Some(d) = depth(name_path, 0) else {
        return Err(format!("entry `{name}` points outside the app folder"));
    };
    if let Some(target) = link_target {
        if depth(Path::new(target), d - 1).is_none() {
            return Err(format!(
                "entry `{name}` is a link to `{target}`, outside the app folder"
            ));
        }
    }
    Ok(())
}

fn check_zip(path: &Path, max_bytes: u64) -> Result<(), Refusal> {
    let file = std::fs::File::open(path).map_err(|e| format!("reading the package: {e}"))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| format!("the package is not a valid zip: {e}"))?;
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| format!("the package zip is damaged: {e}"))?;
        let name = entry.name().to_string();
        let is_link = entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000);
        let target = if is_link {
            let mut t = String::new();
            entry
                .by_ref()
                .take(4096)
                .read_to_string(&mut t)
                .map_err(|e| format!("reading link `{name}`: {e}"))?;
            Some(t)
        } else {
            None
        };
        stays_inside(&name, target.as_deref())?;
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(format!(
                "the package unpacks to more than {} MiB",
                max_bytes >> 20
            ));
        }
    }
    Ok(())
}

fn check_tgz(path: &Path, max_bytes: u64) -> Result<(), Refusal> {
    let file = std::fs::File::open(path).map_err(|e| format!("reading the package: {e}"))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut total = 0u64;
    for entry in tar
        .entries()
        .map_err(|e| format!("the package is not a valid tar.gz: {e}"))?
    {
        let entry = entry.map_err(|e| format!("the package tar.gz is damaged: {e}"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let target = entry
            .header()
            .entry_type()
            .is_symlink()
            .then(|| {
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
            })
            .flatten();
        if entry.header().entry_type().is_hard_link() {
            let l = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            stays_inside(&l, None)?;
        }
        stays_inside(&raw, target.as_deref())?;
        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(format!(
                "the package unpacks to more than {} MiB",
                max_bytes >> 20
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_links_must_stay_inside() {
        assert!(stays_inside("a/b.txt", None).is_ok());
        assert!(stays_inside("./a", None).is_ok());
        assert!(stays_inside("../x", None).is_err());
        assert!(stays_inside("a/../../x", None).is_err());
        assert!(stays_inside("/etc/passwd", None).is_err());
        assert!(stays_inside("a/link", Some("../b")).is_ok());
        assert!(stays_inside("link", Some("../b")).is_err());
        assert!(stays_inside("link", Some("/etc/passwd")).is_err());
    }
}
