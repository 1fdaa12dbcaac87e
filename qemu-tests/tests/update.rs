//! A/B updates on both QEMU boards, from outside: v1 → v2 from a bundle served over HTTP by
//! the host; power cuts at random moments of an install; a broken v3 that rolls back by
//! itself; and bad bundles refused with the active slot's bytes unchanged.
//!
//! `make qemu-test` builds what this needs: the v1 image (`make images`) and the v2 and v3
//! bundles (`make update-bundles`, v3 with `--test-broken-runtime`).

use cairn_update::bundle::{self, Manifest};
use cairn_update::keys::SigningKey;
use qemu_tests::{parse_ready, repo_root, BoardImage, Disk, FileServer, Vm, BOOT_TIMEOUT};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SH: Duration = Duration::from_secs(120);
/// Install of a whole bundle under emulation, generous for a loaded machine.
const INSTALL: Duration = Duration::from_secs(600);
/// What the test sets `update.health_timeout` to, so a broken slot rolls back quickly.
const HEALTH_TIMEOUT_SECS: u64 = 45;
/// Power cuts in the middle of installs.
const POWER_CUTS: usize = 10;

fn out_dir() -> PathBuf {
    std::env::var_os("CAIRN_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("out"))
}

fn bundle_path(set: &str, board: &str, version: &str) -> PathBuf {
    let p = out_dir()
        .join(set)
        .join(board)
        .join(format!("cairn-{board}-{version}.cairnb"));
    assert!(
        p.exists(),
        "{} is missing: run make update-bundles",
        p.display()
    );
    p
}

/// Boots and waits for READY; returns the VM with its slot and version.
fn boot(image: &BoardImage, disk: &Disk, name: &str) -> (Vm, String, String) {
    let mut vm = Vm::boot(image, disk, name).expect("qemu");
    let line = vm.wait_for("CAIRN READY", BOOT_TIMEOUT).expect("READY");
    let (slot, _, version) =
        parse_ready(&line).unwrap_or_else(|| panic!("{name}: unreadable READY line {line:?}"));
    // The console shell is up once READY is printed; let it settle.
    vm.sh("true", SH).expect("console");
    (vm, slot, version)
}

fn on_node(vm: &mut Vm, command: &str) -> String {
    let (code, out) = vm.sh(command, SH).expect("console command");
    assert_eq!(code, 0, "{command:?} failed on the node:\n{out}");
    out
}

fn status(vm: &mut Vm) -> serde_json::Value {
    // Service logs share the console, as lines of their own: leave them out.
    let out = on_node(vm, "cairn update status --json");
    let json: String = out
        .lines()
        .filter(|l| !l.starts_with('[') && !l.starts_with("cairn-init:"))
        .collect::<Vec<_>>()
        .join("\n");
    let start = json
        .find('{')
        .unwrap_or_else(|| panic!("no JSON status in:\n{out}"));
    serde_json::from_str(&json[start..]).unwrap_or_else(|e| panic!("{e}: status JSON in:\n{out}"))
}

fn slot_status<'a>(s: &'a serde_json::Value, slot: &str) -> &'a serde_json::Value {
    s["slots"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["slot"] == slot))
        .expect("slot in status")
}

/// The SHA-256 of a slot's partition on the node.
fn slot_hash(vm: &mut Vm, slot: &str) -> String {
    let out = on_node(
        vm,
        &format!(
            "d=$({}); [ -n \"$d\" ] && sha256sum $d",
            qemu_tests::slot_device_shell(slot)
        ),
    );
    // Service logs share the console: pick the hash out of whatever else was printed.
    out.split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .expect("a hash")
        .to_string()
}

/// Installs from a URL and reboots; the VM exits (QEMU runs with -no-reboot).
fn install_and_reboot(vm: &mut Vm, url: &str) -> Duration {
    let start = Instant::now();
    vm.send_line(&format!("cairn update install {url} --reboot"))
        .expect("console");
    vm.wait_for("it boots next, on trial", INSTALL)
        .expect("install finished");
    let took = start.elapsed();
    vm.wait_exit(Duration::from_secs(120)).expect("rebooted");
    took
}

/// A small deterministic generator for the power-cut moments; the seed is printed.
struct Moments(u64);

impl Moments {
    fn next_ms(&mut self, max_ms: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % max_ms.max(1)
    }
}

