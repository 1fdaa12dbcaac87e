//! One pod's life on this node, driven by one task: the sandbox (network namespace, IP,
//! volumes, /etc files), init containers in order, the app containers with restarts and
//! back-off, probes, status reports, and graceful termination that leaves nothing behind.
//!
//! Each container instance is a containerd container + task whose id is
//! `<pod uid>-<container>-<attempt>`; its stdout/stderr FIFOs are copied into the CRI log
//! file for that attempt. What the worker knows survives an agent restart in
//! `<data>/pods/<uid>/state.json`, and running tasks are adopted again by id.

use super::containerd::{self, Containerd, ExitInfo};
use super::podstatus::{backoff_delay, ContainerRecord, ContainerState, PodRecord, RestartPolicy};
use super::{env, images, logs, probes, spec, volumes, NodeContext};
use cairn_wire::events::{container_field_path, object_reference, EventRecord, EventType};
use cairn_wire::time::{now_rfc3339 as now, rfc3339_at as rfc3339};
use cairn_wire::value::str_at;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Mutex, Notify};

/// Labels on every containerd container the agent makes, so it can find its own.
pub const LABEL_POD_UID: &str = "io.cairn.pod.uid";
pub const LABEL_POD_NAME: &str = "io.cairn.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.cairn.pod.namespace";
pub const LABEL_CONTAINER: &str = "io.cairn.container.name";
pub const LABEL_ATTEMPT: &str = "io.cairn.container.attempt";

/// How long a worker sleeps when nothing wakes it: the slowest probe period is checked in
/// between anyway.
const RESYNC: Duration = Duration::from_secs(10);

/// How often ConfigMap, Secret and downward API volumes are brought up to date.
const VOLUME_REFRESH: Duration = Duration::from_secs(60);

/// One running (or just exited) container instance.
#[derive(Clone)]
pub struct Instance {
    pub id: String,
    pub attempt: u32,
    pub spec: Value,
    pub started: Instant,
    pub started_at: String,
    /// Set once the task exited; the worker reaps it on its next pass.
    pub exit: watch::Receiver<Option<ExitInfo>>,
    /// Its own stdio, for `kubectl attach`.
    pub attach: Arc<super::attach::Attachable>,
}

/// What the worker shares with the node's log/exec handlers.
pub struct PodShared {
    pub record: Mutex<PodRecord>,
    pub instances: Mutex<HashMap<String, Instance>>,
    pub wake: Notify,
    pub desired: watch::Sender<Option<Value>>,
}

impl PodShared {
    pub fn new(record: PodRecord, pod: Value) -> Arc<Self> {
        Arc::new(PodShared {
            record: Mutex::new(record),
            instances: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            desired: watch::channel(Some(pod)).0,
        })
    }
}

pub fn pod_dir(ctx: &NodeContext, uid: &str) -> PathBuf {
    ctx.data_dir.join("pods").join(uid)
}

pub fn instance_id(uid: &str, container: &str, attempt: u32) -> String {
    format!("{uid}-{container}-{attempt}")
}

/// A new record for a pod this node has not run before.
pub fn new_record(ctx: &NodeContext, pod: &Value) -> PodRecord {
    let names = |path: &str| -> Vec<ContainerRecord> {
        pod.pointer(path)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| ContainerRecord::new(str_at(c, "/name"), str_at(c, "/image")))
            .collect()
    };
    let mut containers = names("/spec/containers");
    let init_containers = names("/spec/initContainers");
    if !init_containers.is_empty() {
        for c in &mut containers {
            c.state = ContainerState::waiting("PodInitializing", "");
        }
    }
    PodRecord {
        uid: str_at(pod, "/metadata/uid").to_string(),
        namespace: str_at(pod, "/metadata/namespace").to_string(),
        name: str_at(pod, "/metadata/name").to_string(),
        restart_policy: RestartPolicy::parse(
            pod.pointer("/spec/restartPolicy").and_then(Value::as_str),
        ),
        host_ip: ctx.host_ip.clone(),
        pod_ip: None,
        start_time: now(),
        sandbox_ready: false,
        init_containers,
        containers,
        problem: None,
    }
}

pub fn load_state(ctx: &NodeContext, uid: &str) -> Option<(Value, PodRecord)> {
    let dir = pod_dir(ctx, uid);
    let pod = serde_json::from_slice(&std::fs::read(dir.join("pod.json")).ok()?).ok()?;
    let record = serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()?;
    Some((pod, record))
}

fn save_json(path: &std::path::Path, v: &impl serde::Serialize) {
    let write = || -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(v)?)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "saving pod state");
    }
}

/// What became of one pass over a container.
enum Step {
    /// Nothing to do until something changes.
    Idle,
    /// Look again after this long (back-off, probe period).
    After(Duration),
}

