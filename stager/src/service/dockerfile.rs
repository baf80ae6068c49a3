//! Dockerfile builds in the service: a request on the `docker` stack, or one naming no
//! buildpack whose package has a `Dockerfile` at its root, is built with
//! [`crate::dockerfile::build`] into an OCI image, and the droplet is that image's layout as a
//! tar (`oci-layout`, `index.json`, `blobs/sha256/...` at its top) with the manifest digest in
//! [`StagedDroplet::image_digest`].
//!
//! The package is unpacked (with the same zip checks as a buildpack staging) into the build's
//! work dir as the context. Before building, every image a `FROM` (or `COPY --from`) names
//! that is neither an earlier stage nor in the backend's stack store is looked up among the
//! request's `images` (the controller's image store, by name or digest), downloaded once and
//! imported, and mapped to its digest; a `FROM` naming the request's stack uses the stack's
//! swapped image when the request has one. An unknown name fails before anything runs, listing
//! what there is. Layers are cached in [`Settings::dockerfile_cache`](super::Settings) across
//! stagings, keyed apart per app (the app guid is the build's cache scope).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use kiln_bus::{StagedDroplet, DOCKER_STACK};
use kiln_containers::Limits;
use kiln_rootfs::archive::{extract_in_root, ExtractOptions};
use kiln_rootfs::store::StackStore;
use oci_spec::image::ImageConfiguration;
use sha2::{Digest, Sha256};

use super::error::{with_causes, BuildError};
use super::job::{fetch_image, stack_image, BuildLog};
use super::server::Shared;
use super::transfer::{shown_url, WorkDir};
use crate::app_bits::app_tar;
use crate::dockerfile::{self, BuildOptions, Dockerfile, DockerfileError};
use crate::error::StagingError;
use crate::log::Stream;
use crate::request::StagingRequest;

/// The Dockerfile a build reads, at the root of the app.
const DOCKERFILE: &str = "Dockerfile";

/// Whether request `r`, whose package is the file `package`, is a Dockerfile build: on the
/// `docker` stack always (an app without a Dockerfile is refused), on another stack when it
/// names no buildpack and the package has a `Dockerfile` at its root.
pub(crate) async fn chosen(
    r: &kiln_bus::StagingRequest,
    package: &Path,
    work: &WorkDir,
) -> Result<bool, BuildError> {
    let docker = r.stack == DOCKER_STACK;
    if docker && !r.buildpacks.is_empty() {
        return Err(BuildError::InvalidRequest(format!(
            "the {DOCKER_STACK} stack builds the app's Dockerfile and runs no buildpack (named: {})",
            r.buildpacks.join(", ")
        )));
    }
    if !docker && !r.buildpacks.is_empty() {
        return Ok(false);
    }
    let (package, scratch) = (package.to_path_buf(), work.file("probe"));
    let found = tokio::task::spawn_blocking(move || has_dockerfile(&package, &scratch))
        .await
        .map_err(|e| StagingError::Platform {
            reason: format!("reading the package failed: {e}"),
        })??;
    if docker && !found {
        return Err(BuildError::NoDockerfile);
    }
    Ok(found)
}