/// Re-signs `original` with a changed manifest (or another key): what a careless or hostile
/// publisher could ship.
fn resigned(original: &[u8], key: &SigningKey, change: impl FnOnce(&mut Manifest)) -> Vec<u8> {
    let len = u32::from_le_bytes(original[12..16].try_into().expect("len")) as usize;
    let at = bundle::HEADER_LEN;
    let mut m: Manifest = serde_json::from_slice(&original[at..at + len]).expect("manifest");
    let body = &original[at + len..];
    let payload = &body[..m.payload.size as usize];
    let mut rest = &body[m.payload.size as usize..];
    let mut files: Vec<Vec<u8>> = Vec::new();
    for f in &m.boot_files {
        files.push(rest[..f.size as usize].to_vec());
        rest = &rest[f.size as usize..];
    }
    change(&mut m);
    let boot_files: Vec<&[u8]> = files.iter().map(|f| &f[..]).collect();
    let mut out = Vec::new();
    bundle::write(&mut out, key, &m, &mut &payload[..], &boot_files).expect("bundle");
    out
}

fn updates_roll_forward_survive_power_cuts_roll_back_and_refuse_bad_bundles(board: &str) {
    let image = BoardImage::load(board).expect("built image");
    let v2 = bundle_path("update-v2", board, "0.2.0");
    let v3 = bundle_path("update-v3", board, "0.3.0");
    let server = FileServer::start().expect("file server");
    let v2_url = server.publish("v2.cairnb", &v2);
    let v3_url = server.publish("v3.cairnb", &v3);
    let disk = Disk::new(&image, "update", 2).expect("disk");

    // (a) v1 → v2 over HTTP: installs, reboots into the other slot, commits.
    let (mut vm, slot, version) = boot(&image, &disk, "v1");
    assert_eq!(
        (slot.as_str(), version.as_str()),
        ("a", image.version.as_str())
    );
    let s = status(&mut vm);
    assert_eq!(slot_status(&s, "a")["state"], "good");
    assert_eq!(slot_status(&s, "b")["state"], "empty");
    // As a user would on a laptop: cairn.toml on the boot partition, read at every boot.
    on_node(
        &mut vm,
        &format!(
            "mount -o remount,rw /boot && sed -i 's/^# health_timeout = .*/health_timeout = \"{HEALTH_TIMEOUT_SECS}s\"/' /boot/cairn.toml && grep -q '^health_timeout = \"{HEALTH_TIMEOUT_SECS}s\"' /boot/cairn.toml && mount -o remount,ro /boot"
        ),
    );
    let install_time = install_and_reboot(&mut vm, &v2_url);
    eprintln!("{board}: v1 -> v2 install took {install_time:?}");
    drop(vm);
    let (mut vm, slot, version) = boot(&image, &disk, "v2");
    assert_eq!((slot.as_str(), version.as_str()), ("b", "0.2.0"));
    let s = status(&mut vm);
    let b = slot_status(&s, "b");
    assert_eq!(
        (b["state"].as_str(), b["booted"].as_bool()),
        (Some("good"), Some(true))
    );
    assert_eq!(b["version"], "0.2.0");
    assert_eq!(slot_status(&s, "a")["state"], "good");
    assert_eq!(s["floor"], "0.2.0");

    // (d) bad bundles: each refused with its reason, the active slot's bytes unchanged.
    let original = std::fs::read(&v2).expect("v2 bundle");
    let key = SigningKey::load(&out_dir().join("keys/cairn-dev.key")).expect("dev key");
    let stranger = SigningKey::from_pem(&SigningKey::generate_pem().expect("key"), Path::new("x"))
        .expect("key");
    let mut tampered = original.clone();
    let mid = original.len() / 2;
    tampered[mid] ^= 0x40;
    let mut unsigned = original.clone();
    unsigned[48..112].fill(0);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("tampered", tampered, "hash mismatch"),
        ("unsigned", unsigned, "not signed"),
        (
            "stranger",
            resigned(&original, &stranger, |_| {}),
            "does not trust",
        ),
        (
            "wrong-board",
            resigned(&original, &key, |m| m.board = "rpi4".into()),
            "is for board rpi4",
        ),
        (
            "downgrade",
            resigned(&original, &key, |m| {
                m.version = "0.1.5".into();
                m.min_version = "0.1.5".into();
            }),
            "below this device's anti-rollback floor 0.2.0",
        ),
        (
            "truncated",
            original[..original.len() - 4096].to_vec(),
            "truncated",
        ),
    ];
    let bad_dir = disk.dir.join("bad-bundles");
    std::fs::create_dir_all(&bad_dir).expect("dir");
    let active_before = slot_hash(&mut vm, "b");
    for (name, bytes, reason) in &cases {
        let path = bad_dir.join(format!("{name}.cairnb"));
        std::fs::write(&path, bytes).expect("write");
        let url = server.publish(&format!("{name}.cairnb"), &path);
        let (code, out) = vm
            .sh(&format!("cairn update install {url} 2>&1"), INSTALL)
            .expect("console");
        assert_ne!(code, 0, "{name} bundle was accepted:\n{out}");
        assert!(
            out.contains(reason),
            "{name}: expected {reason:?} in:\n{out}"
        );
        assert!(out.contains("slot b is untouched"), "{name}:\n{out}");
    }
    assert_eq!(
        slot_hash(&mut vm, "b"),
        active_before,
        "the active slot changed"
    );
    assert_eq!(
        status(&mut vm)["slots"][1]["next"],
        true,
        "slot b still boots next"
    );

    // (b) v2 → broken v3: it boots, fails its health check, and the node returns to v2.
    install_and_reboot(&mut vm, &v3_url);
    drop(vm);
    let mut vm = Vm::boot(&image, &disk, "v3").expect("qemu");
    vm.wait_for("update: slot a is on trial", BOOT_TIMEOUT)
        .expect("v3 boots on trial");
    vm.wait_for(
        "failed its trial",
        Duration::from_secs(HEALTH_TIMEOUT_SECS) + BOOT_TIMEOUT,
    )
    .expect("v3 gives up");
    vm.wait_exit(Duration::from_secs(120)).expect("rebooted");
    drop(vm);
    let (mut vm, slot, version) = boot(&image, &disk, "back-to-v2");
    assert_eq!((slot.as_str(), version.as_str()), ("b", "0.2.0"));
    let s = status(&mut vm);
    let a = slot_status(&s, "a");
    assert_eq!(
        (a["state"].as_str(), a["version"].as_str()),
        (Some("bad"), Some("0.3.0"))
    );
    let why = a["failure"].as_str().unwrap_or_default();
    assert!(why.contains("not Ready within"), "{s}");
    let log = a["failureLog"].as_str().expect("a kept log").to_string();
    let kept = on_node(&mut vm, &format!("cat {log}"));
    assert!(kept.contains("--test-broken-runtime"), "{kept}");

    // (c) power cuts at random moments of an install and of the boot-target switch: every
    // following boot reaches READY on a good slot, and the install can be retried.
    let seed = std::env::var("CAIRN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{board}: power-cut seed {seed} (CAIRN_TEST_SEED repeats it)");
    let mut moments = Moments(seed);
    // Cut anywhere from the start of the download to just past the switch.
    let window_ms = (install_time.as_millis() as u64) * 11 / 10;
    for cut in 0..POWER_CUTS {
        let wait = moments.next_ms(window_ms);
        vm.send_line(&format!("cairn update install {v2_url}"))
            .expect("console");
        std::thread::sleep(Duration::from_millis(wait));
        vm.power_cut();
        drop(vm);
        let (mut again, slot, version) = boot(&image, &disk, &format!("cut{cut}"));
        let s = status(&mut again);
        let booted = slot_status(&s, &slot);
        assert_eq!(booted["state"], "good", "cut {cut} after {wait} ms: {s}");
        assert_eq!(
            version, "0.2.0",
            "cut {cut}: only v2 images are good by now"
        );
        eprintln!("{board}: power cut {cut} after {wait} ms: READY on slot {slot}");
        vm = again;
    }
    let before = status(&mut vm);
    let active = ["a", "b"]
        .into_iter()
        .find(|s| slot_status(&before, s)["booted"] == true)
        .expect("booted slot")
        .to_string();
    install_and_reboot(&mut vm, &v2_url);
    drop(vm);
    let (mut vm, slot, version) = boot(&image, &disk, "retried");
    assert_ne!(slot, active, "the retried install boots the other slot");
    assert_eq!(version, "0.2.0");
    assert_eq!(slot_status(&status(&mut vm), &slot)["state"], "good");
}

#[test]
fn qemu_aarch64_updates() {
    updates_roll_forward_survive_power_cuts_roll_back_and_refuse_bad_bundles("qemu-aarch64");
}

#[test]
fn qemu_x86_64_updates() {
    updates_roll_forward_survive_power_cuts_roll_back_and_refuse_bad_bundles("qemu-x86_64");
}
