//! `kiln-rootfs`: build stack images and import them into a machine's stack store.
//!
//! ```text
//! kiln-rootfs build tiny|bookworm DIR          (or --out DIR)
//! kiln-rootfs cached tiny|bookworm [--root DIR]
//! kiln-rootfs import --store DIR NAME LAYOUT_DIR_OR_TAR
//! kiln-rootfs list --store DIR
//! ```
//!
//! `build` and `cached` print progress (the bookworm recipe's phases and the output of
//! debootstrap and apt-get) on stderr, and on stdout a last line with the layout directory and
//! its manifest digest.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiln_rootfs::{recipes, StackImage, StackStore};

#[derive(Parser)]
#[command(name = "kiln-rootfs", about = "Build and import Kiln stack images")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a stack recipe as an OCI image layout (bookworm: as root, takes minutes).
    Build {
        /// The recipe (known: tiny, bookworm).
        recipe: String,
        /// The layout directory to write (created if missing).
        #[arg(value_name = "OUT", required_unless_present = "out")]
        out_dir: Option<PathBuf>,
        /// The layout directory to write, as an option.
        #[arg(long, conflicts_with = "out_dir")]
        out: Option<PathBuf>,
    },
    /// Print the layout of a stack recipe in the machine's cache, building it there if missing.
    Cached {
        /// The recipe (known: tiny, bookworm).
        recipe: String,
        /// The cache root (default: $KILN_STACK_CACHE, else /var/cache/kiln/stacks).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Verify and unpack an OCI image layout (directory or tar) into a stack store.
    Import {
        /// The stack store directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// The name to record the stack under, e.g. tiny.
        name: String,
        /// An OCI image layout directory, or a tar archive of one.
        source: PathBuf,
    },
    /// List the stacks in a store.
    List {
        /// The stack store directory.
        #[arg(long)]
        store: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Build {
            recipe,
            out_dir,
            out,
        } => {
            let Some(out) = out.or(out_dir) else {
                anyhow::bail!("give the layout directory to write: `build {recipe} DIR`");
            };
            println!("building stack `{recipe}` into {}", out.display());
            let started = Instant::now();
            let layout = recipes::build_with_progress(&recipe, &out, &mut print_progress)
                .with_context(|| format!("building stack `{recipe}`"))?;
            println!(
                "built {} in {} ms: manifest {}",
                layout.dir.display(),
                started.elapsed().as_millis(),
                layout.manifest_digest
            );
        }
        Cmd::Cached { recipe, root } => {
            let root = root.unwrap_or_else(recipes::cache_root);
            let started = Instant::now();
            let layout = recipes::cached_in(&root, &recipe, &mut print_progress)
                .with_context(|| format!("stack `{recipe}` in the cache {}", root.display()))?;
            println!(
                "{} in {} ms: manifest {}",
                layout.dir.display(),
                started.elapsed().as_millis(),
                layout.manifest_digest
            );
        }
        Cmd::Import {
            store,
            name,
            source,
        } => {
            let store = StackStore::open(&store)
                .with_context(|| format!("opening stack store {}", store.display()))?;
            println!("importing {} as `{name}`", source.display());
            let started = Instant::now();
            let image = if source.is_dir() {
                store.import(&source, &name)
            } else {
                store.import_archive(&source, &name)
            }
            .with_context(|| format!("importing {}", source.display()))?;
            println!("imported in {} ms", started.elapsed().as_millis());
            print_image(&image);
        }
        Cmd::List { store } => {
            let store = StackStore::open(&store)
                .with_context(|| format!("opening stack store {}", store.display()))?;
            let images = store.list().context("listing stacks")?;
            if images.is_empty() {
                println!("no stacks in {}", store.root().display());
            }
            for image in &images {
                print_image(image);
            }
        }
    }
    Ok(())
}

fn print_progress(line: &str) {
    eprintln!("{line}");
}

fn print_image(image: &StackImage) {
    println!(
        "{}\t{}\t{}\timported {}",
        image.name.as_deref().unwrap_or("-"),
        image.digest,
        image.rootfs.display(),
        image.imported_at
    );
}
