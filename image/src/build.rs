//! `cairn-image build`: board file in, artifacts out (see ARCHITECTURE.md, Images).

use crate::board::Board;
use crate::bootfiles::{self, SlotBoot};
use crate::manifest::{Artifact, Manifest};
use crate::progress::Step;
use crate::rootfs::Binaries;
use crate::{bmap, disk, fat, initramfs, packages, rootfs, space, squashfs, tool};
use anyhow::{bail, Context, Result};
use cairn_update::keys::{PublicKey, SigningKey};
use cairn_update::Slot;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct BuildOptions {
    pub board_file: PathBuf,
    pub out: PathBuf,
    pub version: String,
    pub source_date_epoch: u64,
    pub mirror: Option<String>,
    /// Package download cache; default `<out>/.cache`.
    pub cache: Option<PathBuf>,
    /// The cairn source tree whose crates are cross-compiled.
    pub source: PathBuf,
    /// Prebuilt device binaries (e.g. from Buildroot) instead of compiling them.
    pub init_bin: Option<PathBuf>,
    pub cairn_bin: Option<PathBuf>,
    /// Signs an update bundle with this ed25519 key and makes the image trust its public half.
    pub sign_key: Option<PathBuf>,
    /// More public keys the image trusts (key rotation).
    pub trust_keys: Vec<PathBuf>,
    /// The anti-rollback floor; default: the version itself.
    pub min_version: Option<String>,
    /// Tests only: the image's `cairn` fails at once (a bad update that must roll back).
    pub broken_runtime: bool,
}

pub struct BuildOutput {
    pub image: PathBuf,
    pub manifest: Manifest,
}