pub struct Worker {
    ctx: Arc<NodeContext>,
    uid: String,
    shared: Arc<PodShared>,
    /// Volume name → host directory, once set up.
    volumes: HashMap<String, PathBuf>,
    probes: HashMap<String, probes::ContainerProbes>,
    /// Back-off deadline per container after a restart-worthy exit.
    backoff_until: HashMap<String, Instant>,
    last_status: Option<Value>,
    /// When configMap/secret/downwardAPI volume contents were last brought up to date.
    volumes_refreshed: Instant,
    pod: Pod,
    /// The pod object `pod` was parsed from.
    pod_json: Option<Value>,
    /// The record as last written to `state.json`.
    saved_record: std::sync::Mutex<Option<PodRecord>>,
}

impl Worker {
    /// Records an Event about this pod (or one of its containers: `(name, init)`).
    fn event(
        &self,
        container: Option<(&str, bool)>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        let pod = match &self.pod_json {
            Some(p) => p.clone(),
            None => serde_json::to_value(&self.pod).unwrap_or_default(),
        };
        let path = container.map(|(name, init)| container_field_path(name, init));
        let involved = object_reference(&pod, path.as_deref());
        self.ctx
            .events
            .record(EventRecord::new(involved, kind, reason, message));
    }

    pub fn new(ctx: Arc<NodeContext>, uid: String, shared: Arc<PodShared>) -> Worker {
        Worker {
            ctx,
            uid,
            shared,
            volumes: HashMap::new(),
            probes: HashMap::new(),
            backoff_until: HashMap::new(),
            last_status: None,
            volumes_refreshed: Instant::now(),
            pod: Pod::default(),
            pod_json: None,
            saved_record: std::sync::Mutex::new(None),
        }
    }

