//! cairn-qemu: boot a built image interactively (`make run`) or measure boots (`make bench`).

use anyhow::{bail, Context, Result};
use qemu_tests::{parse_ready, BoardImage, Disk, Vm, BOOT_TIMEOUT};
use std::time::Duration;

mod bench_update;

const USAGE: &str = "usage:
  cairn-qemu run --board BOARD [--fresh]
      Boot out/BOARD's image with the serial console on this terminal (Ctrl-A X quits).
      The disk is a copy-on-write overlay kept in out/BOARD/run-disk.qcow2 (--fresh starts
      over); the API port 6443 is forwarded to a free port on 127.0.0.1, printed at start.
  cairn-qemu bench --boards \"B1 B2\" [--boots N] --out FILE
      Boot each board N times (default 3) and write boot figures as JSON.
  cairn-qemu bench-update --boards \"B1 B2\" --bundles DIR --out FILE
      On each board: install DIR/BOARD/cairn-BOARD-*.cairnb from a local disk against a raw
      dd of its root to the same slot, then time the reboot into it until it commits.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("cairn-qemu: error: {e:#}");
        std::process::exit(1);
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("run") => {
            let board = flag(args, "--board").context("--board is required")?;
            interactive(&board, args.iter().any(|a| a == "--fresh"))
        }
        Some("bench") => {
            let boards = flag(args, "--boards").context("--boards is required")?;
            let out = flag(args, "--out").context("--out is required")?;
            let boots: usize = flag(args, "--boots")
                .map(|b| b.parse().context("--boots takes a number"))
                .transpose()?
                .unwrap_or(3);
            bench(&boards, boots, &out)
        }
        Some("bench-update") => {
            let boards = flag(args, "--boards").context("--boards is required")?;
            let bundles = flag(args, "--bundles").context("--bundles is required")?;
            let out = flag(args, "--out").context("--out is required")?;
            bench_update::run(&boards, std::path::Path::new(&bundles), &out)
        }
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown command\n{USAGE}"),
    }
}

fn interactive(board: &str, fresh: bool) -> Result<()> {
    let image = BoardImage::load(board)?;
    let disk_path = image.out_dir.join("run-disk.qcow2");
    if fresh || !disk_path.exists() {
        let _ = std::fs::remove_file(&disk_path);
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.image)
            .arg(&disk_path)
            .arg("4G")
            .status()?;
        if !status.success() {
            bail!("qemu-img could not create {}", disk_path.display());
        }
    }
    let vars = match &image.qemu.pflash_vars {
        Some(v) => {
            let copy = image.out_dir.join("run-efivars.fd");
            if !copy.exists() {
                std::fs::copy(image.out_dir.join("firmware").join(v), &copy)?;
            }
            Some(copy)
        }
        None => None,
    };
    let port = qemu_tests::free_port()?;
    let published = image.out_dir.join("run-kubeconfig.raw");
    let _ = std::fs::remove_file(&published);
    let kubeconfig = image.out_dir.join("kubeconfig.yaml");
    let mut cmd = qemu_tests::qemu_command(&image, &disk_path, vars.as_deref(), port, &published);
    cmd.args(["-serial", "mon:stdio"]);
    eprintln!(
        "cairn-qemu: booting {} ({}) under software emulation; Ctrl-A X quits QEMU.\n\
         cairn-qemu: the node's API (port 6443) is forwarded to https://127.0.0.1:{port}\n\
         cairn-qemu: once CAIRN READY is printed: KUBECONFIG={} kubectl get namespaces",
        image.name,
        image.image.display(),
        kubeconfig.display()
    );
    // The node hands its admin kubeconfig over a virtio serial port once it is ready.
    std::thread::spawn(move || loop {
        let raw = std::fs::read_to_string(&published).unwrap_or_default();
        if let Some(k) = qemu_tests::host_kubeconfig(&raw, port) {
            if std::fs::write(&kubeconfig, k).is_ok() {
                eprintln!("\r\ncairn-qemu: wrote {}\r", kubeconfig.display());
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    let status = cmd.status().context("starting QEMU (run 'make deps')")?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn bench(boards: &str, boots: usize, out: &str) -> Result<()> {
    let mut results = serde_json::Map::new();
    for name in boards.split_whitespace() {
        let image = BoardImage::load(name)?;
        let manifest = image.manifest()?;
        let mut boot_ms = Vec::new();
        let mut pid1_ms = Vec::new();
        let mut init_work_ms = Vec::new();
        let mut rss = Vec::new();
        // The first boot makes the data filesystem; it is reported on its own, and the
        // measured boots are the steady state every later power-on sees.
        let disk = Disk::new(&image, "bench", 2)?;
        let mut first_boot_ms = 0;
        for i in 0..=boots {
            if i == 0 {
                eprintln!("cairn-qemu: {name}: first boot (makes the data filesystem)");
            } else {
                eprintln!("cairn-qemu: {name}: boot {i}/{boots}");
            }
            let mut vm = Vm::boot(&image, &disk, &format!("bench-{i}"))?;
            let timing = vm.wait_for("timing: pid1_start_ms=", BOOT_TIMEOUT)?;
            let rss_line = vm.wait_for("init rss_kib=", BOOT_TIMEOUT)?;
            let ready = vm.wait_for("CAIRN READY", BOOT_TIMEOUT)?;
            let (_, ms, _) = parse_ready(&ready).context("malformed READY line")?;
            // A clean reboot between measurements, so no boot pays for journal recovery.
            vm.monitor("sendkey ctrl-alt-delete")?;
            vm.wait_exit(Duration::from_secs(120))?;
            if i == 0 {
                first_boot_ms = ms;
                continue;
            }
            boot_ms.push(ms);
            pid1_ms.push(field(&timing, "pid1_start_ms").unwrap_or(0));
            init_work_ms.push(field(&timing, "init_work_ms").unwrap_or(0));
            rss.push(field(&rss_line, "rss_kib").unwrap_or(0));
        }
        let boot = median(&mut boot_ms);
        let pid1 = median(&mut pid1_ms);
        results.insert(
            name.to_string(),
            serde_json::json!({
                "boots": boots,
                "first_boot_ms": first_boot_ms,
                "boot_ms_median": boot,
                "boot_ms_all": boot_ms,
                "kernel_to_pid1_ms_median": pid1,
                "boot_to_pid1_ratio": if pid1 > 0 { boot as f64 / pid1 as f64 } else { 0.0 },
                "pid1_to_containerd_spawn_ms_median": median(&mut init_work_ms),
                "init_rss_kib_median": median(&mut rss),
                "init_binary_bytes": manifest.init_bytes,
                "root_squashfs_bytes": manifest.root_squashfs_bytes,
                "image_bytes": manifest.image_bytes,
                "targets": {
                    "pid1_to_containerd_spawn_ms": 300,
                    "init_binary_bytes": 2 * 1024 * 1024,
                    "root_squashfs_bytes_qemu_aarch64": 80 * 1024 * 1024
                }
            }),
        );
    }
    if let Some(parent) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(results))?;
    std::fs::write(out, text + "\n").with_context(|| format!("writing {out}"))?;
    println!("cairn-qemu: wrote {out}");
    Ok(())
}