pub fn build(opts: &BuildOptions) -> Result<BuildOutput> {
    // Everything about the board is checked before anything is written.
    let board = Board::load(&opts.board_file)?;
    validate_version(&opts.version)?;
    let min_version = opts
        .min_version
        .clone()
        .unwrap_or_else(|| opts.version.clone());
    validate_version(&min_version).context("--min-version")?;
    let sign_key = match &opts.sign_key {
        Some(p) => Some(SigningKey::load(p)?),
        None => None,
    };
    let mut trusted: Vec<PublicKey> = sign_key.iter().map(SigningKey::public).collect();
    for p in &opts.trust_keys {
        trusted.push(PublicKey::load(p)?);
    }
    let name = &board.board.name;
    let mirror = packages::mirror(opts.mirror.as_deref())?;

    let out_dir = opts.out.join(name);
    let work = out_dir.join(".work");
    space::ensure(&opts.out, space::BUILD_NEEDS)?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let cache = opts
        .cache
        .clone()
        .unwrap_or_else(|| opts.out.join(".cache"));

    let bins = device_binaries(&board, opts, &mirror, &cache)?;
    let pkgs = packages::fetch(&board, &mirror, &cache)?;
    let trust = rootfs::UpdateTrust {
        keys: trusted,
        min_version: min_version.clone(),
        broken_runtime: opts.broken_runtime,
    };
    let root = rootfs::assemble(&board, &pkgs, &bins, &opts.version, &trust, &work)?;
    initramfs::module_files(&root.dir, &root.kernel_version, &board.root.modules)
        .context("root.modules")?;

    let mtime = u32::try_from(opts.source_date_epoch).unwrap_or(u32::MAX);
    let initrd_path = work.join("initrd.img");
    let step = Step::spinner("writing the initramfs");
    let nmods = initramfs::build(
        &root.dir,
        &root.kernel_version,
        &bins.init,
        &board.initramfs.modules,
        mtime,
        &initrd_path,
    )
    .context("initramfs.modules")?;
    step.done();
    eprintln!("cairn-image: initramfs carries {nmods} kernel modules");

    let squash_path = out_dir.join(format!("cairn-{name}-{}.squashfs", opts.version));
    let squash_size = squashfs::build(&root.dir, &squash_path, opts.source_date_epoch)?;

    // Bootloader files come from their packages, unpacked apart from the root.
    let fw_root = work.join("firmware-packages");
    if fw_root.exists() {
        std::fs::remove_dir_all(&fw_root)?;
    }
    std::fs::create_dir_all(&fw_root)?;
    for p in pkgs
        .iter()
        .filter(|p| board.bootloader.packages.contains(&p.name))
    {
        packages::unpack(p, &fw_root)?;
    }
    let fw_out = out_dir.join("firmware");
    std::fs::create_dir_all(&fw_out)?;
    for f in &board.bootloader.firmware {
        let src = fw_root.join(f);
        let file_name = Path::new(f)
            .file_name()
            .context("firmware path has no file name")?;
        std::fs::copy(&src, fw_out.join(file_name)).with_context(|| {
            format!(
                "bootloader.firmware: {f} is not in {:?}",
                board.bootloader.packages
            )
        })?;
    }
    let loader_efi = match &board.bootloader.loader {
        Some(l) => Some(
            std::fs::read(fw_root.join(l))
                .with_context(|| format!("bootloader.loader: {l} is not in the packages"))?,
        ),
        None => None,
    };

    let kernel = bootfiles::bootable_kernel(&root.kernel_image)?;
    let initrd = std::fs::read(&initrd_path)?;
    let boot_files = bootfiles::files(
        &board,
        &opts.version,
        &[SlotBoot {
            slot: Slot::A,
            kernel: &kernel,
            initramfs: &initrd,
        }],
        loader_efi.as_deref(),
        mtime,
    )?;
    let boot_fat = work.join("boot.fat");
    {
        let step = Step::spinner("writing the boot partition (FAT)");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&boot_fat)?;
        let volume_id = u32::from_be_bytes(
            cairn_update::gpt::Guid::derived(format!("cairn/{name}/boot-fat").as_bytes()).0[..4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        fat::build_fat_image(
            &mut f,
            board.partitions.boot_mib * 1024 * 1024,
            "CAIRN-BOOT",
            volume_id,
            &boot_files,
            opts.source_date_epoch as i64,
        )?;
        step.done();
    }

    let image = out_dir.join(format!("cairn-{name}-{}.img", opts.version));
    let step = Step::spinner("writing the disk image (GPT: boot, root_a, root_b, data)");
    disk::write(
        &board,
        &disk::DiskContents {
            boot_fat: &boot_fat,
            root_squashfs: &squash_path,
        },
        &image,
    )?;
    step.done();

    let bmap_path = image.with_extension("img.bmap");
    {
        let step = Step::spinner("writing the block map (.bmap)");
        let mut f = std::fs::File::create(&bmap_path)?;
        bmap::write_bmap(&image, &mut f)?;
        step.done();
    }
    std::fs::write(out_dir.join("vmlinuz"), &kernel)?;
    std::fs::copy(&initrd_path, out_dir.join("initrd.img"))?;

    let mut artifacts = Vec::new();
    for path in [&image, &bmap_path, &squash_path] {
        artifacts.push(Artifact::of(path)?);
    }
    if let Some(key) = &sign_key {
        let path = out_dir.join(format!("cairn-{name}-{}.cairnb", opts.version));
        let step = Step::spinner("signing the update bundle (.cairnb)");
        crate::bundle::write(
            &path,
            key,
            &crate::bundle::Contents {
                board: &board,
                version: &opts.version,
                min_version: &min_version,
                created: opts.source_date_epoch,
                squashfs: &squash_path,
                boot_files: &[(kernel_name_of(&board), &kernel), ("initrd.img", &initrd)],
            },
        )?;
        step.done();
        artifacts.push(Artifact::of(&path)?);
    }
    for f in &board.bootloader.firmware {
        if let Some(file_name) = Path::new(f).file_name() {
            artifacts.push(Artifact::of(&fw_out.join(file_name))?);
        }
    }
    let manifest = Manifest {
        board: name.clone(),
        arch: board.board.arch.clone(),
        version: opts.version.clone(),
        source_date_epoch: opts.source_date_epoch,
        suite: board.packages.suite.clone(),
        kernel_version: root.kernel_version.clone(),
        root_squashfs_bytes: squash_size,
        image_bytes: disk::disk_size(&board),
        init_bytes: std::fs::metadata(&bins.init)?.len(),
        cairn_bytes: std::fs::metadata(&bins.cairn)?.len(),
        root_packages: pkgs
            .iter()
            .filter(|p| packages::in_root(&board, &p.name))
            .cloned()
            .collect(),
        boot_packages: pkgs
            .iter()
            .filter(|p| board.bootloader.packages.contains(&p.name))
            .cloned()
            .collect(),
        images: root.images.clone(),
        artifacts,
    };
    manifest.write(&out_dir.join("manifest.json"))?;
    Ok(BuildOutput { image, manifest })
}

fn kernel_name_of(board: &Board) -> &'static str {
    bootfiles::kernel_file_name(board)
}

fn validate_version(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    if !ok {
        bail!("--version {v:?}: use letters, digits and . - + _ (at most 64)");
    }
    Ok(())
}

/// Cross-compiles cairn-init and cairn for the board's Rust target (static, musl, rust-lld),
/// unless prebuilt binaries were given.
fn device_binaries(
    board: &Board,
    opts: &BuildOptions,
    mirror: &str,
    cache: &Path,
) -> Result<Binaries> {
    if let (Some(init), Some(cairn)) = (&opts.init_bin, &opts.cairn_bin) {
        return Ok(Binaries {
            init: init.clone(),
            cairn: cairn.clone(),
        });
    }
    let target = &board.board.rust_target;
    let c_env = crate::cross::c_toolchain_env(board, mirror, cache)?;
    let step = Step::spinner(format!("compiling cairn-init and cairn for {target}"));
    let manifest = opts.source.join("Cargo.toml");
    tool::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--locked", "--target", target])
            .args(["-p", "cairn-init", "-p", "cairn-runtime"])
            .arg("--manifest-path")
            .arg(&manifest)
            .env("SOURCE_DATE_EPOCH", opts.source_date_epoch.to_string())
            .envs(c_env),
        &format!("cross-compiling for {target} (is the target installed? run 'make deps')"),
    )?;
    step.done();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| opts.source.join("target"));
    let dir = target_dir.join(target).join("release");
    Ok(Binaries {
        init: dir.join("cairn-init"),
        cairn: dir.join("cairn"),
    })
}
