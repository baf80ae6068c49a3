//! Recipes that build stack images as OCI image layouts, offline, from what the host has.
//!
//! Only `tiny` exists so far: a static busybox userland with a `vcap` user (see [`build_tiny`]).

mod tiny;

use std::io;
use std::path::{Path, PathBuf};

use crate::layout::LayoutError;
pub use crate::layout::StackLayout;
pub use tiny::{build_tiny, build_tiny_with, HOST_BUSYBOX, REQUIRED_APPLETS};

/// The recipes [`build`] knows.
pub const KNOWN: &[&str] = &["tiny"];

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
    /// Reading an input or building the layer failed.
    #[error("I/O on {}", path.display())]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing the layout failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// Builds the stack recipe `name` as an OCI image layout in `out` (created if missing).
pub fn build(name: &str, out: &Path) -> Result<StackLayout, RecipeError> {
    match name {
        "tiny" => build_tiny(out),
        _ => Err(RecipeError::UnknownRecipe {
            name: name.to_string(),
        }),
    }
}
