//! A pod's volumes on the node, laid out as the kubelet lays them out:
//! `<pods_dir>/<pod uid>/volumes/kubernetes.io~<plugin>/<name>`.
//!
//! ConfigMap, Secret, downward-API and projected volumes are written the kubelet's atomic way:
//! the files live in a hidden timestamped directory, `..data` is a symlink to it, and each
//! visible name is a symlink through `..data`, so one rename switches a whole update at once.
//! Secrets and projected volumes live on tmpfs so their contents never touch the disk.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume, VolumeProjection,
};

use super::env::{self, NodeFacts, ObjectSource};
use super::spec::{expand, MountKind, MountSpec};
use cairn_wire::quantity::parse_quantity;

const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
const CONFIG_MAP: &str = "kubernetes.io~configmap";
const SECRET: &str = "kubernetes.io~secret";
const DOWNWARD_API: &str = "kubernetes.io~downward-api";
const PROJECTED: &str = "kubernetes.io~projected";

/// Plugins whose contents come from the API: always mounted read-only, as the kubelet does.
const API_DATA_PLUGINS: &[&str] = &[CONFIG_MAP, SECRET, DOWNWARD_API, PROJECTED];

const DEFAULT_FILE_MODE: u32 = 0o644;
const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {source}")]
    Io {
        volume: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Path {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hostPath type check failed: {path} is not a {expected}")]
    HostPathType { path: String, expected: String },
    #[error("hostPath volume {volume}: unknown type {kind:?}")]
    HostPathUnknownType { volume: String, kind: String },
    #[error("volume {volume}: {kind} volumes are not supported on this node")]
    Unsupported { volume: String, kind: String },
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKeyNotFound(String),
    #[error("secret references non-existent secret key: {0}")]
    SecretKeyNotFound(String),
    #[error("volume {volume}: invalid path {path:?}: must be relative and may not contain '..'")]
    InvalidPath { volume: String, path: String },
    #[error("volume {volume}: {source}")]
    Field {
        volume: String,
        source: env::EnvError,
    },
    #[error("volume {volume}: resourceFieldRef needs a containerName")]
    NoContainerName { volume: String },
    #[error("volume {volume}: invalid sizeLimit {value:?}")]
    InvalidSize { volume: String, value: String },
    #[error("unable to find volume {0:?} for the container's volumeMounts")]
    UnknownVolume(String),
    #[error("subPath {path:?} of volume {volume} escapes the volume")]
    SubPathEscapes { volume: String, path: String },
    #[error("mounting tmpfs at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is still mounted; not removing it")]
    StillMounted(PathBuf),
}

/// `<pods_dir>/<uid>/volumes`.
pub fn volumes_dir(pods_dir: &Path, pod_uid: &str) -> PathBuf {
    pods_dir.join(pod_uid).join("volumes")
}

/// Creates (or brings up to date) every volume of `pod`; the map gives each volume's host path.
pub async fn setup(
    pods_dir: &Path,
    pod: &Pod,
    src: &dyn ObjectSource,
    node: &NodeFacts,
) -> Result<HashMap<String, PathBuf>, VolumeError> {
    let root = volumes_dir(pods_dir, pod.metadata.uid.as_deref().unwrap_or_default());
    let fs_group = fs_group(pod);
    let mut out = HashMap::new();
    for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let path = setup_volume(&root, pod, vol, src, node, fs_group).await?;
        out.insert(vol.name.clone(), path);
    }
    Ok(out)
}

/// Re-writes the ConfigMap, Secret, downward-API and projected volumes of an already set-up
/// pod from the objects' current contents; unchanged volumes are left alone.
pub async fn refresh(
    pods_dir: &Path,
    pod: &Pod,
    src: &dyn ObjectSource,
    node: &NodeFacts,
) -> Result<(), VolumeError> {
    let root = volumes_dir(pods_dir, pod.metadata.uid.as_deref().unwrap_or_default());
    let fs_group = fs_group(pod);
    for vol in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(plugin) = api_plugin(vol) else {
            continue;
        };
        let dir = root.join(plugin).join(&vol.name);
        // Only volumes setup made; a refresh must not race a first setup into existence.
        if dir.is_dir() {
            write_api_volume(&dir, pod, vol, src, node, fs_group).await?;
        }
    }
    Ok(())
}

/// Unmounts everything under the pod's directory and removes its volumes, leaving nothing.
pub fn teardown(pods_dir: &Path, pod_uid: &str) -> Result<(), VolumeError> {
    let pod_dir = pods_dir.join(pod_uid);
    unmount_all_under(&pod_dir)?;
    let dir = volumes_dir(pods_dir, pod_uid);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VolumeError::Path { path: dir, source }),
    }
}