    /// Runs until the pod is gone from this node.
    pub async fn run(mut self) {
        let mut desired = self.shared.desired.subscribe();
        loop {
            let current = desired.borrow_and_update().clone();
            let next = match current {
                None => {
                    self.terminate(Some(0)).await;
                    self.teardown().await;
                    return;
                }
                Some(pod) if pod.pointer("/metadata/deletionTimestamp").is_some() => {
                    let grace = pod
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_i64);
                    self.load_pod(&pod);
                    self.terminate(grace).await;
                    self.report_status().await;
                    self.teardown().await;
                    self.finish_deletion(&pod).await;
                    return;
                }
                Some(pod) => {
                    self.load_pod(&pod);
                    let next = self.sync().await;
                    self.report_status().await;
                    next
                }
            };
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                r = desired.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    /// Takes the pod as the API has it now; parsed and written to disk only when it changed
    /// (the worker looks at it on every pass, and nodes often run from SD cards).
    fn load_pod(&mut self, pod: &Value) {
        if self.pod_json.as_ref() == Some(pod) {
            return;
        }
        match serde_json::from_value::<Pod>(pod.clone()) {
            Ok(p) => self.pod = p,
            Err(e) => tracing::warn!(uid = %self.uid, error = %e, "pod does not parse"),
        }
        save_json(&pod_dir(&self.ctx, &self.uid).join("pod.json"), pod);
        self.pod_json = Some(pod.clone());
    }

    /// Writes the record to disk when it differs from what was written last.
    async fn save_record(&self) {
        let r = self.shared.record.lock().await.clone();
        let Ok(mut saved) = self.saved_record.lock() else {
            return;
        };
        if saved.as_ref() != Some(&r) {
            save_json(&pod_dir(&self.ctx, &self.uid).join("state.json"), &r);
            *saved = Some(r);
        }
    }

    fn node_facts(&self, pod_ip: Option<String>) -> env::NodeFacts {
        env::NodeFacts {
            node_name: self.ctx.node_name.clone(),
            host_ip: self.ctx.host_ip.clone(),
            pod_ip,
        }
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    /// One pass: sandbox, init containers, containers. Returns when to look again.
    async fn sync(&mut self) -> Duration {
        if let Err((reason, message)) = self.ensure_sandbox().await {
            tracing::warn!(uid = %self.uid, %reason, %message, "pod sandbox");
            self.event(None, EventType::Warning, &reason, message.clone());
            self.shared.record.lock().await.problem = Some((reason, message));
            self.save_record().await;
            return Duration::from_secs(5);
        }
        self.shared.record.lock().await.problem = None;
        self.refresh_volumes().await;
        let mut next = RESYNC;
        let spec = self.pod.spec.clone().unwrap_or_default();
        // Init containers, one at a time, each to a successful exit.
        let inits = spec.init_containers.clone().unwrap_or_default();
        for c in &inits {
            let done = {
                let r = self.shared.record.lock().await;
                r.init_containers
                    .iter()
                    .find(|x| x.name == c.name)
                    .map(|x| x.state.exit_code() == Some(0))
                    .unwrap_or(false)
            };
            if done {
                continue;
            }
            match self.sync_container(c, true).await {
                Step::Idle => {}
                Step::After(d) => next = next.min(d),
            }
            self.save_record().await;
            return next;
        }
        {
            let mut r = self.shared.record.lock().await;
            for c in &mut r.containers {
                if matches!(&c.state, ContainerState::Waiting { reason, .. } if reason == "PodInitializing")
                {
                    c.state = ContainerState::waiting("ContainerCreating", "");
                }
            }
        }
        let phase_over = {
            let r = self.shared.record.lock().await;
            matches!(r.phase(), "Succeeded" | "Failed")
        };
        if !phase_over {
            for c in &spec.containers {
                match self.sync_container(c, false).await {
                    Step::Idle => {}
                    Step::After(d) => next = next.min(d),
                }
            }
        }
        self.save_record().await;
        next
    }

    /// Updated ConfigMaps and Secrets reach running containers (atomically, through the
    /// volume's `..data` link), at most once a minute, as kubelet's periodic sync does.
    async fn refresh_volumes(&mut self) {
        if self.volumes.is_empty() || self.volumes_refreshed.elapsed() < VOLUME_REFRESH {
            return;
        }
        self.volumes_refreshed = Instant::now();
        let ip = self.shared.record.lock().await.pod_ip.clone();
        if let Err(e) = volumes::refresh(
            &self.ctx.data_dir.join("pods"),
            &self.pod,
            self.ctx.source.as_ref(),
            &self.node_facts(ip),
        )
        .await
        {
            tracing::info!(uid = %self.uid, error = %e, "refreshing pod volumes");
        }
    }

    async fn ensure_sandbox(&mut self) -> Result<(), (String, String)> {
        let ready = self.shared.record.lock().await.sandbox_ready;
        let dir = pod_dir(&self.ctx, &self.uid);
        if !ready {
            let t0 = Instant::now();
            let (ns, name) = {
                let r = self.shared.record.lock().await;
                (r.namespace.clone(), r.name.clone())
            };
            let ip = if self.host_network() {
                self.ctx.host_ip.clone()
            } else {
                let netns = self
                    .ctx
                    .net
                    .create_netns(&self.uid)
                    .await
                    .map_err(|e| ("FailedCreatePodSandBox".to_string(), e.to_string()))?;
                let pn = self
                    .ctx
                    .net
                    .add(&self.uid, &ns, &name, &netns)
                    .await
                    .map_err(|e| ("FailedCreatePodSandBox".to_string(), e.to_string()))?;
                pn.ip.to_string()
            };
            self.write_etc_files(&dir, &ip)
                .map_err(|e| ("FailedCreatePodSandBox".to_string(), e.to_string()))?;
            tracing::info!(uid = %self.uid, pod = %name, %ip, ms = t0.elapsed().as_millis() as u64, "pod sandbox ready");
            let mut r = self.shared.record.lock().await;
            r.pod_ip = Some(ip);
            r.sandbox_ready = true;
        }
        if self.volumes.is_empty()
            && self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|v| !v.is_empty())
        {
            let ip = self.shared.record.lock().await.pod_ip.clone();
            self.volumes = volumes::setup(
                &self.ctx.data_dir.join("pods"),
                &self.pod,
                self.ctx.source.as_ref(),
                &self.node_facts(ip),
            )
            .await
            .map_err(|e| ("FailedMount".to_string(), e.to_string()))?;
        }
        Ok(())
    }

    fn write_etc_files(&self, dir: &std::path::Path, ip: &str) -> std::io::Result<()> {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let hostname = spec::pod_hostname(&self.pod);
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        if self.host_network() {
            std::fs::copy("/etc/resolv.conf", etc.join("resolv.conf")).map(|_| ())?;
            std::fs::write(
                etc.join("hosts"),
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            )?;
        } else {
            std::fs::write(
                etc.join("resolv.conf"),
                super::dns::resolv_conf(self.ctx.cluster_dns, &ns, &self.ctx.cluster_domain, &[]),
            )?;
            let mut hosts = format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{ip}\t{hostname}\n"
            );
            for alias in self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.host_aliases.clone())
                .unwrap_or_default()
            {
                hosts.push_str(&format!(
                    "{}\t{}\n",
                    alias.ip,
                    alias.hostnames.unwrap_or_default().join("\t")
                ));
            }
            std::fs::write(etc.join("hosts"), hosts)?;
        }
        std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
        Ok(())
    }

    fn etc_mounts(&self, container: &str) -> Vec<spec::MountSpec> {
        let dir = pod_dir(&self.ctx, &self.uid);
        let term = dir.join("termination").join(container);
        let _ = std::fs::create_dir_all(&term);
        let term_file = term.join("log");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&term_file);
        let bind = |dest: &str, src: PathBuf, ro: bool| spec::MountSpec {
            destination: dest.to_string(),
            source: src,
            read_only: ro,
            kind: spec::MountKind::Bind,
        };
        vec![
            bind("/etc/hosts", dir.join("etc/hosts"), false),
            bind("/etc/resolv.conf", dir.join("etc/resolv.conf"), false),
            bind("/etc/hostname", dir.join("etc/hostname"), false),
            bind("/dev/termination-log", term_file, false),
        ]
    }

    async fn record_of(&self, name: &str, init: bool) -> Option<ContainerRecord> {
        let r = self.shared.record.lock().await;
        let list = if init {
            &r.init_containers
        } else {
            &r.containers
        };
        list.iter().find(|c| c.name == name).cloned()
    }

    async fn update_record(&self, name: &str, init: bool, f: impl FnOnce(&mut ContainerRecord)) {
        let mut r = self.shared.record.lock().await;
        let list = if init {
            &mut r.init_containers
        } else {
            &mut r.containers
        };
        if let Some(c) = list.iter_mut().find(|c| c.name == name) {
            f(c);
        }
    }

    /// One container: start it, reap its exit, restart it per policy, probe it.
    async fn sync_container(&mut self, c: &Container, init: bool) -> Step {
        let Some(rec) = self.record_of(&c.name, init).await else {
            return Step::Idle;
        };
        let instance = self.shared.instances.lock().await.get(&c.name).cloned();
        if let Some(inst) = instance {
            let exited = *inst.exit.borrow();
            match exited {
                None => return self.probe(c, &inst, init).await,
                Some(exit) => {
                    self.reap(c, &inst, exit, init).await;
                }
            }
        }
        let rec = self.record_of(&c.name, init).await.unwrap_or(rec);
        let policy = self.shared.record.lock().await.restart_policy;
        // Init containers restart on failure unless the pod never restarts.
        let effective = if init && policy == RestartPolicy::Always {
            RestartPolicy::OnFailure
        } else {
            policy
        };
        if let ContainerState::Terminated { exit_code, .. } = &rec.state {
            if !effective.restarts(*exit_code) {
                return Step::Idle;
            }
        }
        if let Some(until) = self.backoff_until.get(&c.name) {
            let now = Instant::now();
            if *until > now {
                let wait = *until - now;
                let message = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    backoff_delay(rec.restart_count).as_secs(),
                    c.name,
                    self.pod.metadata.name.clone().unwrap_or_default(),
                    self.pod.metadata.namespace.clone().unwrap_or_default(),
                    self.uid
                );
                let event = format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    c.name,
                    self.pod.metadata.name.clone().unwrap_or_default(),
                    self.pod.metadata.namespace.clone().unwrap_or_default(),
                    self.uid
                );
                self.event(Some((&c.name, init)), EventType::Warning, "BackOff", event);
                self.update_record(&c.name, init, |r| r.wait("CrashLoopBackOff", message))
                    .await;
                return Step::After(wait);
            }
        }
        match self.start(c, init).await {
            Ok(()) => Step::After(Duration::from_millis(500)),
            Err((reason, message)) => {
                tracing::info!(uid = %self.uid, container = %c.name, %reason, %message, "container not started");
                let (warning, at) = (EventType::Warning, Some((c.name.as_str(), init)));
                if reason == "ErrImagePull" && self.backoff_until.contains_key(&c.name) {
                    let image = c.image.clone().unwrap_or_default();
                    self.event(
                        at,
                        warning,
                        "BackOff",
                        format!("Back-off pulling image {image:?}"),
                    );
                }
                self.event(at, warning, "Failed", format!("Error: {reason}"));
                self.update_record(&c.name, init, |r| r.wait(&reason, message))
                    .await;
                let attempts = self.backoff_until.len() as u32 + 1;
                Step::After(backoff_delay(attempts).min(Duration::from_secs(20)))
            }
        }
    }

    /// The container exited: record it, remove the instance, and arm the restart back-off.
    async fn reap(&mut self, c: &Container, inst: &Instance, exit: ExitInfo, init: bool) {
        let code = exit.code as i32;
        let finished = exit.exited_at.map(rfc3339).unwrap_or_else(now);
        let message = std::fs::read_to_string(
            pod_dir(&self.ctx, &self.uid)
                .join("termination")
                .join(&c.name)
                .join("log"),
        )
        .unwrap_or_default();
        let reason = if code == 0 {
            "Completed"
        } else if code == 137 && self.oom_killed(&inst.id) {
            "OOMKilled"
        } else {
            "Error"
        };
        let terminated = ContainerState::Terminated {
            exit_code: code,
            reason: reason.to_string(),
            message: message.trim().to_string(),
            started_at: inst.started_at.clone(),
            finished_at: finished,
        };
        self.update_record(&c.name, init, |r| {
            r.state = terminated;
            r.ready = false;
        })
        .await;
        self.remove_instance(&inst.id).await;
        self.shared.instances.lock().await.remove(&c.name);
        self.probes.remove(&c.name);
        // A container that ran for 10 minutes starts over with a short back-off.
        let rec = self.record_of(&c.name, init).await;
        let restarts = rec.map(|r| r.restart_count).unwrap_or(0);
        let delay = if inst.started.elapsed() > Duration::from_secs(600) || restarts == 0 {
            Duration::ZERO
        } else {
            backoff_delay(restarts)
        };
        self.backoff_until
            .insert(c.name.clone(), Instant::now() + delay);
        self.save_record().await;
    }

    /// Whether the kernel's OOM killer ended the instance: its cgroup (still there until the
    /// task is deleted) counts `oom_kill` events, in memory.events on cgroup v2 and in
    /// memory.oom_control on v1.
    fn oom_killed(&self, id: &str) -> bool {
        let rel = format!("cairn/pod{}/{id}", self.uid);
        let root = std::path::Path::new("/sys/fs/cgroup");
        [
            root.join(&rel).join("memory.events"),
            root.join("memory").join(&rel).join("memory.oom_control"),
        ]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|text| {
            text.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    }

    /// Starts a new instance of container `c`.
    async fn start(&mut self, c: &Container, init: bool) -> Result<(), (String, String)> {
        let t0 = Instant::now();
        let ctx = self.ctx.clone();
        let rec = self.record_of(&c.name, init).await.ok_or_else(|| {
            (
                "CreateContainerError".to_string(),
                "unknown container".to_string(),
            )
        })?;
        let policy = images::PullPolicy::from_pod(
            c.image_pull_policy.as_deref(),
            c.image.as_deref().unwrap_or(""),
        );
        let image_ref = c.image.clone().unwrap_or_default();
        let at = Some((c.name.as_str(), init));
        let cached = match policy {
            images::PullPolicy::Always => None,
            _ => images::get_image(&ctx.ctr, &image_ref).await.ok().flatten(),
        };
        let image = match cached {
            Some(image) => {
                let message = format!("Container image {image_ref:?} already present on machine");
                self.event(at, EventType::Normal, "Pulled", message);
                image
            }
            None => {
                if policy != images::PullPolicy::Never {
                    self.event(
                        at,
                        EventType::Normal,
                        "Pulling",
                        format!("Pulling image {image_ref:?}"),
                    );
                }
                let pull_started = Instant::now();
                let image = images::ensure_image(&ctx.ctr, &image_ref, policy)
                    .await
                    .map_err(|e| {
                        let reason = match policy {
                            images::PullPolicy::Never => "ErrImageNeverPull",
                            _ => "ErrImagePull",
                        };
                        let message = format!("Failed to pull image {image_ref:?}: {e}");
                        self.event(at, EventType::Warning, "Failed", message);
                        (reason.to_string(), e.to_string())
                    })?;
                let secs = pull_started.elapsed().as_secs_f64();
                let message = format!("Successfully pulled image {image_ref:?} in {secs:.3}s");
                self.event(at, EventType::Normal, "Pulled", message);
                image
            }
        };
        let pod_ip = self.shared.record.lock().await.pod_ip.clone();
        let envs = env::resolve(&self.pod, c, ctx.source.as_ref(), &self.node_facts(pod_ip))
            .await
            .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
        let mut mounts = volumes::mounts_for_with_env(c, &self.volumes, &envs)
            .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
        mounts.extend(self.etc_mounts(&c.name));
        // A restart is a new attempt: the previous instance's log stays for `--previous`.
        let attempt = if rec.container_id.is_some() {
            rec.restart_count + 1
        } else {
            rec.restart_count
        };
        let id = instance_id(&self.uid, &c.name, attempt);
        // Anything left of an earlier try with this id (a crash between create and start).
        self.remove_instance(&id).await;
        let netns = ctx.net.netns_path(&self.uid);
        let spec_json = spec::build(&spec::SpecInput {
            pod: &self.pod,
            container: c,
            image: &image.config,
            env: envs,
            netns: &netns,
            mounts,
            cgroup_parent: format!("/cairn/pod{}", self.uid),
            container_id: &id,
            rootfs_image_users: None,
            host: &ctx.host_facts,
        })
        .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
        let labels: HashMap<String, String> = [
            (LABEL_POD_UID, self.uid.clone()),
            (
                LABEL_POD_NAME,
                self.pod.metadata.name.clone().unwrap_or_default(),
            ),
            (
                LABEL_POD_NAMESPACE,
                self.pod.metadata.namespace.clone().unwrap_or_default(),
            ),
            (LABEL_CONTAINER, c.name.clone()),
            (LABEL_ATTEMPT, attempt.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let err =
            |e: containerd::ContainerdError| ("CreateContainerError".to_string(), e.to_string());
        let mounts = ctx
            .ctr
            .prepare_snapshot(&id, &image.chain_id, HashMap::new())
            .await
            .map_err(err)?;
        ctx.ctr
            .create_container(&id, &image.name, &id, &spec_json, labels)
            .await
            .map_err(err)?;
        self.event(
            at,
            EventType::Normal,
            "Created",
            format!("Created container {}", c.name),
        );
        let (started_at, exit, attach) = self
            .start_task(&id, c, attempt, mounts)
            .await
            .map_err(|e| ("RunContainerError".to_string(), e.to_string()))?;
        self.event(
            at,
            EventType::Normal,
            "Started",
            format!("Started container {}", c.name),
        );
        let inst = Instance {
            id: id.clone(),
            attempt,
            spec: spec_json,
            started: Instant::now(),
            started_at: started_at.clone(),
            exit,
            attach,
        };
        self.shared
            .instances
            .lock()
            .await
            .insert(c.name.clone(), inst);
        let image_id = image.digest.clone();
        let has_startup = c.startup_probe.is_some();
        let has_readiness = c.readiness_probe.is_some();
        self.update_record(&c.name, init, |r| {
            if r.container_id.is_some() {
                r.restart_count += 1;
                r.last_state = match &r.state {
                    ContainerState::Waiting { .. } => r.last_state.take(),
                    other => Some(other.clone()),
                };
            }
            r.container_id = Some(id.clone());
            r.image_id = image_id;
            r.state = ContainerState::Running { started_at };
            r.started = !has_startup;
            r.ready = !init && !has_startup && !has_readiness;
        })
        .await;
        tracing::info!(uid = %self.uid, container = %c.name, %id, ms = t0.elapsed().as_millis() as u64, "container started");
        self.probes
            .insert(c.name.clone(), probes::ContainerProbes::new(c));
        if let Some(post) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let pod_ip = self
                .shared
                .record
                .lock()
                .await
                .pod_ip
                .clone()
                .unwrap_or_default();
            if let Err(e) =
                probes::run_handler(post, &id, &pod_ip, c, self.ctx.exec_prober.as_ref()).await
            {
                tracing::info!(uid = %self.uid, container = %c.name, error = %e, "postStart hook failed; killing the container");
                let _ = ctx.ctr.kill(&id, libc::SIGKILL as u32, true).await;
            }
        }
        self.save_record().await;
        Ok(())
    }

    /// Creates and starts the task with its output copied to the attempt's log file.
    async fn start_task(
        &self,
        id: &str,
        c: &Container,
        attempt: u32,
        mounts: Vec<containerd_client::types::Mount>,
    ) -> Result<
        (
            String,
            watch::Receiver<Option<ExitInfo>>,
            Arc<super::attach::Attachable>,
        ),
        containerd::ContainerdError,
    > {
        let ctx = &self.ctx;
        let fifo_dir = pod_dir(ctx, &self.uid).join("fifo");
        let mut stdio = containerd::make_fifos(&fifo_dir, id, c.stdin.unwrap_or(false))?;
        stdio.terminal = c.tty.unwrap_or(false);
        let log_path = logs::container_log_path(
            &ctx.data_dir,
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            self.pod.metadata.name.as_deref().unwrap_or(""),
            &self.uid,
            &c.name,
            attempt,
        );
        let stdin_once = c.stdin_once.unwrap_or(false);
        let mut attach = super::attach::Attachable::new(None, stdin_once);
        attach_logs(&stdio, &log_path, &attach).await?;
        ctx.ctr.create_task(id, mounts, &stdio).await?;
        if let Some(stdin) = &stdio.stdin {
            // The shim holds the read end now; the agent keeps the write end open.
            attach = super::attach::Attachable::new(
                Some(containerd::open_fifo_writer(stdin)?),
                stdin_once,
            )
            .with_output_of(attach);
        }
        ctx.ctr.start_task(id).await?;
        let started_at = now();
        Ok((
            started_at,
            watch_exit(ctx.ctr.clone(), id.to_string(), self.shared.clone()),
            Arc::new(attach),
        ))
    }

    /// Liveness, readiness and startup probes of a running container.
    async fn probe(&mut self, c: &Container, inst: &Instance, init: bool) -> Step {
        if init {
            return Step::After(RESYNC);
        }
        let Some(state) = self.probes.get_mut(&c.name) else {
            return Step::After(RESYNC);
        };
        let pod_ip = self
            .shared
            .record
            .lock()
            .await
            .pod_ip
            .clone()
            .unwrap_or_default();
        let verdict = state
            .run_due(&inst.id, &pod_ip, c, self.ctx.exec_prober.as_ref())
            .await;
        let next = verdict.next_due;
        for failure in &verdict.failures {
            self.event(
                Some((&c.name, init)),
                EventType::Warning,
                "Unhealthy",
                failure.clone(),
            );
        }
        self.update_record(&c.name, init, |r| {
            r.started = verdict.started;
            r.ready = verdict.ready;
        })
        .await;
        if let Some(reason) = verdict.kill {
            tracing::info!(uid = %self.uid, container = %c.name, %reason, "probe failed; restarting the container");
            let message = format!("Container {} {reason}, will be restarted", c.name);
            self.event(Some((&c.name, init)), EventType::Normal, "Killing", message);
            let grace = self.grace_period(None);
            self.stop_instance(c, inst, grace).await;
            return Step::After(Duration::from_millis(100));
        }
        Step::After(next.min(RESYNC))
    }

    fn grace_period(&self, requested: Option<i64>) -> Duration {
        let secs = requested
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30)
            .max(0) as u64;
        Duration::from_secs(secs)
    }

    /// preStop, SIGTERM, the grace period, then SIGKILL; waits for the exit.
    async fn stop_instance(&self, c: &Container, inst: &Instance, grace: Duration) {
        let deadline = Instant::now() + grace;
        if inst.exit.borrow().is_some() {
            return;
        }
        if let Some(pre) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            if !grace.is_zero() {
                let pod_ip = self
                    .shared
                    .record
                    .lock()
                    .await
                    .pod_ip
                    .clone()
                    .unwrap_or_default();
                let hook =
                    probes::run_handler(pre, &inst.id, &pod_ip, c, self.ctx.exec_prober.as_ref());
                if tokio::time::timeout(grace, hook).await.is_err() {
                    tracing::info!(uid = %self.uid, container = %c.name, "preStop hook ran out of grace period");
                }
            }
        }
        let signal = if grace.is_zero() {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        let _ = self.ctx.ctr.kill(&inst.id, signal as u32, true).await;
        let mut exit = inst.exit.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        let exited = tokio::time::timeout(left, exit.wait_for(|e| e.is_some()))
            .await
            .is_ok();
        if !exited {
            let _ = self
                .ctx
                .ctr
                .kill(&inst.id, libc::SIGKILL as u32, true)
                .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(10), exit.wait_for(|e| e.is_some())).await;
        }
    }

    /// Stops every container of the pod (deletion or removal from the node).
    async fn terminate(&mut self, grace: Option<i64>) {
        let grace = self.grace_period(grace);
        let instances: Vec<(String, Instance)> = self
            .shared
            .instances
            .lock()
            .await
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let all: Vec<Container> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .cloned()
            .collect();
        let stopped: Vec<(Container, Instance)> = instances
            .iter()
            .map(|(name, inst)| {
                let c = all
                    .iter()
                    .find(|c| &c.name == name)
                    .cloned()
                    .unwrap_or_else(|| Container {
                        name: name.clone(),
                        ..Default::default()
                    });
                (c, inst.clone())
            })
            .collect();
        for (c, inst) in &stopped {
            if inst.exit.borrow().is_none() {
                let init = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .any(|i| i.name == c.name);
                let message = format!("Stopping container {}", c.name);
                self.event(Some((&c.name, init)), EventType::Normal, "Killing", message);
            }
        }
        let me = &*self;
        futures_util::future::join_all(
            stopped
                .iter()
                .map(|(c, inst)| me.stop_instance(c, inst, grace)),
        )
        .await;
        for (c, inst) in stopped {
            let exit = (*inst.exit.borrow()).unwrap_or(ExitInfo {
                code: 137,
                exited_at: Some(SystemTime::now()),
            });
            let init = spec
                .init_containers
                .iter()
                .flatten()
                .any(|x| x.name == c.name);
            self.reap(&c, &inst, exit, init).await;
        }
    }

    /// Removes one of this pod's instances: the container (see [`remove_container`]) and its FIFOs.
    async fn remove_instance(&self, id: &str) {
        remove_container(&self.ctx.ctr, id).await;
        let fifo_dir = pod_dir(&self.ctx, &self.uid).join("fifo");
        for suffix in ["stdout", "stderr", "stdin"] {
            let _ = std::fs::remove_file(fifo_dir.join(format!("{id}-{suffix}")));
        }
    }

    /// Everything the pod had on this node goes: containers, network, volumes, files.
    async fn teardown(&mut self) {
        let ctx = self.ctx.clone();
        // Instances of earlier attempts that are still in containerd (e.g. after a crash).
        let filter = format!("labels.\"{LABEL_POD_UID}\"=={}", self.uid);
        if let Ok(list) = ctx.ctr.list_containers(&[filter]).await {
            for c in list {
                self.remove_instance(&c.id).await;
            }
        }
        let (ns, name) = {
            let r = self.shared.record.lock().await;
            (r.namespace.clone(), r.name.clone())
        };
        if !self.host_network() {
            let netns = ctx.net.netns_path(&self.uid);
            if let Err(e) = ctx.net.del(&self.uid, &ns, &name, &netns).await {
                tracing::warn!(uid = %self.uid, error = %e, "removing pod network");
            }
        }
        if let Err(e) = volumes::teardown(&ctx.data_dir.join("pods"), &self.uid) {
            tracing::warn!(uid = %self.uid, error = %e, "removing pod volumes");
        }
        let _ = std::fs::remove_dir_all(pod_dir(&ctx, &self.uid));
        let _ = std::fs::remove_dir_all(
            ctx.data_dir
                .join("pods")
                .join(format!("{ns}_{name}_{}", self.uid)),
        );
        remove_pod_cgroup(&self.uid);
    }

    /// Tells the server the pod is gone from the node, so it can remove the object.
    async fn finish_deletion(&self, pod: &Value) {
        let ns = str_at(pod, "/metadata/namespace");
        let name = str_at(pod, "/metadata/name");
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                          "preconditions": {"uid": self.uid}});
        for attempt in 0..30u32 {
            match self.ctx.client.delete(&path, Some(&opts)).await {
                Ok(()) => return,
                Err(e) if e.is_conflict() => return,
                Err(e) => {
                    tracing::debug!(%path, error = %e, "final pod delete");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempt.min(5)) + 1)).await;
                }
            }
        }
    }

    async fn report_status(&mut self) {
        let record = self.shared.record.lock().await.clone();
        // qosClass is the API server's, set when the pod was created; it is not ours to write.
        let status = record.status(&now(), self.last_status.as_ref());
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/status",
            record.namespace, record.name
        );
        match self
            .ctx
            .client
            .merge_patch(&path, &json!({ "status": status }))
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::debug!(%path, error = %e, "pod status not reported (will retry)"),
        }
    }
}

