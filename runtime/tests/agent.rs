//! The agent against real parts: a containerd of the test's own (Debian's containerd + runc on
//! a private socket), the standard CNI plugins, nftables, and a busybox image built here from
//! busybox-static, imported from the agent's images directory. `cairn server` runs its embedded
//! agent as node1; a second `cairn agent` process joins as node2. Driven by the real kubectl.

mod common;

use cairn_agent::{cni, containerd::Containerd};
use common::containerd::{busybox_archive, TestContainerd};
use common::Server;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: busybox
        imagePullPolicy: IfNotPresent
        command: ["sh", "-c", "mkdir -p /www && echo hello from $HOSTNAME > /www/index.html && echo started && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
        resources: {limits: {memory: 64Mi, cpu: 200m}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, imagePullPolicy: Never, command: ["sleep", "3600"]}
"#;

const SETUP_POD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello-config}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cr3t}
---
apiVersion: v1
kind: Pod
metadata: {name: setup}
spec:
  nodeName: node2
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: init
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "echo from-init > /work/init.txt"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox
    imagePullPolicy: Never
    command: ["sh", "-c", "cat /work/init.txt; echo env $(GREETING) $PASSWORD $MY_POD; cat /config/greeting; echo; cat /info/labels; echo; sleep 3600"]
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: config, mountPath: /config}
    - {name: info, mountPath: /info}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: config, configMap: {name: settings}}
  - name: info
    downwardAPI: {items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: crashy, labels: {app: crashy}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, imagePullPolicy: Never, command: ["sh", "-c", "echo crashing; exit 2"]}
"#;

/// A `cairn agent` process joining the test's server.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(server: &Server, node: &str, dir: &Path, ctrd: &TestContainerd) -> Agent {
        let token =
            std::fs::read_to_string(server.data_dir().join("node-token")).expect("node-token");
        std::fs::create_dir_all(dir.join("images")).expect("images dir");
        busybox_archive(&dir.join("images"));
        let log = dir.join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["agent", "--server"])
            .arg(format!("https://127.0.0.1:{}", server.port))
            .args([
                "--token",
                token.trim(),
                "--node-name",
                node,
                "--containerd-namespace",
                "k8s.io",
            ])
            .arg("--agent-data-dir")
            .arg(dir)
            .arg("--containerd-address")
            .arg(&ctrd.socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("start cairn agent");
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each test is a whole cluster whose first node takes 10.42.0.0/24 on this host's network:
/// two at once would fight over it, so they take turns.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cluster_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a node leaves on the host when a test fails half-way (the agent keeps pods running
/// when it stops, as a kubelet does): pod network namespaces, the bridge, the nft table.
struct HostCleanup {
    dir: PathBuf,
    node: String,
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        for e in std::fs::read_dir(self.dir.join("cni/netns"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = Command::new("umount").arg("-l").arg(e.path()).status();
        }
        let bridge = cni::bridge_name_for(&self.node);
        let _ = Command::new("ip")
            .args(["link", "del", &bridge])
            .stderr(Stdio::null())
            .status();
        let table = cairn_agent::proxy::table_name_for(&self.node);
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", &table])
            .stderr(Stdio::null())
            .status();
    }
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    diag: impl Fn() -> String,
) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn json(server: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&server.ok(&a)).expect("kubectl json")
}