/// The container's volumeMounts as bind mounts of the volumes' host paths.
pub fn mounts_for(
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<MountSpec>, VolumeError> {
    mounts_for_with_env(container, volumes, &[])
}

/// [`mounts_for`], expanding `subPathExpr` from the container's resolved environment.
pub fn mounts_for_with_env(
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
    env: &[(String, String)],
) -> Result<Vec<MountSpec>, VolumeError> {
    let mut out = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&vm.name)
            .ok_or_else(|| VolumeError::UnknownVolume(vm.name.clone()))?;
        let sub = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(e)) if !e.is_empty() => expand(e, env),
            _ => String::new(),
        };
        let source = if sub.is_empty() {
            base.clone()
        } else {
            sub_path(&vm.name, base, &sub)?
        };
        let api_data = base
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .is_some_and(|n| API_DATA_PLUGINS.contains(&n));
        out.push(MountSpec {
            destination: vm.mount_path.clone(),
            source,
            read_only: vm.read_only.unwrap_or(false) || api_data,
            kind: MountKind::Bind,
        });
    }
    Ok(out)
}

/// `base/sub`, made a directory if missing (the kubelet does), and checked to stay inside
/// `base` after symlinks.
fn sub_path(volume: &str, base: &Path, sub: &str) -> Result<PathBuf, VolumeError> {
    check_relative(volume, sub)?;
    let path = base.join(sub);
    if std::fs::symlink_metadata(&path).is_err() {
        std::fs::create_dir_all(&path).map_err(|source| VolumeError::Path {
            path: path.clone(),
            source,
        })?;
    }
    let real = canonical(&path)?;
    if !real.starts_with(canonical(base)?) {
        return Err(VolumeError::SubPathEscapes {
            volume: volume.to_string(),
            path: sub.to_string(),
        });
    }
    Ok(path)
}

fn canonical(p: &Path) -> Result<PathBuf, VolumeError> {
    p.canonicalize().map_err(|source| VolumeError::Path {
        path: p.to_path_buf(),
        source,
    })
}

/// Relative, non-empty, and no `..` anywhere: item paths and subPaths may not climb out.
fn check_relative(volume: &str, p: &str) -> Result<(), VolumeError> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && !p.split('/').any(|part| part.starts_with(".."));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::InvalidPath {
            volume: volume.to_string(),
            path: p.to_string(),
        })
    }
}

fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.fs_group)
        .and_then(|g| u32::try_from(g).ok())
}

fn api_plugin(vol: &Volume) -> Option<&'static str> {
    if vol.config_map.is_some() {
        Some(CONFIG_MAP)
    } else if vol.secret.is_some() {
        Some(SECRET)
    } else if vol.downward_api.is_some() {
        Some(DOWNWARD_API)
    } else if vol.projected.is_some() {
        Some(PROJECTED)
    } else {
        None
    }
}

async fn setup_volume(
    root: &Path,
    pod: &Pod,
    vol: &Volume,
    src: &dyn ObjectSource,
    node: &NodeFacts,
    fs_group: Option<u32>,
) -> Result<PathBuf, VolumeError> {
    let io = |source| VolumeError::Io {
        volume: vol.name.clone(),
        source,
    };
    if let Some(hp) = &vol.host_path {
        check_host_path(&vol.name, &hp.path, hp.type_.as_deref().unwrap_or(""))?;
        return Ok(PathBuf::from(&hp.path));
    }
    if let Some(ed) = &vol.empty_dir {
        let dir = root.join(EMPTY_DIR).join(&vol.name);
        std::fs::create_dir_all(&dir).map_err(io)?;
        if ed.medium.as_deref() == Some("Memory") && !is_mount_point(&dir) {
            let size = match &ed.size_limit {
                Some(q) => Some(parse_quantity(&q.0).map(|m| (m + 999) / 1000).ok_or_else(
                    || VolumeError::InvalidSize {
                        volume: vol.name.clone(),
                        value: q.0.clone(),
                    },
                )?),
                None => None,
            };
            mount_tmpfs(&dir, size)?;
        }
        // World-writable like the kubelet's, whatever the umask; setgid keeps fsGroup on new files.
        let mode = if fs_group.is_some() { 0o2777 } else { 0o777 };
        set_owner_and_mode(&dir, fs_group, mode).map_err(io)?;
        return Ok(dir);
    }
    let Some(plugin) = api_plugin(vol) else {
        return Err(VolumeError::Unsupported {
            volume: vol.name.clone(),
            kind: volume_kind(vol),
        });
    };
    let dir = root.join(plugin).join(&vol.name);
    std::fs::create_dir_all(&dir).map_err(io)?;
    if matches!(plugin, SECRET | PROJECTED) && !is_mount_point(&dir) {
        mount_tmpfs(&dir, None)?;
    }
    write_api_volume(&dir, pod, vol, src, node, fs_group).await?;
    Ok(dir)
}

