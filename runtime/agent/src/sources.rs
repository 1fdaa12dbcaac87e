//! Where a pod's ConfigMaps, Secrets and Services come from: the API, with the last answer
//! kept on disk so a node restarting while the server is away can still start its pods.

use cairn_wire::client::{ApiClient, ClientError, Reflector};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub struct ApiSource {
    client: ApiClient,
    services: Reflector,
    cache_dir: PathBuf,
}

impl ApiSource {
    pub fn new(client: ApiClient, services: Reflector, cache_dir: PathBuf) -> Self {
        ApiSource {
            client,
            services,
            cache_dir,
        }
    }

    fn cache_path(&self, kind: &str, namespace: &str, name: &str) -> PathBuf {
        self.cache_dir
            .join(kind.to_ascii_lowercase())
            .join(namespace)
            .join(format!("{name}.json"))
    }

    fn remember(&self, kind: &str, namespace: &str, name: &str, obj: Option<&Value>) {
        let path = self.cache_path(kind, namespace, name);
        match obj {
            Some(o) => {
                let write = || -> std::io::Result<()> {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, serde_json::to_vec(o)?)?;
                    // Secrets are cached too: keep them readable by root only.
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
                    std::fs::rename(&tmp, &path)
                };
                if let Err(e) = write() {
                    tracing::debug!(path = %path.display(), error = %e, "caching object");
                }
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    fn recall(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let bytes = std::fs::read(self.cache_path(kind, namespace, name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn collection(kind: &str) -> Option<&'static str> {
    match kind {
        "ConfigMap" => Some("configmaps"),
        "Secret" => Some("secrets"),
        _ => None,
    }
}

#[async_trait::async_trait]
impl super::env::ObjectSource for ApiSource {
    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>, String> {
        let plural = collection(kind).ok_or_else(|| format!("unsupported kind {kind}"))?;
        let path = format!("/api/v1/namespaces/{namespace}/{plural}/{name}");
        let answer = tokio::time::timeout(Duration::from_secs(10), self.client.get(&path)).await;
        match answer {
            Ok(Ok(obj)) => {
                self.remember(kind, namespace, name, obj.as_ref());
                Ok(obj)
            }
            Ok(Err(e @ ClientError::Status { .. })) => Err(e.to_string()),
            Ok(Err(e)) => self
                .recall(kind, namespace, name)
                .map(Some)
                .ok_or_else(|| e.to_string()),
            Err(_) => self
                .recall(kind, namespace, name)
                .map(Some)
                .ok_or_else(|| format!("{kind} {namespace}/{name}: the API server did not answer")),
        }
    }

    async fn list_services(&self, namespace: &str) -> Result<Vec<Value>, String> {
        Ok(self
            .services
            .snapshot()
            .into_iter()
            .filter(|s| s.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace))
            .collect())
    }
}
