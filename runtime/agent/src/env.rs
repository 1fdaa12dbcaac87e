//! A container's environment as the kubelet builds it: Service links, `envFrom`, then `env`
//! (plain values with `$(VAR)` expansion, and values from the pod's fields, the container's
//! resources, ConfigMaps and Secrets).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use serde_json::Value;

use super::spec::expand;
use cairn_wire::quantity::parse_quantity;

/// Where ConfigMaps, Secrets and Services come from (the API, or a cache of it when offline).
#[async_trait::async_trait]
pub trait ObjectSource: Send + Sync {
    /// `kind` is `ConfigMap` or `Secret`; `Ok(None)` when the object does not exist.
    async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>, String>;
    async fn list_services(&self, namespace: &str) -> Result<Vec<Value>, String>;
}

/// What the pod's fields cannot tell: where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub node_name: String,
    pub host_ip: String,
    pub pod_ip: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("unsupported fieldPath: {0}")]
    UnsupportedField(String),
    #[error("unsupported container resource: {0}")]
    UnsupportedResource(String),
    #[error("no container named {0} in the pod")]
    UnknownContainer(String),
    #[error("invalid quantity {0:?}")]
    InvalidQuantity(String),
    #[error("reading {what}: {message}")]
    Source { what: String, message: String },
    #[error("parsing {what}: {source}")]
    Parse {
        what: String,
        source: serde_json::Error,
    },
}

/// The environment of `container` in `pod`, in definition order (a later definition of a name
/// replaces the earlier value in place).
pub async fn resolve(
    pod: &Pod,
    container: &Container,
    src: &dyn ObjectSource,
    node: &NodeFacts,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let service_env = service_env(pod, src).await?;
    let mut env = EnvList::default();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            match get_config_map(src, &namespace, &r.name).await? {
                Some(cm) => config_map_strings(&cm),
                None if r.optional.unwrap_or(false) => continue,
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        } else if let Some(r) = &from.secret_ref {
            match get_secret(src, &namespace, &r.name).await? {
                Some(s) => secret_strings(&s),
                None if r.optional.unwrap_or(false) => continue,
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            let name = format!("{prefix}{k}");
            if !is_env_var_name(&name) {
                tracing::info!(pod = ?pod.metadata.name, key = %name, "skipping invalid environment variable name from envFrom");
                continue;
            }
            env.set(name, v);
        }
    }

    for var in container.env.iter().flatten() {
        let plain = var.value.clone().unwrap_or_default();
        let value = if !plain.is_empty() {
            // Later vars see earlier ones, and Service links where nothing else defined a name.
            let mut scope = service_env.clone();
            scope.extend(env.0.iter().cloned());
            expand(&plain, &scope)
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field_ref_value(pod, node, &f.field_path)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_field_value(pod, container, r)?
            } else if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                match get_config_map(src, &namespace, &r.name).await? {
                    None if optional => continue,
                    None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
                    Some(cm) => match config_map_strings(&cm).remove(&r.key) {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(EnvError::ConfigMapKeyNotFound {
                                key: r.key.clone(),
                                namespace: namespace.clone(),
                                name: r.name.clone(),
                            })
                        }
                    },
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                match get_secret(src, &namespace, &r.name).await? {
                    None if optional => continue,
                    None => return Err(EnvError::SecretNotFound(r.name.clone())),
                    Some(s) => match secret_strings(&s).remove(&r.key) {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(EnvError::SecretKeyNotFound {
                                key: r.key.clone(),
                                namespace: namespace.clone(),
                                name: r.name.clone(),
                            })
                        }
                    },
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(var.name.clone(), value);
    }

    for (k, v) in service_env {
        if !env.contains(&k) {
            env.set(k, v);
        }
    }
    Ok(env.0)
}

/// A name-unique list that keeps first-definition order.
#[derive(Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, name: String, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// The kubelet's rule for names taken from `envFrom`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    let valid_rest = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_') => chars.all(valid_rest),
        _ => false,
    }
}

