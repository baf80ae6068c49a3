//! Recipes that build stack images as OCI image layouts, and the per-machine cache of them.
//!
//! - `tiny` ([`build_tiny`]): the host's static busybox and a `vcap` user; offline, well under
//!   a second.
//! - `bookworm` ([`build_bookworm`]): a Debian 12 userland (python3, pip, venv, nodejs, npm,
//!   bash, busybox, ca-certificates, tzdata, locales) from `debootstrap`; needs root and
//!   Debian's archive, takes minutes.
//!
//! [`build`] dispatches by name. [`cached`] returns a recipe's layout from the machine's cache
//! (`$KILN_STACK_CACHE`, else `/var/cache/kiln/stacks`), building it there once: callers that
//! need a stack (tests, benchmarks, the stager) should use it rather than build their own.

mod bookworm;
mod cache;
mod scratch;
mod tiny;

use std::io;
use std::path::{Path, PathBuf};

use crate::layout::LayoutError;
pub use crate::layout::StackLayout;
pub use bookworm::{
    build_bookworm, build_bookworm_with, BookwormOptions, ENV as BOOKWORM_ENV, LABEL_NAME,
    LABEL_PACKAGES, LABEL_RECIPE_VERSION, LABEL_SOURCE, MIRROR as BOOKWORM_MIRROR,
    PACKAGES as BOOKWORM_PACKAGES, RECIPE_VERSION as BOOKWORM_RECIPE_VERSION,
};
pub use cache::{cache_root, cached, cached_in, CACHE_ENV, DEFAULT_CACHE_ROOT};
pub use tiny::{
    build_tiny, build_tiny_with, HOST_BUSYBOX, RECIPE_VERSION as TINY_RECIPE_VERSION,
    REQUIRED_APPLETS,
};

/// The recipes [`build`] knows.
pub const KNOWN: &[&str] = &["tiny", "bookworm"];

/// Errors from building a stack image.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// No recipe by that name.
    #[error("unknown recipe `{name}` (known: {})", KNOWN.join(", "))]
    UnknownRecipe {
        /// The name asked for.
        name: String,
    },
    /// The host has no busybox where the recipe looks for it.
    #[error("{} not found: install busybox-static (deploy/setup)", path.display())]
    BusyboxMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The host's busybox is dynamically linked and would not run inside the image.
    #[error("{} is not a statically linked executable: install busybox-static (deploy/setup)", path.display())]
    BusyboxNotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// `busybox --list` did not run or failed.
    #[error("`{} --list` failed: {reason}", path.display())]
    BusyboxList {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The host's busybox lacks applets the stack promises.
    #[error("{} lacks applets the tiny stack needs: {}", path.display(), missing.join(", "))]
    MissingApplets {
        /// The binary.
        path: PathBuf,
        /// The missing applets.
        missing: Vec<String>,
    },
    /// The recipe runs debootstrap and chroot, which need root.
    #[error("building the `{recipe}` stack needs root (it runs debootstrap and chroot)")]
    NeedsRoot {
        /// The recipe.
        recipe: &'static str,
    },
    /// A host tool the recipe runs is not installed.
    #[error("{program} not found in PATH, /usr/sbin or /sbin: install {package} (deploy/setup)")]
    ToolMissing {
        /// The program.
        program: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A program could not be started, or its output not read.
    #[error("could not run {program}")]
    Spawn {
        /// The program or step.
        program: String,
        /// The underlying error.
        source: io::Error,
    },
    /// debootstrap exited with an error.
    #[error("debootstrap failed ({status}); the last lines of its log:\n{log_tail}")]
    Debootstrap {
        /// How it exited.
        status: String,
        /// The end of its output and of its own `debootstrap.log`.
        log_tail: String,
    },
    /// A later step of a build (apt-get, locale-gen, useradd, ...) exited with an error.
    #[error("{step} failed ({status}); the last lines of its output:\n{output_tail}")]
    Step {
        /// The step.
        step: String,
        /// How it exited.
        status: String,
        /// The end of its output.
        output_tail: String,
    },
    /// The built tree lacks something the stack promises.
    #[error("the `{recipe}` stack is incomplete: {what}")]
    Incomplete {
        /// The recipe.
        recipe: &'static str,
        /// What is missing.
        what: String,
    },
    /// Reading an input, building the layer or managing the cache failed.
    #[error("I/O on {}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing (or, for a cached layout, reading) the layout failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// Builds the stack recipe `name` as an OCI image layout in `out` (created if missing),
/// logging progress at `info` level.
pub fn build(name: &str, out: &Path) -> Result<StackLayout, RecipeError> {
    build_with_progress(name, out, &mut |line| {
        tracing::info!(recipe = name, "{line}");
    })
}

/// Builds the stack recipe `name` as an OCI image layout in `out` (created if missing),
/// passing each line of progress to `progress` (the bookworm recipe reports its phases and
/// the output of debootstrap and apt-get).
pub fn build_with_progress(
    name: &str,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<StackLayout, RecipeError> {
    match name {
        "tiny" => build_tiny(out),
        "bookworm" => build_bookworm_with(out, &BookwormOptions::default(), progress),
        _ => Err(RecipeError::UnknownRecipe {
            name: name.to_string(),
        }),
    }
}

/// The version of recipe `name`: bumped whenever its output changes, and part of its
/// directory name in the cache (`<name>-<version>`), so a changed recipe is built again.
pub fn recipe_version(name: &str) -> Result<u32, RecipeError> {
    match name {
        "tiny" => Ok(tiny::RECIPE_VERSION),
        "bookworm" => Ok(bookworm::RECIPE_VERSION),
        _ => Err(RecipeError::UnknownRecipe {
            name: name.to_string(),
        }),
    }
}
