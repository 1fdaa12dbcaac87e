//! cairn-image: builds cairn images from board files.

use anyhow::Result;
use cairn_image::build::{build, BuildOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn-image",
    version,
    about = "Build cairn OS images from a board file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the root filesystem, initramfs, disk image (.img + .bmap) and manifest for a board.
    ///
    /// Outputs go to OUT/<board>/: cairn-<board>-<version>.img, its .bmap, the root
    /// .squashfs, manifest.json, and firmware/ (what QEMU or the board's ROM loads).
    Build {
        /// Board file, e.g. boards/qemu-aarch64.toml.
        #[arg(long)]
        board: PathBuf,
        /// Output directory (artifacts go to OUT/<board>/, downloads are cached in OUT/.cache).
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Image version written into the image and its file names.
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
        /// Timestamp for every file in the image; the same value gives the same bytes.
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
        source_date_epoch: u64,
        /// Debian archive URI; default: CAIRN_MIRROR, else the archive the host's apt uses.
        #[arg(long, env = "CAIRN_MIRROR")]
        mirror: Option<String>,
        /// Package download cache (default: OUT/.cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// cairn source tree to cross-compile the device binaries from.
        #[arg(long, default_value = ".")]
        source: PathBuf,
        /// Use this prebuilt cairn-init instead of compiling it (needs --cairn-bin too).
        #[arg(long, requires = "cairn_bin")]
        init_bin: Option<PathBuf>,
        /// Use this prebuilt cairn instead of compiling it (needs --init-bin too).
        #[arg(long, requires = "init_bin")]
        cairn_bin: Option<PathBuf>,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("cairn-image: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Build {
            board,
            out,
            version,
            source_date_epoch,
            mirror,
            cache,
            source,
            init_bin,
            cairn_bin,
        } => {
            let result = build(&BuildOptions {
                board_file: board,
                out,
                version,
                source_date_epoch,
                mirror,
                cache,
                source,
                init_bin,
                cairn_bin,
            })?;
            let m = &result.manifest;
            println!(
                "built {} ({} MiB disk, {:.1} MiB root squashfs, kernel {})",
                result.image.display(),
                m.image_bytes >> 20,
                m.root_squashfs_bytes as f64 / 1048576.0,
                m.kernel_version
            );
            Ok(())
        }
    }
}
