//! The droplet and the cache, copied out of the staging container and written on the host:
//! the droplet is repacked from `/home/vcap` keeping only its entries (`app/`, `deps/`, ...),
//! owned by vcap, gzipped, hashed as it is written, and renamed into place when complete.

use std::fs;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

use crate::error::{Phase, StagingError};
use crate::lifecycle::CACHE_DIR;
use crate::session::Session;

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A temporary path next to `path`, renamed over it when complete.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Writes the droplet to `out`; returns its sha256 (hex) and size.
pub(crate) async fn droplet_out(
    session: &Session<'_>,
    out: &Path,
    scratch: &Path,
) -> Result<(String, u64), StagingError> {
    let home_tar = scratch.join("home.tar");
    let file = fs::File::create(&home_tar).map_err(StagingError::io("creating", &home_tar))?;
    session
        .backend
        .stream_out(&session.handle, kiln_droplet::HOME, BufWriter::new(file))
        .await
        .map_err(StagingError::sandbox(
            Phase::DropletOut,
            "copying the droplet out",
        ))?
        .flush()
        .map_err(StagingError::io("writing", &home_tar))?;
    let tmp = partial(out);
    let result = {
        let (home_tar, tmp) = (home_tar.clone(), tmp.clone());
        tokio::task::spawn_blocking(move || repack(&home_tar, &tmp))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    };
    let _ = fs::remove_file(&home_tar);
    match result {
        Ok(v) => {
            fs::rename(&tmp, out).map_err(StagingError::io("writing the droplet to", out))?;
            Ok(v)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(StagingError::io("writing the droplet to", out)(e))
        }
    }
}

fn repack(home_tar: &Path, out: &Path) -> io::Result<(String, u64)> {
    let writer = Hashing {
        inner: BufWriter::new(fs::File::create(out)?),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut builder = tar::Builder::new(GzEncoder::new(writer, Compression::fast()));
    let mut archive = tar::Archive::new(BufReader::new(fs::File::open(home_tar)?));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(top) = path.components().next() else {
            continue;
        };
        if !kiln_droplet::ENTRIES.iter().any(|e| top.as_os_str() == *e) {
            continue;
        }
        let mut header = entry.header().clone();
        header.set_uid(2000);
        header.set_gid(2000);
        if header.entry_type().is_symlink() {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            builder.append_link(&mut header, &path, target)?;
        } else {
            builder.append_data(&mut header, &path, &mut entry)?;
        }
    }
    let mut writer = builder.into_inner()?.finish()?;
    writer.flush()?;
    let Hashing { inner, hash, bytes } = writer;
    inner
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    Ok((hex::encode(hash.finalize()), bytes))
}

/// Writes the buildpack cache (`/tmp/cache`) to `out`.
pub(crate) async fn cache_out(session: &Session<'_>, out: &Path) -> Result<bool, StagingError> {
    let tmp = partial(out);
    let file = fs::File::create(&tmp).map_err(StagingError::io("creating", &tmp))?;
    let encoder = GzEncoder::new(BufWriter::new(file), Compression::fast());
    let written = session
        .backend
        .stream_out(&session.handle, CACHE_DIR, encoder)
        .await
        .map_err(StagingError::sandbox(
            Phase::DropletOut,
            "copying the cache out",
        ));
    let finished = written.and_then(|enc| {
        enc.finish()
            .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
            .and_then(|f| f.sync_all())
            .map_err(StagingError::io("writing the cache to", out))
    });
    match finished {
        Ok(()) => {
            fs::rename(&tmp, out).map_err(StagingError::io("writing the cache to", out))?;
            Ok(true)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}
