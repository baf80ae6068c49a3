//! Kiln's stack images: the recipes that build them, the store that imports, verifies and
//! unpacks them once per machine, and the safe tar code used both for image layers and for
//! moving files in and out of (possibly hostile) container trees.
//!
//! # Layout
//!
//! - [`recipes`] builds stacks as OCI image layouts ([`recipes::build_tiny`] offline,
//!   [`recipes::build_bookworm`] with debootstrap) and caches them once per machine
//!   ([`recipes::cached`]).
//! - [`layout`] writes OCI image layouts (layers from memory or streamed from a directory
//!   tree) and reads them back with every blob verified.
//! - [`store`] holds unpacked stacks keyed by manifest digest ([`StackStore`]).
//! - [`unpack`] applies an image's layers, with OCI whiteouts, to a rootfs directory.
//! - [`archive`] extracts tar streams into, and archives paths out of, a directory tree using
//!   `openat2(RESOLVE_IN_ROOT)` for every lookup, so a hostile tree cannot reach the host.
//!
//! The binary `kiln-rootfs` wraps these for operators: `build`, `cached`, `import` and `list`.
//!
//! # Errors
//!
//! Each module has one error enum whose variants carry context (the path, entry or digest that
//! failed). An underlying cause is exposed through `Error::source()`, not repeated in the
//! message, so print errors with their chain (`{:#}` with `anyhow`, or walk `source()`).

pub mod archive;
pub mod layout;
pub mod recipes;
pub mod store;
mod time;
pub mod unpack;

pub use archive::{
    archive_from_root, extract_in_root, ArchiveError, ExtractOptions, ExtractSummary,
};
pub use layout::{LayoutError, StackLayout};
pub use recipes::RecipeError;
pub use store::{StackImage, StackStore, StoreError};
pub use time::rfc3339;
