//! Checks of uploaded app bits before they are READY: a zip or a gzip tar whose every entry
//! stays inside the app folder (no `..`, no absolute names, no links leaving it), names no
//! entry twice, within a total uncompressed size. Nothing is unpacked here; the stager unpacks
//! inside its container.

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
        // The same magic numbers the stager goes by, so both see the same format.
        [0x50, 0x4b, 3, 4] | [0x50, 0x4b, 5, 6] => check_zip(path, max_bytes),
        [0x1f, 0x8b, ..] => check_tgz(path, max_bytes),
        _ => Err("the package is neither a zip nor a gzip tar".into()),
    }
}

/// `name` as a clean relative path (`./a//b/` is `a/b`), or why it leaves the app folder.
/// Resource paths of an upload go by the same rule as entry names.
pub fn clean_path(name: &str) -> Result<std::path::PathBuf, Refusal> {
    let mut clean = std::path::PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return Err(format!("entry `{name}` points outside the app folder")),
        }
    }
    Ok(clean)
}

/// The entries seen so far: the paths that are links, so that nothing is written through one,
/// and every name, so that none comes twice (`a` and `./a` are the same).
#[derive(Default)]
struct Seen {
    links: std::collections::HashSet<std::path::PathBuf>,
    names: std::collections::HashSet<std::path::PathBuf>,
}

impl Seen {
    /// Checks entry `name` (a link to `link_target` if given): a relative name without `..`,
    /// not below an earlier link, and a link whose target stays inside the folder.
    fn check(&mut self, name: &str, link_target: Option<&str>) -> Result<(), Refusal> {
        let path = Path::new(name);
        let mut clean = std::path::PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(part) => {
                    if self.links.contains(&clean) && !clean.as_os_str().is_empty() {
                        return Err(format!(
                            "entry `{name}` goes through the link `{}`",
                            clean.display()
                        ));
                    }
                    clean.push(part);
                }
                Component::CurDir => {}
                _ => return Err(format!("entry `{name}` points outside the app folder")),
            }
        }
        if let Some(target) = link_target {
            let mut depth = i64::try_from(clean.components().count()).unwrap_or(i64::MAX) - 1;
            for c in Path::new(target).components() {
                match c {
                    Component::Normal(_) => depth += 1,
                    Component::CurDir => {}
                    Component::ParentDir if depth > 0 => depth -= 1,
                    _ => {
                        return Err(format!(
                            "entry `{name}` is a link to `{target}`, outside the app folder"
                        ))
                    }
                }
            }
            self.links.insert(clean.clone());
        }
        if !clean.as_os_str().is_empty() && !self.names.insert(clean) {
            return Err(format!("entry `{name}` appears twice in the package"));
        }
        Ok(())
    }
}

fn check_zip(path: &Path, max_bytes: u64) -> Result<(), Refusal> {
    let file = std::fs::File::open(path).map_err(|e| format!("reading the package: {e}"))?;
    let mut zip =
        zip::ZipArchive::new(file).map_err(|e| format!("the package is not a valid zip: {e}"))?;
    let mut total = 0u64;
    let mut seen = Seen::default();
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
        seen.check(&name, target.as_deref())?;
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
    let mut seen = Seen::default();
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
            Seen::default().check(&l, None)?;
        }
        seen.check(&raw, target.as_deref())?;
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
        let ok = |n: &str, l: Option<&str>| Seen::default().check(n, l).is_ok();
        assert!(ok("a/b.txt", None) && ok("./a", None));
        assert!(!ok("../x", None) && !ok("a/../b", None) && !ok("/etc/passwd", None));
        assert!(ok("a/link", Some("../b")));
        assert!(!ok("link", Some("../b")) && !ok("link", Some("/etc/passwd")));
    }

    #[test]
    fn nothing_goes_through_an_earlier_link() {
        let mut seen = Seen::default();
        assert!(seen.check("d1/d2/l", Some("..")).is_ok());
        let err = seen.check("d1/d2/l/m", Some("../..")).unwrap_err();
        assert!(err.contains("goes through the link `d1/d2/l`"), "{err}");
        assert!(seen.check("d1/d2/other", None).is_ok());
    }

    #[test]
    fn no_name_comes_twice() {
        let mut seen = Seen::default();
        assert!(seen.check("./", None).is_ok() && seen.check(".", None).is_ok());
        assert!(seen.check("a/b", None).is_ok());
        let err = seen.check("./a//b", None).unwrap_err();
        assert!(err.contains("appears twice"), "{err}");
        assert_eq!(clean_path("./a//b/").unwrap(), Path::new("a/b"));
        assert!(clean_path("../x").is_err() && clean_path("/x").is_err());
    }
}
