//! The kinds beyond workloads, and kube-apiserver's write semantics, driven by the real kubectl
//! against `cairn server --disable-agent`: every kind of `manifests/kinds.yaml` is served with
//! discovery and kube-apiserver's Table columns; dry runs change nothing on any verb; invalid
//! objects get 422 with their causes and leave the store as it was.

mod common;
use common::Server;

const KINDS: &str = include_str!("manifests/kinds.yaml");

use common::store_revision as revision;

/// Runs kubectl with `input`, expecting it to fail; its stderr.
fn refused(s: &Server, args: &[&str], input: &str) -> String {
    let out = s.with_stdin(args, input);
    assert!(!out.status.success(), "kubectl {args:?} must fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn every_kind_is_served_with_its_table() {
    let s = Server::start();
    let out = s.ok_stdin(&["apply", "-f", "-"], KINDS);
    assert_eq!(out.lines().count(), 20, "{out}");
    assert!(out.lines().all(|l| l.ends_with(" created")), "{out}");

    let resources = s.ok(&["api-resources", "-o", "name"]);
    for name in [
        "persistentvolumes",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "podtemplates",
        "limitranges",
        "resourcequotas",
        "roles.rbac.authorization.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "poddisruptionbudgets.policy",
        "ingresses.networking.k8s.io",
        "ingressclasses.networking.k8s.io",
        "networkpolicies.networking.k8s.io",
        "storageclasses.storage.k8s.io",
        "csidrivers.storage.k8s.io",
        "csinodes.storage.k8s.io",
        "volumeattachments.storage.k8s.io",
        "horizontalpodautoscalers.autoscaling",
        "priorityclasses.scheduling.k8s.io",
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "apiservices.apiregistration.k8s.io",
        "certificatesigningrequests.certificates.k8s.io",
        "runtimeclasses.node.k8s.io",
    ] {
        assert!(
            resources.lines().any(|l| l == name),
            "{name} missing from api-resources"
        );
    }

    // Each kind prints kube-apiserver's columns.
    for (what, header, row) in [
        (
            "pv",
            "CAPACITY   ACCESS MODES   RECLAIM POLICY",
            "1Gi        RWO            Retain",
        ),
        ("pvc", "STATUS    VOLUME", "Pending"),
        ("quota", "REQUEST", "pods: 0/10"),
        ("rolebinding", "ROLE", "Role/reader"),
        (
            "clusterrolebinding cairn:viewer",
            "ROLE",
            "ClusterRole/cairn:viewer",
        ),
        (
            "pdb",
            "MIN AVAILABLE   MAX UNAVAILABLE   ALLOWED DISRUPTIONS",
            "1               N/A",
        ),
        ("ingress", "CLASS   HOSTS", "nginx   web.example.com"),
        ("ingressclass", "CONTROLLER", "k8s.io/ingress-nginx"),
        ("netpol", "POD-SELECTOR", "<none>"),
        (
            "sc",
            "PROVISIONER",
            "local (default)   rancher.io/local-path   Delete          WaitForFirstConsumer",
        ),
        (
            "hpa",
            "REFERENCE        TARGETS",
            "Deployment/web   cpu: <unknown>/80%",
        ),
        ("pc", "VALUE", "system-node-critical      2000001000"),
        ("runtimeclass", "HANDLER", "runc"),
        ("rc", "DESIRED   CURRENT   READY", "rc1"),
        ("podtemplates", "CONTAINERS   IMAGES", "busybox"),
        ("apiservices", "SERVICE   AVAILABLE", "v1.apps"),
    ] {
        let mut args = vec!["get"];
        args.extend(what.split(' '));
        let table = s.ok(&args);
        assert!(table.contains(header), "{what}: {table}");
        assert!(table.contains(row), "{what}: {table}");
    }

    // A pod gets its priority from its class; an unknown class is refused.
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  priorityClassName: high\n  containers: [{name: c, image: busybox}]\n",
    );
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "p",
            "-o",
            "jsonpath={.spec.priority} {.status.qosClass}"
        ]),
        "1000000 BestEffort"
    );
    let err = refused(
        &s,
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  priorityClassName: nope\n  containers: [{name: c, image: busybox}]\n",
    );
    assert!(
        err.contains("no PriorityClass with name nope was found"),
        "{err}"
    );

    // A binding's role is fixed.
    let err = refused(
        &s,
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: reader}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: other}\nsubjects: []\n",
    );
    assert!(err.contains("cannot change roleRef"), "{err}");
    // A ReplicationController keeps its replicas, as a ReplicaSet does.
    s.ok(&["scale", "rc", "rc1", "--replicas=2"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pods = s.ok(&["get", "pods", "-l", "app=rc1", "-o", "name"]);
        if pods.lines().count() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rc1 has {pods}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = s.ok_stdin(&["delete", "-f", "-"], KINDS);
    assert_eq!(out.lines().count(), 20, "{out}");
}

#[test]
fn dry_runs_change_nothing() {
    let s = Server::start();
    s.ok(&["create", "configmap", "x", "--from-literal=a=1"]);
    s.ok(&["create", "configmap", "y", "--from-literal=a=1"]);
    let before = revision(&s);
    let out = s.ok(&["delete", "cm", "x", "--dry-run=server"]);
    assert!(out.contains("deleted (server dry run)"), "{out}");
    s.ok(&["delete", "cm", "--all", "--dry-run=server"]);
    s.ok(&["label", "cm", "x", "a=b", "--dry-run=server"]);
    s.ok(&[
        "create",
        "configmap",
        "z",
        "--from-literal=a=1",
        "--dry-run=server",
    ]);
    s.ok_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w}\ndata: {a: '1'}\n",
    );
    let raw = s.kubectl(&[
        "delete",
        "--raw",
        "/api/v1/namespaces/default/configmaps?dryRun=All",
    ]);
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(revision(&s), before, "a dry run wrote to the store");
    let names = s.ok(&["get", "cm", "-o", "name"]);
    assert!(
        names.contains("configmap/x") && names.contains("configmap/y"),
        "{names}"
    );
    assert!(
        !names.contains("configmap/z") && !names.contains("configmap/w"),
        "{names}"
    );
}