/// Removes a containerd container with its task and snapshot, killing the task first if it
/// still runs (idempotent).
pub async fn remove_container(ctr: &Containerd, id: &str) {
    if let Ok(Some(_)) = ctr.task_state(id).await {
        let _ = ctr.kill(id, libc::SIGKILL as u32, true).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), ctr.wait(id)).await;
        if let Err(e) = ctr.delete_task(id).await {
            tracing::warn!(%id, error = %e, "deleting task");
        }
    }
    if let Err(e) = ctr.delete_container(id).await {
        if !e.is_not_found() {
            tracing::warn!(%id, error = %e, "deleting container");
        }
    }
    if let Err(e) = ctr.remove_snapshot(id).await {
        if !e.is_not_found() {
            tracing::debug!(%id, error = %e, "removing snapshot");
        }
    }
}

/// Opens the FIFOs' read ends and copies both streams into the log file until the writers
/// close (the task exited).
pub async fn attach_logs(
    stdio: &containerd::Stdio,
    log_path: &std::path::Path,
    attach: &super::attach::Attachable,
) -> Result<(), containerd::ContainerdError> {
    let io = |e: std::io::Error| containerd::ContainerdError::Io {
        path: log_path.to_path_buf(),
        source: e,
    };
    if let Some(d) = log_path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let writer = Arc::new(logs::LogWriter::open(log_path).await.map_err(io)?);
    let out = attach.tee(
        containerd::open_fifo_reader(&stdio.stdout)?,
        logs::Stream::Stdout,
    );
    let err = attach.tee(
        containerd::open_fifo_reader(&stdio.stderr)?,
        logs::Stream::Stderr,
    );
    let w1 = writer.clone();
    tokio::spawn(async move { logs::copy_stream(out, logs::Stream::Stdout, w1).await });
    tokio::spawn(async move { logs::copy_stream(err, logs::Stream::Stderr, writer).await });
    Ok(())
}

/// Waits for the task's exit in the background and wakes the pod's worker.
pub fn watch_exit(
    ctr: Containerd,
    id: String,
    shared: Arc<PodShared>,
) -> watch::Receiver<Option<ExitInfo>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match ctr.wait(&id).await {
                Ok(exit) => {
                    tx.send_replace(Some(exit));
                    break;
                }
                Err(e) if e.is_not_found() => {
                    tx.send_replace(Some(ExitInfo {
                        code: 255,
                        exited_at: Some(SystemTime::now()),
                    }));
                    break;
                }
                Err(e) => {
                    // containerd restarting: its tasks live on in their shims; ask again.
                    tracing::debug!(%id, error = %e, "waiting for task");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        shared.wake.notify_one();
    });
    rx
}

/// The pod's cgroup parent is left empty by runc; remove it (v1: in every hierarchy).
fn remove_pod_cgroup(uid: &str) {
    let rel = format!("cairn/pod{uid}");
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(&rel)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            dirs.push(e.path().join(&rel));
        }
    }
    for d in dirs {
        if d.is_dir() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}
