//! The booted image's API from the host: kubectl through the forwarded port, with the
//! kubeconfig the node hands over once `cairn server` is ready.

use qemu_tests::{BoardImage, Disk, Vm, BOOT_TIMEOUT};
use std::process::{Command, Stdio};
use std::time::Duration;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .arg("--request-timeout=60s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("kubectl output");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn qemu_aarch64_kubectl_from_the_host() {
    let image = BoardImage::load("qemu-aarch64").expect("built image");
    let disk = Disk::new(&image, "api", 2).expect("disk");
    let mut vm = Vm::boot(&image, &disk, "boot1").expect("qemu");
    vm.wait_for("CAIRN READY", BOOT_TIMEOUT).expect("READY");
    let kubeconfig = vm.kubeconfig(Duration::from_secs(30)).expect("kubeconfig");

    let ns = kubectl(&kubeconfig, &["get", "ns"], None);
    assert!(ns.contains("kube-system"), "{ns}");
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-host\ndata:\n  k: v\n";
    let out = kubectl(&kubeconfig, &["apply", "-f", "-"], Some(manifest));
    assert!(out.contains("configmap/from-host created"), "{out}");
    assert_eq!(
        kubectl(
            &kubeconfig,
            &["get", "cm", "from-host", "-o", "jsonpath={.data.k}"],
            None
        ),
        "v"
    );
}
