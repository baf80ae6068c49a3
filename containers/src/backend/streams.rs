//! Copying files into and out of a container as tar streams.
//!
//! Paths are resolved inside the container's root (`openat2(RESOLVE_IN_ROOT)`, see
//! `kiln_rootfs::archive`), never from the host side, so symlinks a container plants cannot
//! point the backend at host files; hostile tar entries are refused by name.

use std::io::{Read, Write};
use std::path::PathBuf;

use kiln_rootfs::archive::{self, ExtractOptions};

use super::Backend;
use crate::as_user::run_as;
use crate::error::{Error, Result};

/// How [`Backend::stream_in_with`] extracts a tar stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamInOptions<'a> {
    /// Owner of every entry: a user of the container's `/etc/passwd` (default `vcap`).
    pub user: Option<&'a str>,
    /// Keep symlinks whose target is absolute or climbs above the target directory (they
    /// resolve inside the container either way). Off for untrusted input such as app bits;
    /// on for what the platform made itself, such as droplets (`node_modules -> /home/vcap/deps/0/...`).
    pub absolute_links: bool,
}

impl Backend {
    /// Extracts the tar stream `tar` at `path` in the container, every entry owned by `user`
    /// (default `vcap`); symlinks that would leave `path` are refused.
    pub async fn stream_in(
        &self,
        handle: &str,
        path: &str,
        user: Option<&str>,
        tar: impl Read + Send + 'static,
    ) -> Result<()> {
        let options = StreamInOptions {
            user,
            absolute_links: false,
        };
        self.stream_in_with(handle, path, options, tar).await
    }

    /// Extracts the tar stream `tar` at `path` in the container as `options` say.
    pub async fn stream_in_with(
        &self,
        handle: &str,
        path: &str,
        options: StreamInOptions<'_>,
        tar: impl Read + Send + 'static,
    ) -> Result<()> {
        let record = self.inner.record(handle)?;
        let user_name = options.user.unwrap_or("vcap");
        let user = record
            .users
            .get(user_name)
            .ok_or_else(|| Error::UnknownUser {
                handle: handle.to_string(),
                user: user_name.to_string(),
            })?;
        if user.uid >= record.ids.size || user.gid >= record.ids.size {
            return Err(Error::UnknownUser {
                handle: handle.to_string(),
                user: format!(
                    "{user_name} (uid {} is outside the container's id range)",
                    user.uid
                ),
            });
        }
        let owner = (
            record.ids.host_base + user.uid,
            record.ids.host_base + user.gid,
        );
        let rootfs = self.inner.dir(handle).rootfs();
        let path = PathBuf::from(path);
        let target = rootfs.join(path.strip_prefix("/").unwrap_or(&path));
        let absolute_links = options.absolute_links;
        tokio::task::spawn_blocking(move || {
            let options = ExtractOptions {
                owner: Some(owner),
                allow_absolute_and_dot_prefix: absolute_links,
                ..ExtractOptions::default()
            };
            run_as(owner.0, owner.1, move || {
                archive::extract_in_root(&rootfs, &path, tar, &options)
            })
            .map_err(|e| Error::io("stream in", &target, e))??;
            Ok(())
        })
        .await?
    }

    /// Writes a tar of `path` in the container to `out`, and gives `out` back.
    pub async fn stream_out<W: Write + Send + 'static>(
        &self,
        handle: &str,
        path: &str,
        out: W,
    ) -> Result<W> {
        let record = self.inner.record(handle)?;
        let root = record.ids.host_base;
        let rootfs = self.inner.dir(handle).rootfs();
        let path = PathBuf::from(path);
        let source = rootfs.join(path.strip_prefix("/").unwrap_or(&path));
        tokio::task::spawn_blocking(move || {
            // With the rights of container root, never the host's.
            run_as(root, root, move || {
                let mut out = out;
                archive::archive_from_root(&rootfs, &path, &mut out).map(|()| out)
            })
            .map_err(|e| Error::io("stream out", &source, e))?
            .map_err(Error::from)
        })
        .await?
    }
}
