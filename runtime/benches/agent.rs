//! `make bench`: cairn agent figures against a baseline measured in the same run.
//! Writes bench/results/agent.json (or the path given with --out).
//!
//! - pod create-to-Running latency, p50/p99 over 50 pods created one after another (API
//!   create → schedule → network → containerd → status Running seen by a watch), as a ratio to
//!   raw `ctr run -d` of the same image on the same containerd (process start-up included,
//!   no pod network: the floor the agent builds on)
//! - agent RSS when idle, with no pods and after 50 pods came and went

#[allow(dead_code)] // the tests use more of it
#[path = "../tests/common/containerd.rs"]
mod containerd;

use cairn_wire::client::{ApiClient, Reflector};
use containerd::{busybox_archive, TestContainerd, BUSYBOX_REF};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PODS: usize = 50;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `ctr run -d` of busybox, one after another: the baseline.
fn raw_ctr_runs(socket: &Path, archive: &Path) -> Vec<f64> {
    let ctr = |args: &[&str]| {
        Command::new("ctr")
            .arg("-a")
            .arg(socket)
            .args(["-n", "bench-raw"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("ctr")
    };
    assert!(ctr(&["images", "import", &archive.display().to_string()]).success());
    let mut times = Vec::new();
    for i in 0..PODS {
        let id = format!("raw-{i}");
        let t0 = Instant::now();
        assert!(ctr(&["run", "-d", BUSYBOX_REF, &id, "sleep", "3600"]).success());
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    for i in 0..PODS {
        let id = format!("raw-{i}");
        ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..PODS {
        let id = format!("raw-{i}");
        ctr(&["tasks", "delete", "-f", &id]);
        ctr(&["containers", "delete", &id]);
    }
    times
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_of(pods: &Reflector, name: &str) -> bool {
    pods.get(&format!("default/{name}"))
        .and_then(|p| p.pointer("/spec/nodeName").map(|n| n.is_string()))
        .unwrap_or(false)
}

fn phase(pods: &Reflector, name: &str) -> String {
    pods.get(&format!("default/{name}"))
        .and_then(|p| {
            p.pointer("/status/phase")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The agent's log (and the server's beside it), kept after the run for a look at where the
/// time went.
fn bench_log() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-agent.log")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/results/agent.json")
        });
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/cairn");
    assert!(
        binary.exists(),
        "build cairn first: cargo build --release -p cairn-runtime"
    );
    let ctrd = TestContainerd::start();
    let work = tempfile::tempdir().expect("tempdir");
    let archive = busybox_archive(work.path());

    eprintln!("bench: {PODS} raw `ctr run -d` (baseline)");
    let mut raw = raw_ctr_runs(&ctrd.socket, &archive);
    raw.sort_by(f64::total_cmp);

    // A server without an agent, and the agent as its own process so its RSS is its own.
    let port = free_port();
    let server_dir = work.path().join("server");
    let kubeconfig = work.path().join("kubeconfig.yaml");
    let _server = Proc(
        Command::new(&binary)
            .args(["server", "--disable-agent", "--bind-address", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(&server_dir)
            .arg("--write-kubeconfig")
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(bench_log().with_file_name("bench-server.log")).expect("log"),
            )
            .spawn()
            .expect("cairn server"),
    );
    wait_for("the node token", Duration::from_secs(30), || {
        server_dir.join("node-token").exists() && kubeconfig.exists()
    });
    let token = std::fs::read_to_string(server_dir.join("node-token")).expect("token");
    let agent_dir = work.path().join("agent");
    std::fs::create_dir_all(agent_dir.join("images")).expect("images dir");
    std::fs::copy(&archive, agent_dir.join("images/busybox.tar")).expect("archive");
    let agent = Proc(
        Command::new(&binary)
            .args(["agent", "--server", &format!("https://127.0.0.1:{port}")])
            .args(["--token", token.trim(), "--node-name", "bench"])
            .arg("--agent-data-dir")
            .arg(&agent_dir)
            .arg("--containerd-address")
            .arg(&ctrd.socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(bench_log()).expect("log"))
            .spawn()
            .expect("cairn agent"),
    );
    let agent_pid = agent.0.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (client, pods) = rt.block_on(async {
        let client = ApiClient::from_kubeconfig(&kubeconfig).expect("client");
        let pods = Reflector::start(client.clone(), "/api/v1/namespaces/default/pods".into());
        (client, pods)
    });
    wait_for("node bench Ready", Duration::from_secs(60), || {
        rt.block_on(client.get("/api/v1/nodes/bench"))
            .ok()
            .flatten()
            .and_then(|n| {
                n.pointer("/status/conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .map(|c| c["status"] == "True")
            })
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(3));
    let rss_idle_empty = rss_kib(agent_pid);

    eprintln!("bench: {PODS} pods, create to Running");
    let mut latencies = Vec::new();
    let mut scheduled = Vec::new();
    for i in 0..PODS {
        let name = format!("p{i}");
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": BUSYBOX_REF,
                                     "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]}});
        let t0 = Instant::now();
        rt.block_on(client.create("/api/v1/namespaces/default/pods", &pod))
            .expect("create pod");
        let mut changes = pods.subscribe();
        let mut seen_bound = false;
        while phase(&pods, &name) != "Running" {
            if !seen_bound && node_of(&pods, &name) {
                seen_bound = true;
                scheduled.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "pod {name} never ran"
            );
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
            });
        }
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    scheduled.sort_by(f64::total_cmp);
    let rss_with_pods = rss_kib(agent_pid);

    rt.block_on(client.delete(
        "/api/v1/namespaces/default/pods",
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})),
    ))
    .expect("delete pods");
    wait_for("all pods gone", Duration::from_secs(120), || {
        pods.is_synced() && pods.snapshot().is_empty()
    });
    std::thread::sleep(Duration::from_secs(5));
    let rss_idle_after = rss_kib(agent_pid);

    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (raw50, raw99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
    let result = json!({
        "pod_start": {
            "pods": PODS,
            "create_to_running_p50_ms": p50,
            "create_to_running_p99_ms": p99,
            "create_to_bound_seen_p50_ms": if scheduled.is_empty() { 0.0 } else { percentile(&scheduled, 0.5) },
            "baseline_raw_ctr_run_p50_ms": raw50,
            "baseline_raw_ctr_run_p99_ms": raw99,
            "ratio_p50_to_baseline": p50 / raw50,
            "ratio_p99_to_baseline": p99 / raw99,
            "target_ratio": 1.5,
        },
        "agent_rss_kib": {
            "idle_no_pods": rss_idle_empty,
            "with_50_pods": rss_with_pods,
            "idle_after_50_pods": rss_idle_after,
            "target_idle_kib": 30 * 1024,
        },
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("results dir");
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&result).expect("json") + "\n",
    )
    .expect("write results");
    println!("{}", serde_json::to_string_pretty(&result).expect("json"));
    drop(agent);
    // The agent leaves its bridge and table behind on purpose (pods outlive it); remove them.
    let bridge = cairn_agent::cni::bridge_name_for("bench");
    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
    let table = cairn_agent::proxy::table_name_for("bench");
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", &table])
        .status();
}
