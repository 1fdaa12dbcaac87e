//! Container images in containerd's content store, with no registry CLI: import of OCI
//! image-layout and `docker save` archives (air-gapped nodes put them in
//! `<data-dir>/images/`, as with K3s), pulls from registries over the Docker Registry HTTP
//! API v2, and unpacking into snapshots the way containerd's own unpacker does.
//!
//! Everything written runs under a containerd lease, so garbage collection cannot take blobs
//! or snapshots between their write and the moment something references them. The
//! references GC follows are labels, set as `ctr`/containerd set them:
//! - an index names its manifests (`containerd.io/gc.ref.content.m.<i>`),
//! - a manifest names its config and layers (`…content.config`, `…content.l.<i>`),
//! - the config names the unpacked snapshot chain (`containerd.io/gc.ref.snapshot.<sn>`),
//! - the image record names the top descriptor.

// RFC 3339 UTC time, for containerd's gc.expire label.
use cairn_wire::time::rfc3339_at as rfc3339;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::tonic::transport::Channel;
use containerd_client::types::Descriptor;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;

use super::containerd::{rpc_err, Containerd, ContainerdError};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

const LABEL_GC_CONTENT: &str = "containerd.io/gc.ref.content";
const LABEL_GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";
const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Blobs up to this size are read into memory on the first pass over an archive; larger
/// ones (layers) are streamed on a second pass.
const SMALL_BLOB: u64 = 4 << 20;
/// gRPC messages stay well under containerd's 16 MiB limit.
const CHUNK: usize = 1 << 20;
/// A lease outlives an import or pull that crashed half-way by at most this long.
const LEASE_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image}: {source}")]
    Containerd {
        image: String,
        #[source]
        source: ContainerdError,
    },
    #[error("invalid image reference {0:?}")]
    Reference(String),
    #[error("image {image} not found in the content store and imagePullPolicy is Never")]
    NotPresent { image: String },
    #[error("image {image}: no manifest for linux/{arch}")]
    NoPlatform { image: String, arch: String },
    #[error("image {image}: {what}")]
    Invalid { image: String, what: String },
    #[error("image archive {path}: {what}")]
    Archive { path: PathBuf, what: String },
    #[error("image {image}: pulling from {url}: {what}")]
    Registry {
        image: String,
        url: String,
        what: String,
    },
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;

fn cd_err(image: &str) -> impl FnOnce(ContainerdError) -> ImageError + '_ {
    move |source| ImageError::Containerd {
        image: image.to_string(),
        source,
    }
}

fn invalid(image: &str, what: impl Into<String>) -> ImageError {
    ImageError::Invalid {
        image: image.to_string(),
        what: what.into(),
    }
}

/// Kubernetes' imagePullPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The pod spec's value, defaulted as the API server does: `Always` for `:latest` or an
    /// untagged image, else `IfNotPresent`.
    pub fn from_pod(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => match normalize_reference(image) {
                Ok(r) if !r.ends_with(":latest") => PullPolicy::IfNotPresent,
                _ => PullPolicy::Always,
            },
        }
    }
}

/// What an image asks of the runtime (the `config` object of its image config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `port/proto`, sorted.
    pub exposed_ports: Vec<String>,
    pub stop_signal: String,
}

/// An image present and unpacked on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalized reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of the image record's target (index or manifest): the `imageID` of a pod's
    /// container status.
    pub digest: String,
    /// The committed snapshot a container's rootfs is prepared on.
    pub chain_id: String,
    pub config: ImageConfig,
}

// --- references ---

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), `docker.io` for Docker Hub.
    pub host: String,
    /// Repository path, `library/busybox` for an official Docker Hub image.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `reference` as docker and containerd do: no host means Docker Hub, a one-part
    /// Docker Hub name lives under `library/`, no tag or digest means `:latest`.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = || ImageError::Reference(reference.to_string());
        if reference.is_empty() || reference.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(bad)?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                (r, Some(d.to_string()))
            }
            None => (reference, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if tag.as_deref() == Some("") || name.is_empty() {
            return Err(bad());
        }
        let (host, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let host = if host == "index.docker.io" {
            "docker.io".to_string()
        } else {
            host
        };
        let repository = if host == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let valid_repo = repository.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        if !valid_repo {
            return Err(bad());
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            host,
            repository,
            tag,
            digest,
        })
    }

    /// The tag, else the digest: what the registry's manifests endpoint takes.
    fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `busybox` → `docker.io/library/busybox:latest`, as docker and containerd normalize.
pub fn normalize_reference(reference: &str) -> Result<String> {
    Ok(Reference::parse(reference)?.to_string())
}

// --- OCI JSON documents (only the fields used) ---

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Debug, Deserialize)]
struct JsonDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    platform: Option<Platform>,
}

