//! Boot tests on both QEMU boards: each boots the real image built by `make images`.

use qemu_tests::{parse_ready, BoardImage, Disk, Vm, BOOT_TIMEOUT};
use std::time::Duration;

const SH: Duration = Duration::from_secs(30);

fn boots_to_ready_with_read_only_root(board: &str) {
    let image = BoardImage::load(board).expect("built image");
    let disk = Disk::new(&image, "ready", 2).expect("disk");
    let mut vm = Vm::boot(&image, &disk, "boot1").expect("qemu");
    let ready = vm.wait_for("CAIRN READY", BOOT_TIMEOUT).expect("READY");
    let (slot, boot_ms, version) = parse_ready(&ready).expect("well-formed READY line");
    assert_eq!(slot, "a");
    assert_eq!(version, image.version);
    assert!(boot_ms > 0);

    // The console shell comes up beside the services.
    vm.wait_for("console-shell", Duration::from_secs(1)).ok();
    let (code, _) = vm.sh("touch /probe", SH).expect("sh");
    assert_ne!(code, 0, "/ must be read-only");
    let (code, _) = vm.sh("touch /usr/probe", SH).expect("sh");
    assert_ne!(code, 0, "/usr must be read-only");
    let (_, mounts) = vm.sh("cat /proc/mounts", SH).expect("sh");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .expect("a / mount");
    assert!(root.contains("squashfs") && root.contains(" ro"), "{root}");
    assert!(
        mounts.lines().any(|l| l.contains(" /var ext4 rw")),
        "{mounts}"
    );
    assert!(
        mounts.lines().any(|l| l.contains(" /etc overlay rw")),
        "{mounts}"
    );
    let (code, _) = vm.sh("touch /etc/writable-probe", SH).expect("sh");
    assert_eq!(code, 0, "/etc is a writable overlay");
    // The data partition was grown to the 2 GiB disk on first boot.
    let (_, df) = vm.sh("df -m /var | tail -1", SH).expect("sh");
    // Service logs share the console: the df line is the one that ends in /var.
    let size_mb: u64 = df
        .lines()
        .find(|l| l.split_whitespace().last() == Some("/var"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(size_mb > 1000, "data filesystem should fill the disk: {df}");
    // containerd and cairn run under init.
    let (_, ps) = vm.sh("ps", SH).expect("sh");
    assert!(ps.contains("containerd"), "{ps}");
    assert!(ps.contains("cairn server"), "{ps}");
    // DHCP from QEMU's user network.
    let (_, addr) = vm.sh("ip -4 addr", SH).expect("sh");
    assert!(addr.contains("10.0.2.15"), "{addr}");
}

fn var_persists_and_ctrl_alt_del_is_clean(board: &str) {
    let image = BoardImage::load(board).expect("built image");
    let disk = Disk::new(&image, "persist", 2).expect("disk");
    {
        let mut vm = Vm::boot(&image, &disk, "boot1").expect("qemu");
        vm.wait_for("CAIRN READY", BOOT_TIMEOUT).expect("READY");
        let (code, _) = vm
            .sh("echo kept-across-boots > /var/lib/cairn/probe && sync", SH)
            .expect("sh");
        assert_eq!(code, 0);
        vm.monitor("sendkey ctrl-alt-delete").expect("monitor");
        vm.wait_for("shutting down (Reboot)", Duration::from_secs(30))
            .expect("clean shutdown starts");
        vm.wait_for("stopping containerd", Duration::from_secs(30))
            .expect("services stopped");
        vm.wait_for("data filesystem unmounted cleanly", Duration::from_secs(60))
            .expect("data unmounted");
        vm.wait_exit(Duration::from_secs(60))
            .expect("guest rebooted");
    }
    let mut vm = Vm::boot(&image, &disk, "boot2").expect("qemu");
    vm.wait_for("data filesystem was cleanly unmounted", BOOT_TIMEOUT)
        .expect("no recovery needed on the next boot");
    vm.wait_for("CAIRN READY", BOOT_TIMEOUT).expect("READY");
    let (code, out) = vm.sh("cat /var/lib/cairn/probe", SH).expect("sh");
    assert_eq!(code, 0);
    assert!(out.contains("kept-across-boots"), "{out}");
    assert!(!vm
        .serial()
        .contains("first boot: making the data filesystem"));
}

#[test]
fn qemu_aarch64_boots_to_ready_with_read_only_root() {
    boots_to_ready_with_read_only_root("qemu-aarch64");
}

#[test]
fn qemu_aarch64_var_persists_and_ctrl_alt_del_is_clean() {
    var_persists_and_ctrl_alt_del_is_clean("qemu-aarch64");
}

#[test]
fn qemu_x86_64_boots_to_ready_with_read_only_root() {
    boots_to_ready_with_read_only_root("qemu-x86_64");
}

#[test]
fn qemu_x86_64_var_persists_and_ctrl_alt_del_is_clean() {
    var_persists_and_ctrl_alt_del_is_clean("qemu-x86_64");
}