#[test]
fn invalid_objects_are_refused_with_their_causes() {
    let s = Server::start();
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ok}\nspec:\n  selector: {matchLabels: {app: ok}}\n  template:\n    metadata: {labels: {app: ok}}\n    spec: {containers: [{name: c, image: busybox}]}\n",
    );
    let before = revision(&s);
    for (manifest, expect) in [
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  replicas: -1\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: busybox}]}\n",
            &["spec.replicas", "spec.template.metadata.labels", "`selector` does not match template `labels`"][..],
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ok}\nspec:\n  selector: {matchLabels: {app: other}}\n  template:\n    metadata: {labels: {app: other}}\n    spec: {containers: [{name: c, image: busybox}]}\n",
            &["spec.selector", "field is immutable"][..],
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
            &["spec.containers: Required value"][..],
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: busybox, ports: [{containerPort: 70000}]}\n  - {name: c, image: busybox, resources: {requests: {cpu: lots}}}\n",
            &["spec.containers[0].ports[0].containerPort", "spec.containers[1].name: Duplicate value", "spec.containers[1].resources.requests[cpu]"][..],
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {app: 'has space'}\n",
            &["metadata.labels", "a valid label must be an empty string"][..],
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\ndata: {tls.crt: eA==}\n",
            &["data[tls.key]: Required value"][..],
        ),
        (
            "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec: {restartPolicy: Always, containers: [{name: c, image: busybox}]}\n",
            &["spec.template.spec.restartPolicy"][..],
        ),
        (
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: cj}\nspec:\n  schedule: 'every day'\n  jobTemplate:\n    spec:\n      template:\n        spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n",
            &["spec.schedule"][..],
        ),
    ] {
        let err = refused(&s, &["apply", "-f", "-"], manifest);
        assert!(err.contains("is invalid"), "{manifest}: {err}");
        for e in expect {
            assert!(err.contains(e), "{manifest}: {e} missing from {err}");
        }
    }
    let huge = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\n  annotations: {{a: '{}'}}\n",
        "x".repeat(300 * 1024)
    );
    let err = refused(&s, &["create", "-f", "-"], &huge);
    assert!(err.contains("metadata.annotations: Too long"), "{err}");
    assert_eq!(revision(&s), before, "a refused write changed the store");
}

