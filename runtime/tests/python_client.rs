//! The official Python `kubernetes` client (from the venv `make deps` makes) against
//! `cairn server --disable-agent`.

mod common;
use common::{python, Server};

#[test]
fn python_kubernetes_client_works() {
    let s = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_check.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(&s.kubeconfig)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("python client: ok"),
        "stdout: {stdout}\nstderr: {stderr}\nserver log: {}",
        s.log()
    );
}
