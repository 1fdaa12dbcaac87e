//! The pod sync loop: the pods bound to this node (from the API, or from disk while the server
//! is away) against what runs in containerd. One [`worker::Worker`] per pod does the work;
//! this module starts and stops workers, adopts containers that outlived an agent restart,
//! removes what belongs to no pod, and serves logs and exec for the tunnel.

use super::containerd::{self, ExitInfo};
use super::tunnel::{ExecIo, LogStream, NodeStreams};
use super::worker::{self, Instance, PodShared, Worker};
use super::{logs, spec, NodeContext};
use bytes::Bytes;
use cairn_wire::client::Reflector;
use cairn_wire::tunnel::{ExecRequest, LogRequest, StreamError};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, Mutex};

pub struct PodManager {
    ctx: Arc<NodeContext>,
    pods: Mutex<HashMap<String, Arc<PodShared>>>,
    /// Workers report here when their pod is gone, so its entry can go too.
    done_tx: tokio::sync::mpsc::UnboundedSender<String>,
    done_rx: Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

fn uid_of(pod: &Value) -> String {
    pod.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

impl PodManager {
    pub fn new(ctx: Arc<NodeContext>) -> Arc<PodManager> {
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(PodManager {
            ctx,
            pods: Mutex::new(HashMap::new()),
            done_tx,
            done_rx: Mutex::new(done_rx),
        })
    }

    /// Restores the pods this node ran before (so they keep running with the server away),
    /// then follows the API's list of pods bound here.
    pub async fn run(self: Arc<Self>, pods: Reflector) {
        self.restore().await;
        let mut changes = pods.subscribe();
        let mut cleaned = false;
        loop {
            if pods.is_synced() {
                self.reconcile(pods.snapshot()).await;
                if !cleaned {
                    self.remove_orphans().await;
                    cleaned = true;
                }
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
    }

    async fn restore(&self) {
        let dir = self.ctx.data_dir.join("pods");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let uid = e.file_name().to_string_lossy().into_owned();
            let Some((pod, record)) = worker::load_state(&self.ctx, &uid) else {
                continue;
            };
            tracing::info!(%uid, pod = %record.name, "resuming pod from local state");
            let shared = PodShared::new(record, pod);
            self.adopt(&uid, &shared).await;
            self.spawn(uid, shared).await;
        }
    }

    /// Running tasks of a restored pod become its instances again, logs re-attached.
    async fn adopt(&self, uid: &str, shared: &Arc<PodShared>) {
        let record = shared.record.lock().await.clone();
        for c in record
            .containers
            .iter()
            .chain(record.init_containers.iter())
        {
            let Some(id) = &c.container_id else { continue };
            let Ok(Some(state)) = self.ctx.ctr.task_state(id).await else {
                continue;
            };
            let spec = match self.ctx.ctr.get_container(id).await {
                Ok(Some(info)) => info.spec.unwrap_or(Value::Null),
                _ => continue,
            };
            let attempt = id
                .rsplit('-')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or(c.restart_count);
            // A container's stdin ended with the agent that held its FIFO's write end (the
            // shim passed the EOF on), so an adopted one is attachable for output only.
            let attach = Arc::new(super::attach::Attachable::new(None, false));
            if state.status == containerd::TaskStatus::Running {
                let fifo_dir = worker::pod_dir(&self.ctx, uid).join("fifo");
                let stdio = containerd::Stdio {
                    stdin: None,
                    stdout: fifo_dir.join(format!("{id}-stdout")),
                    stderr: fifo_dir.join(format!("{id}-stderr")),
                    terminal: false,
                };
                let log_path = logs::container_log_path(
                    &self.ctx.data_dir,
                    &record.namespace,
                    &record.name,
                    uid,
                    &c.name,
                    attempt,
                );
                if let Err(e) = worker::attach_logs(&stdio, &log_path, &attach).await {
                    tracing::warn!(%id, error = %e, "re-attaching logs");
                }
            }
            let exit = worker::watch_exit(self.ctx.ctr.clone(), id.clone(), shared.clone());
            let started_at = match &c.state {
                super::podstatus::ContainerState::Running { started_at } => started_at.clone(),
                _ => cairn_wire::time::now_rfc3339(),
            };
            shared.instances.lock().await.insert(
                c.name.clone(),
                Instance {
                    id: id.clone(),
                    attempt,
                    spec,
                    started: Instant::now(),
                    started_at,
                    exit,
                    attach,
                },
            );
        }
    }

    async fn spawn(&self, uid: String, shared: Arc<PodShared>) {
        self.pods.lock().await.insert(uid.clone(), shared.clone());
        let w = Worker::new(self.ctx.clone(), uid.clone(), shared);
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            w.run().await;
            let _ = done.send(uid);
        });
    }

    /// Starts workers for new pods, hands updates to running ones, and tells workers of pods
    /// that left the API to clean up.
    async fn reconcile(&self, desired: Vec<Value>) {
        let mut seen = HashSet::new();
        let mut new = Vec::new();
        {
            let mut done = self.done_rx.lock().await;
            let mut pods = self.pods.lock().await;
            while let Ok(uid) = done.try_recv() {
                pods.remove(&uid);
            }
            for pod in desired {
                let uid = uid_of(&pod);
                if uid.is_empty() {
                    continue;
                }
                seen.insert(uid.clone());
                match pods.get(&uid) {
                    Some(shared) => {
                        shared.desired.send_if_modified(|cur| {
                            if cur.as_ref() == Some(&pod) {
                                false
                            } else {
                                *cur = Some(pod.clone());
                                true
                            }
                        });
                    }
                    None => new.push((uid, pod)),
                }
            }
            for (uid, shared) in pods.iter() {
                if !seen.contains(uid) {
                    shared.desired.send_if_modified(|cur| cur.take().is_some());
                }
            }
        }
        for (uid, pod) in new {
            // A pod already finished before this agent saw it (e.g. restored elsewhere): skip.
            let phase = pod.pointer("/status/phase").and_then(Value::as_str);
            if matches!(phase, Some("Succeeded") | Some("Failed"))
                && pod.pointer("/metadata/deletionTimestamp").is_none()
            {
                continue;
            }
            let record = worker::new_record(&self.ctx, &pod);
            self.spawn(uid, PodShared::new(record, pod)).await;
        }
    }

    /// Containers, network namespaces and IPs of pods no worker owns (left by a crash or a
    /// pod deleted while the agent was down).
    async fn remove_orphans(&self) {
        let live: HashSet<String> = self.pods.lock().await.keys().cloned().collect();
        let filter = format!("labels.\"{}\"", worker::LABEL_POD_UID);
        match self.ctx.ctr.list_containers(&[filter]).await {
            Ok(list) => {
                for c in list {
                    let uid = c
                        .labels
                        .get(worker::LABEL_POD_UID)
                        .cloned()
                        .unwrap_or_default();
                    if live.contains(&uid) {
                        continue;
                    }
                    tracing::info!(id = %c.id, "removing container of a pod no longer on this node");
                    worker::remove_container(&self.ctx.ctr, &c.id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing containers for clean-up"),
        }
        if let Err(e) = self.ctx.net.gc(&live).await {
            tracing::warn!(error = %e, "network clean-up");
        }
        let pods_dir = self.ctx.data_dir.join("pods");
        if let Ok(entries) = std::fs::read_dir(&pods_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Pod dirs are `<uid>`; log dirs `<ns>_<name>_<uid>`.
                let uid = name.rsplit('_').next().unwrap_or(&name).to_string();
                if !live.contains(&uid) {
                    let _ = super::volumes::teardown(&pods_dir, &uid);
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// The running instance of the container an exec or attach names.
    async fn running(&self, req: &ExecRequest) -> Result<Instance, StreamError> {
        let shared = self.find(&req.namespace, &req.pod).await?;
        let inst = shared.instances.lock().await.get(&req.container).cloned();
        inst.filter(|i| i.exit.borrow().is_none()).ok_or_else(|| {
            StreamError::BadRequest(format!(
                "container {} is not running in pod {}",
                req.container, req.pod
            ))
        })
    }

    async fn find(&self, namespace: &str, pod: &str) -> Result<Arc<PodShared>, StreamError> {
        let pods = self.pods.lock().await;
        for shared in pods.values() {
            let r = shared.record.lock().await;
            if r.namespace == namespace && r.name == pod {
                return Ok(shared.clone());
            }
        }
        Err(StreamError::NotFound(format!(
            "pod {namespace}/{pod} is not running on this node"
        )))
    }

    /// Whether every pod the node should run has a worker (used for node readiness).
    pub async fn pod_count(&self) -> usize {
        self.pods.lock().await.len()
    }
}

#[async_trait::async_trait]
impl NodeStreams for PodManager {
    async fn pod_ip(&self, namespace: &str, pod: &str) -> Result<String, StreamError> {
        let shared = self.find(namespace, pod).await?;
        let ip = shared.record.lock().await.pod_ip.clone();
        ip.ok_or_else(|| StreamError::BadRequest(format!("pod {pod} has no IP yet")))
    }

    async fn connect_port(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError> {
        let shared = self.find(namespace, pod).await?;
        let (uid, ready) = {
            let r = shared.record.lock().await;
            (r.uid.clone(), r.sandbox_ready)
        };
        if !ready {
            return Err(StreamError::BadRequest(format!(
                "pod {pod} has no network yet"
            )));
        }
        let host_network = shared
            .desired
            .borrow()
            .as_ref()
            .and_then(|p| p.pointer("/spec/hostNetwork"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        if host_network {
            return tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(|e| {
                    StreamError::Internal(format!("failed to connect to localhost:{port}: {e}"))
                });
        }
        self.ctx
            .net
            .connect_in_pod(&uid, port)
            .await
            .map_err(|e| StreamError::Internal(e.to_string()))
    }

    async fn logs(&self, req: LogRequest) -> Result<LogStream, StreamError> {
        let shared = self.find(&req.namespace, &req.pod).await?;
        let record = shared.record.lock().await.clone();
        let c = record
            .containers
            .iter()
            .chain(record.init_containers.iter())
            .find(|c| c.name == req.container)
            .ok_or_else(|| {
                StreamError::BadRequest(format!(
                    "container {} is not valid for pod {}",
                    req.container, req.pod
                ))
            })?;
        let instance = shared.instances.lock().await.get(&c.name).cloned();
        let current = match &instance {
            Some(i) => i.attempt,
            None => match &c.container_id {
                Some(id) => id
                    .rsplit('-')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                None => {
                    return Err(StreamError::BadRequest(format!(
                        "container \"{}\" in pod \"{}\" is waiting to start",
                        c.name, req.pod
                    )))
                }
            },
        };
        let attempt = if req.previous {
            if current == 0 {
                return Err(StreamError::BadRequest(format!(
                    "previous terminated container \"{}\" in pod \"{}\" not found",
                    c.name, req.pod
                )));
            }
            current - 1
        } else {
            current
        };
        let path = logs::container_log_path(
            &self.ctx.data_dir,
            &record.namespace,
            &record.name,
            &record.uid,
            &c.name,
            attempt,
        );
        // Follow ends when this attempt's task exits (or at once for a finished one).
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        match instance.filter(|i| i.attempt == attempt && !req.previous) {
            Some(i) => {
                let mut exit = i.exit.clone();
                tokio::spawn(async move {
                    let _ = exit.wait_for(|e| e.is_some()).await;
                    // Let the copier drain what the process wrote last.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = done_tx.send(true);
                });
            }
            None => {
                let _ = done_tx.send(true);
            }
        }
        Ok(logs::read(
            &path,
            &logs::ReadOptions::from_request(&req),
            done_rx,
        ))
    }

    async fn attach(&self, req: ExecRequest, mut io: ExecIo) -> Result<(), StreamError> {
        let inst = self.running(&req).await?;
        let attach = inst.attach.clone();
        if req.stdin && !attach.takes_stdin().await {
            return Err(StreamError::BadRequest(format!(
                "container {} does not take stdin (its spec has no stdin: true, or stdinOnce used it up)",
                req.container
            )));
        }
        let mut output = attach.subscribe();
        let input = io.stdin.take().map(|mut rx| {
            let (attach, ctr, id) = (attach.clone(), self.ctx.ctr.clone(), inst.id.clone());
            tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    if !attach.write_stdin(&data).await {
                        break;
                    }
                }
                if attach.input_ended().await {
                    if let Err(e) = ctr.close_io(&id, "").await {
                        tracing::warn!(%id, error = %e, "closing the container's stdin");
                    }
                }
            })
        });
        let resizer = {
            let (ctr, id) = (self.ctx.ctr.clone(), inst.id.clone());
            let mut resize = std::mem::replace(&mut io.resize, mpsc::channel(1).1);
            tokio::spawn(async move {
                while let Some((w, h)) = resize.recv().await {
                    let _ = ctr.resize_pty(&id, "", w.into(), h.into()).await;
                }
            })
        };
        let mut exit = inst.exit.clone();
        loop {
            tokio::select! {
                got = output.recv() => match got {
                    Ok((logs::Stream::Stdout, data)) if req.stdout => {
                        if io.stdout.send(data).await.is_err() { break; }
                    }
                    Ok((logs::Stream::Stderr, data)) if req.stderr => {
                        if io.stderr.send(data).await.is_err() { break; }
                    }
                    Ok(_) => {}
                    // A slow client misses what it could not take, as on a terminal.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = async { let _ = exit.wait_for(|e| e.is_some()).await; } => {
                    // What the process wrote last is still on its way through the tee.
                    while let Ok(Ok((stream, data))) =
                        tokio::time::timeout(Duration::from_millis(200), output.recv()).await
                    {
                        let tx = match stream {
                            logs::Stream::Stdout if req.stdout => &io.stdout,
                            logs::Stream::Stderr if req.stderr => &io.stderr,
                            _ => continue,
                        };
                        let _ = tx.send(data).await;
                    }
                    break;
                }
                _ = io.stdout.closed() => break,
            }
        }
        if let Some(input) = input {
            input.abort();
        }
        resizer.abort();
        Ok(())
    }

    async fn exec(&self, req: ExecRequest, io: ExecIo) -> Result<i32, StreamError> {
        let inst = self.running(&req).await?;
        if req.command.is_empty() {
            return Err(StreamError::BadRequest("no command given".into()));
        }
        let process = spec::exec_process(&inst.spec, req.command.clone(), req.tty);
        exec_in(&self.ctx, &inst.id, process, req.stdin, req.tty, io)
            .await
            .map_err(|e| StreamError::Internal(e.to_string()))
    }
}

/// Runs one exec process in container `id` with its streams relayed to `io`.
pub async fn exec_in(
    ctx: &NodeContext,
    id: &str,
    process: Value,
    stdin: bool,
    tty: bool,
    mut io: ExecIo,
) -> Result<i32, containerd::ContainerdError> {
    let exec_id = format!(
        "exec-{}",
        cairn_wire::secret::random_secret(6).unwrap_or_default()
    );
    let fifo_dir = ctx.data_dir.join("exec");
    let mut stdio = containerd::make_fifos(&fifo_dir, &exec_id, stdin)?;
    stdio.terminal = tty;
    let cleanup = |dir: std::path::PathBuf, exec_id: String| {
        for s in ["stdout", "stderr", "stdin"] {
            let _ = std::fs::remove_file(dir.join(format!("{exec_id}-{s}")));
        }
    };
    let mut out = containerd::open_fifo_reader(&stdio.stdout)?;
    let mut err = containerd::open_fifo_reader(&stdio.stderr)?;
    if let Err(e) = ctx.ctr.exec(id, &exec_id, &process, &stdio).await {
        cleanup(fifo_dir, exec_id);
        return Err(e);
    }
    let stdout_tx = io.stdout.clone();
    let pump_out = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0
                || stdout_tx
                    .send(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
            {
                break;
            }
        }
    });
    let stderr_tx = io.stderr.clone();
    let pump_err = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0
                || stderr_tx
                    .send(Bytes::copy_from_slice(&buf[..n]))
                    .await
                    .is_err()
            {
                break;
            }
        }
    });
    let started = ctx.ctr.start_exec(id, &exec_id).await;
    if let Err(e) = started {
        pump_out.abort();
        pump_err.abort();
        let _ = ctx.ctr.delete_process(id, &exec_id).await;
        cleanup(fifo_dir, exec_id);
        return Err(e);
    }
    let stdin_task = match (io.stdin.take(), &stdio.stdin) {
        (Some(mut rx), Some(path)) => {
            let mut w = containerd::open_fifo_writer(path)?;
            let ctr = ctx.ctr.clone();
            let (cid, eid) = (id.to_string(), exec_id.clone());
            Some(tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if w.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                drop(w);
                // The client's EOF: the process sees its stdin close.
                let _ = ctr.close_io(&cid, &eid).await;
            }))
        }
        _ => None,
    };
    let resize_task = {
        let ctr = ctx.ctr.clone();
        let (cid, eid) = (id.to_string(), exec_id.clone());
        let mut resize = io.resize;
        tokio::spawn(async move {
            while let Some((w, h)) = resize.recv().await {
                if tty {
                    let _ = ctr.resize_pty(&cid, &eid, u32::from(w), u32::from(h)).await;
                }
            }
        })
    };
    let exit: Result<ExitInfo, _> = ctx.ctr.wait_exec(id, &exec_id).await;
    // The process is gone: let the pumps drain, then close.
    // With a terminal the shim never opens the stderr FIFO, so a pump may never see its end:
    // whatever is still running then is cut off, and with it its hold on the client stream.
    let (mut pump_out, mut pump_err) = (pump_out, pump_err);
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut pump_out).await;
    let _ = tokio::time::timeout(Duration::from_millis(200), &mut pump_err).await;
    pump_out.abort();
    pump_err.abort();
    if let Some(t) = stdin_task {
        t.abort();
    }
    resize_task.abort();
    let _ = ctx.ctr.delete_process(id, &exec_id).await;
    cleanup(fifo_dir, exec_id);
    Ok(exit?.code as i32)
}

