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
// Parsed once per run: the size of the build variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Sign an update bundle (OUT/<board>/cairn-<board>-<version>.cairnb) with this
        /// ed25519 key (from `cairn-image keygen`); the image trusts its public half.
        #[arg(long)]
        sign_key: Option<PathBuf>,
        /// Another public key the image accepts bundles from (repeat for key rotation).
        #[arg(long = "trust-key")]
        trust_keys: Vec<PathBuf>,
        /// Anti-rollback floor: once this image commits, bundles below this version are
        /// refused. Default: the version itself (no downgrades).
        #[arg(long)]
        min_version: Option<String>,
        /// For tests of rollback: the image's `cairn` exits at once, so the node never
        /// becomes healthy.
        #[arg(long)]
        test_broken_runtime: bool,
    },
    /// Make an ed25519 key pair for signing update bundles: KEY (private, PKCS#8 PEM) and
    /// KEY.pub (public, for `--trust-key` and `verify`). Existing files are never replaced.
    Keygen {
        /// Where to write the private key; the public key goes to KEY.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an update bundle on this host: signature, then every byte against its manifest.
    Verify {
        /// The .cairnb file.
        bundle: PathBuf,
        /// The public key it must be signed with (KEY.pub from `keygen`).
        #[arg(long)]
        key: PathBuf,
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
            sign_key,
            trust_keys,
            min_version,
            test_broken_runtime,
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
                sign_key,
                trust_keys,
                min_version,
                broken_runtime: test_broken_runtime,
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
        Command::Keygen { out } => keygen(&out),
        Command::Verify { bundle, key } => {
            let m = cairn_image::bundle::verify(&bundle, &key)?;
            println!(
                "{}: good signature; cairn {} for {} ({}), {} MiB root, floor {}",
                bundle.display(),
                m.version,
                m.board,
                m.arch,
                m.payload.size >> 20,
                m.min_version
            );
            Ok(())
        }
    }
}

fn keygen(out: &std::path::Path) -> Result<()> {
    use cairn_update::keys::SigningKey;
    use std::io::Write;
    let public = {
        let mut p = out.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    for p in [out, public.as_path()] {
        if p.exists() {
            anyhow::bail!("{} exists: keygen never replaces a key", p.display());
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let pem = SigningKey::generate_pem()?;
    let key = SigningKey::from_pem(&pem, out)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)?;
        f.write_all(pem.as_bytes())?;
    }
    std::fs::write(&public, key.public().to_pem())?;
    println!(
        "wrote {} (keep it secret) and {} (key id {})",
        out.display(),
        public.display(),
        cairn_update::keys::short_id(&key.public().id())
    );
    Ok(())
}
