//! The admin kubeconfig the server writes for kubectl and client libraries.

use base64::Engine;

pub fn render(
    server_url: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cairn\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {}\ncontexts:\n- name: cairn\n  context:\n    cluster: cairn\n    user: admin\ncurrent-context: cairn\npreferences: {{}}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(client_cert_pem),
        b64(client_key_pem)
    )
}
