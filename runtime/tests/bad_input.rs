//! Bad requests get the right `kind: Status` code and never change the store.

mod common;
use common::Server;

use common::store_revision as revision;

/// POSTs `body` raw to `path`; returns kubectl's stderr (it must fail).
fn post_raw(s: &Server, path: &str, body: &[u8]) -> String {
    let file = s.dir.path().join("body");
    std::fs::write(&file, body).expect("write body");
    let out = s.kubectl(&["create", "--raw", path, "-f", file.to_str().expect("path")]);
    assert!(!out.status.success(), "{path} must be refused");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn refused_requests_leave_the_store_as_it_was() {
    let s = Server::start();
    s.ok(&["create", "configmap", "keep", "--from-literal=a=1"]);
    let before = revision(&s);
    let cms = "/api/v1/namespaces/default/configmaps";

    let err = post_raw(&s, cms, b"{\"apiVersion\": \"v1\", \"kind\": ");
    assert!(err.contains("BadRequest"), "malformed JSON: {err}");

    let err = post_raw(&s, "/api/v1/namespaces/default/bogus", b"{}");
    assert!(err.contains("NotFound"), "unknown kind: {err}");

    let huge = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"huge\"}},\"data\":{{\"x\":\"{}\"}}}}",
        "x".repeat(4 * 1024 * 1024)
    );
    let err = post_raw(&s, cms, huge.as_bytes());
    assert!(
        err.contains("RequestEntityTooLarge") || err.contains("too large"),
        "huge body: {err}"
    );

    let err = post_raw(
        &s,
        cms,
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#,
    );
    assert!(
        err.contains("Invalid") && err.contains("metadata.name"),
        "invalid name: {err}"
    );

    let err = post_raw(
        &s,
        cms,
        br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"wrong-kind"}}"#,
    );
    assert!(err.contains("BadRequest"), "kind/resource mismatch: {err}");

    let err = post_raw(
        &s,
        cms,
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"keep"}}"#,
    );
    assert!(err.contains("AlreadyExists"), "duplicate: {err}");

    // An update carrying a stale resourceVersion is a conflict.
    let mut cm: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "cm", "keep", "-o", "json"])).expect("json");
    cm["metadata"]["resourceVersion"] = serde_json::json!("1");
    cm["data"]["a"] = serde_json::json!("2");
    let out = s.with_stdin(&["replace", "--validate=false", "-f", "-"], &cm.to_string());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Conflict") || err.contains("modified"),
        "stale update: {err}"
    );

    // YAML that does not parse never leaves kubectl.
    let out = s.with_stdin(&["apply", "-f", "-"], "kind: [unclosed\n");
    assert!(!out.status.success());

    assert_eq!(revision(&s), before, "a refused request changed the store");
    assert_eq!(
        s.ok(&["get", "cm", "keep", "-o", "jsonpath={.data.a}"]),
        "1"
    );
}

#[test]
fn requests_without_credentials_get_401() {
    let s = Server::start();
    let kubeconfig = std::fs::read_to_string(&s.kubeconfig).expect("kubeconfig");
    // Same server and CA, a token the server never issued instead of the client certificate.
    let anon: String = kubeconfig
        .lines()
        .filter(|l| !l.contains("client-key-data"))
        .map(|l| {
            if l.contains("client-certificate-data") {
                "    token: not-a-token-of-this-server\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let anon_path = s.dir.path().join("anon.yaml");
    std::fs::write(&anon_path, anon).expect("write");
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &anon_path)
        .args(["get", "--raw", "/api/v1/namespaces"])
        .output()
        .expect("kubectl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthorized"), "{err}");
    // Health and version need no credentials.
    let out = std::process::Command::new("kubectl")
        .env("KUBECONFIG", &anon_path)
        .args(["get", "--raw", "/readyz"])
        .output()
        .expect("kubectl");
    assert!(out.status.success());
}

#[test]
fn restart_keeps_objects_and_credentials() {
    let s = Server::start();
    s.ok(&["create", "configmap", "durable", "--from-literal=k=v"]);
    // The port is new on restart; the CA and the admin credentials are not.
    let credentials = |k: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(k)
            .expect("kubeconfig")
            .lines()
            .filter(|l| l.contains("-data:"))
            .map(str::to_string)
            .collect()
    };
    let before = credentials(&s.kubeconfig);
    let dir = s.stop();
    let s = Server::start_in(dir);
    assert_eq!(credentials(&s.kubeconfig), before);
    assert_eq!(
        s.ok(&["get", "cm", "durable", "-o", "jsonpath={.data.k}"]),
        "v"
    );
}