fn node_ready(server: &Server, node: &str) -> bool {
    let out = server.kubectl(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim() == "True"
}

/// A server with its embedded agent as node1 on the test's containerd.
fn start_server(ctrd: &TestContainerd, agent_dir: &Path) -> Server {
    std::fs::create_dir_all(agent_dir.join("images")).expect("images dir");
    busybox_archive(&agent_dir.join("images"));
    let extra = vec![
        "--node-name".to_string(),
        "node1".to_string(),
        "--agent-data-dir".to_string(),
        agent_dir.display().to_string(),
        "--containerd-address".to_string(),
        ctrd.socket.display().to_string(),
    ];
    Server::start_with_agent(tempfile::tempdir().expect("tempdir"), &extra)
}

fn diag(server: &Server, agent_dirs: &[&Path]) -> String {
    let mut s = format!("--- server log\n{}\n", tail(&server.log(), 60));
    for d in agent_dirs {
        let l = std::fs::read_to_string(d.join("agent.log")).unwrap_or_default();
        if !l.is_empty() {
            s.push_str(&format!("--- {}\n{}\n", d.display(), tail(&l, 60)));
        }
    }
    let pods = server.kubectl(&["get", "pods", "-A", "-o", "wide"]);
    s.push_str(&String::from_utf8_lossy(&pods.stdout));
    s
}

/// The body of `GET /` on port 80 of `ip`, fetched from inside pod `from`.
fn http_get(server: &Server, from: &str, ip: &str) -> String {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80");
    let out = server.kubectl(&["exec", from, "--", "sh", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    match text.split_once("\n\n") {
        Some((_, body)) => body.trim().to_string(),
        None => format!("{text} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn nft_ruleset() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn leftovers(ctrd: &TestContainerd, agent_dir: &Path, node: &str) -> Vec<String> {
    let mut left = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let c = Containerd::connect(&ctrd.socket, "k8s.io")
            .await
            .expect("containerd");
        for x in c.list_containers(&[]).await.expect("containers") {
            left.push(format!("container {}", x.id));
        }
        for t in c.list_tasks().await.expect("tasks") {
            left.push(format!("task {}", t.container_id));
        }
        for s in c.list_snapshots().await.expect("snapshots") {
            // Image layers are committed snapshots named by chain id; containers' are ours.
            if !s.starts_with("sha256:") {
                left.push(format!("snapshot {s}"));
            }
        }
    });
    let netns = agent_dir.join("cni/netns");
    for e in std::fs::read_dir(&netns).into_iter().flatten().flatten() {
        left.push(format!("netns {}", e.path().display()));
    }
    let bridge = cni::bridge_name_for(node);
    let veths = Command::new("ip")
        .args(["-o", "link", "show", "master", &bridge])
        .output()
        .expect("ip");
    for l in String::from_utf8_lossy(&veths.stdout).lines() {
        left.push(format!("veth {l}"));
    }
    let ipam = agent_dir.join("cni/ipam");
    for e in walk(&ipam) {
        let name = e
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.parse::<std::net::Ipv4Addr>().is_ok() {
            left.push(format!("ip reservation {}", e.display()));
        }
    }
    let pods_dir = agent_dir.join("pods");
    for e in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
        left.push(format!("pod dir {}", e.path().display()));
    }
    left
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn pod_names(server: &Server, selector: &str) -> Vec<String> {
    server
        .ok(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Kills a container's main process from the host, as the OOM killer or a crash would.
fn kill_container(ctrd: &TestContainerd, container_id: &str) {
    let id = container_id.trim_start_matches("containerd://").to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let pid = rt.block_on(async {
        let c = Containerd::connect(&ctrd.socket, "k8s.io")
            .await
            .expect("containerd");
        c.task_state(&id)
            .await
            .expect("task")
            .expect("task exists")
            .pid
    });
    // SAFETY: signalling a pid we just read; the worst case is ESRCH.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn pods_services_dns_logs_exec_and_a_second_node() {
    let _turn = cluster_turn();
    let ctrd1 = TestContainerd::start();
    let ctrd2 = TestContainerd::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir1 = work.path().join("node1");
    let dir2 = work.path().join("node2");
    // Dropped last-but-one: after the agents and server stopped, before the containerds.
    let _cleanup = [
        HostCleanup {
            dir: dir1.clone(),
            node: "node1".into(),
        },
        HostCleanup {
            dir: dir2.clone(),
            node: "node2".into(),
        },
    ];
    let server = start_server(&ctrd1, &dir1);
    let d = || diag(&server, &[&dir1, &dir2]);
    wait_until(
        "node1 Ready",
        Duration::from_secs(60),
        || node_ready(&server, "node1"),
        d,
    );
    let agent2 = Agent::start(&server, "node2", &dir2, &ctrd2);
    wait_until(
        "node2 Ready",
        Duration::from_secs(60),
        || node_ready(&server, "node2"),
        || format!("{}\n{}", d(), agent2.log()),
    );

    // The node looks like a kubelet's: capacity, nodeInfo, a podCIDR, a Lease.
    let n = json(&server, &["get", "node", "node2"]);
    assert!(
        n["spec"]["podCIDR"]
            .as_str()
            .unwrap_or("")
            .starts_with("10.42."),
        "{n}"
    );
    assert!(n["status"]["nodeInfo"]["containerRuntimeVersion"]
        .as_str()
        .unwrap_or("")
        .starts_with("containerd://"));
    assert!(n["status"]["capacity"]["cpu"].is_string());
    server.ok(&["get", "lease", "-n", "kube-node-lease", "node2"]);

    server.ok_stdin(&["apply", "-f", "-"], DEPLOYMENT);
    wait_until(
        "the Deployment rolled out",
        Duration::from_secs(180),
        || {
            server
                .kubectl(&["rollout", "status", "deployment/web", "--timeout=5s"])
                .status
                .success()
        },
        || {
            let mut out = server.ok(&["get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses}{\"\\n\"}{end}"]);
            for p in pod_names(&server, "app=web") {
                for cmd in [&["ip", "addr"][..], &["netstat", "-ltn"], &["ps"]] {
                    let mut a = vec!["exec", p.as_str(), "--"];
                    a.extend_from_slice(cmd);
                    let o = server.kubectl(&a);
                    out.push_str(&format!(
                        "{p} {cmd:?}: {}{}\n",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ));
                }
                let o = server.kubectl(&["logs", &p]);
                out.push_str(&format!(
                    "{p} logs: {}{}\n",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            format!("{out}\n{}", d())
        },
    );
    wait_until(
        "client Running",
        Duration::from_secs(60),
        || {
            server
                .kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"])
                .stdout
                == b"Running"
        },
        d,
    );
    let pods = json(&server, &["get", "pods", "-l", "app=web"]);
    let items = pods["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 3);
    let nodes: std::collections::HashSet<&str> = items
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert!(nodes.contains("node2"), "no web pod on node2: {nodes:?}");
    for p in &items {
        assert!(
            p["status"]["podIP"]
                .as_str()
                .unwrap_or("")
                .starts_with("10.42."),
            "{p}"
        );
    }

    // logs and exec through the agent's tunnel.
    let web = pod_names(&server, "app=web");
    let first = &web[0];
    assert!(server.ok(&["logs", first]).contains("started"));
    assert_eq!(server.ok(&["exec", first, "--", "echo", "hi"]).trim(), "hi");
    assert_eq!(
        server
            .ok_stdin(&["exec", "-i", first, "--", "cat"], "through stdin\n")
            .trim(),
        "through stdin"
    );
    let failed = server.kubectl(&["exec", first, "--", "sh", "-c", "exit 3"]);
    assert_eq!(failed.status.code(), Some(3));

    // port-forward reaches the pod's own loopback, inside its network namespace: a server
    // there that listens on 127.0.0.1 only.
    server.ok(&[
        "exec",
        first,
        "--",
        "httpd",
        "-p",
        "127.0.0.1:9090",
        "-h",
        "/www",
    ]);
    let (mut pf, local) =
        common::start_port_forward(&mut server.kubectl_cmd(&["port-forward", first, ":9090"]));
    let page = (|| {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut page = String::new();
        conn.read_to_string(&mut page).ok()?;
        Some(page)
    })();
    let _ = pf.kill();
    let _ = pf.wait();
    let page = page.unwrap_or_default();
    assert!(
        page.contains("hello from"),
        "port-forward to 127.0.0.1:9090 in {first}: {page:?}"
    );

    // attach: the container's own stdin and stdout; with stdinOnce, the end of kubectl's
    // input is the end of the process's, which then finishes.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n    imagePullPolicy: Never\n    stdin: true\n    stdinOnce: true\n    command: [\"sh\", \"-c\", \"while read l; do echo got $l; done; echo done\"]\n",
    );
    wait_until(
        "talker running",
        Duration::from_secs(60),
        || json(&server, &["get", "pod", "talker"])["status"]["phase"] == "Running",
        d,
    );
    let talk = {
        let mut attach = server
            .kubectl_cmd(&["attach", "-i", "talker"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl attach");
        attach
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"one\ntwo\n")
            .expect("input");
        // The process ends when its input does; a hang is a failure, not a stuck test.
        let deadline = Instant::now() + Duration::from_secs(60);
        while attach.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = attach.kill();
                let _ = attach.wait();
                panic!("kubectl attach did not end with its input\n{}", d());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = String::new();
        let _ = attach
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out);
        out
    };
    assert!(
        talk.contains("got one\ngot two\ndone"),
        "attach carried stdin and stdout: {talk:?}"
    );
    wait_until(
        "talker finished",
        Duration::from_secs(30),
        || json(&server, &["get", "pod", "talker"])["status"]["phase"] == "Succeeded",
        d,
    );

    // A Service's ClusterIP and DNS name reach its pods from another pod, on both nodes.
    let ip = server.ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let mut answered = std::collections::HashSet::new();
    let last = std::cell::RefCell::new(String::new());
    // Debian's busybox-static wget crashes in glibc's static NSS code (even for an address),
    // so the name is looked up with busybox's own nslookup (through the cluster DNS) and the
    // page fetched with nc.
    wait_until(
        "the Service's name resolves to its ClusterIP",
        Duration::from_secs(60),
        || {
            let out = server.kubectl(&[
                "exec",
                "client",
                "--",
                "nslookup",
                "web.default.svc.cluster.local",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            *last.borrow_mut() =
                format!("nslookup: {text} {}", String::from_utf8_lossy(&out.stderr));
            text.contains(ip.trim())
        },
        || format!("{}\n{}\n{}", last.borrow(), nft_ruleset(), d()),
    );
    wait_until(
        "the Service answers at its ClusterIP",
        Duration::from_secs(60),
        || {
            let body = http_get(&server, "client", ip.trim());
            *last.borrow_mut() = body.clone();
            answered.insert(body.clone());
            body.starts_with("hello from web-")
        },
        || format!("{}\n{}\n{}", last.borrow(), nft_ruleset(), d()),
    );
    wait_until(
        "answers from more than one backend",
        Duration::from_secs(60),
        || {
            answered.insert(http_get(&server, "client", ip.trim()));
            answered.len() >= 2
        },
        d,
    );

    // Init containers, an emptyDir, env from a ConfigMap, a Secret and the pod's own fields,
    // configMap and downwardAPI volumes; a crashing container backs off.
    server.ok_stdin(&["apply", "-f", "-"], SETUP_POD);
    wait_until(
        "setup Running",
        Duration::from_secs(60),
        || {
            server
                .kubectl(&["get", "pod", "setup", "-o", "jsonpath={.status.phase}"])
                .stdout
                == b"Running"
        },
        d,
    );
    wait_until(
        "setup's output",
        Duration::from_secs(30),
        || {
            let log = server.ok(&["logs", "setup"]);
            log.contains("from-init")
                && log.contains("env hello-config s3cr3t setup")
                && log.lines().any(|l| l == "hello-config")
        },
        || format!("{}\n{}", server.ok(&["logs", "setup"]), d()),
    );
    assert_eq!(server.ok(&["logs", "setup", "-c", "init"]).trim(), "");
    let setup = json(&server, &["get", "pod", "setup"]);
    assert_eq!(
        setup["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    wait_until(
        "crashy in CrashLoopBackOff",
        Duration::from_secs(60),
        || {
            let p = json(&server, &["get", "pod", "crashy"]);
            let cs = &p["status"]["containerStatuses"][0];
            cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                && cs["lastState"]["terminated"]["exitCode"] == 2
                && cs["restartCount"].as_u64().unwrap_or(0) >= 1
        },
        d,
    );
    assert!(server
        .ok(&["logs", "crashy", "--previous"])
        .contains("crashing"));

    // The scheduler's and the kubelet's Events, as describe and `kubectl events` show them.
    wait_until(
        "crashy's events",
        Duration::from_secs(30),
        || {
            let described = server.ok(&["describe", "pod", "crashy"]);
            ["Scheduled", "Pulled", "Created", "Started", "BackOff"]
                .iter()
                .all(|r| described.contains(r))
        },
        || format!("{}\n{}", server.ok(&["describe", "pod", "crashy"]), d()),
    );
    let events = server.ok(&["events", "--for", "pod/crashy"]);
    assert!(
        events.contains("Back-off restarting failed container"),
        "{events}"
    );
    let backoff = json(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=BackOff,involvedObject.name=crashy",
        ],
    );
    assert!(
        backoff["items"][0]["count"].as_i64().unwrap_or(0) >= 1,
        "one BackOff series, counted: {backoff}"
    );
    let rs_events = server.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulCreate",
    ]);
    assert!(rs_events.contains("Created pod: web-"), "{rs_events}");

    // A terminal: kubectl exec -t under a pseudo-terminal that `script` provides.
    let tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "kubectl --kubeconfig {} exec -it {first} -- tty",
            server.kubeconfig.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let tty_out = String::from_utf8_lossy(&tty.stdout).to_string();
    assert!(
        tty_out.contains("/dev/pts/"),
        "exec -t: {tty_out} {}",
        String::from_utf8_lossy(&tty.stderr)
    );
    let timestamps = server.ok(&["logs", first, "--timestamps", "--tail=1"]);
    assert!(
        timestamps.starts_with("20") && timestamps.contains("started"),
        "{timestamps}"
    );

    // A killed container restarts, and its previous log stays readable.
    let pod = json(&server, &["get", "pod", first]);
    let (ctrd_of_pod, cid) = (
        if pod["spec"]["nodeName"] == "node1" {
            &ctrd1
        } else {
            &ctrd2
        },
        pod["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .expect("containerID")
            .to_string(),
    );
    kill_container(ctrd_of_pod, &cid);
    wait_until(
        "the killed container restarted",
        Duration::from_secs(60),
        || {
            let p = json(&server, &["get", "pod", first]);
            let cs = &p["status"]["containerStatuses"][0];
            cs["restartCount"].as_u64() == Some(1) && cs["ready"] == true
        },
        d,
    );
    let p = json(&server, &["get", "pod", first]);
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        137
    );
    assert!(server
        .ok(&["logs", first, "--previous"])
        .contains("started"));

    // Deleting everything leaves nothing behind on either node.
    server.ok(&["delete", "deployment", "web", "--wait=false"]);
    server.ok(&["delete", "svc", "web"]);
    server.ok(&[
        "delete",
        "pod",
        "client",
        "setup",
        "crashy",
        "talker",
        "--wait=false",
    ]);
    wait_until(
        "all pods gone",
        Duration::from_secs(90),
        || server.ok(&["get", "pods", "-o", "name"]).trim().is_empty(),
        d,
    );
    wait_until(
        "nothing left on the nodes",
        Duration::from_secs(30),
        || {
            leftovers(&ctrd1, &dir1, "node1").is_empty()
                && leftovers(&ctrd2, &dir2, "node2").is_empty()
        },
        || {
            format!(
                "{:?}\n{:?}\n{}",
                leftovers(&ctrd1, &dir1, "node1"),
                leftovers(&ctrd2, &dir2, "node2"),
                d()
            )
        },
    );
    drop(agent2);
}

const OUTAGE_WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: steady}
spec:
  replicas: 2
  selector: {matchLabels: {app: steady}}
  template:
    metadata: {labels: {app: steady}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: busybox, imagePullPolicy: Never, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: busybox, imagePullPolicy: Never, command: ["sh", "-c", "echo tick; sleep 15; exit 1"]}
"#;

/// How long the server stays away; the issue asks for five minutes.
fn outage() -> Duration {
    let secs = std::env::var("CAIRN_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

fn restart_count(server: &Server, pod: &str) -> u64 {
    let p = json(server, &["get", "pod", pod]);
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn pods_ride_out_a_server_outage() {
    let _turn = cluster_turn();
    let ctrd = TestContainerd::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("node-a");
    let _cleanup = HostCleanup {
        dir: dir.clone(),
        node: "node-a".into(),
    };
    let mut server = Server::start();
    let agent = Agent::start(&server, "node-a", &dir, &ctrd);
    let diag = |server: &Server| {
        format!(
            "{}\n--- agent\n{}",
            tail(&server.log(), 40),
            tail(&agent.log(), 80)
        )
    };
    let d = || diag(&server);
    wait_until(
        "node-a Ready",
        Duration::from_secs(60),
        || node_ready(&server, "node-a"),
        d,
    );
    server.ok_stdin(&["apply", "-f", "-"], OUTAGE_WORKLOAD);
    wait_until(
        "the Deployment rolled out",
        Duration::from_secs(120),
        || {
            server
                .kubectl(&["rollout", "status", "deployment/steady", "--timeout=5s"])
                .status
                .success()
        },
        d,
    );
    let steady = pod_names(&server, "app=steady");
    let steady_uids: Vec<String> = steady
        .iter()
        .map(|p| server.ok(&["get", "pod", p, "-o", "jsonpath={.metadata.uid}"]))
        .collect();
    let victim = steady[0].clone();
    let victim_id = json(&server, &["get", "pod", &victim])["status"]["containerStatuses"][0]
        ["containerID"]
        .as_str()
        .expect("containerID")
        .to_string();

    // The server goes away; the node carries on alone.
    server.kill();
    std::thread::sleep(Duration::from_secs(5));
    kill_container(&ctrd, &victim_id);
    std::thread::sleep(outage());
    // Both steady pods run (the victim in a new instance); the ticker restarts on its own.
    let running = running_tasks(&ctrd);
    for uid in &steady_uids {
        assert!(
            running.iter().any(|id| id.starts_with(uid.as_str())),
            "pod {uid} is not running during the outage: {running:?}\n{}",
            agent.log()
        );
    }
    assert!(!running.contains(&victim_id.trim_start_matches("containerd://").to_string()));

    // Back again: statuses catch up with what happened meanwhile, nothing doubled.
    server.restart();
    let d = || diag(&server);
    wait_until(
        "statuses converge",
        Duration::from_secs(60),
        || {
            restart_count(&server, &victim) == 1
                && restart_count(&server, "ticker") >= 2
                && node_ready(&server, "node-a")
                && server
                    .kubectl(&["rollout", "status", "deployment/steady", "--timeout=2s"])
                    .status
                    .success()
        },
        || {
            format!(
                "victim {} ticker {}\n{}",
                restart_count(&server, &victim),
                restart_count(&server, "ticker"),
                d()
            )
        },
    );
    // No orphan (every container is a pod's current one; a pod waiting out its back-off has
    // none), no duplicate (one container per pod), no steady pod without one. Asked again for
    // a moment, in case a restart is between containerd and the status report.
    let check = || -> Result<(), String> {
        let pods = json(&server, &["get", "pods"]);
        let current: Vec<String> = pods["items"]
            .as_array()
            .ok_or("no items")?
            .iter()
            .filter_map(|p| p["status"]["containerStatuses"][0]["containerID"].as_str())
            .map(|id| id.trim_start_matches("containerd://").to_string())
            .collect();
        let containers = containers_of(&ctrd);
        if let Some(c) = containers.iter().find(|c| !current.contains(c)) {
            return Err(format!(
                "orphaned container {c}: {containers:?} vs {current:?}"
            ));
        }
        let mut owners: Vec<&str> = containers.iter().map(|c| &c[..36]).collect();
        owners.sort();
        owners.dedup();
        if owners.len() != containers.len() {
            return Err(format!("duplicates: {containers:?}"));
        }
        match steady_uids
            .iter()
            .find(|u| !containers.iter().any(|c| c.starts_with(u.as_str())))
        {
            Some(uid) => Err(format!("{uid} lost its container: {containers:?}")),
            None => Ok(()),
        }
    };
    let last = std::cell::RefCell::new(String::new());
    wait_until(
        "containerd to hold just the pods' containers",
        Duration::from_secs(10),
        || check().map_err(|e| *last.borrow_mut() = e).is_ok(),
        || last.borrow().clone(),
    );

    server.ok(&["delete", "deployment", "steady", "--wait=false"]);
    server.ok(&["delete", "pod", "ticker", "--wait=false"]);
    wait_until(
        "all pods gone",
        Duration::from_secs(60),
        || server.ok(&["get", "pods", "-o", "name"]).trim().is_empty(),
        d,
    );
    wait_until(
        "nothing left on the node",
        Duration::from_secs(30),
        || leftovers(&ctrd, &dir, "node-a").is_empty(),
        || format!("{:?}\n{}", leftovers(&ctrd, &dir, "node-a"), d()),
    );
}

fn running_tasks(ctrd: &TestContainerd) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let c = Containerd::connect(&ctrd.socket, "k8s.io")
            .await
            .expect("containerd");
        c.list_tasks()
            .await
            .expect("tasks")
            .into_iter()
            .filter(|t| t.status == cairn_agent::containerd::TaskStatus::Running)
            .map(|t| t.container_id)
            .collect()
    })
}

fn containers_of(ctrd: &TestContainerd) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let c = Containerd::connect(&ctrd.socket, "k8s.io")
            .await
            .expect("containerd");
        c.list_containers(&[])
            .await
            .expect("containers")
            .into_iter()
            .map(|x| x.id)
            .collect()
    })
}
