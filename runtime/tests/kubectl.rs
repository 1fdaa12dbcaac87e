//! The real kubectl (the /usr/bin/kubectl dispatcher, which picks kubectl 1.32 from our
//! /version) against `cairn server --disable-agent`.

mod common;
use common::Server;
use std::time::Duration;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: c1
        image: nginx
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {a: "1"}
"#;

#[test]
fn get_describe_and_output_formats() {
    let s = Server::start();
    let out = s.ok(&["get", "namespaces"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(ns), "{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "ns", "default", "-o", "json"])).expect("json");
    assert_eq!(json["metadata"]["name"], "default");
    assert!(json["metadata"]["resourceVersion"].as_str().is_some());
    assert!(s
        .ok(&["get", "ns", "default", "-o", "yaml"])
        .contains("name: default"));
    assert_eq!(
        s.ok(&["get", "ns", "kube-system", "-o", "jsonpath={.status.phase}"]),
        "Active"
    );
    assert!(s.ok(&["get", "ns", "-o", "wide"]).contains("kube-public"));
    let described = s.ok(&["describe", "ns", "default"]);
    assert!(
        described.contains("Name:") && described.contains("default"),
        "{described}"
    );
    let version = s.ok(&["version", "-o", "json"]);
    assert!(version.contains("\"minor\": \"32\""), "{version}");
}

#[test]
fn apply_client_side_then_server_side() {
    let s = Server::start();
    let out = s.ok_stdin(&["apply", "-f", "-"], APP);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");
    assert!(out.contains("configmap/cfg created"), "{out}");

    let changed = APP.replace("replicas: 1", "replicas: 2");
    let out = s.ok_stdin(&["apply", "-f", "-"], &changed);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("configmap/cfg unchanged"), "{out}");
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "2"
    );

    let out = s.ok_stdin(&["apply", "--server-side", "-f", "-"], &changed);
    assert!(out.contains("serverside-applied"), "{out}");
    let out = s.ok_stdin(&["delete", "-f", "-"], APP);
    assert!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    assert!(s.ok(&["get", "cm"]).lines().all(|l| !l.starts_with("cfg ")));
}

#[test]
fn patch_label_annotate_scale() {
    let s = Server::start();
    s.ok_stdin(&["apply", "-f", "-"], APP);
    s.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"c1","image":"nginx:2"}]}}}}"#,
    ]);
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]),
        "nginx:2 80",
        "a strategic merge patch keeps the rest of the container"
    );
    s.ok(&[
        "patch",
        "cm",
        "cfg",
        "--type=merge",
        "-p",
        r#"{"data":{"b":"2"}}"#,
    ]);
    s.ok(&[
        "patch",
        "cm",
        "cfg",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/c","value":"3"}]"#,
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "cfg",
            "-o",
            "jsonpath={.data.a}{.data.b}{.data.c}"
        ]),
        "123"
    );
    s.ok(&["label", "cm", "cfg", "tier=backend"]);
    s.ok(&["annotate", "cm", "cfg", "owner=team-a"]);
    assert!(s.ok(&["get", "cm", "-l", "tier=backend"]).contains("cfg"));
    assert!(!s.ok(&["get", "cm", "-l", "tier!=backend"]).contains("cfg"));
    assert!(s
        .ok(&["get", "cm", "-l", "tier in (backend,frontend)"])
        .contains("cfg"));
    assert_eq!(
        s.ok(&[
            "get",
            "cm",
            "cfg",
            "-o",
            "jsonpath={.metadata.annotations.owner}"
        ]),
        "team-a"
    );
    let gen_before: i64 = s
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .parse()
        .expect("generation");
    s.ok(&["scale", "deploy", "web", "--replicas=4"]);
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "4"
    );
    let gen_after: i64 = s
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .parse()
        .expect("generation");
    assert!(gen_after > gen_before);
}

#[test]
fn field_selectors_and_paging() {
    let s = Server::start();
    for i in 0..7 {
        s.ok(&["create", "ns", &format!("team-{i}")]);
    }
    let out = s.ok(&[
        "get",
        "ns",
        "--field-selector",
        "metadata.name=team-3",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "namespace/team-3");
    // Small pages: kubectl follows `continue` until the list is whole.
    let out = s.ok(&["get", "ns", "--chunk-size=2", "-o", "name"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("namespace/team-"))
            .count(),
        7
    );
    let bad = s.kubectl(&["get", "ns", "--field-selector", "spec.bogus=1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("field label not supported"));
}

#[test]
fn watch_sees_changes() {
    let s = Server::start();
    let mut watcher = s
        .kubectl_cmd(&["get", "cm", "-w", "-o", "name", "--request-timeout=20s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    std::thread::sleep(Duration::from_secs(2));
    s.ok(&["create", "cm", "w1", "--from-literal=k=v"]);
    s.ok(&["delete", "cm", "w1"]);
    std::thread::sleep(Duration::from_secs(2));
    let _ = watcher.kill();
    let out = watcher.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("configmap/w1"), "{text}");
}