#[test]
fn writes_behave_as_kube_apiserver() {
    let s = Server::start();
    // A minimal CronJob, however it is sent.
    let cronjob = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: hello}\nspec:\n  schedule: '*/5 * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: OnFailure\n          containers: [{name: hello, image: busybox, command: [date]}]\n";
    assert!(s
        .ok_stdin(&["create", "-f", "-"], cronjob)
        .contains("created"));
    s.ok_stdin(&["apply", "-f", "-"], cronjob);
    s.ok_stdin(&["apply", "--server-side", "-f", "-"], cronjob);
    assert!(s.ok(&["get", "cj", "hello"]).contains("*/5 * * * *"));

    // stringData is merged into data; type defaults to Opaque.
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n",
    );
    assert_eq!(
        s.ok(&[
            "get",
            "secret",
            "s",
            "-o",
            "jsonpath={.type} {.data.password}"
        ]),
        "Opaque aHVudGVyMg=="
    );

    // A PUT without a resourceVersion is an unconditional update (Helm's release records).
    let mut cm: serde_json::Value = serde_json::from_str(&s.ok(&[
        "create",
        "configmap",
        "rel",
        "--from-literal=status=pending-install",
        "-o",
        "json",
    ]))
    .expect("json");
    cm["metadata"]["resourceVersion"] = serde_json::json!("");
    cm["data"]["status"] = serde_json::json!("deployed");
    s.ok_stdin(&["replace", "-f", "-"], &cm.to_string());
    assert_eq!(
        s.ok(&["get", "cm", "rel", "-o", "jsonpath={.data.status}"]),
        "deployed"
    );

    // Namespaces carry their name label; Jobs their generated selector.
    s.ok(&["create", "namespace", "team"]);
    assert_eq!(
        s.ok(&[
            "get",
            "ns",
            "team",
            "-o",
            "jsonpath={.metadata.labels.kubernetes\\.io/metadata\\.name}"
        ]),
        "team"
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: pi}\nspec:\n  template:\n    spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n",
    );
    let uid = s.ok(&["get", "job", "pi", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(
        s.ok(&[
            "get",
            "job",
            "pi",
            "-o",
            "jsonpath={.spec.selector.matchLabels.batch\\.kubernetes\\.io/controller-uid}"
        ]),
        uid
    );
}

/// curl against the server with the admin token: the status code and the body.
fn curl(s: &Server, http: &str, content_type: &str, body: &[u8]) -> (String, String) {
    let file = s.dir.path().join("curl-body");
    std::fs::write(&file, body).expect("write body");
    let token = common::http::token_for(&s.data_dir());
    let out = std::process::Command::new("curl")
        .args(["-sk", http, "-w", "\n%{http_code}", "-X", "POST"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("-H")
        .arg(format!("Content-Type: {content_type}"))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!(
            "https://127.0.0.1:{}/api/v1/namespaces/default/configmaps",
            s.port
        ))
        .output()
        .expect("curl (make deps installs it)");
    assert!(out.status.success(), "curl {http} failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.to_string(), body.to_string())
}

#[test]
fn bodies_in_yaml_and_over_the_limit_on_both_http_versions() {
    let s = Server::start();
    let (code, body) = curl(
        &s,
        "--http2",
        "application/yaml",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-yaml}\ndata: {a: '1'}\n",
    );
    assert_eq!(code, "201", "{body}");
    assert_eq!(
        s.ok(&["get", "cm", "from-yaml", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    let huge = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"huge\"}},\"data\":{{\"x\":\"{}\"}}}}",
        "x".repeat(4 * 1024 * 1024)
    );
    for http in ["--http2", "--http1.1"] {
        let (code, body) = curl(&s, http, "application/json", huge.as_bytes());
        assert_eq!(code, "413", "{http}: {body}");
        assert!(body.contains("RequestEntityTooLarge"), "{http}: {body}");
    }
}

#[test]
fn kubectl_generators_send_protobuf_for_every_kind() {
    let s = Server::start();
    for args in [
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox",
            "--replicas=2",
            "--port=80",
        ][..],
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
        &["create", "service", "nodeport", "np", "--tcp=80"],
        &[
            "create",
            "job",
            "once",
            "--image=busybox",
            "--",
            "echo",
            "hi",
        ],
        &[
            "create",
            "cronjob",
            "tick",
            "--image=busybox",
            "--schedule=*/1 * * * *",
            "--",
            "date",
        ],
        &["create", "configmap", "cfg", "--from-literal=a=1"],
        &["create", "secret", "generic", "pw", "--from-literal=a=b"],
        &["create", "namespace", "team"],
        &["create", "serviceaccount", "robot"],
        &["create", "role", "reader", "--verb=get", "--resource=pods"],
        &[
            "create",
            "rolebinding",
            "reader",
            "--role=reader",
            "--user=jane",
        ],
        &[
            "create",
            "clusterrole",
            "nodes",
            "--verb=get",
            "--resource=nodes",
        ],
        &[
            "create",
            "clusterrolebinding",
            "nodes",
            "--clusterrole=nodes",
            "--group=ops",
        ],
        &["create", "quota", "q", "--hard=pods=10"],
        &[
            "create",
            "pdb",
            "web",
            "--selector=app=web",
            "--min-available=1",
        ],
        &["create", "priorityclass", "high", "--value=1000"],
        &["create", "ingress", "web", "--rule=web.example.com/=web:80"],
        &[
            "run",
            "one",
            "--image=busybox",
            "--labels=app=one",
            "--env=A=1",
            "--",
            "sleep",
            "3600",
        ],
        &["expose", "pod", "one", "--port=80"],
        &["scale", "deployment", "web", "--replicas=3"],
        &["set", "image", "deployment/web", "busybox=busybox:1.36"],
        &["label", "pod", "one", "tier=front", "--overwrite"],
        &["annotate", "pod", "one", "owner=me", "--overwrite"],
    ] {
        s.ok(args);
    }
    // What the generators sent arrived whole.
    assert_eq!(
        s.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]),
        "3 busybox:1.36 80"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].port} {.spec.ports[0].targetPort}"
        ]),
        "80 8080"
    );
    assert_eq!(
        s.ok(&["get", "ing", "web", "-o", "jsonpath={.spec.rules[0].host} {.spec.rules[0].http.paths[0].backend.service.port.number}"]),
        "web.example.com 80"
    );
    assert_eq!(
        s.ok(&["get", "secret", "pw", "-o", "jsonpath={.data.a}"]),
        "Yg=="
    );
    assert_eq!(
        s.ok(&[
            "get",
            "rolebinding",
            "reader",
            "-o",
            "jsonpath={.roleRef.name} {.subjects[0].name}"
        ]),
        "reader jane"
    );
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "one",
            "-o",
            "jsonpath={.spec.containers[0].env[0].value} {.metadata.labels.tier}"
        ]),
        "1 front"
    );
    assert!(s
        .ok(&["rollout", "history", "deployment/web"])
        .contains("2 "));
    s.ok(&["rollout", "undo", "deployment/web"]);
    s.ok(&[
        "debug",
        "one",
        "--copy-to=one-debug",
        "--image=busybox",
        "--profile=general",
    ]);
    assert_eq!(
        s.ok(&[
            "get",
            "pod",
            "one-debug",
            "-o",
            "jsonpath={.spec.containers[*].name}"
        ])
        .split(' ')
        .count(),
        2
    );
    // kubectl sends DeleteOptions as protobuf too.
    assert!(s
        .ok(&["delete", "pod", "one", "--grace-period=0"])
        .contains("deleted"));
}

