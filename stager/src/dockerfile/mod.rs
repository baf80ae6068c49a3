//! Dockerfile builds: an app pushed with a Dockerfile is built into an OCI image in the
//! staging sandbox, with no Docker daemon.
//!
//! # API
//! - [`parse`]`(text) -> Result<`[`Dockerfile`]`, DockerfileError>`: the stages (global `ARG`s
//!   apart), every instruction with its 1-based line number. Unsupported instructions and flags
//!   (`HEALTHCHECK`, `ONBUILD`, `VOLUME`, `SHELL`, `STOPSIGNAL`, `MAINTAINER`, `ADD` of a
//!   git or ssh URL or of a URL among other sources, `COPY --link`, `RUN --mount`, heredocs,
//!   `FROM --platform`) are refused as
//!   `line N: <INSTRUCTION> is not supported by Kiln: <what to do>`.
//! - [`build`]`(&Backend, &StackStore, &`[`BuildOptions`]`, LogSink) -> Result<`[`BuiltImage`]`,
//!   DockerfileError>`: runs it and writes an OCI image layout (`oci-layout`, `index.json`,
//!   `blobs/sha256/...`) to `BuildOptions::output_dir`. The `StackStore` must be the
//!   backend's (`Config::stacks_dir`): `RUN` containers name their stack by digest.
//! - [`Dockerfile::base_images`]: the images its `FROM`s (and `COPY --from`s) name besides its
//!   stages, for a caller to fetch into the store (or map with [`BuildOptions::images`])
//!   before building; [`read_dockerfile`] reads it inside the context.
//! - [`sweep_cache`]: removes what crashed builds left in a cache dir.
//!
//! # What each instruction does
//! - `FROM`: an earlier stage (by `AS` name or index), else a name of
//!   [`BuildOptions::images`] (mapped to a store reference), else a stack or image of the
//!   store by name or digest ([`StackStore::resolve`]). The store keeps only the unpacked tree, so the
//!   image's base layer is a deterministic tar of that tree, made once per stack digest.
//! - `RUN`: a container per step (see [`run`](self::run)), as the stage's `USER` (the stack's
//!   own user, `vcap` on Kiln's stacks, or root when the image names none) with `ENV` and the
//!   `ARG`s in scope, in `WORKDIR`, within [`BuildOptions::limits`] and
//!   [`BuildOptions::net_out`]; a non-zero exit fails the build with the line and exit code.
//!   A `USER u:g` runs with `u`'s own group (the backend has no supplementary group choice).
//! - `COPY`/`ADD`: from the app's files or `--from` a stage or image, with `--chown` and
//!   `--chmod`; `ADD` extracts local tar and tar.gz archives (see [`copy`](self::copy)). No
//!   container is needed: the layer is written directly. `COPY` of a URL is refused.
//! - `ADD <url> <dest>` (the URL its only source): the stager downloads it, but only from an
//!   address [`BuildOptions::net_out`] allows (a `tcp` or `all` rule holding the address and
//!   port; no rules, no download), never from a loopback, link-local, unspecified, multicast
//!   or broadcast address, the staging host's own addresses or the containers' network,
//!   whatever the rules say; every address the host resolves to must pass, and the client
//!   connects only to those. Redirects are followed (at most 5), each checked the same way;
//!   no proxy is used. At most `limits.disk_bytes`, within the build's time limit. Only
//!   `http://` for now: `https://` is refused (the stager's HTTP client has no TLS). The file
//!   lands at `dest`, or in it under the URL path's last segment when `dest` ends with `/`
//!   (or is a directory of the image); mode 0600 (or `--chmod`'s), owned by root (or
//!   `--chown`), mtime 0, never extracted. The log shows ` ---> downloaded N bytes (<sha256>)`.
//!   The URL and the content's sha256 are in the step's key: the file is downloaded on every
//!   build, and only a changed file misses the cache. See [`fetch`](self::fetch).
//! - `ENV`, `ARG` (with `--build-arg` values, [`BuildOptions::build_args`]), `WORKDIR` (made,
//!   owned by root, if the image lacks it), `USER`, `EXPOSE`, `LABEL`, `CMD`, `ENTRYPOINT`
//!   (which drops a `CMD` inherited from the base) set the image config. `${VAR}` is
//!   substituted where Docker does it ([`words`](self::words)).
//! - `.dockerignore` is not read: the context is the app's uploaded files as they are.
//!
//! # Layer cache
//! Every layer-making step has a key chained from its parent's (see [`cache`](self::cache)),
//! starting from the base stack's digest and [`BuildOptions::cache_scope`];
//! a hit reuses the cached layer (its blob and its unpacked directory) and logs
//! ` ---> CACHED <digest>`; a miss runs the step (an `ADD <url>` downloads its file first, its
//! sha256 being part of the key). The log reads like Docker's:
//! `Step 3/9 : RUN make`. A second build of the same Dockerfile and files runs no `RUN` and
//! yields the same manifest digest.
//!
//! # Layout
//! - [`parse`](self::parse): text to [`Stage`]s of [`Instruction`]s; [`bases`](self::bases):
//!   the images they name.
//! - [`words`](self::words): Docker's variable substitution and quoting.
//! - [`build`](self::build): the executor, [`BuildOptions`], [`BuiltImage`].
//! - [`run`](self::run), [`copy`](self::copy): the layer-making steps; [`fetch`](self::fetch):
//!   `ADD <url>`'s download and its egress check.
//! - [`view`](self::view): a stage's tree mounted read-only for lookups.
//! - [`cache`](self::cache), [`config`](self::config): the layer cache and the image config.
//! - [`error`](self::error): [`DockerfileError`].

mod bases;
mod build;
mod cache;
mod config;
mod copy;
mod error;
mod fetch;
mod parse;
mod run;
mod view;
mod words;

pub use bases::BaseImage;
pub use build::{build, read_dockerfile, BuildOptions, BuiltImage};
pub use cache::sweep as sweep_cache;
pub use error::DockerfileError;
pub use parse::{parse, Arg, Command, Copy, Dockerfile, Instruction, Stage, Step};

#[cfg(doc)]
use kiln_rootfs::store::StackStore;