/// The name of a volume source this node does not handle, for the error message.
fn volume_kind(vol: &Volume) -> String {
    serde_json::to_value(vol)
        .ok()
        .and_then(|v| {
            v.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The kubelet's hostPath type checks; the `*OrCreate` types create what is missing.
fn check_host_path(volume: &str, path: &str, kind: &str) -> Result<(), VolumeError> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p);
    let fail = |expected: &str| VolumeError::HostPathType {
        path: path.to_string(),
        expected: expected.to_string(),
    };
    let path_err = |source| VolumeError::Path {
        path: p.to_path_buf(),
        source,
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(fail("directory")),
            Err(_) => {
                std::fs::create_dir_all(p).map_err(path_err)?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                    .map_err(path_err)
            }
        },
        "Directory" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(fail("directory")),
        },
        "FileOrCreate" => match meta {
            Ok(m) if !m.is_dir() => Ok(()),
            Ok(_) => Err(fail("file")),
            Err(_) => {
                // Like the kubelet: the file, not its parents.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(path_err)?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
                    .map_err(path_err)
            }
        },
        "File" => match meta {
            Ok(m) if !m.is_dir() => Ok(()),
            _ => Err(fail("file")),
        },
        "Socket" => match meta {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            _ => Err(fail("socket")),
        },
        "CharDevice" => match meta {
            Ok(m) if m.file_type().is_char_device() => Ok(()),
            _ => Err(fail("character device")),
        },
        "BlockDevice" => match meta {
            Ok(m) if m.file_type().is_block_device() => Ok(()),
            _ => Err(fail("block device")),
        },
        other => Err(VolumeError::HostPathUnknownType {
            volume: volume.to_string(),
            kind: other.to_string(),
        }),
    }
}

/// One file of an atomically written volume.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileData {
    content: Vec<u8>,
    mode: u32,
}

/// Relative path → file.
type Payload = BTreeMap<String, FileData>;

async fn write_api_volume(
    dir: &Path,
    pod: &Pod,
    vol: &Volume,
    src: &dyn ObjectSource,
    node: &NodeFacts,
    fs_group: Option<u32>,
) -> Result<(), VolumeError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = &vol.name;
    let payload = if let Some(cm) = &vol.config_map {
        let mode = mode_of(cm.default_mode);
        config_map_payload(
            src,
            name,
            &namespace,
            &cm.name,
            cm.items.as_deref(),
            cm.optional,
            mode,
        )
        .await?
    } else if let Some(s) = &vol.secret {
        let mode = mode_of(s.default_mode);
        let secret_name = s.secret_name.clone().unwrap_or_default();
        secret_payload(
            src,
            name,
            &namespace,
            &secret_name,
            s.items.as_deref(),
            s.optional,
            mode,
        )
        .await?
    } else if let Some(d) = &vol.downward_api {
        downward_payload(name, pod, node, d.items.as_deref(), mode_of(d.default_mode))?
    } else if let Some(p) = &vol.projected {
        projected_payload(
            name,
            &namespace,
            pod,
            node,
            src,
            p.sources.as_deref().unwrap_or_default(),
            mode_of(p.default_mode),
        )
        .await?
    } else {
        return Ok(());
    };
    write_atomic(dir, &payload, fs_group).map_err(|source| VolumeError::Io {
        volume: name.clone(),
        source,
    })
}

fn mode_of(mode: Option<i32>) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map_or(DEFAULT_FILE_MODE, |m| m & 0o777)
}

/// `items` picked out of `data` (all keys when there are none), each at its path and mode.
fn keyed_payload(
    volume: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    missing: impl Fn(&str) -> VolumeError,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                check_relative(volume, &k)?;
                out.insert(
                    k,
                    FileData {
                        content: v,
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let content = data.get(&item.key).ok_or_else(|| missing(&item.key))?;
                check_relative(volume, &item.path)?;
                out.insert(
                    item.path.clone(),
                    FileData {
                        content: content.clone(),
                        mode: item.mode.map_or(default_mode, |m| mode_of(Some(m))),
                    },
                );
            }
        }
    }
    Ok(out)
}

