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

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec: {size: 3}
"#;

#[test]
fn custom_resource_definitions() {
    let s = Server::start();
    // A fresh cache: kubectl 1.32 takes aggregated discovery from /api and /apis and asks
    // no group for its resources.
    let out = s.kubectl(&["get", "deploy", "-v=6"]);
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("/apis?timeout"), "{log}");
    assert!(!log.contains("/apis/apps/v1?timeout"), "{log}");
    // Without the aggregated media type in Accept, the legacy documents.
    let out = s.ok(&["get", "--raw", "/apis"]);
    assert!(out.contains("\"APIGroupList\""), "{out}");
    let out = s.ok_stdin(&["apply", "-f", "-"], CRD);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{out}"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "crd",
            "widgets.example.com",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ]),
        "True"
    );
    let out = s.ok_stdin(&["apply", "-f", "-"], WIDGET);
    assert!(out.contains("widget.example.com/w1 created"), "{out}");
    let out = s.ok(&["get", "widgets"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "SIZE", "AGE"], "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("w1 ") && l.contains(" 3 ")),
        "{out}"
    );
    let out = s.ok_stdin(&["apply", "-f", "-"], &WIDGET.replace("size: 3", "size: 4"));
    assert!(out.contains("widget.example.com/w1 configured"), "{out}");
    let yaml = s.ok(&["get", "wg", "w1", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: Widget") && yaml.contains("size: 4"),
        "{yaml}"
    );
    s.ok(&[
        "patch",
        "wg",
        "w1",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":5}}"#,
    ]);
    let smp = s.kubectl(&["patch", "wg", "w1", "-p", r#"{"spec":{"size":6}}"#]);
    assert!(!smp.status.success(), "strategic merge patch is refused");
    s.ok(&[
        "patch",
        "wg",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":true}}"#,
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "wg",
            "w1",
            "-o",
            "jsonpath={.spec.size} {.status.ready}"
        ]),
        "5 true"
    );
    let out = s.ok(&["api-resources", "--api-group=example.com"]);
    assert!(out.contains("widgets") && out.contains("wg"), "{out}");
    let out = s.ok(&["delete", "wg", "w1"]);
    assert!(out.contains("widget.example.com \"w1\" deleted"), "{out}");
    // Deleting the CRD deletes its objects and stops serving them.
    s.ok_stdin(&["apply", "-f", "-"], WIDGET);
    s.ok_stdin(&["delete", "-f", "-"], CRD);
    let gone = s.kubectl(&[
        "get",
        "--raw",
        "/apis/example.com/v1/namespaces/default/widgets",
    ]);
    assert!(!gone.status.success());
    s.ok_stdin(&["apply", "-f", "-"], CRD);
    let out = s.ok(&["get", "widgets.example.com", "-o", "name"]);
    assert_eq!(out.trim(), "", "the objects went with their CRD");
}

#[test]
fn namespace_deletion_and_propagation() {
    let s = Server::start();
    s.ok(&["create", "ns", "team"]);
    s.ok(&["create", "cm", "c1", "-n", "team", "--from-literal=a=b"]);
    // kubectl waits until the namespace controller emptied and removed it.
    let out = s.ok(&["delete", "ns", "team", "--timeout=30s"]);
    assert!(out.contains("namespace \"team\" deleted"), "{out}");
    assert!(!s.kubectl(&["get", "ns", "team"]).status.success());
    // Foreground and orphan deletions go through their finalizers to the end.
    s.ok_stdin(&["apply", "-f", "-"], APP);
    s.ok(&[
        "delete",
        "deploy",
        "web",
        "--cascade=foreground",
        "--timeout=30s",
    ]);
    assert!(!s.kubectl(&["get", "deploy", "web"]).status.success());
    s.ok(&["create", "cm", "o1", "--from-literal=a=b"]);
    s.ok(&["delete", "cm", "o1", "--cascade=orphan", "--timeout=30s"]);
    assert!(!s.kubectl(&["get", "cm", "o1"]).status.success());
    let pod = s.ok(&[
        "run",
        "p",
        "--image=nginx",
        "-o",
        "jsonpath={.status.phase} {.status.qosClass}",
    ]);
    assert_eq!(pod, "Pending BestEffort");
}

#[test]
fn field_validation_strict_warn_ignore() {
    let s = Server::start();
    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndata:\n  a: \"1\"\ndatta:\n  b: \"2\"\n";
    // kubectl validates by default and asks the server to be strict.
    let out = s.with_stdin(&["apply", "-f", "-"], typo);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"datta\""), "{err}");
    assert!(!s.ok(&["get", "cm", "-o", "name"]).contains("typo"));
    // Warn: accepted, the field is reported and not stored.
    let out = s.with_stdin(&["apply", "--validate=warn", "-f", "-"], typo);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field \"datta\""));
    let stored: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "cm", "typo", "-o", "json"])).expect("json");
    assert!(
        stored.get("datta").is_none(),
        "unknown fields are not stored: {stored}"
    );
    assert_eq!(stored["data"]["a"], "1");
    // Wrong types are refused whatever the mode.
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: bad\nspec:\n  replicas: two\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n";
    let out = s.with_stdin(&["apply", "--validate=false", "-f", "-"], bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("BadRequest")
            || String::from_utf8_lossy(&out.stderr).contains("cannot be handled")
    );
}