/// Whether the app (a zip, or a tar) has a regular file `Dockerfile` at its root.
fn has_dockerfile(package: &Path, scratch: &Path) -> Result<bool, StagingError> {
    let file = fs::File::open(package).map_err(StagingError::io("opening", package))?;
    if let Ok(mut zip) = zip::ZipArchive::new(file) {
        let names: Vec<String> = zip
            .file_names()
            .filter(|n| n.trim_start_matches("./") == DOCKERFILE)
            .map(str::to_string)
            .collect();
        return Ok(names.iter().any(|n| {
            zip.by_name(n).is_ok_and(|e| {
                e.is_file() && e.unix_mode().is_none_or(|m| m & 0o170000 != 0o120000)
            })
        }));
    }
    fs::create_dir_all(scratch).map_err(StagingError::io("creating", scratch))?;
    let mut tar = tar::Archive::new(app_tar(package, scratch, u64::MAX)?);
    let entries = tar
        .entries()
        .map_err(StagingError::io("reading", package))?;
    for entry in entries {
        let entry = entry.map_err(StagingError::io("reading", package))?;
        let at_root = entry
            .path()
            .is_ok_and(|p| p.strip_prefix(".").unwrap_or(&p) == Path::new(DOCKERFILE));
        if at_root && entry.header().entry_type().is_file() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Builds the Dockerfile of `r` (`request` is its library form: package, limits, egress) and
/// uploads the image as the droplet.
pub(crate) async fn stage(
    shared: &Shared,
    r: &kiln_bus::StagingRequest,
    request: &StagingRequest,
    work: &WorkDir,
    log: &BuildLog,
) -> Result<StagedDroplet, BuildError> {
    log.line(Stream::Out, "-----> Building the Dockerfile (docker build)");
    let context = work.file("context");
    unpack(
        &request.app,
        &work.file("unpack"),
        &context,
        request.limits.disk_bytes,
    )
    .await?;
    let text = dockerfile::read_dockerfile(&context, Path::new(DOCKERFILE))?;
    let parsed = dockerfile::parse(&text)?;
    let stacks_dir = &shared.backend.config().stacks_dir;
    let store = StackStore::open(stacks_dir).map_err(|e| DockerfileError::Io {
        what: "opening the stack store",
        path: stacks_dir.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    let images = bases(shared, r, &parsed, &store, work, log).await?;

    let settings = &shared.settings;
    let mut opts = BuildOptions::new(
        &r.build_guid,
        &context,
        &settings.dockerfile_cache,
        &work.file("image"),
    );
    opts.cache_scope = format!("app {}", r.app_guid);
    opts.images = images;
    opts.limits = Limits {
        memory_bytes: request.limits.memory_bytes,
        disk_bytes: request.limits.disk_bytes,
        pids: 4096,
        ..Limits::default()
    };
    opts.net_out = request.egress.clone();
    opts.timeout = request.limits.timeout;
    let built = dockerfile::build(&shared.backend, &store, &opts, log.sink()).await?;

    log.line(
        Stream::Out,
        &format!(
            "-----> Packing the image {} into the droplet",
            built.manifest_digest
        ),
    );
    let droplet = work.file("droplet.tar");
    let (layout, out) = (built.layout.clone(), droplet.clone());
    let (sha256, size) = tokio::task::spawn_blocking(move || pack(&layout, &out))
        .await
        .map_err(|e| DockerfileError::Task(e.to_string()))?
        .map_err(|source| BuildError::Pack {
            path: droplet.clone(),
            source,
        })?;
    log.line(Stream::Out, "-----> Uploading the droplet");
    shared
        .transfers
        .upload_as(&droplet, &r.droplet_upload_url, "application/x-tar")
        .await
        .map_err(|source| BuildError::DropletUpload {
            url: shown_url(&r.droplet_upload_url),
            source,
        })?;
    let command = r
        .start_command
        .clone()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| image_command(&built.config));
    Ok(StagedDroplet {
        sha256,
        size,
        detected_buildpack: "dockerfile".into(),
        buildpacks: Vec::new(),
        process_types: [("web".to_string(), command.clone())].into(),
        start_command: command,
        image_digest: Some(built.manifest_digest),
    })
}

/// Unpacks the package `app` into the new directory `context`, using `scratch` on the way: at
/// most `max_bytes`, nothing outside `context` (see [`crate::app_bits`] and the safe
/// extractor).
async fn unpack(
    app: &Path,
    scratch: &Path,
    context: &Path,
    max_bytes: u64,
) -> Result<(), BuildError> {
    let (app, scratch, context) = (
        app.to_path_buf(),
        scratch.to_path_buf(),
        context.to_path_buf(),
    );
    tokio::task::spawn_blocking(move || -> Result<(), StagingError> {
        for dir in [&scratch, &context] {
            fs::create_dir_all(dir).map_err(StagingError::io("creating", dir.clone()))?;
        }
        let tar = app_tar(&app, &scratch, max_bytes)?;
        // Owned by root, as `COPY` writes the app's files unless told otherwise.
        let opts = ExtractOptions {
            owner: Some((0, 0)),
            ..ExtractOptions::default()
        };
        extract_in_root(&context, Path::new("/"), tar, &opts).map_err(|e| {
            StagingError::InvalidApp {
                reason: format!("unpacking the package: {}", with_causes(&e)),
            }
        })?;
        // The tar of a zip is not needed any more.
        let _ = fs::remove_dir_all(&scratch);
        Ok(())
    })
    .await
    .map_err(|e| StagingError::Platform {
        reason: format!("unpacking the package failed: {e}"),
    })??;
    Ok(())
}

/// Makes every image `dockerfile` names available to the build: what the store has is used as
/// is; the request's stack, when the request swaps its image, maps to that image; a name (or
/// digest) of the request's `images` is fetched and mapped to its digest. Returns the mapping
/// for [`BuildOptions::images`]; an unknown name fails, listing what there is.
async fn bases(
    shared: &Shared,
    r: &kiln_bus::StagingRequest,
    dockerfile: &Dockerfile,
    store: &StackStore,
    work: &WorkDir,
    log: &BuildLog,
) -> Result<BTreeMap<String, String>, BuildError> {
    let mut mapped = BTreeMap::new();
    for (i, base) in dockerfile
        .base_images(&BTreeMap::new())
        .into_iter()
        .enumerate()
    {
        let reference = base.reference;
        if let Some(image) = r.stack_image.as_ref().filter(|_| reference == r.stack) {
            stack_image(shared, image, work, log).await?;
            mapped.insert(reference, image.digest.clone());
            continue;
        }
        if store.resolve(&reference).is_ok() {
            continue;
        }
        let named = r
            .images
            .iter()
            .find(|n| n.name == reference || n.image.digest == reference);
        let Some(named) = named else {
            return Err(DockerfileError::Invalid {
                line: base.line,
                instruction: base.instruction,
                reason: unknown_image(&reference, &shared.settings.stacks, r),
            }
            .into());
        };
        let what = format!("the image {} ({})", named.name, named.image.digest);
        let archive = work.file(&format!("image-{i}.tar"));
        fetch_image(shared, &named.image, &what, &archive, log)
            .await
            .map_err(|message| BuildError::Image {
                name: named.name.clone(),
                digest: named.image.digest.clone(),
                message,
            })?;
        mapped.insert(reference, named.image.digest.clone());
    }
    Ok(mapped)
}

/// Why `reference` cannot be a base image, with what there is.
fn unknown_image(reference: &str, stacks: &[String], r: &kiln_bus::StagingRequest) -> String {
    let images = if r.images.is_empty() {
        "no image in the image store".to_string()
    } else {
        let names: Vec<&str> = r.images.iter().map(|n| n.name.as_str()).collect();
        format!("the images {} (kiln admin images)", names.join(", "))
    };
    format!(
        "`{reference}` is neither an earlier stage nor a stack or image of this platform: there are the stacks {} (kiln stacks) and {images}",
        stacks.join(", ")
    )
}

/// The image's `ENTRYPOINT` and `CMD` as one shell command line, for display and for
/// `process_types.web`.
fn image_command(config: &ImageConfiguration) -> String {
    let Some(c) = config.config() else {
        return String::new();
    };
    let argv = c.entrypoint().iter().chain(c.cmd().iter()).flatten();
    argv.map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

/// `word` as one shell word: as is when it needs no quoting, else in single quotes.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Writes the layout directory `layout` as an uncompressed tar to `out` (its contents at the
/// top; entries sorted, owned by 0, mtime 0, so one image always makes the same droplet) and
/// returns its hex sha256 and size.
fn pack(layout: &Path, out: &Path) -> io::Result<(String, u64)> {
    let file = fs::File::create(out)?;
    let mut tar = tar::Builder::new(Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
        size: 0,
    });
    append_dir(&mut tar, layout, Path::new(""))?;
    let mut hashing = tar.into_inner()?;
    hashing.flush()?;
    hashing.inner.get_ref().sync_all()?;
    Ok((hex::encode(hashing.hash.finalize()), hashing.size))
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, rel: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            tar.append_data(&mut header, &name, io::empty())?;
            append_dir(tar, &entry.path(), &name)?;
        } else if kind.is_file() {
            let mut file = fs::File::open(entry.path())?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(file.metadata()?.len());
            tar.append_data(&mut header, &name, &mut file as &mut dyn Read)?;
        }
    }
    Ok(())
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_image_command_is_its_entrypoint_and_cmd_quoted() {
        assert_eq!(shell_quote("0.0.0.0:8080"), "0.0.0.0:8080");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let config: ImageConfiguration = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo $HOME && httpd"]}}"#,
        )
        .unwrap();
        assert_eq!(image_command(&config), "/bin/sh -c 'echo $HOME && httpd'");
    }

    #[test]
    fn the_droplet_is_the_layout_as_a_tar_with_the_same_digest_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        fs::write(layout.join("oci-layout"), "{}").unwrap();
        fs::write(layout.join("index.json"), "{}").unwrap();
        fs::write(layout.join("blobs/sha256/ab"), "blob").unwrap();
        let (sha, size) = pack(&layout, &dir.path().join("a.tar")).unwrap();
        let bytes = fs::read(dir.path().join("a.tar")).unwrap();
        assert_eq!(sha, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(size, bytes.len() as u64);
        let names: Vec<String> = tar::Archive::new(&bytes[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "blobs",
                "blobs/sha256",
                "blobs/sha256/ab",
                "index.json",
                "oci-layout"
            ]
        );
        let (again, _) = pack(&layout, &dir.path().join("b.tar")).unwrap();
        assert_eq!(again, sha);
    }

    #[test]
    fn a_dockerfile_is_found_at_the_root_of_a_zip_only() {
        let dir = tempfile::tempdir().unwrap();
        let zip_of = |name: &str, entries: &[&str]| -> PathBuf {
            let path = dir.path().join(name);
            let mut w = zip::ZipWriter::new(fs::File::create(&path).unwrap());
            for e in entries {
                w.start_file(*e, zip::write::SimpleFileOptions::default())
                    .unwrap();
                w.write_all(b"FROM tiny\n").unwrap();
            }
            w.finish().unwrap();
            path
        };
        let scratch = dir.path().join("scratch");
        let yes = zip_of("yes.zip", &["index.html", "Dockerfile"]);
        assert!(has_dockerfile(&yes, &scratch).unwrap());
        let nested = zip_of("nested.zip", &["sub/Dockerfile", "dockerfile"]);
        assert!(!has_dockerfile(&nested, &scratch).unwrap());
    }
}
