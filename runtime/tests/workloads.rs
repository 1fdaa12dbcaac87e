//! Workloads through the controllers, driven by kubectl. A Node created through the API
//! stands in for a machine, and the test plays the kubelet by marking pods Running/Ready.

mod common;
use common::Server;
use std::time::{Duration, Instant};

const NODE: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {kubernetes.io/hostname: node-a}
status:
  capacity: {cpu: "4", memory: 8Gi, pods: "110"}
  allocatable: {cpu: "4", memory: 8Gi, pods: "110"}
  conditions:
  - {type: Ready, status: "True", reason: KubeletReady, message: ok,
     lastHeartbeatTime: "2026-01-01T00:00:00Z", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: c1, image: nginx, resources: {requests: {cpu: 100m, memory: 64Mi}}}
"#;

/// Names of the pods kubectl lists for `selector`.
fn pods(s: &Server, selector: &str) -> Vec<String> {
    s.ok(&[
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

/// What a kubelet reports once a pod's containers run and pass readiness.
fn mark_running_and_ready(s: &Server, pod: &str) {
    let now = "2026-01-01T00:00:00Z";
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": "10.42.0.10",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": [{"name": "c1", "ready": true, "restartCount": 0, "image": "nginx",
                               "imageID": "", "started": true, "state": {"running": {"startedAt": now}}}],
    }});
    s.ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

#[test]
fn deployment_rolls_out_on_a_node_and_rollout_status_sees_it() {
    let s = Server::start();
    s.ok_stdin(&["apply", "-f", "-"], NODE);
    s.ok_stdin(&["apply", "-f", "-"], DEPLOYMENT);

    // The Deployment makes a ReplicaSet, the ReplicaSet two pods, the scheduler binds them.
    let start = Instant::now();
    let bound = loop {
        let nodes = s.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.nodeName}",
        ]);
        if nodes.split_whitespace().filter(|n| *n == "node-a").count() == 2 {
            break pods(&s, "app=web");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "pods not scheduled: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for pod in &bound {
        mark_running_and_ready(&s, pod);
    }
    let out = s.ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let wide = s.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.contains("node-a") && wide.contains("Running"),
        "{wide}"
    );
    let rs = s.ok(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.readyReplicas}",
    ]);
    assert_eq!(rs.trim(), "2");
}