pub(crate) async fn get_config_map(
    src: &dyn ObjectSource,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigMap>, EnvError> {
    get_typed(src, "ConfigMap", namespace, name).await
}

pub(crate) async fn get_secret(
    src: &dyn ObjectSource,
    namespace: &str,
    name: &str,
) -> Result<Option<Secret>, EnvError> {
    get_typed(src, "Secret", namespace, name).await
}

async fn get_typed<T: serde::de::DeserializeOwned>(
    src: &dyn ObjectSource,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<T>, EnvError> {
    let what = format!("{kind} {namespace}/{name}");
    let Some(obj) = src
        .get(kind, namespace, name)
        .await
        .map_err(|message| EnvError::Source {
            what: what.clone(),
            message,
        })?
    else {
        return Ok(None);
    };
    serde_json::from_value(obj)
        .map(Some)
        .map_err(|source| EnvError::Parse { what, source })
}

/// A ConfigMap's text data (binaryData is only for volumes).
pub(crate) fn config_map_strings(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.data.clone().unwrap_or_default()
}

fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    secret_bytes(s)
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// A Secret's decoded data; `stringData` counts too, in case the server did not fold it in.
pub(crate) fn secret_bytes(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// The value of a downward-API field path, as the kubelet gives it to env vars and files.
pub fn field_ref_value(pod: &Pod, node: &NodeFacts, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    if let Some((map, key)) = subscript(path) {
        let source = match map {
            "metadata.labels" => &meta.labels,
            "metadata.annotations" => &meta.annotations,
            _ => return Err(EnvError::UnsupportedField(path.to_string())),
        };
        return Ok(source
            .as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default());
    }
    // The IP the network plugin just gave the pod beats a status that may predate it.
    let pod_ips = || -> Vec<String> {
        match &node.pod_ip {
            Some(ip) => vec![ip.clone()],
            None => pod
                .status
                .iter()
                .flat_map(|s| s.pod_ips.iter().flatten())
                .map(|ip| ip.ip.clone())
                .collect(),
        }
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => node.host_ip.clone(),
        "status.hostIPs" => node.host_ip.clone(),
        "status.podIP" => pod_ips().into_iter().next().unwrap_or_default(),
        "status.podIPs" => pod_ips().join(","),
        _ => return Err(EnvError::UnsupportedField(path.to_string())),
    })
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`).
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (map, rest) = path.split_once('[')?;
    let key = rest.strip_suffix(']')?;
    let key = key
        .strip_prefix('\'')
        .and_then(|k| k.strip_suffix('\''))
        .or_else(|| key.strip_prefix('"').and_then(|k| k.strip_suffix('"')))?;
    Some((map, key))
}

/// The kubelet's `k="v"` lines, sorted by key, values quoted as Go's `%q` does.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `resourceFieldRef` for `container` (or the one it names), rounded up in units of the
/// divisor; an unset limit reads as the node's capacity, as the kubelet does.
pub fn resource_field_value(
    pod: &Pod,
    container: &Container,
    selector: &k8s_openapi::api::core::v1::ResourceFieldSelector,
) -> Result<String, EnvError> {
    let target = match selector.container_name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) if name != container.name => pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| EnvError::UnknownContainer(name.to_string()))?,
        _ => container,
    };
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::UnsupportedResource(selector.resource.clone()))?;
    let resources = target.resources.as_ref();
    let map = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(EnvError::UnsupportedResource(selector.resource.clone())),
    };
    let milli = match map.and_then(|m| m.get(resource)) {
        Some(q) => parse_quantity(&q.0).ok_or_else(|| EnvError::InvalidQuantity(q.0.clone()))?,
        None if kind == "limits" => node_capacity_milli(resource)
            .ok_or_else(|| EnvError::UnsupportedResource(selector.resource.clone()))?,
        None => 0,
    };
    let divisor = match &selector.divisor {
        Some(d) => parse_quantity(&d.0).ok_or_else(|| EnvError::InvalidQuantity(d.0.clone()))?,
        None => 1000,
    };
    if divisor <= 0 {
        return Err(EnvError::InvalidQuantity(
            selector
                .divisor
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
        ));
    }
    let value = match resource {
        "cpu" => ceil_div(milli, divisor),
        // Memory and storage count whole bytes before dividing.
        "memory" | "ephemeral-storage" => ceil_div(ceil_div(milli, 1000) * 1000, divisor),
        _ if resource.starts_with("hugepages-") => ceil_div(milli, divisor),
        _ => return Err(EnvError::UnsupportedResource(selector.resource.clone())),
    };
    Ok(value.to_string())
}

fn ceil_div(a: i128, b: i128) -> i128 {
    (a + b - 1).div_euclid(b)
}

/// The node's capacity for `resource`, in thousandths of its unit.
fn node_capacity_milli(resource: &str) -> Option<i128> {
    match resource {
        "cpu" => std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as i128 * 1000),
        "memory" => {
            // SAFETY: sysinfo only writes into the zeroed struct we pass.
            let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
            if unsafe { libc::sysinfo(&mut info) } != 0 {
                return None;
            }
            Some(info.totalram as i128 * i128::from(info.mem_unit) * 1000)
        }
        "ephemeral-storage" => {
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            let root = c"/";
            // SAFETY: a NUL-terminated path and a zeroed struct statvfs fills in.
            if unsafe { libc::statvfs(root.as_ptr(), &mut st) } != 0 {
                return None;
            }
            Some(st.f_blocks as i128 * st.f_frsize as i128 * 1000)
        }
        _ => None,
    }
}

/// The kubelet's Service links: `<NAME>_SERVICE_HOST`, `_SERVICE_PORT[_<PORT>]` and the Docker
/// link variables, for the namespace's Services (when `enableServiceLinks`, the default) and
/// always for the `kubernetes` Service of `default`.
async fn service_env(pod: &Pod, src: &dyn ObjectSource) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let list = |ns: String| async move {
        let raw = src
            .list_services(&ns)
            .await
            .map_err(|message| EnvError::Source {
                what: format!("services in {ns}"),
                message,
            })?;
        Ok::<Vec<Service>, EnvError>(
            raw.into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect(),
        )
    };
    let defaults = list("default".to_string()).await?;
    let local = if !links {
        Vec::new()
    } else if namespace == "default" {
        defaults.clone()
    } else {
        list(namespace.clone()).await?
    };
    let mut chosen: BTreeMap<String, Service> = BTreeMap::new();
    for svc in defaults {
        if svc.metadata.name.as_deref() == Some("kubernetes") {
            chosen.insert("kubernetes".into(), svc);
        }
    }
    for svc in local {
        if let Some(name) = svc.metadata.name.clone() {
            chosen.insert(name, svc);
        }
    }
    Ok(chosen.values().flat_map(service_vars).collect())
}

fn env_name(s: &str) -> String {
    s.replace('-', "_").to_ascii_uppercase()
}

fn service_vars(svc: &Service) -> Vec<(String, String)> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    if ip.is_empty() || ip == "None" || ports.is_empty() {
        return Vec::new();
    }
    let prefix = env_name(svc.metadata.name.as_deref().unwrap_or_default());
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.clone()),
        (format!("{prefix}_SERVICE_PORT"), ports[0].port.to_string()),
    ];
    for p in &ports {
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name(name)),
                p.port.to_string(),
            ));
        }
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let lower = proto.to_ascii_lowercase();
        let url = format!("{lower}://{host}:{}", p.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
        out.push((pp.clone(), url));
        out.push((format!("{pp}_PROTO"), lower));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.clone()));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Objects in memory, keyed by (kind, namespace, name).
    #[derive(Default)]
    pub(crate) struct MemSource {
        pub objects: Mutex<HashMap<(String, String, String), Value>>,
        pub services: Vec<Value>,
    }

    impl MemSource {
        pub fn with(objects: Vec<Value>) -> MemSource {
            let src = MemSource::default();
            for o in objects {
                src.put(o);
            }
            src
        }

        pub fn put(&self, o: Value) {
            let key = (
                o["kind"].as_str().unwrap_or_default().to_string(),
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            self.objects.lock().expect("lock").insert(key, o);
        }
    }

    #[async_trait::async_trait]
    impl ObjectSource for MemSource {
        async fn get(&self, kind: &str, ns: &str, name: &str) -> Result<Option<Value>, String> {
            let key = (kind.to_string(), ns.to_string(), name.to_string());
            Ok(self.objects.lock().expect("lock").get(&key).cloned())
        }
        async fn list_services(&self, ns: &str) -> Result<Vec<Value>, String> {
            Ok(self
                .services
                .iter()
                .filter(|s| s["metadata"]["namespace"] == ns)
                .cloned()
                .collect())
        }
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "node1".into(),
            host_ip: "10.0.0.5".into(),
            pod_ip: Some("10.42.0.7".into()),
        }
    }

    fn objects() -> Vec<Value> {
        vec![
            json!({"kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "app"},
                   "data": {"MODE": "prod", "LEVEL": "3", "bad key": "x", "1st": "y"}}),
            json!({"kind": "Secret", "metadata": {"name": "creds", "namespace": "app"},
                   "data": {"password": "czNjcjN0", "user": "YWRtaW4="}}),
        ]
    }

    async fn env_of(p: &Pod, src: &MemSource) -> Result<Vec<(String, String)>, EnvError> {
        let c = &p.spec.as_ref().expect("spec").containers[0];
        resolve(p, c, src, &node()).await
    }

    fn app_pod(container: Value) -> Pod {
        pod(json!({
            "metadata": {"name": "web-1", "namespace": "app", "uid": "u-1",
                         "labels": {"app": "web", "tier": "front"},
                         "annotations": {"note": "say \"hi\"\n"}},
            "spec": {"nodeName": "node1", "serviceAccountName": "sa", "enableServiceLinks": false,
                     "containers": [container]}}))
    }

    fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn values_field_refs_and_expansion() {
        let p = app_pod(json!({"name": "c", "image": "x", "env": [
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
            {"name": "GREETING", "value": "hello $(POD) in $(NS), $$(POD) $(LATER)"},
            {"name": "LATER", "value": "x"},
            {"name": "EMPTY"},
        ]}));
        let env = env_of(&p, &MemSource::default()).await.expect("env");
        let want = [
            ("POD", "web-1"),
            ("NS", "app"),
            ("UID", "u-1"),
            ("APP", "web"),
            ("NOTE", "say \"hi\"\n"),
            ("NODE", "node1"),
            ("SA", "sa"),
            ("HOST_IP", "10.0.0.5"),
            ("POD_IP", "10.42.0.7"),
            ("POD_IPS", "10.42.0.7"),
            ("GREETING", "hello web-1 in app, $(POD) $(LATER)"),
            ("LATER", "x"),
            ("EMPTY", ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(env, want);
    }

    #[tokio::test]
    async fn config_maps_and_secrets() {
        let p = app_pod(json!({"name": "c", "image": "x",
        "envFrom": [{"configMapRef": {"name": "cfg"}},
                    {"secretRef": {"name": "creds"}, "prefix": "DB_"},
                    {"configMapRef": {"name": "absent", "optional": true}}],
        "env": [
            {"name": "MODE", "value": "override"},
            {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "LEVEL"}}},
            {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}},
            {"name": "OPT2", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}},
        ]}));
        let env = env_of(&p, &MemSource::with(objects())).await.expect("env");
        assert_eq!(lookup(&env, "MODE"), Some("override"));
        assert_eq!(lookup(&env, "LEVEL"), Some("3"));
        assert_eq!(lookup(&env, "DB_password"), Some("s3cr3t"));
        assert_eq!(lookup(&env, "DB_user"), Some("admin"));
        assert_eq!(lookup(&env, "PASS"), Some("s3cr3t"));
        assert_eq!(lookup(&env, "LVL"), Some("3"));
        // Invalid names from envFrom are skipped, optional misses leave nothing.
        assert_eq!(lookup(&env, "bad key"), None);
        assert_eq!(lookup(&env, "1st"), None);
        assert_eq!(lookup(&env, "OPT"), None);
        assert_eq!(lookup(&env, "OPT2"), None);
    }

    #[tokio::test]
    async fn missing_references_are_named_errors() {
        let src = MemSource::with(objects());
        let cases = [
            (
                json!({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}),
                "couldn't find key k in ConfigMap app/cfg",
            ),
            (
                json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}),
                "couldn't find key k in Secret app/creds",
            ),
            (
                json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}),
                "secret \"x\" not found",
            ),
            (
                json!({"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}),
                "unsupported fieldPath: spec.bogus",
            ),
        ];
        for (var, want) in cases {
            let p = app_pod(json!({"name": "c", "image": "x", "env": [var]}));
            let err = env_of(&p, &src).await.expect_err("must fail");
            assert_eq!(err.to_string(), want);
        }
        let p = app_pod(json!({"name": "c", "image": "x",
            "envFrom": [{"secretRef": {"name": "missing"}}]}));
        assert_eq!(
            env_of(&p, &src).await.expect_err("must fail").to_string(),
            "secret \"missing\" not found"
        );
    }

    #[tokio::test]
    async fn resource_field_refs_round_up_by_divisor() {
        let p = app_pod(json!({"name": "c", "image": "x",
        "resources": {"limits": {"cpu": "1500m", "memory": "100Mi"},
                      "requests": {"cpu": "250m", "memory": "1000"}},
        "env": [
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "CPU_LIMIT_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
            {"name": "CPU_REQ", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "MEM_REQ_K", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Ki"}}},
            {"name": "EPH", "valueFrom": {"resourceFieldRef": {"resource": "requests.ephemeral-storage"}}},
        ]}));
        let env = env_of(&p, &MemSource::default()).await.expect("env");
        assert_eq!(lookup(&env, "CPU_LIMIT"), Some("2"));
        assert_eq!(lookup(&env, "CPU_LIMIT_M"), Some("1500"));
        assert_eq!(lookup(&env, "CPU_REQ"), Some("1"));
        assert_eq!(lookup(&env, "MEM_MI"), Some("100"));
        assert_eq!(lookup(&env, "MEM_REQ_K"), Some("1"));
        assert_eq!(lookup(&env, "EPH"), Some("0"));

        // No limit: the node's capacity stands in.
        let p = app_pod(json!({"name": "c", "image": "x", "env": [
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}));
        let env = env_of(&p, &MemSource::default()).await.expect("env");
        let cpus = std::thread::available_parallelism()
            .expect("cpus")
            .get()
            .to_string();
        assert_eq!(lookup(&env, "CPUS"), Some(cpus.as_str()));
    }

    fn service(ns: &str, name: &str, ip: &str, ports: Value) -> Value {
        json!({"kind": "Service", "metadata": {"name": name, "namespace": ns},
               "spec": {"clusterIP": ip, "ports": ports}})
    }

    #[tokio::test]
    async fn service_links() {
        let src = MemSource {
            services: vec![
                service(
                    "default",
                    "kubernetes",
                    "10.43.0.1",
                    json!([{"name": "https", "port": 443}]),
                ),
                service("default", "other", "10.43.0.9", json!([{"port": 1}])),
                service(
                    "app",
                    "redis-primary",
                    "10.43.0.20",
                    json!([{"port": 6379}, {"name": "metrics", "port": 9121, "protocol": "TCP"}]),
                ),
                service("app", "headless", "None", json!([{"port": 80}])),
            ],
            ..Default::default()
        };
        let p = pod(json!({"metadata": {"name": "p", "namespace": "app"},
            "spec": {"containers": [{"name": "c", "image": "x", "env": [
                {"name": "REDIS", "value": "$(REDIS_PRIMARY_SERVICE_HOST):$(REDIS_PRIMARY_SERVICE_PORT)"},
                {"name": "KUBERNETES_SERVICE_HOST", "value": "overridden"}]}]}}));
        let env = env_of(&p, &src).await.expect("env");
        assert_eq!(lookup(&env, "REDIS"), Some("10.43.0.20:6379"));
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), Some("overridden"));
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(
            lookup(&env, "REDIS_PRIMARY_SERVICE_PORT_METRICS"),
            Some("9121")
        );
        assert_eq!(
            lookup(&env, "REDIS_PRIMARY_PORT"),
            Some("tcp://10.43.0.20:6379")
        );
        assert_eq!(
            lookup(&env, "REDIS_PRIMARY_PORT_9121_TCP"),
            Some("tcp://10.43.0.20:9121")
        );
        assert_eq!(
            lookup(&env, "REDIS_PRIMARY_PORT_9121_TCP_PROTO"),
            Some("tcp")
        );
        assert_eq!(
            lookup(&env, "REDIS_PRIMARY_PORT_9121_TCP_ADDR"),
            Some("10.43.0.20")
        );
        assert_eq!(lookup(&env, "HEADLESS_SERVICE_HOST"), None);
        assert_eq!(
            lookup(&env, "OTHER_SERVICE_HOST"),
            None,
            "other namespaces do not link"
        );

        // enableServiceLinks=false keeps only the API server's.
        let env = env_of(&app_pod(json!({"name": "c", "image": "x"})), &src)
            .await
            .expect("env");
        assert_eq!(lookup(&env, "KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(lookup(&env, "REDIS_PRIMARY_SERVICE_HOST"), None);
    }

    #[test]
    fn labels_format_like_the_kubelet() {
        let map: BTreeMap<String, String> = [("b", "two\t\"q\""), ("a", "one")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(format_map(Some(&map)), "a=\"one\"\nb=\"two\\t\\\"q\\\"\"");
        assert_eq!(format_map(None), "");
    }

    #[test]
    fn env_var_names() {
        for ok in ["A", "a_b", "_x", "-x", ".x", "A.B-C_1"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a b", "a=b", "ä"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }
}