async fn config_map_payload(
    src: &dyn ObjectSource,
    volume: &str,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<Payload, VolumeError> {
    let field = |source| VolumeError::Field {
        volume: volume.to_string(),
        source,
    };
    let Some(cm) = env::get_config_map(src, namespace, name)
        .await
        .map_err(field)?
    else {
        if optional.unwrap_or(false) {
            return Ok(Payload::new());
        }
        return Err(VolumeError::ConfigMapNotFound(name.to_string()));
    };
    let mut data: BTreeMap<String, Vec<u8>> = env::config_map_strings(&cm)
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    let lenient = optional.unwrap_or(false);
    let items = present_items(items, &data, lenient);
    keyed_payload(volume, data, items.as_deref(), mode, |k| {
        VolumeError::ConfigMapKeyNotFound(k.to_string())
    })
}

async fn secret_payload(
    src: &dyn ObjectSource,
    volume: &str,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<Payload, VolumeError> {
    let field = |source| VolumeError::Field {
        volume: volume.to_string(),
        source,
    };
    let Some(secret) = env::get_secret(src, namespace, name).await.map_err(field)? else {
        if optional.unwrap_or(false) {
            return Ok(Payload::new());
        }
        return Err(VolumeError::SecretNotFound(name.to_string()));
    };
    let data = env::secret_bytes(&secret);
    let items = present_items(items, &data, optional.unwrap_or(false));
    keyed_payload(volume, data, items.as_deref(), mode, |k| {
        VolumeError::SecretKeyNotFound(k.to_string())
    })
}

/// For optional sources a missing key is skipped rather than an error.
fn present_items(
    items: Option<&[KeyToPath]>,
    data: &BTreeMap<String, Vec<u8>>,
    optional: bool,
) -> Option<Vec<KeyToPath>> {
    let items = items?;
    Some(
        items
            .iter()
            .filter(|i| !optional || data.contains_key(&i.key))
            .cloned()
            .collect(),
    )
}

fn downward_payload(
    volume: &str,
    pod: &Pod,
    node: &NodeFacts,
    items: Option<&[DownwardAPIVolumeFile]>,
    default_mode: u32,
) -> Result<Payload, VolumeError> {
    let field = |source| VolumeError::Field {
        volume: volume.to_string(),
        source,
    };
    let mut out = Payload::new();
    for item in items.unwrap_or_default() {
        check_relative(volume, &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            env::field_ref_value(pod, node, &f.field_path).map_err(field)?
        } else if let Some(r) = &item.resource_field_ref {
            let name = r
                .container_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| VolumeError::NoContainerName {
                    volume: volume.to_string(),
                })?;
            let container = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name)
                .ok_or_else(|| field(env::EnvError::UnknownContainer(name.to_string())))?;
            env::resource_field_value(pod, container, r).map_err(field)?
        } else {
            continue;
        };
        out.insert(
            item.path.clone(),
            FileData {
                content: value.into_bytes(),
                mode: item.mode.map_or(default_mode, |m| mode_of(Some(m))),
            },
        );
    }
    Ok(out)
}

async fn projected_payload(
    volume: &str,
    namespace: &str,
    pod: &Pod,
    node: &NodeFacts,
    src: &dyn ObjectSource,
    sources: &[VolumeProjection],
    mode: u32,
) -> Result<Payload, VolumeError> {
    let mut out = Payload::new();
    for source in sources {
        let part = if let Some(cm) = &source.config_map {
            config_map_payload(
                src,
                volume,
                namespace,
                &cm.name,
                cm.items.as_deref(),
                cm.optional,
                mode,
            )
            .await?
        } else if let Some(s) = &source.secret {
            secret_payload(
                src,
                volume,
                namespace,
                &s.name,
                s.items.as_deref(),
                s.optional,
                mode,
            )
            .await?
        } else if let Some(d) = &source.downward_api {
            downward_payload(volume, pod, node, d.items.as_deref(), mode)?
        } else {
            // Service account tokens and trust bundles need the token API; the files are
            // simply absent until the node gets a source for them.
            tracing::warn!(pod = ?pod.metadata.name, volume, "skipping projected source this node cannot serve");
            continue;
        };
        out.extend(part);
    }
    Ok(out)
}

