//! containerd through its gRPC API (the `containerd-client` crate): snapshots, containers,
//! tasks, exec processes and task-exit events, all in one containerd namespace.
//!
//! Every request carries the `containerd-namespace` metadata header (and `containerd-lease`
//! when the client was derived with [`Containerd::with_lease`]), which is how containerd scopes
//! its objects; nothing here shells out to `ctr`.
//!
//! # Stdio FIFOs
//!
//! A task's stdout/stderr are named pipes made by [`make_fifos`]. containerd's shim opens the
//! write ends (and keeps a read end of its own, so the container never gets EPIPE when the
//! agent goes away) while it handles `create_task` (for an exec: `start_exec`), and that open
//! blocks until a reader exists. So the caller must:
//! 1. open the read ends with [`open_fifo_reader`] (non-blocking, returns at once) before
//!    calling `create_task` / `start_exec`;
//! 2. start reading only after that call returned: until the shim has its write end open a
//!    read would see end-of-file.
//!
//! Reads then end (EOF) once the process exited and the shim finished copying its output.
//! A stdin FIFO is opened by the shim for reading at the same point; the caller opens its
//! write end with [`open_fifo_writer`] after the call returned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::tonic::metadata::MetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{self, Code, Request};
use containerd_client::types::v1::Status as ProcessStatus;
use containerd_client::types::Mount;
use futures_util::{Stream, StreamExt};
use prost::Message;

pub use containerd_client::types::Mount as SnapshotMount;

/// The Any type URL containerd registers for an OCI runtime spec.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The Any type URL containerd registers for an OCI process spec (exec).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// The shim every container runs under.
pub const RUNTIME_RUNC_V2: &str = "io.containerd.runc.v2";
const SNAPSHOTTER_PLUGIN_TYPE: &str = "io.containerd.snapshotter.v1";
const TASK_EXIT_TOPIC: &str = "/tasks/exit";
/// Our own event, published to make a fresh subscription deliver something (see
/// `subscribe_task_exits`); no other subscriber filters for it.
const PING_TOPIC_PREFIX: &str = "/cairn/subscribed";
const PING_TYPE_URL: &str = "types.containerd.io/cairn/SubscriptionPing";
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd socket {socket} did not accept connections within {waited:?}: {reason}")]
    Connect {
        socket: PathBuf,
        waited: Duration,
        reason: String,
    },
    #[error("containerd {op} {object}: {code:?}: {message}")]
    Rpc {
        op: &'static str,
        object: String,
        code: Code,
        message: String,
    },
    #[error("containerd namespace {0:?} is not valid gRPC metadata")]
    Namespace(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {id}: spec JSON: {source}")]
    Spec {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("decoding a containerd event: {0}")]
    Event(#[from] prost::DecodeError),
    #[error("no usable snapshotter: neither overlayfs nor native loaded in containerd")]
    NoSnapshotter,
}

impl ContainerdError {
    /// The object named in the call does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ContainerdError::Rpc {
                code: Code::NotFound,
                ..
            }
        )
    }

    /// The object named in the call exists already.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            ContainerdError::Rpc {
                code: Code::AlreadyExists,
                ..
            }
        )
    }
}

pub type Result<T, E = ContainerdError> = std::result::Result<T, E>;

