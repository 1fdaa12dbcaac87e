//! The `kubernetes.io/kube-apiserver-client` signer: an approved CertificateSigningRequest
//! for it gets a client certificate from the cluster CA, for the subject its request names
//! (the CN is the user, the Os its groups), valid for `spec.expirationSeconds` (a year when
//! unset), as kube-controller-manager's csrsigning controller does. Requests for other
//! signers are left to whoever implements them.

use crate::pki::Pki;
use anyhow::Result;
use async_trait::async_trait;
use base64::Engine;
use cairn_controllers::{util, Controller};
use cairn_store::{Event, Store};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// What kube-controller-manager signs for by default (`--cluster-signing-duration`).
const DEFAULT_DURATION_SECS: i64 = 365 * 86_400;

fn csrs() -> &'static cairn_api::resources::Resource {
    cairn_api::resources::find("certificates.k8s.io", "v1", "certificatesigningrequests")
        .unwrap_or_else(|| panic!("certificatesigningrequests are missing from the resource table"))
}

fn condition_true(csr: &Value, kind: &str) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] != "False")
}

/// Whether this signer has something to do for `csr`.
pub fn wants_signing(csr: &Value) -> bool {
    csr["spec"]["signerName"] == SIGNER
        && condition_true(csr, "Approved")
        && !condition_true(csr, "Denied")
        && !condition_true(csr, "Failed")
        && csr["status"]["certificate"]
            .as_str()
            .is_none_or(str::is_empty)
}

pub struct CsrSigner {
    pub pki: Arc<Pki>,
}

impl CsrSigner {
    fn sign(&self, csr: &Value) -> Result<String, String> {
        let request = csr["spec"]["request"].as_str().unwrap_or("");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(request)
            .map_err(|e| format!("spec.request is not base64: {e}"))?;
        let pem =
            String::from_utf8(pem).map_err(|_| "spec.request is not a PEM CSR".to_string())?;
        let secs = csr["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or(DEFAULT_DURATION_SECS)
            .clamp(600, DEFAULT_DURATION_SECS);
        self.pki
            .sign_client_certificate(&pem, None, secs)
            .map_err(|e| e.to_string())
    }
}

#[async_trait]
impl Controller for CsrSigner {
    fn name(&self) -> &'static str {
        "csrsigning"
    }

    fn prefixes(&self) -> Vec<String> {
        vec![csrs().key_prefix(None)]
    }

    async fn items_for(&self, _store: &dyn Store, ev: &Event) -> Vec<String> {
        vec![ev.record.key.clone()]
    }

    async fn all_items(&self, store: &dyn Store) -> Result<Vec<String>> {
        let all = util::list(store, &csrs().key_prefix(None)).await?;
        Ok(all
            .iter()
            .filter(|c| wants_signing(c))
            .map(|c| util::key_of(csrs(), c))
            .collect())
    }

    async fn sync(&self, store: &dyn Store, key: &str) -> Result<Option<Duration>> {
        let Some(csr) = util::get(store, key).await? else {
            return Ok(None);
        };
        if !wants_signing(&csr) {
            return Ok(None);
        }
        let mut new = csr.clone();
        match self.sign(&csr) {
            Ok(cert) => {
                new["status"]["certificate"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(cert));
            }
            Err(message) => {
                let now = cairn_wire::time::now_rfc3339();
                let failed = json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                                    "message": message, "lastUpdateTime": now, "lastTransitionTime": now});
                match new["status"]["conditions"].as_array_mut() {
                    Some(c) => c.push(failed),
                    None => new["status"]["conditions"] = json!([failed]),
                }
            }
        }
        util::update(store, csrs(), &csr, new).await?;
        Ok(None)
    }
}