/// The kubelet's AtomicWriter: files into a fresh hidden directory, `..data` switched to it by
/// a rename, visible names as symlinks through `..data`, then the old generation removed.
fn write_atomic(dir: &Path, payload: &Payload, fs_group: Option<u32>) -> std::io::Result<()> {
    // Group-readable for fsGroup, as SetVolumeOwnership does for read-only volumes.
    let payload: Payload = payload
        .iter()
        .map(|(rel, file)| {
            let mode = if fs_group.is_some() {
                file.mode | 0o440
            } else {
                file.mode
            };
            (
                rel.clone(),
                FileData {
                    content: file.content.clone(),
                    mode,
                },
            )
        })
        .collect();
    let data_link = dir.join(DATA_LINK);
    if let Ok(old) = std::fs::read_link(&data_link) {
        // A generation we cannot read (a crash mid-write) is simply replaced.
        if read_generation(&dir.join(old)).is_ok_and(|current| current == payload) {
            return Ok(());
        }
    }

    let generation = new_generation_name();
    let gen_dir = dir.join(&generation);
    std::fs::create_dir(&gen_dir)?;
    std::fs::set_permissions(&gen_dir, std::fs::Permissions::from_mode(0o755))?;
    for (rel, file) in &payload {
        let path = gen_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &file.content)?;
        set_owner_and_mode(&path, fs_group, file.mode)?;
    }
    if let Some(gid) = fs_group {
        chown_dirs(&gen_dir, gid)?;
    }

    let tmp_link = dir.join(DATA_LINK_TMP);
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&generation, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;

    let visible: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|p| {
            p.split('/')
                .find(|c| !c.is_empty() && *c != ".")
                .map(str::to_string)
        })
        .collect();
    for name in &visible {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            // Hidden: our generations and links; only stale generations go.
            if name != DATA_LINK && name != generation && entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            }
            continue;
        }
        if !visible.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// `..YYYY_MM_DD_HH_MM_SS.<nanos>`, the kubelet's shape, unique per write.
fn new_generation_name() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, m, d) = cairn_wire::time::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "..{y:04}_{m:02}_{d:02}_{:02}_{:02}_{:02}.{:09}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

/// What a generation directory holds, to skip rewriting unchanged contents.
fn read_generation(dir: &Path) -> std::io::Result<Payload> {
    let mut out = Payload::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.insert(
                rel,
                FileData {
                    content: std::fs::read(&path)?,
                    mode: meta.permissions().mode() & 0o777,
                },
            );
        }
    }
    Ok(out)
}

fn set_owner_and_mode(path: &Path, gid: Option<u32>, mode: u32) -> std::io::Result<()> {
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Directories of a generation: group-owned by fsGroup, setgid, group-searchable.
fn chown_dirs(dir: &Path, gid: u32) -> std::io::Result<()> {
    set_owner_and_mode(dir, Some(gid), 0o2755)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_dirs(&entry.path(), gid)?;
        }
    }
    Ok(())
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

fn mount_tmpfs(dir: &Path, size: Option<i128>) -> Result<(), VolumeError> {
    let err = |source| VolumeError::Mount {
        path: dir.to_path_buf(),
        source,
    };
    let target = c_path(dir).map_err(err)?;
    let mut opts = "mode=0755".to_string();
    if let Some(bytes) = size.filter(|b| *b > 0) {
        opts.push_str(&format!(",size={bytes}"));
    }
    let opts = CString::new(opts).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "mount options",
        ))
    })?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Mount points at or below `dir`, from /proc/self/mountinfo.
fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mount_point(dir: &Path) -> bool {
    mount_points_under(dir).iter().any(|p| p == dir)
}