/// Builds the error mapper for one call, naming the operation and the object it was about.
pub(crate) fn rpc_err(
    op: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(tonic::Status) -> ContainerdError {
    let object = object.into();
    move |s| ContainerdError::Rpc {
        op,
        object,
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// Paths of a process's stdio FIFOs (or files), as the shim sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// A pseudo-terminal: the shim writes the console to `stdout` and `stderr` stays unused.
    pub terminal: bool,
}

impl Stdio {
    fn stdin_str(&self) -> String {
        self.stdin
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Makes `<dir>/<id>-stdout`, `<id>-stderr` and (when `stdin`) `<id>-stdin` FIFOs, replacing
/// any left from an earlier run. See the module documentation for who opens which end.
pub fn make_fifos(dir: &Path, id: &str, stdin: bool) -> Result<Stdio> {
    std::fs::create_dir_all(dir).map_err(|source| ContainerdError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let stdout = dir.join(format!("{id}-stdout"));
    let stderr = dir.join(format!("{id}-stderr"));
    mkfifo(&stdout)?;
    mkfifo(&stderr)?;
    let stdin = if stdin {
        let p = dir.join(format!("{id}-stdin"));
        mkfifo(&p)?;
        Some(p)
    } else {
        None
    };
    Ok(Stdio {
        stdin,
        stdout,
        stderr,
        terminal: false,
    })
}

fn mkfifo(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let io_err = |source| ContainerdError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io_err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Opens the read end of a FIFO without blocking (no writer needed yet). Call before the
/// shim opens its write end; read only after `create_task`/`start_exec` returned.
pub fn open_fifo_reader(path: &Path) -> Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|source| ContainerdError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Opens the write end of a stdin FIFO; succeeds once the shim holds its read end (after
/// `create_task`/`start_exec` returned).
pub fn open_fifo_writer(path: &Path) -> Result<tokio::net::unix::pipe::Sender> {
    tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(path)
        .map_err(|source| ContainerdError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// A container record as containerd keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub runtime: String,
    /// The OCI runtime spec, when it was stored as JSON (as this module stores it).
    pub spec: Option<serde_json::Value>,
}

impl From<api::Container> for ContainerInfo {
    fn from(c: api::Container) -> Self {
        ContainerInfo {
            spec: c
                .spec
                .as_ref()
                .and_then(|s| serde_json::from_slice(&s.value).ok()),
            id: c.id,
            image: c.image,
            labels: c.labels,
            snapshotter: c.snapshotter,
            snapshot_key: c.snapshot_key,
            runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Stopped,
    Paused,
    Unknown,
}

impl TaskStatus {
    fn from_proto(s: i32) -> Self {
        match ProcessStatus::try_from(s) {
            Ok(ProcessStatus::Created) => TaskStatus::Created,
            Ok(ProcessStatus::Running) => TaskStatus::Running,
            Ok(ProcessStatus::Stopped) => TaskStatus::Stopped,
            Ok(ProcessStatus::Paused) | Ok(ProcessStatus::Pausing) => TaskStatus::Paused,
            _ => TaskStatus::Unknown,
        }
    }
}

/// A task's (or exec process's) state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub container_id: String,
    /// The exec id; empty for the container's init process.
    pub exec_id: String,
    pub status: TaskStatus,
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

impl From<containerd_client::types::v1::Process> for TaskState {
    fn from(p: containerd_client::types::v1::Process) -> Self {
        TaskState {
            status: TaskStatus::from_proto(p.status),
            exited_at: p.exited_at.and_then(timestamp),
            container_id: p.container_id,
            exec_id: p.id,
            pid: p.pid,
            exit_status: p.exit_status,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: u32,
    pub exited_at: Option<SystemTime>,
}

/// A `/tasks/exit` event: an init process (`id == container_id`) or an exec process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    pub container_id: String,
    /// The process id within the task: the container id for the init process, else the
    /// exec id.
    pub id: String,
    pub pid: u32,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// `None` for containerd's zero time (0001-01-01), which it sends for "not exited".
fn timestamp(t: prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A client for one containerd namespace. Cheap to clone (one shared HTTP/2 channel).
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    namespace_name: String,
    lease: Option<MetadataValue<tonic::metadata::Ascii>>,
    snapshotter: String,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("namespace", &self.namespace_name)
            .field("snapshotter", &self.snapshotter)
            .finish()
    }
}

/// How long `connect` waits for a containerd that is still starting.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

impl Containerd {
    /// Connects to containerd at `socket`, waiting up to 10 s for the socket to appear and
    /// answer (containerd may be starting alongside the agent), then picks the snapshotter.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self> {
        let ns = namespace
            .parse()
            .map_err(|_| ContainerdError::Namespace(namespace.to_string()))?;
        let start = Instant::now();
        let channel = loop {
            let reason = match containerd_client::connect(socket).await {
                Ok(channel) => {
                    let mut v = api::version_client::VersionClient::new(channel.clone());
                    match v.version(()).await {
                        Ok(_) => break channel,
                        Err(s) => s.message().to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= CONNECT_WAIT {
                return Err(ContainerdError::Connect {
                    socket: socket.to_path_buf(),
                    waited: start.elapsed(),
                    reason,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut client = Containerd {
            channel,
            namespace: ns,
            namespace_name: namespace.to_string(),
            lease: None,
            snapshotter: String::new(),
        };
        client.snapshotter = client.pick_snapshotter().await?;
        tracing::debug!(socket = %socket.display(), namespace, snapshotter = %client.snapshotter, "connected to containerd");
        Ok(client)
    }

    /// The containerd namespace every call is made in.
    pub fn namespace(&self) -> &str {
        &self.namespace_name
    }

    /// The snapshotter used for images and containers ("overlayfs" or "native").
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// A client whose calls run under `lease_id`, so that what they create is not garbage
    /// collected before something references it.
    pub fn with_lease(&self, lease_id: &str) -> Result<Self> {
        let lease = lease_id
            .parse()
            .map_err(|_| ContainerdError::Namespace(lease_id.to_string()))?;
        let mut c = self.clone();
        c.lease = Some(lease);
        Ok(c)
    }

    /// Wraps a message in a request carrying the namespace (and lease) headers.
    pub(crate) fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        md.insert("containerd-namespace", self.namespace.clone());
        if let Some(lease) = &self.lease {
            md.insert("containerd-lease", lease.clone());
        }
        req
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn containers(&self) -> api::containers_client::ContainersClient<Channel> {
        api::containers_client::ContainersClient::new(self.channel())
    }

    fn tasks(&self) -> api::tasks_client::TasksClient<Channel> {
        api::tasks_client::TasksClient::new(self.channel())
    }

    pub(crate) fn snapshots(&self) -> snap::snapshots_client::SnapshotsClient<Channel> {
        snap::snapshots_client::SnapshotsClient::new(self.channel())
    }

    /// containerd's version string, e.g. "1.6.20~ds1".
    pub async fn version(&self) -> Result<String> {
        let mut v = api::version_client::VersionClient::new(self.channel());
        let resp = v
            .version(self.request(()))
            .await
            .map_err(rpc_err("version", ""))?;
        Ok(resp.into_inner().version)
    }

    /// overlayfs when its plugin loaded (it does not on every backing filesystem), else
    /// native, which works anywhere at the cost of copying.
    async fn pick_snapshotter(&self) -> Result<String> {
        let mut intro = api::introspection_client::IntrospectionClient::new(self.channel());
        let resp = intro
            .plugins(self.request(api::PluginsRequest {
                filters: vec![format!("type=={SNAPSHOTTER_PLUGIN_TYPE}")],
            }))
            .await
            .map_err(rpc_err("introspect", "snapshotter plugins"))?;
        let plugins = resp.into_inner().plugins;
        let usable = |id: &str| plugins.iter().any(|p| p.id == id && p.init_err.is_none());
        for id in ["overlayfs", "native"] {
            if usable(id) {
                return Ok(id.to_string());
            }
        }
        Err(ContainerdError::NoSnapshotter)
    }

    // --- snapshots ---

    /// Prepares an active (writable) snapshot `key` on top of the committed `parent` (a chain
    /// id; empty for none) and returns the mounts that assemble it.
    pub async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let resp = self
            .snapshots()
            .prepare(self.request(snap::PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
                parent: parent.to_string(),
                labels,
            }))
            .await
            .map_err(rpc_err("prepare snapshot", key))?;
        Ok(resp.into_inner().mounts)
    }

    /// The mounts of an existing snapshot.
    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let resp = self
            .snapshots()
            .mounts(self.request(snap::MountsRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(rpc_err("snapshot mounts", key))?;
        Ok(resp.into_inner().mounts)
    }

    /// Removes snapshot `key`; one that does not exist counts as removed.
    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let res = self
            .snapshots()
            .remove(self.request(snap::RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(rpc_err("remove snapshot", key));
        ignore_not_found(res.map(|_| ()))
    }

    /// Names (keys) of every snapshot in this namespace's snapshotter.
    pub async fn list_snapshots(&self) -> Result<Vec<String>> {
        let mut stream = self
            .snapshots()
            .list(self.request(snap::ListSnapshotsRequest {
                snapshotter: self.snapshotter.clone(),
                filters: vec![],
            }))
            .await
            .map_err(rpc_err("list snapshots", ""))?
            .into_inner();
        let mut names = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(rpc_err("list snapshots", ""))?;
            names.extend(msg.info.into_iter().map(|i| i.name));
        }
        Ok(names)
    }

    // --- containers ---

    /// Creates container `id` from `image` on snapshot `snapshot_key` (prepared by the caller)
    /// with the OCI runtime `spec`, run by runc through the v2 shim.
    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        snapshot_key: &str,
        spec: &serde_json::Value,
        labels: HashMap<String, String>,
    ) -> Result<ContainerInfo> {
        let spec = serde_json::to_vec(spec).map_err(|source| ContainerdError::Spec {
            id: id.to_string(),
            source,
        })?;
        let container = api::Container {
            id: id.to_string(),
            labels,
            image: image.to_string(),
            runtime: Some(api::container::Runtime {
                name: RUNTIME_RUNC_V2.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec,
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: snapshot_key.to_string(),
            ..Default::default()
        };
        let resp = self
            .containers()
            .create(self.request(api::CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(rpc_err("create container", id))?;
        let c = resp.into_inner().container.unwrap_or_default();
        Ok(c.into())
    }

    /// Containers matching any of `filters` (containerd filter syntax, e.g.
    /// `labels."io.cairn.pod.uid"==abc`); all when empty.
    pub async fn list_containers(&self, filters: &[String]) -> Result<Vec<ContainerInfo>> {
        let resp = self
            .containers()
            .list(self.request(api::ListContainersRequest {
                filters: filters.to_vec(),
            }))
            .await
            .map_err(rpc_err("list containers", filters.join(",")))?;
        Ok(resp
            .into_inner()
            .containers
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Container `id`, or `None` when there is no such container.
    pub async fn get_container(&self, id: &str) -> Result<Option<ContainerInfo>> {
        let res = self
            .containers()
            .get(self.request(api::GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(rpc_err("get container", id));
        match res {
            Ok(r) => Ok(r.into_inner().container.map(Into::into)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes container `id` and its snapshot; a missing container or snapshot counts as
    /// deleted. The task must be deleted first.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        let Some(info) = self.get_container(id).await? else {
            return Ok(());
        };
        let res = self
            .containers()
            .delete(self.request(api::DeleteContainerRequest { id: id.to_string() }))
            .await
            .map_err(rpc_err("delete container", id));
        ignore_not_found(res.map(|_| ()))?;
        if !info.snapshot_key.is_empty() {
            let mut snaps = self.clone();
            if !info.snapshotter.is_empty() {
                snaps.snapshotter = info.snapshotter;
            }
            snaps.remove_snapshot(&info.snapshot_key).await?;
        }
        Ok(())
    }

    // --- tasks ---

    /// Creates the task (the shim and the container's init process, not started yet) of
    /// container `id` on `rootfs`. Open the stdio FIFOs' read ends first (see module docs).
    pub async fn create_task(&self, id: &str, rootfs: Vec<Mount>, stdio: &Stdio) -> Result<u32> {
        let resp = self
            .tasks()
            .create(self.request(api::CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdin: stdio.stdin_str(),
                stdout: stdio.stdout.to_string_lossy().into_owned(),
                stderr: stdio.stderr.to_string_lossy().into_owned(),
                terminal: stdio.terminal,
                ..Default::default()
            }))
            .await
            .map_err(rpc_err("create task", id))?;
        Ok(resp.into_inner().pid)
    }

    /// Starts the init process of container `id`; returns its host pid.
    pub async fn start_task(&self, id: &str) -> Result<u32> {
        self.start_process(id, "").await
    }

    async fn start_process(&self, id: &str, exec_id: &str) -> Result<u32> {
        let resp = self
            .tasks()
            .start(self.request(api::StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(rpc_err("start", format!("{id} {exec_id}")))?;
        Ok(resp.into_inner().pid)
    }

    /// State of container `id`'s init process, or `None` when it has no task.
    pub async fn task_state(&self, id: &str) -> Result<Option<TaskState>> {
        self.process_state(id, "").await
    }

    /// State of exec process `exec_id` in container `id` (init process when empty).
    pub async fn process_state(&self, id: &str, exec_id: &str) -> Result<Option<TaskState>> {
        let res = self
            .tasks()
            .get(self.request(api::GetRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(rpc_err("get task", id));
        match res {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                // containerd fills only `id` (the container id, or the exec id).
                let mut state = TaskState::from(p);
                state.container_id = id.to_string();
                state.exec_id = exec_id.to_string();
                state
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `signal` to the init process of `id` (to every process of the container when
    /// `all`, which is how a pod's stragglers are reaped).
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        self.tasks()
            .kill(self.request(api::KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
            .map_err(rpc_err("kill", id))?;
        Ok(())
    }

    /// Sends `signal` to exec process `exec_id` of container `id`.
    pub async fn kill_exec(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        self.tasks()
            .kill(self.request(api::KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal,
                all: false,
            }))
            .await
            .map_err(rpc_err("kill", format!("{id} {exec_id}")))?;
        Ok(())
    }

    /// Waits until the init process of `id` exits (returns at once if it already has).
    pub async fn wait(&self, id: &str) -> Result<ExitInfo> {
        self.wait_process(id, "").await
    }

    async fn wait_process(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        let resp = self
            .tasks()
            .wait(self.request(api::WaitRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(rpc_err("wait", format!("{id} {exec_id}")))?
            .into_inner();
        Ok(ExitInfo {
            code: resp.exit_status,
            exited_at: resp.exited_at.and_then(timestamp),
        })
    }

    /// Deletes the (stopped) task of `id`, which also stops its shim; `None` when there was no
    /// task.
    pub async fn delete_task(&self, id: &str) -> Result<Option<ExitInfo>> {
        let res = self
            .tasks()
            .delete(self.request(api::DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
            .map_err(rpc_err("delete task", id));
        match res {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some(ExitInfo {
                    code: r.exit_status,
                    exited_at: r.exited_at.and_then(timestamp),
                }))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every task (init process) in the namespace.
    pub async fn list_tasks(&self) -> Result<Vec<TaskState>> {
        let resp = self
            .tasks()
            .list(self.request(api::ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(rpc_err("list tasks", ""))?;
        Ok(resp
            .into_inner()
            .tasks
            .into_iter()
            .map(|p| {
                // For init processes containerd puts the container id in `id` only.
                let mut state = TaskState::from(p);
                if state.container_id.is_empty() {
                    state.container_id = std::mem::take(&mut state.exec_id);
                }
                state
            })
            .collect())
    }

    // --- exec ---

    /// Adds exec process `exec_id` (an OCI process spec) to the running task of `id`. Nothing
    /// runs until [`Containerd::start_exec`].
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        stdio: &Stdio,
    ) -> Result<()> {
        let spec = serde_json::to_vec(process).map_err(|source| ContainerdError::Spec {
            id: id.to_string(),
            source,
        })?;
        self.tasks()
            .exec(self.request(api::ExecProcessRequest {
                container_id: id.to_string(),
                stdin: stdio.stdin_str(),
                stdout: stdio.stdout.to_string_lossy().into_owned(),
                stderr: stdio.stderr.to_string_lossy().into_owned(),
                terminal: stdio.terminal,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.to_string(),
                    value: spec,
                }),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(rpc_err("exec", format!("{id} {exec_id}")))?;
        Ok(())
    }

    /// Starts exec process `exec_id`; returns its host pid. Open its FIFOs' read ends first.
    pub async fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32> {
        self.start_process(id, exec_id).await
    }

    /// Waits for exec process `exec_id` to exit.
    pub async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<ExitInfo> {
        self.wait_process(id, exec_id).await
    }

    /// Resizes the terminal of exec process `exec_id` (the init process when empty).
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        self.tasks()
            .resize_pty(self.request(api::ResizePtyRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                width,
                height,
            }))
            .await
            .map_err(rpc_err("resize pty", format!("{id} {exec_id}")))?;
        Ok(())
    }

    /// Closes the stdin of exec process `exec_id` inside the shim, so the process reads EOF.
    pub async fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        self.tasks()
            .close_io(self.request(api::CloseIoRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdin: true,
            }))
            .await
            .map_err(rpc_err("close io", format!("{id} {exec_id}")))?;
        Ok(())
    }

    /// Deletes exited exec process `exec_id`; `None` when it did not exist.
    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<Option<ExitInfo>> {
        let res = self
            .tasks()
            .delete_process(self.request(api::DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(rpc_err("delete process", format!("{id} {exec_id}")));
        match res {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some(ExitInfo {
                    code: r.exit_status,
                    exited_at: r.exited_at.and_then(timestamp),
                }))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    // --- events ---

    async fn publish_ping(&self, topic: &str) {
        let mut events = api::events_client::EventsClient::new(self.channel());
        let req = self.request(api::PublishRequest {
            topic: topic.to_string(),
            event: Some(prost_types::Any {
                type_url: PING_TYPE_URL.to_string(),
                value: Vec::new(),
            }),
        });
        if let Err(e) = events.publish(req).await {
            tracing::debug!(error = %e.message(), "publishing subscription ping");
        }
    }

    /// Every process exit in this namespace from now on, init and exec processes alike. The
    /// stream ends when containerd goes away; subscribe again after reconnecting and reconcile
    /// with [`Containerd::list_tasks`] for exits missed in between.
    pub async fn subscribe_task_exits(
        &self,
    ) -> Result<impl Stream<Item = Result<TaskExit>> + Send + 'static> {
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).map_err(|e| ContainerdError::Io {
            path: PathBuf::from("getrandom"),
            source: std::io::Error::other(e.to_string()),
        })?;
        let ping_topic = format!("{PING_TOPIC_PREFIX}/{}", hex::encode(nonce));
        let filters = vec![
            format!(
                "topic==\"{TASK_EXIT_TOPIC}\",namespace==\"{}\"",
                self.namespace_name
            ),
            format!("topic==\"{ping_topic}\""),
        ];
        let mut events = api::events_client::EventsClient::new(self.channel());
        let subscribe = events.subscribe(self.request(api::SubscribeRequest { filters }));
        let mut subscribe = std::pin::pin!(subscribe);
        // containerd sends the response headers with the first event only, so the call does
        // not return until something is published. Publishing our own ping until it does both
        // unblocks the call and proves the subscription is live: no exit after this returns
        // can be missed.
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let stream = loop {
            tokio::select! {
                res = &mut subscribe => {
                    break res.map_err(rpc_err("subscribe", TASK_EXIT_TOPIC))?.into_inner();
                }
                _ = tick.tick() => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(ContainerdError::Rpc {
                            op: "subscribe",
                            object: TASK_EXIT_TOPIC.to_string(),
                            code: Code::DeadlineExceeded,
                            message: "no event came through the subscription".into(),
                        });
                    }
                    self.publish_ping(&ping_topic).await;
                }
            }
        };
        Ok(stream.filter_map(|envelope| async move {
            let envelope = match envelope {
                Ok(e) => e,
                Err(s) => return Some(Err(rpc_err("event stream", TASK_EXIT_TOPIC)(s))),
            };
            if envelope.topic != TASK_EXIT_TOPIC {
                return None;
            }
            let event = envelope.event?;
            Some(decode_task_exit(&event.value))
        }))
    }
}

fn decode_task_exit(bytes: &[u8]) -> Result<TaskExit> {
    let e = containerd_client::events::TaskExit::decode(bytes)?;
    Ok(TaskExit {
        exited_at: e.exited_at.and_then(timestamp),
        container_id: e.container_id,
        id: e.id,
        pid: e.pid,
        exit_status: e.exit_status,
    })
}

fn ignore_not_found(res: Result<()>) -> Result<()> {
    match res {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn make_fifos_replaces_old_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c1-stdout"), b"stale").unwrap();
        let stdio = make_fifos(dir.path(), "c1", true).unwrap();
        for p in [&stdio.stdout, &stdio.stderr, stdio.stdin.as_ref().unwrap()] {
            let ft = std::fs::metadata(p).unwrap().file_type();
            assert!(ft.is_fifo(), "{} is not a FIFO", p.display());
        }
        let no_stdin = make_fifos(dir.path(), "c2", false).unwrap();
        assert_eq!(no_stdin.stdin, None);
    }

    /// The read end opens without a writer, and once a writer has come and gone the reader
    /// sees the data and then EOF: the contract the module docs describe.
    #[tokio::test]
    async fn fifo_reader_opens_before_writer_and_ends_at_eof() {
        let dir = tempfile::tempdir().unwrap();
        let stdio = make_fifos(dir.path(), "p", false).unwrap();
        let mut reader = open_fifo_reader(&stdio.stdout).unwrap();
        let mut writer = open_fifo_writer(&stdio.stdout).unwrap();
        writer.write_all(b"hello\n").await.unwrap();
        drop(writer);
        let mut out = String::new();
        reader.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn writer_needs_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let stdio = make_fifos(dir.path(), "w", false).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        // ENXIO: no process has the read end open, which is why the shim must be given one.
        let err = open_fifo_writer(&stdio.stdout).unwrap_err();
        assert!(err.to_string().contains("w-stdout"), "{err}");
    }

    #[test]
    fn task_exit_event_decodes() {
        let event = containerd_client::events::TaskExit {
            container_id: "c".into(),
            id: "e1".into(),
            pid: 42,
            exit_status: 3,
            exited_at: Some(prost_types::Timestamp {
                seconds: 10,
                nanos: 5,
            }),
        };
        let exit = decode_task_exit(&event.encode_to_vec()).unwrap();
        assert_eq!(
            exit,
            TaskExit {
                container_id: "c".into(),
                id: "e1".into(),
                pid: 42,
                exit_status: 3,
                exited_at: Some(UNIX_EPOCH + Duration::new(10, 5)),
            }
        );
    }

    #[test]
    fn zero_time_is_no_time() {
        // containerd's Go zero time, 0001-01-01T00:00:00Z.
        let zero = prost_types::Timestamp {
            seconds: -62135596800,
            nanos: 0,
        };
        assert_eq!(timestamp(zero), None);
    }

    #[test]
    fn not_found_is_recognised() {
        let e = rpc_err("get", "x")(tonic::Status::not_found("nope"));
        assert!(e.is_not_found());
        assert!(!e.is_already_exists());
        assert_eq!(e.to_string(), "containerd get x: NotFound: nope");
    }
}