#[test]
fn server_side_apply_conflicts_and_managed_fields() {
    let s = Server::start();
    // kubectl (the default manager) keeps the label after losing data.key to "other".
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  labels: {app: ssa}\ndata:\n  key: one\n";
    let out = s.ok_stdin(&["apply", "--server-side", "-f", "-"], cm);
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");

    let other = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  key: two\n";
    let failed = s.with_stdin(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        other,
    );
    assert!(!failed.status.success());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("conflict"), "{err}");
    assert!(err.contains(".data.key"), "{err}");
    assert_eq!(
        s.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.key}"]),
        "one"
    );

    let out = s.ok_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        other,
    );
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(
        s.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.key}"]),
        "two"
    );
    let yaml = s.ok(&["get", "cm", "ssa", "-o", "yaml", "--show-managed-fields"]);
    assert!(yaml.contains("managedFields"), "{yaml}");
    assert!(yaml.contains("manager: kubectl"), "{yaml}");
    assert!(yaml.contains("manager: other"), "{yaml}");
    assert!(yaml.contains("f:key"), "{yaml}");
    assert!(yaml.contains("f:app"), "{yaml}");
    assert_eq!(
        s.ok(&["get", "cm", "ssa", "-o", "jsonpath={.metadata.labels.app}"]),
        "ssa"
    );
}

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 10}
              color: {type: string, enum: [red, blue], default: red}
              name: {type: string, pattern: '^[a-z]+$', maxLength: 8}
              when: {type: string, format: date-time}
              tags: {type: array, x-kubernetes-list-type: set, items: {type: string}}
              extra: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn gadget(spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {{name: g}}\nspec: {spec}\n")
}

#[test]
fn custom_resources_follow_their_structural_schema() {
    let s = Server::start();
    s.ok_stdin(&["apply", "-f", "-"], GADGET_CRD);
    let revision = common::store_revision(&s);
    // Every broken rule is a cause naming its field; nothing is stored.
    let out = s.with_stdin(
        &["create", "-f", "-"],
        &gadget("{size: 30, color: pink, name: A1, when: yesterday, tags: [a, a]}"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        r#"The Gadget "g" is invalid"#,
        "spec.size: Invalid value: 30: spec.size in body should be less than or equal to 10",
        r#"spec.color: Unsupported value: "pink": supported values: "red", "blue""#,
        r#"spec.name: Invalid value: "A1": spec.name in body should match '^[a-z]+$'"#,
        r#"spec.when: Invalid value: "yesterday""#,
        r#"spec.tags[1]: Duplicate value: "a""#,
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let err = String::from_utf8_lossy(
        &s.with_stdin(&["create", "-f", "-"], &gadget("{color: red}"))
            .stderr,
    )
    .to_string();
    assert!(err.contains("spec.size: Required value"), "{err}");
    let err = String::from_utf8_lossy(
        &s.with_stdin(&["create", "-f", "-"], &gadget("{size: \"3\"}"))
            .stderr,
    )
    .to_string();
    assert!(
        err.contains("spec.size in body must be of type integer"),
        "{err}"
    );
    assert_eq!(common::store_revision(&s), revision, "nothing was written");
    // Unknown fields: refused under Strict (kubectl's default), pruned otherwise; defaults
    // fill what is absent; preserved subtrees keep everything.
    let err = String::from_utf8_lossy(
        &s.with_stdin(&["apply", "-f", "-"], &gadget("{size: 2, junk: 1}"))
            .stderr,
    )
    .to_string();
    assert!(err.contains(r#"unknown field "spec.junk""#), "{err}");
    s.ok_stdin(
        &["apply", "--validate=false", "-f", "-"],
        &gadget("{size: 2, junk: 1, extra: {any: {deep: true}}}"),
    );
    assert_eq!(
        s.ok(&["get", "gadget", "g", "-o", "jsonpath={.spec}"]),
        r#"{"color":"red","extra":{"any":{"deep":true}},"size":2}"#
    );
    // Updates are checked the same way.
    let out = s.kubectl(&[
        "patch",
        "gadget",
        "g",
        "--type=merge",
        "-p",
        r#"{"spec":{"size":0}}"#,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("spec.size in body should be greater than or equal to 1"));
    assert_eq!(
        s.ok(&["get", "gadget", "g", "-o", "jsonpath={.spec.size}"]),
        "2"
    );
}

const POOL_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: pools.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: pools, singular: pool, kind: Pool}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.size, statusReplicasPath: .status.ready, labelSelectorPath: .status.selector}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer, maximum: 10}}}
          status: {type: object, properties: {ready: {type: integer}, selector: {type: string}}}
"#;

#[test]
fn custom_resources_scale_through_their_crds_paths() {
    let s = Server::start();
    // A scale subresource whose paths are not under .spec/.status is refused.
    let bad = POOL_CRD
        .replace("pools.example.com}", "bad.example.com}")
        .replace(
            "specReplicasPath: .spec.size",
            "specReplicasPath: .metadata.size",
        );
    let out = s.with_stdin(&["create", "-f", "-"], &bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("spec.versions[0].subresources.scale.specReplicasPath"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.ok_stdin(&["apply", "-f", "-"], POOL_CRD);
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Pool\nmetadata: {name: p}\nspec: {size: 1}\n",
    );
    s.ok(&[
        "patch",
        "pool",
        "p",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ready":1,"selector":"app=p"}}"#,
    ]);
    assert_eq!(
        s.ok(&["scale", "pool", "p", "--replicas=4"]).trim(),
        "pool.example.com/p scaled"
    );
    assert_eq!(
        s.ok(&["get", "pool", "p", "-o", "jsonpath={.spec.size}"]),
        "4"
    );
    let scale: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/example.com/v1/namespaces/default/pools/p/scale",
    ]))
    .expect("json");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["replicas"], 1);
    assert_eq!(scale["status"]["selector"], "app=p");
    // Through scale, the object's own schema still holds.
    let revision = common::store_revision(&s);
    let out = s.kubectl(&["scale", "pool", "p", "--replicas=20"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::store_revision(&s), revision, "nothing was written");
    s.ok(&[
        "patch",
        "pool",
        "p",
        "--subresource=scale",
        "--type=merge",
        "-p",
        r#"{"spec":{"replicas":2}}"#,
    ]);
    assert_eq!(
        s.ok(&["get", "pool", "p", "-o", "jsonpath={.spec.size}"]),
        "2"
    );
}