impl JsonDescriptor {
    fn to_proto(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct IndexJson {
    manifests: Vec<JsonDescriptor>,
}

#[derive(Debug, Deserialize)]
struct ManifestJson {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    config: JsonDescriptor,
    layers: Vec<JsonDescriptor>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigJson {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<RuntimeConfigJson>,
    rootfs: RootfsJson,
}

#[derive(Debug, Default, Deserialize)]
struct RootfsJson {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RuntimeConfigJson {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    exposed_ports: Option<HashMap<String, serde_json::Value>>,
    #[serde(default)]
    stop_signal: String,
}

impl ConfigJson {
    fn image_config(&self) -> ImageConfig {
        let c = self.config.as_ref();
        let mut ports: Vec<String> = c
            .and_then(|c| c.exposed_ports.as_ref())
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        ports.sort();
        ImageConfig {
            entrypoint: c.and_then(|c| c.entrypoint.clone()).unwrap_or_default(),
            cmd: c.and_then(|c| c.cmd.clone()).unwrap_or_default(),
            env: c.and_then(|c| c.env.clone()).unwrap_or_default(),
            working_dir: c.map(|c| c.working_dir.clone()).unwrap_or_default(),
            user: c.map(|c| c.user.clone()).unwrap_or_default(),
            exposed_ports: ports,
            stop_signal: c.map(|c| c.stop_signal.clone()).unwrap_or_default(),
        }
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The OCI chain ID of a layer stack: chain(L0) = diff(L0), chain(Ln) = sha256(chain(Ln-1) +
/// " " + diff(Ln)).
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let (first, rest) = diff_ids.split_first()?;
    Some(rest.iter().fold(first.clone(), |chain, diff| {
        sha256_digest(format!("{chain} {diff}").as_bytes())
    }))
}

/// This machine's architecture in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The manifest in `index` for linux on this machine's architecture.
fn pick_platform<'a>(index: &'a IndexJson, image: &str) -> Result<&'a JsonDescriptor> {
    let arch = host_arch();
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        // An index without platform fields (a single-image layout) is taken as is.
        .or_else(|| {
            (index.manifests.len() == 1 && index.manifests[0].platform.is_none())
                .then(|| &index.manifests[0])
        })
        .ok_or_else(|| ImageError::NoPlatform {
            image: image.to_string(),
            arch: arch.to_string(),
        })
}

// --- content store ---

/// The content-store side of an import or pull, all under one lease.
struct Store {
    cd: Containerd,
    lease_id: String,
}

impl Store {
    /// Opens a lease that expires on its own in case this process dies before `close`.
    async fn open(cd: &Containerd, image: &str) -> Result<Self> {
        let mut id = [0u8; 8];
        getrandom::getrandom(&mut id).map_err(|e| invalid(image, format!("random: {e}")))?;
        let lease_id = format!("cairn-{}", hex::encode(id));
        let expire = SystemTime::now() + LEASE_TTL;
        let labels = HashMap::from([(LABEL_GC_EXPIRE.to_string(), rfc3339(expire))]);
        let mut leases = api::leases_client::LeasesClient::new(cd.channel());
        leases
            .create(cd.request(api::CreateRequest {
                id: lease_id.clone(),
                labels,
            }))
            .await
            .map_err(rpc_err("create lease", lease_id.clone()))
            .map_err(cd_err(image))?;
        let cd = cd.with_lease(&lease_id).map_err(cd_err(image))?;
        Ok(Store { cd, lease_id })
    }

    /// Ends the lease; what is now referenced by images stays, the rest becomes collectable.
    async fn close(self) {
        let mut leases = api::leases_client::LeasesClient::new(self.cd.channel());
        let req = self.cd.request(api::DeleteRequest {
            id: self.lease_id.clone(),
            sync: false,
        });
        if let Err(e) = leases.delete(req).await {
            tracing::warn!(lease = %self.lease_id, error = %e.message(), "deleting containerd lease");
        }
    }

    fn content(&self) -> api::content_client::ContentClient<Channel> {
        api::content_client::ContentClient::new(self.cd.channel())
    }

    async fn has(&self, digest: &str) -> Result<bool, ContainerdError> {
        let res = self
            .content()
            .info(self.cd.request(api::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
            .map_err(rpc_err("content info", digest));
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Streams `data` into the content store as `digest`; containerd checks size and digest
    /// on commit. Content already present is not written again.
    async fn write<S>(&self, digest: &str, size: i64, data: S) -> Result<(), ContainerdError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        if self.has(digest).await? {
            return Ok(());
        }
        let reference = format!("cairn-write-{digest}");
        let (tx, rx) = tokio::sync::mpsc::channel::<api::WriteContentRequest>(4);
        let feeder = {
            let reference = reference.clone();
            let digest = digest.to_string();
            tokio::spawn(async move {
                let mut data = std::pin::pin!(data);
                let mut offset = 0i64;
                while let Some(chunk) = data.next().await {
                    let chunk = chunk?;
                    for piece in chunk.chunks(CHUNK) {
                        let msg = api::WriteContentRequest {
                            action: api::WriteAction::Write as i32,
                            r#ref: reference.clone(),
                            total: size,
                            expected: digest.clone(),
                            offset,
                            data: piece.to_vec(),
                            labels: HashMap::new(),
                        };
                        offset += piece.len() as i64;
                        if tx.send(msg).await.is_err() {
                            return Ok(offset);
                        }
                    }
                }
                let commit = api::WriteContentRequest {
                    action: api::WriteAction::Commit as i32,
                    r#ref: reference,
                    total: size,
                    expected: digest,
                    offset,
                    data: Vec::new(),
                    labels: HashMap::new(),
                };
                let _ = tx.send(commit).await;
                Ok::<i64, std::io::Error>(offset)
            })
        };
        let result = self
            .drive_write(&reference, digest, ReceiverStream::new(rx))
            .await;
        let fed = feeder.await;
        match (result, fed) {
            (Err(e), _) if e.is_already_exists() => Ok(()),
            (_, Ok(Err(io))) => Err(ContainerdError::Io {
                path: PathBuf::from(digest),
                source: io,
            }),
            (_, Err(join)) => Err(ContainerdError::Io {
                path: PathBuf::from(digest),
                source: std::io::Error::other(join.to_string()),
            }),
            (res, Ok(Ok(_))) => res,
        }
    }

    async fn drive_write(
        &self,
        reference: &str,
        digest: &str,
        requests: ReceiverStream<api::WriteContentRequest>,
    ) -> Result<(), ContainerdError> {
        let mut responses = self
            .content()
            .write(self.cd.request(requests))
            .await
            .map_err(rpc_err("write content", digest))?
            .into_inner();
        let mut committed = false;
        while let Some(resp) = responses.next().await {
            let resp = resp.map_err(rpc_err("write content", digest))?;
            if resp.action == api::WriteAction::Commit as i32 {
                committed = true;
            }
        }
        if committed {
            Ok(())
        } else {
            Err(ContainerdError::Rpc {
                op: "write content",
                object: reference.to_string(),
                code: containerd_client::tonic::Code::Aborted,
                message: "stream ended before commit".into(),
            })
        }
    }

    async fn write_bytes(&self, digest: &str, data: Vec<u8>) -> Result<(), ContainerdError> {
        let size = data.len() as i64;
        let stream = futures_util::stream::once(async move { Ok(Bytes::from(data)) });
        self.write(digest, size, stream).await
    }

    async fn read_all(&self, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let mut stream = self
            .content()
            .read(self.cd.request(api::ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(rpc_err("read content", digest))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            out.extend_from_slice(&msg.map_err(rpc_err("read content", digest))?.data);
        }
        Ok(out)
    }

    /// Adds `labels` to blob `digest`, keeping the others.
    async fn label(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.cd.request(api::UpdateRequest {
                info: Some(api::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(rpc_err("label content", digest))?;
        Ok(())
    }

    /// Creates or replaces the image record `name` → `target`.
    async fn put_image(&self, name: &str, target: Descriptor) -> Result<(), ContainerdError> {
        let mut images = api::images_client::ImagesClient::new(self.cd.channel());
        let image = api::Image {
            name: name.to_string(),
            target: Some(target),
            ..Default::default()
        };
        let created = images
            .create(self.cd.request(api::CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
            .map_err(rpc_err("create image", name));
        match created {
            Err(e) if e.is_already_exists() => {
                images
                    .update(self.cd.request(api::UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(rpc_err("update image", name))?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// Labels an index with its manifests so GC keeps them.
    async fn label_index(
        &self,
        index_digest: &str,
        index: &IndexJson,
    ) -> Result<(), ContainerdError> {
        let labels = index
            .manifests
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("{LABEL_GC_CONTENT}.m.{i}"), m.digest.clone()))
            .collect();
        self.label(index_digest, labels).await
    }

    /// Labels a manifest with its config and layers so GC keeps them.
    async fn label_manifest(
        &self,
        manifest_digest: &str,
        manifest: &ManifestJson,
    ) -> Result<(), ContainerdError> {
        let mut labels: HashMap<String, String> = manifest
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("{LABEL_GC_CONTENT}.l.{i}"), l.digest.clone()))
            .collect();
        labels.insert(
            format!("{LABEL_GC_CONTENT}.config"),
            manifest.config.digest.clone(),
        );
        self.label(manifest_digest, labels).await
    }

    /// Unpacks the layers of `manifest` into committed snapshots (skipping those already
    /// there) and returns the top chain ID, as containerd's unpacker does.
    async fn unpack(
        &self,
        image: &str,
        manifest: &ManifestJson,
        config: &ConfigJson,
    ) -> Result<String> {
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() || diff_ids.is_empty() {
            return Err(invalid(
                image,
                format!(
                    "{} layers but {} diff_ids in the config",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut parent = String::new();
        for (i, layer) in manifest.layers.iter().enumerate() {
            let chain = chain_id(&diff_ids[..=i]).unwrap_or_default();
            if !self.snapshot_exists(&chain).await.map_err(cd_err(image))? {
                self.apply_layer(image, layer, &diff_ids[i], &parent, &chain)
                    .await?;
            }
            if is_compressed(&layer.media_type) {
                let labels = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_ids[i].clone())]);
                self.label(&layer.digest, labels)
                    .await
                    .map_err(cd_err(image))?;
            }
            parent = chain;
        }
        let sn = self.cd.snapshotter();
        let labels = HashMap::from([(format!("{LABEL_GC_SNAPSHOT}.{sn}"), parent.clone())]);
        self.label(&manifest.config.digest, labels)
            .await
            .map_err(cd_err(image))?;
        Ok(parent)
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, ContainerdError> {
        let res = self
            .cd
            .snapshots()
            .stat(self.cd.request(snap::StatSnapshotRequest {
                snapshotter: self.cd.snapshotter().to_string(),
                key: key.to_string(),
            }))
            .await
            .map_err(rpc_err("stat snapshot", key));
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Prepare an active snapshot on `parent`, apply the layer through the Diff service, and
    /// commit it as `chain`.
    async fn apply_layer(
        &self,
        image: &str,
        layer: &JsonDescriptor,
        diff_id: &str,
        parent: &str,
        chain: &str,
    ) -> Result<()> {
        let mut nonce = [0u8; 6];
        getrandom::getrandom(&mut nonce).map_err(|e| invalid(image, format!("random: {e}")))?;
        let key = format!("extract-{}-{chain}", hex::encode(nonce));
        let mounts = self
            .cd
            .prepare_snapshot(&key, parent, HashMap::new())
            .await
            .map_err(cd_err(image))?;
        let applied = self.apply_and_commit(&key, layer, mounts, chain).await;
        match applied {
            Ok(digest) if digest == diff_id => Ok(()),
            Ok(digest) => {
                let _ = self.cd.remove_snapshot(chain).await;
                Err(invalid(
                    image,
                    format!(
                        "layer {} unpacked to {digest}, config says {diff_id}",
                        layer.digest
                    ),
                ))
            }
            Err(e) => {
                let _ = self.cd.remove_snapshot(&key).await;
                if e.is_already_exists() {
                    // Another unpack of the same chain won the race; its snapshot serves.
                    return Ok(());
                }
                Err(cd_err(image)(e))
            }
        }
    }

    async fn apply_and_commit(
        &self,
        key: &str,
        layer: &JsonDescriptor,
        mounts: Vec<containerd_client::types::Mount>,
        chain: &str,
    ) -> Result<String, ContainerdError> {
        let mut diff = api::diff_client::DiffClient::new(self.cd.channel());
        let applied = diff
            .apply(self.cd.request(api::ApplyRequest {
                diff: Some(layer.to_proto()),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .map_err(rpc_err("apply layer", layer.digest.clone()))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        self.cd
            .snapshots()
            .commit(self.cd.request(snap::CommitSnapshotRequest {
                snapshotter: self.cd.snapshotter().to_string(),
                name: chain.to_string(),
                key: key.to_string(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(rpc_err("commit snapshot", chain))?;
        Ok(applied)
    }

    /// Given the image record's target, finds the host platform's manifest and config,
    /// labels them, unpacks, and names the image.
    async fn finish_image(&self, name: &str, target: &JsonDescriptor) -> Result<Image> {
        let (manifest_digest, manifest) = self.resolve_manifest(name, target, true).await?;
        self.label_manifest(&manifest_digest, &manifest)
            .await
            .map_err(cd_err(name))?;
        let config = self.read_config(name, &manifest).await?;
        let chain_id = self.unpack(name, &manifest, &config).await?;
        self.put_image(name, target.to_proto())
            .await
            .map_err(cd_err(name))?;
        Ok(Image {
            name: name.to_string(),
            digest: target.digest.clone(),
            chain_id,
            config: config.image_config(),
        })
    }

    /// The host platform's manifest under `target`, following (and labelling) indexes.
    async fn resolve_manifest(
        &self,
        name: &str,
        target: &JsonDescriptor,
        label: bool,
    ) -> Result<(String, ManifestJson)> {
        let mut digest = target.digest.clone();
        let mut media_type = target.media_type.clone();
        // Nested indexes are legal; a small bound keeps a malicious cycle from looping.
        for _ in 0..4 {
            let bytes = self.read_all(&digest).await.map_err(cd_err(name))?;
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| invalid(name, format!("{digest}: {e}")))?;
            let doc_type = doc["mediaType"].as_str().unwrap_or(&media_type).to_string();
            if is_index(&doc_type) || (doc_type.is_empty() && doc.get("manifests").is_some()) {
                let index: IndexJson = serde_json::from_value(doc)
                    .map_err(|e| invalid(name, format!("index {digest}: {e}")))?;
                if label {
                    self.label_index(&digest, &index)
                        .await
                        .map_err(cd_err(name))?;
                }
                let m = pick_platform(&index, name)?;
                digest = m.digest.clone();
                media_type = m.media_type.clone();
                continue;
            }
            let manifest: ManifestJson = serde_json::from_value(doc)
                .map_err(|e| invalid(name, format!("manifest {digest}: {e}")))?;
            return Ok((digest, manifest));
        }
        Err(invalid(name, "indexes nested too deep"))
    }

    async fn read_config(&self, name: &str, manifest: &ManifestJson) -> Result<ConfigJson> {
        let bytes = self
            .read_all(&manifest.config.digest)
            .await
            .map_err(cd_err(name))?;
        let config: ConfigJson = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(name, format!("config {}: {e}", manifest.config.digest)))?;
        let arch = host_arch();
        if !config.architecture.is_empty() && config.architecture != arch {
            return Err(ImageError::NoPlatform {
                image: name.to_string(),
                arch: arch.to_string(),
            });
        }
        Ok(config)
    }
}

fn is_compressed(media_type: &str) -> bool {
    media_type.ends_with("+gzip") || media_type.ends_with(".gzip") || media_type.ends_with("+zstd")
}

// --- local images ---

/// The image `reference` if it is in the content store (unpacking it if its snapshots are
/// missing), else `None`.
pub async fn get_image(cd: &Containerd, reference: &str) -> Result<Option<Image>> {
    let name = normalize_reference(reference)?;
    let mut images = api::images_client::ImagesClient::new(cd.channel());
    let res = images
        .get(cd.request(api::GetImageRequest { name: name.clone() }))
        .await
        .map_err(rpc_err("get image", name.clone()));
    let target = match res {
        Ok(r) => r.into_inner().image.and_then(|i| i.target),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(cd_err(&name)(e)),
    };
    let Some(target) = target else {
        return Ok(None);
    };
    let target = JsonDescriptor {
        media_type: target.media_type,
        digest: target.digest,
        size: target.size,
        annotations: HashMap::new(),
        platform: None,
    };
    if let Some(image) = unpacked_image(cd, &name, &target).await? {
        return Ok(Some(image));
    }
    let store = Store::open(cd, &name).await?;
    let result = store.finish_image(&name, &target).await;
    store.close().await;
    result.map(Some)
}

/// The image when it is already unpacked: reads only (no lease, no label writes), which is
/// what every container start after the first does.
async fn unpacked_image(
    cd: &Containerd,
    name: &str,
    target: &JsonDescriptor,
) -> Result<Option<Image>> {
    let reader = Store {
        cd: cd.clone(),
        lease_id: String::new(),
    };
    let (_, manifest) = reader.resolve_manifest(name, target, false).await?;
    let config = reader.read_config(name, &manifest).await?;
    let Some(chain_id) = chain_id(&config.rootfs.diff_ids) else {
        return Ok(None);
    };
    if !reader
        .snapshot_exists(&chain_id)
        .await
        .map_err(cd_err(name))?
    {
        return Ok(None);
    }
    Ok(Some(Image {
        name: name.to_string(),
        digest: target.digest.clone(),
        chain_id,
        config: config.image_config(),
    }))
}

/// The image for a container, present and unpacked, following the pull policy.
pub async fn ensure_image(cd: &Containerd, reference: &str, policy: PullPolicy) -> Result<Image> {
    ensure_image_with(cd, reference, policy, &Registries::default()).await
}

/// [`ensure_image`] with registry settings.
pub async fn ensure_image_with(
    cd: &Containerd,
    reference: &str,
    policy: PullPolicy,
    registries: &Registries,
) -> Result<Image> {
    match policy {
        PullPolicy::Always => pull_with(cd, reference, registries).await,
        PullPolicy::IfNotPresent => match get_image(cd, reference).await? {
            Some(image) => Ok(image),
            None => pull_with(cd, reference, registries).await,
        },
        PullPolicy::Never => {
            get_image(cd, reference)
                .await?
                .ok_or_else(|| ImageError::NotPresent {
                    image: normalize_reference(reference).unwrap_or_else(|_| reference.to_string()),
                })
        }
    }
}

// --- archives ---

/// One image named in an archive: its name and the descriptor of its top manifest/index.
struct ArchiveImage {
    name: String,
    target: JsonDescriptor,
}

/// What the first pass over an archive found.
#[derive(Default)]
struct ArchiveScan {
    /// Small entries by path: JSON documents and small blobs.
    small: HashMap<String, Vec<u8>>,
    /// Large entries' paths and sizes, streamed on the second pass.
    large: HashMap<String, u64>,
}

fn archive_err(path: &Path, what: impl std::fmt::Display) -> ImageError {
    ImageError::Archive {
        path: path.to_path_buf(),
        what: what.to_string(),
    }
}

/// Opens an archive, transparently un-gzipping a `.tar.gz`.
fn open_archive(path: &Path) -> std::io::Result<tar::Archive<Box<dyn Read + Send>>> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn Read + Send> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(tar::Archive::new(reader))
}

fn entry_name(entry: &tar::Entry<'_, Box<dyn Read + Send>>) -> std::io::Result<String> {
    let p = entry.path()?;
    Ok(p.to_string_lossy().trim_start_matches("./").to_string())
}

fn scan_archive(path: &Path) -> Result<ArchiveScan> {
    let mut scan = ArchiveScan::default();
    let mut ar = open_archive(path).map_err(|e| archive_err(path, e))?;
    for entry in ar.entries().map_err(|e| archive_err(path, e))? {
        let mut entry = entry.map_err(|e| archive_err(path, e))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry_name(&entry).map_err(|e| archive_err(path, e))?;
        let size = entry.size();
        if size <= SMALL_BLOB {
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(|e| archive_err(path, format!("{name}: {e}")))?;
            scan.small.insert(name, data);
        } else {
            scan.large.insert(name, size);
        }
    }
    Ok(scan)
}

/// The images an archive names, and the blobs (path in archive → descriptor) to load.
struct ArchivePlan {
    images: Vec<ArchiveImage>,
    /// Generated documents (docker-save manifests) not present as files in the archive.
    generated: Vec<(String, Vec<u8>)>,
    /// Archive path of every blob, by digest.
    blobs: HashMap<String, String>,
}

#[derive(Deserialize)]
struct DockerSaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn plan_archive(path: &Path, scan: &ArchiveScan) -> Result<ArchivePlan> {
    if let Some(manifest) = scan.small.get("manifest.json") {
        return plan_docker_save(path, scan, manifest);
    }
    if let Some(index) = scan.small.get("index.json") {
        return plan_oci_layout(path, scan, index);
    }
    Err(archive_err(
        path,
        "neither index.json (OCI layout) nor manifest.json (docker save) found",
    ))
}

fn oci_blob_paths(scan: &ArchiveScan) -> HashMap<String, String> {
    scan.small
        .keys()
        .chain(scan.large.keys())
        .filter_map(|p| {
            let hex = p.strip_prefix("blobs/sha256/")?;
            Some((format!("sha256:{hex}"), p.clone()))
        })
        .collect()
}

fn plan_oci_layout(path: &Path, scan: &ArchiveScan, index: &[u8]) -> Result<ArchivePlan> {
    let index: IndexJson =
        serde_json::from_slice(index).map_err(|e| archive_err(path, format!("index.json: {e}")))?;
    let mut images = Vec::new();
    for m in index.manifests {
        let name = m
            .annotations
            .get(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| m.annotations.get(ANNOTATION_REF_NAME))
            .cloned();
        let Some(name) = name else {
            tracing::warn!(archive = %path.display(), digest = %m.digest, "manifest without an image name in index.json; skipped");
            continue;
        };
        // A bare tag in ref.name ("latest") names no repository: nothing to call it.
        let name = normalize_reference(&name).map_err(|_| {
            archive_err(path, format!("image name {name:?} is not a full reference"))
        })?;
        images.push(ArchiveImage { name, target: m });
    }
    Ok(ArchivePlan {
        images,
        generated: Vec::new(),
        blobs: oci_blob_paths(scan),
    })
}

/// docker-save archives have no manifest blob: make a Docker schema 2 manifest per image,
/// as containerd's importer does, with layers described by their file's own digest.
fn plan_docker_save(path: &Path, scan: &ArchiveScan, manifest: &[u8]) -> Result<ArchivePlan> {
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(manifest)
        .map_err(|e| archive_err(path, format!("manifest.json: {e}")))?;
    let mut blobs = oci_blob_paths(scan);
    let mut generated = Vec::new();
    let mut images = Vec::new();
    for entry in entries {
        let config = scan
            .small
            .get(&entry.config)
            .ok_or_else(|| archive_err(path, format!("config {} missing", entry.config)))?;
        let config_digest = sha256_digest(config);
        blobs.insert(config_digest.clone(), entry.config.clone());
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let (digest, size, gz) = digest_archive_file(path, scan, layer)?;
            blobs.insert(digest.clone(), layer.clone());
            let media_type = if gz {
                MEDIA_DOCKER_LAYER_GZIP
            } else {
                MEDIA_DOCKER_LAYER
            };
            layers
                .push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_DOCKER_MANIFEST,
            "config": {"mediaType": MEDIA_DOCKER_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))
        .map_err(|e| archive_err(path, e))?;
        let digest = sha256_digest(&manifest);
        let target = JsonDescriptor {
            media_type: MEDIA_DOCKER_MANIFEST.to_string(),
            digest: digest.clone(),
            size: manifest.len() as i64,
            annotations: HashMap::new(),
            platform: None,
        };
        generated.push((digest, manifest));
        for tag in entry.repo_tags.unwrap_or_default() {
            let name = normalize_reference(&tag)
                .map_err(|_| archive_err(path, format!("RepoTag {tag:?} is not a reference")))?;
            images.push(ArchiveImage {
                name,
                target: JsonDescriptor {
                    media_type: target.media_type.clone(),
                    digest: target.digest.clone(),
                    size: target.size,
                    annotations: HashMap::new(),
                    platform: None,
                },
            });
        }
    }
    Ok(ArchivePlan {
        images,
        generated,
        blobs,
    })
}

/// Digest, size and gzip-ness of one archive member (a docker-save layer file).
fn digest_archive_file(path: &Path, scan: &ArchiveScan, name: &str) -> Result<(String, u64, bool)> {
    if let Some(data) = scan.small.get(name) {
        return Ok((
            sha256_digest(data),
            data.len() as u64,
            data.starts_with(&[0x1f, 0x8b]),
        ));
    }
    if !scan.large.contains_key(name) {
        return Err(archive_err(path, format!("layer {name} missing")));
    }
    let mut ar = open_archive(path).map_err(|e| archive_err(path, e))?;
    for entry in ar.entries().map_err(|e| archive_err(path, e))? {
        let mut entry = entry.map_err(|e| archive_err(path, e))?;
        if entry_name(&entry).map_err(|e| archive_err(path, e))? != name {
            continue;
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        let mut head = [0u8; 2];
        loop {
            let n = entry.read(&mut buf).map_err(|e| archive_err(path, e))?;
            if n == 0 {
                break;
            }
            if size == 0 && n >= 2 {
                head.copy_from_slice(&buf[..2]);
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        return Ok((digest, size, head == [0x1f, 0x8b]));
    }
    Err(archive_err(path, format!("layer {name} missing")))
}

/// Streams the archive member `member` of `path` as chunks, reading on a blocking thread.
fn stream_archive_member(
    path: PathBuf,
    member: String,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let send_err = |e: std::io::Error| {
            let _ = tx.blocking_send(Err(e));
        };
        let mut ar = match open_archive(&path) {
            Ok(a) => a,
            Err(e) => return send_err(e),
        };
        let entries = match ar.entries() {
            Ok(e) => e,
            Err(e) => return send_err(e),
        };
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => return send_err(e),
            };
            match entry_name(&entry) {
                Ok(n) if n == member => {}
                Ok(_) => continue,
                Err(e) => return send_err(e),
            }
            loop {
                let mut buf = vec![0u8; CHUNK];
                match entry.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) => return send_err(e),
                }
            }
        }
        send_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{member} not in the archive"),
        ));
    });
    ReceiverStream::new(rx)
}

/// Imports an OCI image-layout tar or a `docker save` tar (plain or gzip) into containerd,
/// unpacks every image for this machine's platform, and returns the image names.
pub async fn import_archive(cd: &Containerd, path: &Path) -> Result<Vec<String>> {
    let owned = path.to_path_buf();
    let scan = tokio::task::spawn_blocking(move || scan_archive(&owned))
        .await
        .map_err(|e| archive_err(path, e))??;
    let owned = path.to_path_buf();
    let (scan, plan) = tokio::task::spawn_blocking(move || {
        let plan = plan_archive(&owned, &scan);
        plan.map(|p| (scan, p))
    })
    .await
    .map_err(|e| archive_err(path, e))??;
    if plan.images.is_empty() {
        return Err(archive_err(path, "no named images in the archive"));
    }
    let label = plan.images[0].name.clone();
    let store = Store::open(cd, &label).await?;
    let result = load_archive(&store, path, &scan, &plan).await;
    store.close().await;
    result
}

async fn load_archive(
    store: &Store,
    path: &Path,
    scan: &ArchiveScan,
    plan: &ArchivePlan,
) -> Result<Vec<String>> {
    let in_store = |e| archive_err(path, e);
    for (digest, bytes) in &plan.generated {
        store
            .write_bytes(digest, bytes.clone())
            .await
            .map_err(in_store)?;
    }
    // Every blob the archive carries goes in, not only the host platform's: the archive is
    // what the operator chose to put on the node.
    let mut digests: Vec<&String> = plan.blobs.keys().collect();
    digests.sort();
    for digest in digests {
        let member = &plan.blobs[digest];
        if let Some(data) = scan.small.get(member) {
            let actual = sha256_digest(data);
            if &actual != digest {
                return Err(archive_err(path, format!("{member} has digest {actual}")));
            }
            store
                .write_bytes(digest, data.clone())
                .await
                .map_err(in_store)?;
        } else if let Some(size) = scan.large.get(member) {
            let stream = stream_archive_member(path.to_path_buf(), member.clone());
            store
                .write(digest, *size as i64, stream)
                .await
                .map_err(in_store)?;
        }
    }
    let mut names = Vec::new();
    for image in &plan.images {
        store.finish_image(&image.name, &image.target).await?;
        tracing::info!(image = %image.name, archive = %path.display(), "imported image");
        names.push(image.name.clone());
    }
    Ok(names)
}

/// Imports every `*.tar` (and `*.tar.gz`) in `dir`, as K3s does with its air-gap images
/// directory. A bad archive is logged with one line naming it and skipped. Returns the names
/// of the images imported; a missing directory imports nothing.
pub async fn import_dir(cd: &Containerd, dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut archives: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
        })
        .collect();
    archives.sort();
    let mut names = Vec::new();
    for archive in archives {
        match import_archive(cd, &archive).await {
            Ok(n) => names.extend(n),
            Err(e) => tracing::error!("skipping image archive {}: {e}", archive.display()),
        }
    }
    names
}

// --- registry ---

/// Registry settings: which hosts speak plain HTTP. `localhost`/loopback always may.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    pub insecure: Vec<String>,
    /// PEM bundle with the trusted CAs; the system bundle when `None`.
    pub ca_file: Option<PathBuf>,
}

const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Registries {
    fn scheme(&self, host: &str) -> &'static str {
        let bare = host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let loopback = bare == "localhost" || bare == "127.0.0.1" || bare == "[::1]";
        if loopback || self.insecure.iter().any(|h| h == host || h == bare) {
            "http"
        } else {
            "https"
        }
    }

    /// Docker Hub's API lives on another host than its name.
    fn api_host(host: &str) -> &str {
        if host == "docker.io" {
            "registry-1.docker.io"
        } else {
            host
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<Bytes>,
>;

fn http_client(image: &str, registries: &Registries) -> Result<HttpClient> {
    let ca_path = registries
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
    let bad = |what: String| ImageError::Registry {
        image: image.to_string(),
        url: ca_path.display().to_string(),
        what,
    };
    let pem = std::fs::read(&ca_path).map_err(|e| bad(format!("reading CA bundle: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.map_err(|e| bad(format!("parsing CA bundle: {e}")))?;
        // One odd certificate in a system bundle must not disable TLS altogether.
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

/// A `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge.
#[derive(Debug, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

fn parse_bearer_challenge(header: &str) -> Option<BearerChallenge> {
    let rest = header.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut fields = HashMap::new();
    let mut s = params.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        fields.insert(key, value.to_string());
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(BearerChallenge {
        realm: fields.remove("realm")?,
        service: fields.remove("service"),
        scope: fields.remove("scope"),
    })
}

/// One pull: the registry connection, the repository, and the bearer token once obtained.
struct Registry<'a> {
    client: HttpClient,
    image: &'a str,
    base: String,
    repository: String,
    token: Option<String>,
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

impl Registry<'_> {
    fn err(&self, url: &str, what: impl std::fmt::Display) -> ImageError {
        ImageError::Registry {
            image: self.image.to_string(),
            url: url.to_string(),
            what: what.to_string(),
        }
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        with_token: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let mut req = hyper::Request::get(url).header("User-Agent", "cairn");
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        if let (true, Some(t)) = (with_token, &self.token) {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::new())
            .map_err(|e| self.err(url, e))?;
        self.client.request(req).await.map_err(|e| self.err(url, e))
    }

    /// GET with the token, answering one bearer challenge and following redirects (blob
    /// downloads are redirected to storage that must not see the registry token).
    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let mut url = url.to_string();
        let mut with_token = true;
        let mut challenged = false;
        for _ in 0..8 {
            let resp = self.send(&url, accept, with_token).await?;
            let status = resp.status();
            if status == hyper::StatusCode::UNAUTHORIZED && !challenged && with_token {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_bearer_challenge)
                    .ok_or_else(|| {
                        self.err(
                            &url,
                            "401 without a bearer challenge (credentials are not supported)",
                        )
                    })?;
                self.token = Some(self.fetch_token(&challenge).await?);
                continue;
            }
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.err(&url, format!("{status} without Location")))?;
                let next = resolve_location(&url, location);
                with_token = same_origin(&url, &next);
                url = next;
                continue;
            }
            if !status.is_success() {
                let body = read_body(resp, 4096).await.unwrap_or_default();
                let detail = String::from_utf8_lossy(&body);
                let what = if status == hyper::StatusCode::NOT_FOUND {
                    format!("not found ({status}) {}", detail.trim())
                } else {
                    format!("{status} {}", detail.trim())
                };
                return Err(self.err(&url, what));
            }
            return Ok(resp);
        }
        Err(self.err(&url, "too many redirects"))
    }

    async fn fetch_token(&self, challenge: &BearerChallenge) -> Result<String> {
        let scope = challenge
            .scope
            .clone()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        // The serializer is not Send: finish it before the first await.
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            if let Some(s) = &challenge.service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &scope);
            q.finish()
        };
        let sep = if challenge.realm.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}{}", challenge.realm, query);
        let resp = self.send(&url, None, false).await?;
        if !resp.status().is_success() {
            return Err(self.err(&url, format!("token request: {}", resp.status())));
        }
        let body = read_body(resp, 1 << 20)
            .await
            .map_err(|e| self.err(&url, e))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.err(&url, format!("token response: {e}")))?;
        v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .map(str::to_string)
            .ok_or_else(|| self.err(&url, "token response without a token"))
    }

    /// Fetches a manifest or index; returns its descriptor and bytes, checking a digest
    /// reference against the bytes.
    async fn manifest(&mut self, reference: &str) -> Result<(JsonDescriptor, Vec<u8>)> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let resp = self.get(&url, Some(MANIFEST_ACCEPT)).await?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let body = read_body(resp, 4 << 20)
            .await
            .map_err(|e| self.err(&url, e))?;
        let digest = sha256_digest(&body);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(self.err(&url, format!("manifest has digest {digest}")));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| self.err(&url, format!("manifest: {e}")))?;
        let media_type = doc["mediaType"]
            .as_str()
            .map(str::to_string)
            .unwrap_or(content_type);
        Ok((
            JsonDescriptor {
                media_type,
                digest,
                size: body.len() as i64,
                annotations: HashMap::new(),
                platform: None,
            },
            body,
        ))
    }

    async fn blob_to_store(&mut self, store: &Store, desc: &JsonDescriptor) -> Result<()> {
        if store.has(&desc.digest).await.map_err(cd_err(self.image))? {
            return Ok(());
        }
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, desc.digest);
        let resp = self.get(&url, None).await?;
        let stream = http_body_util::BodyDataStream::new(resp.into_body())
            .map(|r| r.map_err(std::io::Error::other));
        store
            .write(&desc.digest, desc.size, stream)
            .await
            .map_err(|e| self.err(&url, e))
    }
}

fn same_origin(a: &str, b: &str) -> bool {
    let origin = |u: &str| {
        u.split_once("://").map(|(s, rest)| {
            (
                s.to_string(),
                rest.split('/').next().unwrap_or("").to_string(),
            )
        })
    };
    origin(a) == origin(b)
}

fn resolve_location(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    if location.starts_with('/') {
        format!("{}{location}", &base[..origin_end])
    } else {
        let dir_end = base
            .rfind('/')
            .filter(|i| *i >= origin_end)
            .unwrap_or(origin_end);
        format!("{}/{location}", &base[..dir_end])
    }
}

async fn read_body(
    resp: hyper::Response<hyper::body::Incoming>,
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(data);
            if out.len() > limit {
                return Err(std::io::Error::other(format!(
                    "body larger than {limit} bytes"
                )));
            }
        }
    }
    Ok(out)
}

/// Pulls `reference` from its registry (the default settings: HTTPS with the system CAs,
/// plain HTTP for loopback) and unpacks it.
pub async fn pull(cd: &Containerd, reference: &str) -> Result<Image> {
    pull_with(cd, reference, &Registries::default()).await
}

/// Pulls `reference` with `registries` settings: resolves the tag, picks the host platform
/// from an index, streams the blobs into the content store (containerd checks their
/// digests), then unpacks as an import does.
pub async fn pull_with(cd: &Containerd, reference: &str, registries: &Registries) -> Result<Image> {
    let r = Reference::parse(reference)?;
    let name = r.to_string();
    let host = Registries::api_host(&r.host);
    let mut registry = Registry {
        client: http_client(&name, registries)?,
        image: &name,
        base: format!("{}://{host}", registries.scheme(&r.host)),
        repository: r.repository.clone(),
        token: None,
    };
    tracing::info!(image = %name, "pulling image");
    let store = Store::open(cd, &name).await?;
    let result = pull_into(&mut registry, &store, &r, &name).await;
    store.close().await;
    result
}

async fn pull_into(
    registry: &mut Registry<'_>,
    store: &Store,
    r: &Reference,
    name: &str,
) -> Result<Image> {
    let (top, top_bytes) = registry.manifest(r.manifest_ref()).await?;
    let mut manifest_bytes = top_bytes.clone();
    if is_index(&top.media_type) {
        let index: IndexJson =
            serde_json::from_slice(&top_bytes).map_err(|e| invalid(name, format!("index: {e}")))?;
        let chosen = pick_platform(&index, name)?;
        let (desc, bytes) = registry.manifest(&chosen.digest).await?;
        store
            .write_bytes(&desc.digest, bytes.clone())
            .await
            .map_err(cd_err(name))?;
        manifest_bytes = bytes;
    }
    let manifest: ManifestJson = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(name, format!("manifest: {e}")))?;
    if is_index(&manifest.media_type) {
        return Err(invalid(name, "index inside an index"));
    }
    registry.blob_to_store(store, &manifest.config).await?;
    for layer in &manifest.layers {
        registry.blob_to_store(store, layer).await?;
    }
    store
        .write_bytes(&top.digest, top_bytes)
        .await
        .map_err(cd_err(name))?;
    let image = store.finish_image(name, &top).await?;
    tracing::info!(image = %name, digest = %image.digest, "pulled image");
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("rancher/pause:3.6", "docker.io/rancher/pause:3.6"),
            ("index.docker.io/library/nginx", "docker.io/library/nginx:latest"),
            ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("registry:5000/team/app:v2", "registry:5000/team/app:v2"),
            (
                "nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "docker.io/library/nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
            (
                "nginx:1.25@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "docker.io/library/nginx:1.25@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_reference(input).unwrap(), want, "{input}");
        }
        for bad in [
            "",
            "Busybox",
            "nginx:",
            "nginx@sha256:12",
            "a b",
            "docker.io/",
        ] {
            assert!(
                normalize_reference(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn default_pull_policy_follows_the_tag() {
        assert_eq!(PullPolicy::from_pod(None, "busybox"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::from_pod(None, "busybox:latest"),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::from_pod(None, "busybox:1.36"),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::from_pod(Some("Never"), "busybox"),
            PullPolicy::Never
        );
    }

    #[test]
    fn chain_id_follows_the_oci_spec() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let want = sha256_digest(b"sha256:aaaa sha256:bbbb");
        assert_eq!(chain_id(&[a.clone(), b.clone()]), Some(want.clone()));
        let c = "sha256:cccc".to_string();
        assert_eq!(
            chain_id(&[a, b, c]),
            Some(sha256_digest(format!("{want} sha256:cccc").as_bytes()))
        );
    }

    #[test]
    fn parses_docker_hub_challenge() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#;
        assert_eq!(
            parse_bearer_challenge(h),
            Some(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
        assert_eq!(
            parse_bearer_challenge("Bearer realm=https://r/t"),
            Some(BearerChallenge {
                realm: "https://r/t".into(),
                service: None,
                scope: None
            })
        );
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let r = Registries {
            insecure: vec!["registry.lan:5000".into()],
            ca_file: None,
        };
        assert_eq!(r.scheme("localhost:5000"), "http");
        assert_eq!(r.scheme("127.0.0.1:5000"), "http");
        assert_eq!(r.scheme("registry.lan:5000"), "http");
        assert_eq!(r.scheme("registry.lan:6000"), "https");
        assert_eq!(r.scheme("docker.io"), "https");
        assert_eq!(Registries::api_host("docker.io"), "registry-1.docker.io");
    }

    #[test]
    fn redirects_resolve_and_drop_the_token_across_origins() {
        let base = "https://reg.example/v2/app/blobs/sha256:1";
        assert_eq!(resolve_location(base, "/x/y"), "https://reg.example/x/y");
        assert_eq!(
            resolve_location(base, "https://cdn.example/b"),
            "https://cdn.example/b"
        );
        assert_eq!(
            resolve_location(base, "z"),
            "https://reg.example/v2/app/blobs/z"
        );
        assert!(same_origin(base, "https://reg.example/other"));
        assert!(!same_origin(base, "https://cdn.example/b"));
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29T23:59:59Z
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn platform_is_picked_from_an_index() {
        let index: IndexJson = serde_json::from_value(serde_json::json!({
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:s390", "size": 1,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:host", "size": 1,
                 "platform": {"os": "linux", "architecture": host_arch()}},
            ]
        }))
        .unwrap();
        assert_eq!(pick_platform(&index, "x").unwrap().digest, "sha256:host");
        let other: IndexJson = serde_json::from_value(serde_json::json!({
            "manifests": [{"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:s390", "size": 1,
                           "platform": {"os": "linux", "architecture": "s390x"}}]
        }))
        .unwrap();
        let err = pick_platform(&other, "docker.io/library/x:1").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "image docker.io/library/x:1: no manifest for linux/{}",
                host_arch()
            )
        );
    }

    #[test]
    fn never_policy_error_names_the_image() {
        let e = ImageError::NotPresent {
            image: "docker.io/library/nginx:1".into(),
        };
        assert_eq!(
            e.to_string(),
            "image docker.io/library/nginx:1 not found in the content store and imagePullPolicy is Never"
        );
    }
}