/// Waits until `f` holds (20 s at most).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn drain_evicts_within_the_disruption_budget() {
    let s = Server::start();
    // A node that takes pods, and two ready pods on it (no agent here: the test plays it).
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {kubernetes.io/hostname: n1}}\nstatus:\n  allocatable: {cpu: '4', memory: 8Gi, pods: '110'}\n  capacity: {cpu: '4', memory: 8Gi, pods: '110'}\n  conditions: [{type: Ready, status: 'True'}]\n",
    );
    s.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    let pods = || {
        s.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
        ])
    };
    eventually("two pods bound to n1", || {
        pods().lines().filter(|l| l.ends_with(" n1")).count() == 2
    });
    for line in pods().lines() {
        let name = line.split(' ').next().unwrap_or_default();
        s.ok(&[
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#,
        ]);
    }
    s.ok(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=2",
    ]);
    eventually("the budget's status", || {
        s.ok(&[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}",
        ]) == "2/0"
    });
    let refused = s.kubectl(&["drain", "n1", "--grace-period=0", "--timeout=3s"]);
    assert!(!refused.status.success(), "the budget allows no eviction");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    assert_eq!(pods().lines().count(), 2, "nothing was evicted");
    assert!(s.ok(&["get", "node", "n1"]).contains("SchedulingDisabled"));

    // One disruption allowed: drain evicts one pod, then waits on the budget again.
    s.ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ]);
    eventually("one disruption allowed", || {
        s.ok(&[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed}",
        ]) == "1"
    });
    let out = s.kubectl(&["drain", "n1", "--grace-period=0", "--timeout=3s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evicted"), "{text}");
    s.ok(&["uncordon", "n1"]);
}