#[test]
fn versions_of_a_kind_share_one_stored_object() {
    let s = Server::start();
    // autoscaling/v1 HPAs are autoscaling/v2 ones seen through v1's CPU target.
    s.ok(&["create", "deployment", "web", "--image=busybox"]);
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 1\n  maxReplicas: 4\n  targetCPUUtilizationPercentage: 70\n",
    );
    let v2: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web",
    ]))
    .expect("json");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"],
        serde_json::json!({"type": "Utilization", "averageUtilization": 70})
    );
    s.ok(&[
        "patch",
        "horizontalpodautoscalers.v2.autoscaling",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/metrics/0/resource/target/averageUtilization","value":55}]"#,
    ]);
    let v1: serde_json::Value = serde_json::from_str(&s.ok(&[
        "get",
        "--raw",
        "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web",
    ]))
    .expect("json");
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 55);
    assert!(v1["spec"].get("metrics").is_none(), "{v1}");
    let table = s.ok(&["get", "horizontalpodautoscalers.v1.autoscaling"]);
    assert!(table.contains("cpu: <unknown>/55%"), "{table}");
    // A CRD's versions (conversion None): written through any, stored in the storage
    // version, read through each with its own apiVersion.
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: dials.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {plural: dials, singular: dial, kind: Dial}\n  versions:\n  - name: v1beta1\n    served: true\n    storage: false\n    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {level: {type: integer}}}}}}\n  - name: v1\n    served: true\n    storage: true\n    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {level: {type: integer, maximum: 5}}}}}}\n",
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1beta1\nkind: Dial\nmetadata: {name: d}\nspec: {level: 3}\n",
    );
    for version in ["v1beta1", "v1"] {
        let d: serde_json::Value = serde_json::from_str(&s.ok(&[
            "get",
            "--raw",
            &format!("/apis/example.com/{version}/namespaces/default/dials/d"),
        ]))
        .expect("json");
        assert_eq!(d["apiVersion"], format!("example.com/{version}"));
        assert_eq!(d["spec"]["level"], 3);
    }
    // Each version validates by its own schema.
    let out = s.with_stdin(
        &["create", "-f", "-"],
        "apiVersion: example.com/v1\nkind: Dial\nmetadata: {name: e}\nspec: {level: 9}\n",
    );
    assert!(!out.status.success());
    s.ok_stdin(
        &["create", "-f", "-"],
        "apiVersion: example.com/v1beta1\nkind: Dial\nmetadata: {name: e}\nspec: {level: 9}\n",
    );
}