fn unmount_all_under(dir: &Path) -> Result<(), VolumeError> {
    let mut points = mount_points_under(dir);
    // Deepest first; a path mounted twice is unmounted twice.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in &points {
        let target = c_path(p).map_err(|source| VolumeError::Unmount {
            path: p.clone(),
            source,
        })?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(VolumeError::Unmount {
                    path: p.clone(),
                    source: e,
                });
            }
        }
    }
    if let Some(left) = mount_points_under(dir).into_iter().next() {
        return Err(VolumeError::StillMounted(left));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::tests::MemSource;
    use serde_json::{json, Value};
    use std::os::unix::fs::MetadataExt;

    /// A pods dir whose pods are torn down even when a test fails halfway.
    struct PodsDir {
        dir: tempfile::TempDir,
        uids: Vec<&'static str>,
    }

    impl PodsDir {
        fn new(uids: &[&'static str]) -> PodsDir {
            PodsDir {
                dir: tempfile::tempdir().expect("tempdir"),
                uids: uids.to_vec(),
            }
        }
        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for PodsDir {
        fn drop(&mut self) {
            for uid in &self.uids {
                let _ = teardown(self.dir.path(), uid);
            }
            let _ = unmount_all_under(self.dir.path());
        }
    }

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn node() -> NodeFacts {
        NodeFacts {
            node_name: "n1".into(),
            host_ip: "10.0.0.1".into(),
            pod_ip: Some("10.42.0.2".into()),
        }
    }

    fn pod_with(uid: &str, volumes: Value) -> Pod {
        pod(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": uid,
                                "labels": {"app": "web", "z": "last"}},
                   "spec": {"containers": [{"name": "c", "image": "x",
                        "resources": {"limits": {"memory": "64Mi"}}}],
                            "volumes": volumes}}),
        )
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
    }

    fn config_map(data: Value) -> Value {
        json!({"kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "ns"}, "data": data,
               "binaryData": {"blob": "AAEC"}})
    }

    #[tokio::test]
    async fn empty_dirs_on_disk_and_in_memory() {
        let pods = PodsDir::new(&["u1"]);
        let p = pod_with(
            "u1",
            json!([
                {"name": "scratch", "emptyDir": {}},
                {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            ]),
        );
        let vols = setup(pods.path(), &p, &MemSource::default(), &node())
            .await
            .expect("setup");
        let scratch = &vols["scratch"];
        assert_eq!(
            *scratch,
            pods.path()
                .join("u1/volumes/kubernetes.io~empty-dir/scratch")
        );
        assert_eq!(mode(scratch), 0o777);
        let ram = &vols["ram"];
        assert!(is_mount_point(ram), "memory emptyDir is a tmpfs");
        let info = read(Path::new("/proc/self/mountinfo"));
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(ram.to_str().expect("utf8")))
            .expect("mountinfo line");
        assert!(
            line.contains("tmpfs") && line.contains("size=1024k"),
            "{line}"
        );
        // A second setup (restart of the agent) neither fails nor stacks mounts.
        setup(pods.path(), &p, &MemSource::default(), &node())
            .await
            .expect("again");
        assert_eq!(mount_points_under(ram).len(), 1);

        teardown(pods.path(), "u1").expect("teardown");
        assert!(mount_points_under(&pods.path().join("u1")).is_empty());
        assert!(!pods.path().join("u1/volumes").exists());
    }

    #[tokio::test]
    async fn host_path_types_are_checked() {
        let pods = PodsDir::new(&["u2"]);
        let tmp = tempfile::tempdir().expect("tempdir");
        let new_dir = tmp.path().join("made/here");
        let new_file = tmp.path().join("f.txt");
        let sock = tmp.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
        let s = |p: &Path| p.to_str().expect("utf8").to_string();
        let ok_cases = [
            (s(&new_dir), "DirectoryOrCreate"),
            (s(&new_dir), "Directory"),
            (s(&new_file), "FileOrCreate"),
            (s(&new_file), "File"),
            (s(&sock), "Socket"),
            ("/dev/null".to_string(), "CharDevice"),
            ("/nonexistent/anything".to_string(), ""),
        ];
        for (path, kind) in ok_cases {
            let p = pod_with(
                "u2",
                json!([{"name": "h", "hostPath": {"path": path, "type": kind}}]),
            );
            let vols = setup(pods.path(), &p, &MemSource::default(), &node())
                .await
                .unwrap_or_else(|e| panic!("{kind} {path}: {e}"));
            assert_eq!(vols["h"], PathBuf::from(&path));
        }
        assert!(new_dir.is_dir());
        assert!(new_file.is_file());
        assert_eq!(mode(&new_file), 0o644);
        let bad_cases = [
            (s(&new_file), "Directory", "is not a directory"),
            (s(&new_dir), "File", "is not a file"),
            (s(&tmp.path().join("missing")), "File", "is not a file"),
            (s(&new_file), "Socket", "is not a socket"),
            (
                "/dev/null".to_string(),
                "BlockDevice",
                "is not a block device",
            ),
            (s(&new_dir), "CharDevice", "is not a character device"),
            (s(&new_dir), "Weird", "unknown type"),
            (
                s(&tmp.path().join("no/parent")),
                "FileOrCreate",
                "No such file",
            ),
        ];
        for (path, kind, want) in bad_cases {
            let p = pod_with(
                "u2",
                json!([{"name": "h", "hostPath": {"path": path, "type": kind}}]),
            );
            let err = setup(pods.path(), &p, &MemSource::default(), &node())
                .await
                .expect_err(kind);
            assert!(err.to_string().contains(want), "{kind} {path}: {err}");
        }
    }

    #[tokio::test]
    async fn config_map_volume_is_atomic_and_refreshes() {
        let pods = PodsDir::new(&["u3"]);
        let src = MemSource::with(vec![config_map(json!({"a.conf": "one", "b": "two"}))]);
        let p = pod_with(
            "u3",
            json!([
                {"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o600}},
                {"name": "some", "configMap": {"name": "cfg",
                    "items": [{"key": "a.conf", "path": "sub/dir/a", "mode": 0o640}]}},
            ]),
        );
        let vols = setup(pods.path(), &p, &src, &node()).await.expect("setup");
        let all = &vols["all"];
        assert_eq!(read(&all.join("a.conf")), "one");
        assert_eq!(read(&all.join("b")), "two");
        assert_eq!(
            std::fs::read(all.join("blob")).expect("blob"),
            vec![0u8, 1, 2]
        );
        assert_eq!(mode(&all.join("b")), 0o600);
        assert!(std::fs::symlink_metadata(all.join("b"))
            .expect("link")
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_link(all.join("b")).expect("link"),
            Path::new("..data/b")
        );
        let some = &vols["some"];
        assert_eq!(read(&some.join("sub/dir/a")), "one");
        assert_eq!(mode(&some.join("sub/dir/a")), 0o640);
        assert!(!some.join("b").exists());

        // Unchanged contents keep the same generation.
        let first = std::fs::read_link(all.join(DATA_LINK)).expect("..data");
        refresh(pods.path(), &p, &src, &node())
            .await
            .expect("refresh");
        assert_eq!(
            std::fs::read_link(all.join(DATA_LINK)).expect("..data"),
            first
        );

        src.put(config_map(json!({"a.conf": "uno", "c": "three"})));
        refresh(pods.path(), &p, &src, &node())
            .await
            .expect("refresh");
        assert_eq!(read(&all.join("a.conf")), "uno");
        assert_eq!(read(&all.join("c")), "three");
        assert!(
            std::fs::symlink_metadata(all.join("b")).is_err(),
            "removed key is gone"
        );
        assert!(!all.join(&first).exists(), "old generation removed");
        let hidden: Vec<String> = std::fs::read_dir(all)
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(hidden.len(), 2, "one generation and ..data: {hidden:?}");
        assert_eq!(read(&some.join("sub/dir/a")), "uno");
    }

    #[tokio::test]
    async fn missing_sources_and_keys() {
        let pods = PodsDir::new(&["u4"]);
        let src = MemSource::with(vec![config_map(json!({"a": "1"}))]);
        let cases = [
            (
                json!({"name": "v", "configMap": {"name": "nope"}}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"name": "v", "secret": {"secretName": "nope"}}),
                "secret \"nope\" not found",
            ),
            (
                json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "zz", "path": "z"}]}}),
                "non-existent config key: zz",
            ),
            (
                json!({"name": "v", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "../a"}]}}),
                "invalid path",
            ),
            (
                json!({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}),
                "persistentVolumeClaim volumes are not supported",
            ),
        ];
        for (vol, want) in cases {
            let p = pod_with("u4", json!([vol]));
            let err = setup(pods.path(), &p, &src, &node()).await.expect_err(want);
            assert!(err.to_string().contains(want), "{err}");
        }
        let p = pod_with(
            "u4",
            json!([
                {"name": "o1", "configMap": {"name": "nope", "optional": true}},
                {"name": "o2", "configMap": {"name": "cfg", "optional": true,
                    "items": [{"key": "zz", "path": "z"}, {"key": "a", "path": "a"}]}},
            ]),
        );
        let vols = setup(pods.path(), &p, &src, &node())
            .await
            .expect("optional");
        assert!(vols["o1"].join(DATA_LINK).exists());
        assert_eq!(read(&vols["o2"].join("a")), "1");
        assert!(!vols["o2"].join("z").exists());
    }

    #[tokio::test]
    async fn secrets_live_on_tmpfs_with_fs_group() {
        let pods = PodsDir::new(&["u5"]);
        let src = MemSource::with(vec![json!({"kind": "Secret",
            "metadata": {"name": "s", "namespace": "ns"}, "data": {"token": "c2VjcmV0"}})]);
        let mut p = pod_with(
            "u5",
            json!([
                {"name": "creds", "secret": {"secretName": "s", "defaultMode": 0o400}},
                {"name": "work", "emptyDir": {}},
            ]),
        );
        if let Some(spec) = p.spec.as_mut() {
            spec.security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
                fs_group: Some(2345),
                ..Default::default()
            });
        }
        let vols = setup(pods.path(), &p, &src, &node()).await.expect("setup");
        let creds = &vols["creds"];
        assert!(is_mount_point(creds));
        let token = creds.join("token");
        assert_eq!(read(&token), "secret");
        assert_eq!(mode(&token), 0o440);
        assert_eq!(std::fs::metadata(&token).expect("meta").gid(), 2345);
        let work = &vols["work"];
        assert_eq!(mode(work), 0o2777);
        assert_eq!(std::fs::metadata(work).expect("meta").gid(), 2345);
        // Unchanged contents under fsGroup are not rewritten on refresh.
        let generation = std::fs::read_link(creds.join(DATA_LINK)).expect("..data");
        refresh(pods.path(), &p, &src, &node())
            .await
            .expect("refresh");
        assert_eq!(
            std::fs::read_link(creds.join(DATA_LINK)).expect("..data"),
            generation
        );
        // A generation lost in a crash is written afresh.
        std::fs::remove_dir_all(creds.join(&generation)).expect("lose generation");
        refresh(pods.path(), &p, &src, &node())
            .await
            .expect("refresh after crash");
        assert_eq!(read(&token), "secret");
        teardown(pods.path(), "u5").expect("teardown");
        assert!(!creds.exists());
        assert!(mount_points_under(pods.path()).is_empty());
    }

    #[tokio::test]
    async fn downward_api_and_projected() {
        let pods = PodsDir::new(&["u6"]);
        let src = MemSource::with(vec![
            config_map(json!({"a": "1"})),
            json!({"kind": "Secret", "metadata": {"name": "s", "namespace": "ns"},
                   "data": {"k": "dg=="}}),
        ]);
        let p = pod_with(
            "u6",
            json!([
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "mem", "resourceFieldRef": {"containerName": "c",
                        "resource": "limits.memory", "divisor": "1Mi"}},
                ]}},
                {"name": "all", "projected": {"defaultMode": 0o444, "sources": [
                    {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "cfg/a"}]}},
                    {"secret": {"name": "s"}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                    {"serviceAccountToken": {"path": "token"}},
                ]}},
            ]),
        );
        let vols = setup(pods.path(), &p, &src, &node()).await.expect("setup");
        let info = &vols["info"];
        assert_eq!(read(&info.join("labels")), "app=\"web\"\nz=\"last\"");
        assert_eq!(read(&info.join("name")), "p");
        assert_eq!(read(&info.join("mem")), "64");
        let all = &vols["all"];
        assert_eq!(read(&all.join("cfg/a")), "1");
        assert_eq!(read(&all.join("k")), "v");
        assert_eq!(read(&all.join("ns")), "ns");
        assert_eq!(mode(&all.join("k")), 0o444);
        assert!(!all.join("token").exists());
        assert!(is_mount_point(all));

        let bad = pod_with(
            "u6",
            json!([{"name": "d", "downwardAPI": {"items": [
            {"path": "mem", "resourceFieldRef": {"resource": "limits.memory"}}]}}]),
        );
        let err = setup(pods.path(), &bad, &src, &node())
            .await
            .expect_err("no container");
        assert!(err.to_string().contains("containerName"), "{err}");
    }

    fn container(mounts: Value) -> Container {
        serde_json::from_value(json!({"name": "c", "volumeMounts": mounts})).expect("container")
    }

    #[test]
    fn mounts_for_volume_mounts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("volumes").join(EMPTY_DIR).join("data");
        let cfg = tmp.path().join("volumes").join(CONFIG_MAP).join("cfg");
        std::fs::create_dir_all(&data).expect("data");
        std::fs::create_dir_all(&cfg).expect("cfg");
        std::os::unix::fs::symlink("/etc", data.join("escape")).expect("symlink");
        let vols: HashMap<String, PathBuf> = [
            ("data".to_string(), data.clone()),
            ("cfg".to_string(), cfg.clone()),
        ]
        .into();

        let c = container(json!([
            {"name": "data", "mountPath": "/data"},
            {"name": "data", "mountPath": "/logs", "subPath": "logs/app", "readOnly": true},
            {"name": "data", "mountPath": "/per-pod", "subPathExpr": "pods/$(POD_NAME)"},
            {"name": "cfg", "mountPath": "/etc/app"},
        ]));
        let env = vec![("POD_NAME".to_string(), "web-0".to_string())];
        let mounts = mounts_for_with_env(&c, &vols, &env).expect("mounts");
        let want = [
            ("/data", data.clone(), false),
            ("/logs", data.join("logs/app"), true),
            ("/per-pod", data.join("pods/web-0"), false),
            ("/etc/app", cfg.clone(), true),
        ];
        assert_eq!(mounts.len(), want.len());
        for (m, (dest, source, ro)) in mounts.iter().zip(want) {
            assert_eq!(m.destination, dest);
            assert_eq!(m.source, source);
            assert_eq!(m.read_only, ro, "{dest}");
            assert_eq!(m.kind, MountKind::Bind);
        }
        assert!(
            data.join("logs/app").is_dir(),
            "subPath directories are created"
        );

        let err = |mounts: Value| {
            mounts_for(&container(mounts), &vols)
                .expect_err("must fail")
                .to_string()
        };
        assert!(err(json!([{"name": "nope", "mountPath": "/x"}])).contains("unable to find volume"));
        assert!(
            err(json!([{"name": "data", "mountPath": "/x", "subPath": "../up"}]))
                .contains("invalid path")
        );
        assert!(
            err(json!([{"name": "data", "mountPath": "/x", "subPath": "/abs"}]))
                .contains("invalid path")
        );
        assert!(
            err(json!([{"name": "data", "mountPath": "/x", "subPath": "escape"}]))
                .contains("escapes")
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }
}
