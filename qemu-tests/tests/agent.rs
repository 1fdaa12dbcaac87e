//! The node agent on a booted image: the root carries what pods need (containerd with runc on
//! cgroup v2, CNI plugins, nft and its kernel modules, the baked busybox image), and a
//! Deployment applied from the host with kubectl runs, logs and execs on the node.

use qemu_tests::{BoardImage, Disk, Vm, BOOT_TIMEOUT};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const SHELL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs kubectl against the forwarded API; panics with its error output when it fails.
fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
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
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs a command on the node's console and expects it to succeed.
fn on_node(vm: &mut Vm, command: &str) -> String {
    let (status, out) = vm.sh(command, SHELL_TIMEOUT).expect("console command");
    assert_eq!(status, 0, "{command:?} failed on the node:\n{out}");
    out
}

#[test]
fn qemu_aarch64_root_has_what_pods_need() {
    let image = BoardImage::load("qemu-aarch64").expect("built image");
    let disk = Disk::new(&image, "agent-root", 2).expect("disk");
    let mut vm = Vm::boot(&image, &disk, "boot1").expect("qemu");
    // The console shell starts once modules, configuration and network are up; READY is not
    // needed for what this test looks at.
    vm.wait_for("cairn-init: network:", BOOT_TIMEOUT)
        .expect("node brought up");

    let cgroup = on_node(
        &mut vm,
        "grep ' /sys/fs/cgroup ' /proc/mounts; cat /sys/fs/cgroup/cgroup.subtree_control",
    );
    assert!(
        cgroup.contains("cgroup2"),
        "cgroup v2 at /sys/fs/cgroup: {cgroup}"
    );
    for controller in ["cpu", "memory", "pids"] {
        assert!(
            cgroup.split_whitespace().any(|c| c == controller),
            "{controller} is enabled for child cgroups: {cgroup}"
        );
    }

    on_node(
        &mut vm,
        "test -x /usr/lib/cni/bridge && test -x /usr/lib/cni/host-local && test -x /usr/lib/cni/loopback",
    );
    let images = on_node(&mut vm, "ls -l /usr/lib/cairn/images/");
    assert!(images.contains("busybox.tar"), "{images}");

    let modules = on_node(&mut vm, "cut -d' ' -f1 /proc/modules");
    for m in [
        "bridge",
        "veth",
        "nf_tables",
        "nf_conntrack",
        "nf_nat",
        "nft_chain_nat",
        "nft_ct",
        "nft_masq",
        "nft_numgen",
        "nft_fib_ipv4",
    ] {
        assert!(
            modules.lines().any(|l| l.trim() == m),
            "module {m} is loaded:\n{modules}"
        );
    }

    // The rule shapes Services need (NAT chains, conntrack, random load-balancing,
    // masquerade) load into the kernel with the nft on the root.
    on_node(
        &mut vm,
        "nft 'add table ip cairn_check; \
         add chain ip cairn_check pre { type nat hook prerouting priority -100; }; \
         add chain ip cairn_check post { type nat hook postrouting priority 100; }; \
         add rule ip cairn_check pre ip daddr 10.43.0.10 tcp dport 80 dnat to numgen random mod 2 map { 0 : 10.42.0.2, 1 : 10.42.0.3 }; \
         add rule ip cairn_check post ct status dnat masquerade; \
         add rule ip cairn_check pre fib daddr type local tcp dport 30080 dnat to 10.42.0.2'",
    );
    let ruleset = on_node(&mut vm, "nft list ruleset");
    assert!(
        ruleset.contains("table ip cairn_check") && ruleset.contains("masquerade"),
        "{ruleset}"
    );
    on_node(&mut vm, "nft delete table ip cairn_check");

    // containerd 1.7 runs a container from the baked archive with runc under cgroup v2.
    on_node(
        &mut vm,
        "ctr -n cairn-check images import /usr/lib/cairn/images/busybox.tar",
    );
    let out = on_node(
        &mut vm,
        "ctr -n cairn-check run --rm docker.io/library/busybox:latest check sh -c 'echo from-runc; cat /proc/self/cgroup'",
    );
    assert!(out.contains("from-runc"), "{out}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("0::/")),
        "the container sits in a cgroup v2 hierarchy: {out}"
    );
    on_node(
        &mut vm,
        "ctr -n cairn-check images rm docker.io/library/busybox:latest",
    );
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 2
  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
    spec:
      containers:
      - name: main
        image: docker.io/library/busybox:latest
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "echo started; sleep 3600"]
"#;

#[test]
fn qemu_aarch64_deployment_runs_from_the_host() {
    deployment_runs_from_the_host("qemu-aarch64");
}

#[test]
fn qemu_x86_64_deployment_runs_from_the_host() {
    deployment_runs_from_the_host("qemu-x86_64");
}

fn deployment_runs_from_the_host(board: &str) {
    let image = BoardImage::load(board).expect("built image");
    let disk = Disk::new(&image, "agent", 2).expect("disk");
    let mut vm = Vm::boot(&image, &disk, "boot1").expect("qemu");
    // READY now means the node itself is registered and Ready.
    vm.wait_for("CAIRN READY", BOOT_TIMEOUT).expect("READY");
    let kubeconfig = vm.kubeconfig(Duration::from_secs(30)).expect("kubeconfig");

    let nodes = kubectl(&kubeconfig, &["get", "nodes", "--no-headers"], None);
    assert!(nodes.contains(" Ready"), "{nodes}");

    let applied = std::time::Instant::now();
    let out = kubectl(&kubeconfig, &["apply", "-f", "-"], Some(DEPLOYMENT));
    assert!(out.contains("deployment.apps/hello created"), "{out}");
    kubectl(
        &kubeconfig,
        &["rollout", "status", "deployment/hello", "--timeout=240s"],
        None,
    );
    eprintln!(
        "{board}: deployment rolled out {} ms after kubectl apply",
        applied.elapsed().as_millis()
    );

    let wide = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "wide",
            "--no-headers",
        ],
        None,
    );
    let running: Vec<&str> = wide.lines().filter(|l| l.contains("Running")).collect();
    assert_eq!(running.len(), 2, "two Running pods:\n{wide}");
    let ips = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "jsonpath={range .items[*]}{.status.podIP}{\"\\n\"}{end}",
        ],
        None,
    );
    let ips: Vec<&str> = ips.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    for ip in &ips {
        assert!(
            ip.starts_with("10.42."),
            "pod IP {ip} is in the cluster CIDR"
        );
    }
    assert_ne!(ips[0], ips[1], "each pod has its own address");

    let names = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=hello",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
        None,
    );
    let pod = names.trim();
    let logs = kubectl(&kubeconfig, &["logs", pod], None);
    assert!(logs.contains("started"), "logs of {pod}: {logs}");
    let exec = kubectl(&kubeconfig, &["exec", pod, "--", "echo", "hi"], None);
    assert_eq!(exec.trim(), "hi", "exec in {pod}");
}