#[test]
fn approved_client_csrs_are_signed_by_the_cluster_ca() {
    let s = Server::start();
    let dir = s.dir.path().to_path_buf();
    let key = dir.join("jane.key");
    let csr = dir.join("jane.csr");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=jane/O=dev",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("openssl (make deps installs it)");
    assert!(made.status.success(), "{made:?}");
    use base64::Engine;
    let request =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).expect("csr"));
    s.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: jane}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  expirationSeconds: 86400\n  usages: [client auth]\n"
        ),
    );
    assert!(s.ok(&["get", "csr", "jane"]).contains("Pending"));
    s.ok(&["certificate", "approve", "jane"]);
    let mut cert = String::new();
    eventually("the certificate", || {
        cert = s.ok(&["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"]);
        !cert.is_empty()
    });
    assert!(s.ok(&["get", "csr", "jane"]).contains("Approved,Issued"));
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert.trim())
        .expect("base64 certificate");
    let cert_file = dir.join("jane.crt");
    std::fs::write(&cert_file, pem).expect("write cert");
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-issuer", "-in"])
        .arg(&cert_file)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&subject.stdout);
    assert!(
        text.contains("CN = jane") && text.contains("O = dev"),
        "{text}"
    );
}

#[test]
fn metrics_count_requests_and_open_watches() {
    let s = Server::start();
    s.ok(&["get", "ns"]);
    let mut watch = s
        .kubectl_cmd(&["get", "cm", "-w"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let gauge = |s: &Server| {
        s.ok(&["get", "--raw", "/metrics"])
            .lines()
            .find(|l| l.starts_with("apiserver_longrunning_requests{"))
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    eventually("the watch counted", || gauge(&s) == "1");
    let text = s.ok(&["get", "--raw", "/metrics"]);
    assert!(
        text.contains(
            r#"apiserver_request_total{verb="LIST",group="",resource="namespaces",code="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("apiserver_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(r#"apiserver_storage_objects{resource="namespaces"} 4"#),
        "{text}"
    );
    // A client that goes away releases its watch at once.
    let _ = watch.kill();
    let _ = watch.wait();
    eventually("the watch released", || gauge(&s) == "0");
}

#[test]
fn everyday_kubectl_verbs() {
    let s = Server::start();
    s.ok(&["create", "deployment", "web", "--image=busybox"]);
    // diff shows what apply would change, and exits 1 when it would change something.
    let file = s.dir.path().join("cm.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: k}\ndata: {a: '2'}\n",
    )
    .expect("manifest");
    let diff = s.kubectl(&["diff", "-f", file.to_str().expect("path")]);
    assert_eq!(diff.status.code(), Some(1), "{diff:?}");
    assert!(String::from_utf8_lossy(&diff.stdout).contains("+  a: \"2\""));
    assert!(
        s.kubectl(&["get", "cm", "k"]).status.code() != Some(0),
        "diff created nothing"
    );
    // A kustomization, then wait on what it made.
    let kust = s.dir.path().join("kust");
    std::fs::create_dir_all(&kust).expect("dir");
    std::fs::copy(&file, kust.join("cm.yaml")).expect("copy");
    std::fs::write(
        kust.join("kustomization.yaml"),
        "resources: [cm.yaml]\nnamePrefix: dev-\nlabels: [{pairs: {env: dev}}]\n",
    )
    .expect("kustomization");
    assert!(s
        .ok(&["apply", "-k", kust.to_str().expect("path")])
        .contains("configmap/dev-k created"));
    s.ok(&[
        "wait",
        "--for=jsonpath={.data.a}=2",
        "cm/dev-k",
        "--timeout=10s",
    ]);
    assert_eq!(
        s.ok(&["get", "cm", "-l", "env=dev", "-o", "name"]).trim(),
        "configmap/dev-k"
    );
    // edit through an editor, taint, rollout restart.
    let edited = s
        .kubectl_cmd(&["edit", "deploy", "web"])
        .env("EDITOR", "sed -i s#image:\\ busybox#image:\\ busybox:1.35#")
        .output()
        .expect("kubectl edit");
    assert!(edited.status.success(), "{edited:?}");
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}"
        ]),
        "busybox:1.35"
    );
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    );
    s.ok(&["taint", "node", "n1", "dedicated=gpu:NoSchedule"]);
    assert_eq!(
        s.ok(&[
            "get",
            "node",
            "n1",
            "-o",
            "jsonpath={.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}"
        ]),
        "dedicated=gpu:NoSchedule"
    );
    s.ok(&["taint", "node", "n1", "dedicated-"]);
    s.ok(&["rollout", "restart", "deploy/web"]);
    assert!(s
        .ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.metadata.annotations}"
        ])
        .contains("kubectl.kubernetes.io/restartedAt"));
}

