//! The buildpacks of a build as the controller resolved them ([`kiln_bus::BuildpackRef`]): a
//! built-in maps to the stager's own folder; an admin buildpack is downloaded from the
//! controller (internal credential, streamed, at most the staging disk limit), checked against
//! the sha256 the request names, unpacked once with the safe unzip (no symlinks, nothing
//! outside the folder) and kept in the stager's buildpack cache as `<cache>/<sha256>/`.
//!
//! A cached buildpack appears only complete: it is unpacked under `<cache>/tmp/` and renamed
//! into place, so two builds fetching the same one at once both succeed (the second rename
//! loses and uses the first). Each build sees its buildpacks as `<work>/buildpacks/<k>/<name>`,
//! a link to the cache entry, so that the log and the droplet call them by their names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_bus::BuildpackRef;

use super::error::BuildError;
use super::transfer::{shown_url, Transfers, WorkDir};
use crate::buildpack::unzip_buildpack;

/// Temp dirs of fetches older than this are left from a stager that was killed mid-fetch.
const STALE: Duration = Duration::from_secs(24 * 3600);

/// Whether `name` may name an admin buildpack (and a file): 1 to 250 letters, digits, `_`, `-`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=250).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `sha` is a hex sha256 as the controller writes them (64 lowercase hex digits).
pub(crate) fn valid_sha256(sha: &str) -> bool {
    sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn cache_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::BuildpackCache {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes what fetches interrupted by a kill left in `<cache>/tmp` (only old entries: another
/// stager may share the cache).
pub(crate) fn sweep(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache.join("tmp")) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE));
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The unpacked admin buildpack `name` whose zip has sha256 `sha`: from the cache, or
/// downloaded from `url` (at most `limit` bytes), checked and cached. `Ok((dir, downloaded))`.
pub(crate) async fn cached(
    transfers: &Transfers,
    cache: &Path,
    name: &str,
    url: &str,
    sha: &str,
    limit: u64,
) -> Result<(PathBuf, bool), BuildError> {
    let target = cache.join(sha);
    if target.is_dir() {
        return Ok((target, false));
    }
    let tmp_root = cache.join("tmp");
    std::fs::create_dir_all(&tmp_root).map_err(cache_err(&tmp_root))?;
    // Removed however this ends; empty once the buildpack was renamed into place.
    let tmp = tempfile::Builder::new()
        .prefix("fetch-")
        .tempdir_in(&tmp_root)
        .map_err(cache_err(&tmp_root))?;
    let zip = tmp.path().join("buildpack.zip");
    let actual = transfers
        .download_hashed(url, &zip, limit)
        .await
        .map_err(|source| BuildError::Buildpack {
            name: name.to_string(),
            url: shown_url(url),
            source,
        })?;
    if actual != sha {
        return Err(BuildError::BuildpackChecksum {
            name: name.to_string(),
            url: shown_url(url),
            expected: sha.to_string(),
            actual,
        });
    }
    let unpacked = tmp.path().join("unpacked");
    let (bp_name, from, to) = (name.to_string(), zip.clone(), unpacked.clone());
    tokio::task::spawn_blocking(move || unzip_buildpack(&bp_name, &from, &to))
        .await
        .map_err(|e| {
            cache_err(&unpacked)(std::io::Error::other(format!("the unzip task failed: {e}")))
        })??;
    match std::fs::rename(&unpacked, &target) {
        Ok(()) => Ok((target, true)),
        // Another build cached it meanwhile: the same bits, by their digest.
        Err(_) if target.is_dir() => Ok((target, true)),
        Err(e) => Err(cache_err(&target)(e)),
    }
}

/// The library's buildpack arguments for `refs`, in order: built-ins as the path of the
/// stager's folder of that name, admin buildpacks as a link named after them in the build's
/// work dir to their cache entry. `say` gets a log line per download.
pub(crate) async fn prepare(
    transfers: &Transfers,
    cache: &Path,
    builtin_dir: &Path,
    refs: &[BuildpackRef],
    work: &WorkDir,
    limit: u64,
    say: impl Fn(&str),
) -> Result<Vec<String>, BuildError> {
    let mut args = Vec::with_capacity(refs.len());
    for (k, r) in refs.iter().enumerate() {
        let (Some(url), Some(sha)) = (&r.url, &r.sha256) else {
            args.push(builtin_dir.join(&r.name).display().to_string());
            continue;
        };
        let url_shown = shown_url(url);
        if !cache.join(sha).is_dir() {
            say(&format!(
                "-----> Downloading buildpack {} from {url_shown}",
                r.name
            ));
        }
        let (dir, _) = cached(transfers, cache, &r.name, url, sha, limit).await?;
        let slot = work.file("buildpacks").join(k.to_string());
        std::fs::create_dir_all(&slot).map_err(cache_err(&slot))?;
        let link = slot.join(&r.name);
        std::os::unix::fs::symlink(&dir, &link).map_err(cache_err(&link))?;
        args.push(link.display().to_string());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use sha2::{Digest, Sha256};

    use super::*;

    fn buildpack_zip() -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let exec = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        for (name, body) in [
            ("bin/detect", "#!/bin/sh\necho mine\n"),
            ("bin/compile", "#!/bin/sh\n"),
        ] {
            w.start_file(name, exec).unwrap();
            w.write_all(body.as_bytes()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// Serves `body` at `/bp`, counting the requests.
    async fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().route(
            "/bp",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/bp?token=secret"), hits)
    }

    #[tokio::test]
    async fn a_buildpack_is_downloaded_checked_unpacked_once_and_cached_by_its_digest() {
        let zip = buildpack_zip();
        let sha = hex::encode(Sha256::digest(&zip));
        let (url, hits) = serve(zip).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let transfers = Transfers::new(None).unwrap();
        let (first, downloaded) = cached(&transfers, &cache, "mine", &url, &sha, 1 << 20)
            .await
            .unwrap();
        assert!(downloaded);
        assert_eq!(first, cache.join(&sha));
        assert!(first.join("bin/detect").is_file());
        let (again, downloaded) = cached(&transfers, &cache, "mine", &url, &sha, 1 << 20)
            .await
            .unwrap();
        assert_eq!((again, downloaded), (first, false));
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "the second use is the cache"
        );
        assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);

        let work = WorkDir::new(dir.path()).unwrap();
        let refs = [
            BuildpackRef {
                name: "python".into(),
                sha256: None,
                url: None,
            },
            BuildpackRef {
                name: "mine".into(),
                sha256: Some(sha.clone()),
                url: Some(url.clone()),
            },
        ];
        let args = prepare(
            &transfers,
            &cache,
            Path::new("/bp"),
            &refs,
            &work,
            1 << 20,
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(args[0], "/bp/python");
        assert!(args[1].ends_with("/buildpacks/1/mine"), "{args:?}");
        assert!(Path::new(&args[1]).join("bin/compile").is_file());
    }

    #[tokio::test]
    async fn a_download_whose_digest_differs_is_refused_and_not_cached() {
        let zip = buildpack_zip();
        let (url, _) = serve(zip).await;
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let transfers = Transfers::new(None).unwrap();
        let claimed = "ab".repeat(32);
        let err = cached(&transfers, &cache, "mine", &url, &claimed, 1 << 20)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, BuildError::BuildpackChecksum { .. })
                && text.starts_with("buildpack `mine` downloaded from http://127.0.0.1:")
                && text.contains(&format!("not {claimed}"))
                && !text.contains("secret"),
            "{text}"
        );
        assert!(!cache.join(&claimed).exists());
        assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);

        let err = cached(&transfers, &cache, "mine", &url, &claimed, 10)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[test]
    fn names_and_digests_are_checked_before_they_name_files() {
        assert!(valid_name("my_bp-2") && !valid_name("") && !valid_name("../x"));
        assert!(!valid_name("a/b") && !valid_name(&"a".repeat(251)));
        assert!(valid_sha256(&"0f".repeat(32)));
        assert!(!valid_sha256(&"0F".repeat(32)) && !valid_sha256("../../etc"));
    }
}