/// Exec probes and hooks run through containerd like `kubectl exec` does.
pub struct ContainerdExecProber {
    pub ctx: std::sync::Weak<NodeContext>,
}

#[async_trait::async_trait]
impl super::probes::ExecProber for ContainerdExecProber {
    async fn exec(
        &self,
        container_id: &str,
        command: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, String), String> {
        let ctx = self.ctx.upgrade().ok_or("the agent is stopping")?;
        let info = ctx
            .ctr
            .get_container(container_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("container {container_id} not found"))?;
        let base = info.spec.unwrap_or(Value::Null);
        let process = spec::exec_process(&base, command, false);
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(16);
        let (err_tx, mut err_rx) = tokio::sync::mpsc::channel(16);
        let (_resize_tx, resize_rx) = tokio::sync::mpsc::channel(1);
        let io = ExecIo {
            stdin: None,
            stdout: out_tx,
            stderr: err_tx,
            resize: resize_rx,
        };
        let collect = async {
            let mut output = Vec::new();
            loop {
                tokio::select! {
                    Some(b) = out_rx.recv() => output.extend_from_slice(&b),
                    Some(b) = err_rx.recv() => output.extend_from_slice(&b),
                    else => break,
                }
                if output.len() > 10 * 1024 {
                    output.truncate(10 * 1024);
                }
            }
            output
        };
        let run = exec_in(&ctx, container_id, process, false, false, io);
        match tokio::time::timeout(timeout, async { tokio::join!(run, collect) }).await {
            Ok((Ok(code), out)) => Ok((code, String::from_utf8_lossy(&out).into_owned())),
            Ok((Err(e), _)) => Err(e.to_string()),
            Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
        }
    }
}