#[test]
fn pods_are_bound_through_the_binding_subresource() {
    let s = Server::start();
    s.ok(&["run", "b", "--image=busybox", "--", "sleep", "1"]);
    let file = s.dir.path().join("binding.json");
    std::fs::write(
        &file,
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"b"},"target":{"kind":"Node","name":"n9"}}"#,
    )
    .expect("binding");
    let path = "/api/v1/namespaces/default/pods/b/binding";
    s.ok(&["create", "--raw", path, "-f", file.to_str().expect("path")]);
    assert_eq!(
        s.ok(&["get", "pod", "b", "-o", "jsonpath={.spec.nodeName}"]),
        "n9"
    );
    let again = s.kubectl(&["create", "--raw", path, "-f", file.to_str().expect("path")]);
    assert!(!again.status.success(), "a bound pod is not bound again");
    assert!(String::from_utf8_lossy(&again.stderr).contains("Conflict"));
}

#[test]
fn openapi_serves_the_real_schemas_to_kubectl() {
    let s = Server::start();
    // v3: nested fields with their descriptions, required marks and list types.
    let out = s.ok(&["explain", "deployment.spec.template.spec.containers"]);
    assert!(out.contains("FIELD: containers <[]Container>"), "{out}");
    assert!(
        out.contains("List of containers belonging to the pod"),
        "{out}"
    );
    assert!(out.contains("name\t<string> -required-"), "{out}");
    let out = s.ok(&["explain", "pods", "--recursive"]);
    assert!(out.contains("metadata\t<ObjectMeta>\n"), "{out}");
    // v2 in protobuf, as kubectl asks for it.
    let out = s.ok(&[
        "explain",
        "--output=plaintext-openapiv2",
        "deployment.spec.template.spec.containers.ports",
    ]);
    assert!(out.contains("containerPort\t<integer> -required-"), "{out}");
    // apply computes a strategic merge patch from the v3 schema: containers and env merge
    // by name.
    let manifest = |env: &str, image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - {{name: a, image: busybox, env: [{{name: X, value: '{env}'}}]}}\n      - {{name: b, image: {image}}}\n"
        )
    };
    s.ok_stdin(&["apply", "-f", "-"], &manifest("1", "busybox"));
    let out = s.with_stdin(&["apply", "-f", "-", "-v=8"], &manifest("2", "nginx"));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("Content-Type: application/strategic-merge-patch+json"),
        "{log}"
    );
    assert!(!log.contains("warning"), "{log}");
    let containers = s.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers}",
    ]);
    assert_eq!(
        containers,
        r#"[{"env":[{"name":"X","value":"2"}],"image":"busybox","name":"a"},{"image":"nginx","name":"b"}]"#
    );
    // An unknown field is reported by name.
    let err = refused(
        &s,
        &["apply", "-f", "-"],
        &manifest("3", "nginx").replace("spec:\n  selector", "spec:\n  bogus: 1\n  selector"),
    );
    assert!(err.contains(r#"unknown field "spec.bogus""#), "{err}");
    // A CRD's schema is published with it: explain reads it, and apply of a custom
    // resource sends a JSON merge patch (custom resources have no merge keys).
    s.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gizmos.example.com}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {plural: gizmos, singular: gizmo, kind: Gizmo}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            description: What the gizmo wants.\n            properties:\n              size: {type: integer, description: How big it is.}\n",
    );
    eventually("the CRD's schema is published", || {
        let out = s.kubectl(&["explain", "gizmos.spec"]);
        String::from_utf8_lossy(&out.stdout).contains("What the gizmo wants.")
    });
    let out = s.ok(&["explain", "--output=plaintext-openapiv2", "gizmo.spec.size"]);
    assert!(out.contains("How big it is."), "{out}");
    let gizmo = |size: u32| {
        format!("apiVersion: example.com/v1\nkind: Gizmo\nmetadata: {{name: g}}\nspec: {{size: {size}}}\n")
    };
    s.ok_stdin(&["apply", "-f", "-"], &gizmo(1));
    let out = s.with_stdin(&["apply", "-f", "-", "-v=8"], &gizmo(2));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("Content-Type: application/merge-patch+json"),
        "{log}"
    );
    // Every kubectl the machine has reads both documents.
    let versions = common::kubectl_versions();
    assert!(versions.len() >= 2, "{versions:?}");
    let file = s.dir.path().join("web.yaml");
    std::fs::write(&file, manifest("4", "nginx")).expect("manifest");
    let file = file.to_str().expect("path");
    for k in versions {
        let run = |args: &[&str]| {
            let out = std::process::Command::new(&k)
                .env("KUBECONFIG", &s.kubeconfig)
                .arg("--cache-dir")
                .arg(s.dir.path().join("kube-cache"))
                .args(args)
                .output()
                .expect("run kubectl");
            assert!(
                out.status.success(),
                "{} {args:?}: {}",
                k.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        assert!(run(&["explain", "deployment.spec.replicas"]).contains("replicas"));
        assert!(run(&[
            "explain",
            "--output=plaintext-openapiv2",
            "cronjob.spec.schedule"
        ])
        .contains("schedule"));
        run(&["apply", "-f", file, "--dry-run=server"]);
    }
}
