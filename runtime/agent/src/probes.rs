//! Liveness, readiness and startup probes, and the postStart/preStop hooks, as the kubelet runs
//! them.
//!
//! [`ProbeState`] is the kubelet's per-container probe worker as a pure state machine (fed with
//! the time and each result, it says what is due and what follows); [`ContainerProbes`] drives
//! it with the real handlers: exec through an [`ExecProber`], HTTP(S) GET, TCP connect, and the
//! gRPC health protocol.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{
    Container, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure(String),
    /// The probe could not be run (the kubelet throws such results away).
    Unknown,
}

/// Runs a command in a container (the agent does it through containerd's Exec).
#[async_trait::async_trait]
pub trait ExecProber: Send + Sync {
    /// The exit code and combined output of `command`, or why it could not run.
    async fn exec(
        &self,
        container_id: &str,
        command: Vec<String>,
        timeout: Duration,
    ) -> Result<(i32, String), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("exec hook {command:?} could not run: {message}")]
    Exec {
        command: Vec<String>,
        message: String,
    },
    #[error("exec hook {command:?} exited with {code}: {output}")]
    ExitCode {
        command: Vec<String>,
        code: i32,
        output: String,
    },
    #[error("http hook: {0}")]
    Http(String),
    #[error("hook timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0} lifecycle handlers are not supported")]
    Unsupported(&'static str),
    #[error("lifecycle handler has no action")]
    Empty,
}

const USER_AGENT: &str = "kube-probe/1.32";
/// The kubelet keeps at most this much of a probe's response body for its message.
const MAX_BODY: usize = 10 * 1024;
const MAX_REDIRECTS: usize = 10;
/// Hooks have no timeout of their own in Kubernetes; this only stops one hanging forever.
const HOOK_TIMEOUT: Duration = Duration::from_secs(3600);
/// Told to a caller with nothing to probe, so it need not wake for probes at all.
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }
}

/// A probe's schedule and thresholds with the API defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeTiming {
    pub fn of(probe: &Probe, kind: ProbeKind) -> ProbeTiming {
        let secs = |v: Option<i32>, default: u64, min: u64| {
            Duration::from_secs(
                v.map_or(default, |s| u64::try_from(s).unwrap_or(0))
                    .max(min),
            )
        };
        let count = |v: Option<i32>, default: u32| {
            v.and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        ProbeTiming {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            timeout: secs(probe.timeout_seconds, 1, 1),
            // Validation pins liveness and startup to 1; hold to it whatever the object says.
            success_threshold: match kind {
                ProbeKind::Readiness => count(probe.success_threshold, 1),
                _ => 1,
            },
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// What a container's probes say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ready(bool),
    /// Liveness failed `failureThreshold` times in a row: restart the container.
    Kill(String),
    /// Startup failed `failureThreshold` times in a row: restart the container.
    StartupFailed(String),
}

/// One probe's worker: its schedule and its run of equal results.
#[derive(Debug, Clone)]
struct Tracker {
    probe: Probe,
    timing: ProbeTiming,
    next_due: Instant,
    last: Option<bool>,
    run: u32,
    /// The result once a threshold was met (`None` before any was).
    settled: Option<bool>,
    last_failure: String,
}

impl Tracker {
    fn new(probe: &Probe, kind: ProbeKind, started_at: Instant) -> Tracker {
        let timing = ProbeTiming::of(probe, kind);
        Tracker {
            probe: probe.clone(),
            timing,
            next_due: started_at + timing.initial_delay,
            last: None,
            run: 0,
            settled: None,
            last_failure: String::new(),
        }
    }

    /// Counts `result`; returns the settled result when this one met a threshold.
    fn record(&mut self, now: Instant, result: &ProbeResult) -> Option<bool> {
        self.next_due = now + self.timing.period;
        let ok = match result {
            ProbeResult::Success => true,
            ProbeResult::Failure(message) => {
                self.last_failure = message.clone();
                false
            }
            ProbeResult::Unknown => return None,
        };
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        if self.run >= threshold {
            self.settled = Some(ok);
            return Some(ok);
        }
        None
    }
}

/// The probes of one running container, as the kubelet's workers treat them: the startup probe
/// gates the others; liveness starts out passing, readiness failing; a result only counts once
/// its threshold of equal results in a row is met.
#[derive(Debug, Clone)]
pub struct ProbeState {
    container: String,
    startup: Option<Tracker>,
    liveness: Option<Tracker>,
    readiness: Option<Tracker>,
    started: bool,
    ready: bool,
    outcome: Option<Verdict>,
}

impl ProbeState {
    pub fn new(container: &Container, started_at: Instant) -> ProbeState {
        let tracker =
            |p: &Option<Probe>, kind| p.as_ref().map(|p| Tracker::new(p, kind, started_at));
        let startup = tracker(&container.startup_probe, ProbeKind::Startup);
        let readiness = tracker(&container.readiness_probe, ProbeKind::Readiness);
        let started = startup.is_none();
        ProbeState {
            container: container.name.clone(),
            liveness: tracker(&container.liveness_probe, ProbeKind::Liveness),
            ready: started && readiness.is_none(),
            startup,
            readiness,
            started,
            outcome: None,
        }
    }

    fn tracker(&self, kind: ProbeKind) -> Option<&Tracker> {
        match kind {
            ProbeKind::Startup => self.startup.as_ref(),
            ProbeKind::Liveness => self.liveness.as_ref(),
            ProbeKind::Readiness => self.readiness.as_ref(),
        }
    }

    /// The probes that run in the container's current phase.
    fn active(&self) -> Vec<ProbeKind> {
        if self.outcome.is_some() {
            return Vec::new();
        }
        if !self.started {
            return vec![ProbeKind::Startup];
        }
        [ProbeKind::Liveness, ProbeKind::Readiness]
            .into_iter()
            .filter(|k| self.tracker(*k).is_some())
            .collect()
    }

    /// The probes to run at `now`.
    pub fn due(&self, now: Instant) -> Vec<ProbeKind> {
        self.active()
            .into_iter()
            .filter(|k| self.tracker(*k).is_some_and(|t| t.next_due <= now))
            .collect()
    }

    /// When the next probe is due; `None` when nothing will be probed again.
    pub fn next_due(&self) -> Option<Instant> {
        self.active()
            .into_iter()
            .filter_map(|k| self.tracker(k).map(|t| t.next_due))
            .min()
    }

    pub fn probe(&self, kind: ProbeKind) -> Option<&Probe> {
        self.tracker(kind).map(|t| &t.probe)
    }

    pub fn timing(&self, kind: ProbeKind) -> Option<ProbeTiming> {
        self.tracker(kind).map(|t| t.timing)
    }

    pub fn started(&self) -> bool {
        self.started
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Feeds one result of `kind` taken at `now`.
    pub fn record(&mut self, kind: ProbeKind, now: Instant, result: ProbeResult) -> Verdict {
        if !self.active().contains(&kind) {
            return self.verdict();
        }
        let container = self.container.clone();
        let tracker = match kind {
            ProbeKind::Startup => self.startup.as_mut(),
            ProbeKind::Liveness => self.liveness.as_mut(),
            ProbeKind::Readiness => self.readiness.as_mut(),
        };
        let Some(t) = tracker else {
            return self.verdict();
        };
        let settled = t.record(now, &result);
        let failure = t.last_failure.clone();
        match (kind, settled) {
            (ProbeKind::Startup, Some(true)) => {
                self.started = true;
                self.ready = self.readiness.is_none();
                // Liveness and readiness take over from here, not from long ago.
                for t in [self.liveness.as_mut(), self.readiness.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    t.next_due = t.next_due.max(now);
                }
            }
            (ProbeKind::Startup, Some(false)) => {
                self.outcome = Some(Verdict::StartupFailed(format!(
                    "Container {container} failed startup probe, will be restarted: {failure}"
                )));
            }
            (ProbeKind::Liveness, Some(false)) => {
                self.ready = false;
                self.outcome = Some(Verdict::Kill(format!(
                    "Container {container} failed liveness probe, will be restarted: {failure}"
                )));
            }
            (ProbeKind::Readiness, Some(ok)) => self.ready = ok,
            _ => {}
        }
        self.verdict()
    }

    pub fn verdict(&self) -> Verdict {
        self.outcome
            .clone()
            .unwrap_or(Verdict::Ready(self.started && self.ready))
    }
}

/// What [`ContainerProbes::run_due`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeVerdict {
    pub started: bool,
    pub ready: bool,
    /// Restart the container, for this reason.
    pub kill: Option<String>,
    /// The probes that failed in this run, as the kubelet words its Unhealthy events
    /// (`Liveness probe failed: ...`).
    pub failures: Vec<String>,
    /// How long until a probe is due again.
    pub next_due: Duration,
}

/// A container's probes with the real handlers behind them.
#[derive(Debug, Clone)]
pub struct ContainerProbes {
    state: ProbeState,
}

impl ContainerProbes {
    /// Probes of a container that started just now.
    pub fn new(container: &Container) -> ContainerProbes {
        ContainerProbes {
            state: ProbeState::new(container, Instant::now()),
        }
    }

    pub fn state(&self) -> &ProbeState {
        &self.state
    }

    /// Runs the probes that are due and reports where the container stands.
    pub async fn run_due(
        &mut self,
        container_id: &str,
        pod_ip: &str,
        container: &Container,
        exec: &dyn ExecProber,
    ) -> ProbeVerdict {
        let mut failures = Vec::new();
        for kind in self.state.due(Instant::now()) {
            let (Some(probe), Some(timing)) =
                (self.state.probe(kind).cloned(), self.state.timing(kind))
            else {
                continue;
            };
            let result = run_probe(
                &probe,
                timing.timeout,
                container_id,
                pod_ip,
                container,
                exec,
            )
            .await;
            if let ProbeResult::Failure(message) = &result {
                tracing::info!(container = %container.name, probe = kind.name(), %message, "probe failed");
                let name = kind.name();
                let title: String = name[..1].to_uppercase() + &name[1..];
                failures.push(format!("{title} probe failed: {message}"));
            }
            self.state.record(kind, Instant::now(), result);
        }
        let now = Instant::now();
        let kill = match self.state.verdict() {
            Verdict::Kill(reason) | Verdict::StartupFailed(reason) => Some(reason),
            Verdict::Ready(_) => None,
        };
        ProbeVerdict {
            started: self.state.started(),
            ready: self.state.ready() && self.state.started(),
            kill,
            failures,
            next_due: self
                .state
                .next_due()
                .map_or(IDLE, |t| t.saturating_duration_since(now)),
        }
    }
}

/// One run of `probe` against the container.
pub async fn run_probe(
    probe: &Probe,
    timeout: Duration,
    container_id: &str,
    pod_ip: &str,
    container: &Container,
    exec: &dyn ExecProber,
) -> ProbeResult {
    if let Some(action) = &probe.exec {
        let command = action.command.clone().unwrap_or_default();
        exec_probe(exec, container_id, command, timeout).await
    } else if let Some(action) = &probe.http_get {
        http_get_probe(action, pod_ip, container, timeout).await
    } else if let Some(action) = &probe.tcp_socket {
        tcp_socket_probe(action, pod_ip, container, timeout).await
    } else if let Some(action) = &probe.grpc {
        grpc_probe(action, pod_ip, timeout).await
    } else {
        tracing::warn!(container = %container.name, "probe has no handler");
        ProbeResult::Unknown
    }
}

pub async fn exec_probe(
    exec: &dyn ExecProber,
    container_id: &str,
    command: Vec<String>,
    timeout: Duration,
) -> ProbeResult {
    let shown = command.clone();
    match tokio::time::timeout(timeout, exec.exec(container_id, command, timeout)).await {
        Err(_) => ProbeResult::Failure(format!("command {shown:?} timed out")),
        Ok(Err(e)) => {
            tracing::warn!(container_id, error = %e, "exec probe could not run");
            ProbeResult::Unknown
        }
        Ok(Ok((0, _))) => ProbeResult::Success,
        Ok(Ok((code, output))) => ProbeResult::Failure(format!(
            "command {shown:?} exited with {code}: {}",
            output.trim_end()
        )),
    }
}

/// A port given by number or by the name of one of the container's ports.
fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| i64::from(p.container_port))
                .ok_or_else(|| {
                    format!("couldn't find port {s:?} in container {}", container.name)
                })?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

fn host_or(host: &Option<String>, pod_ip: &str) -> String {
    host.clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string())
}

/// `host:port`, bracketing IPv6 literals.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    TcpStream::connect((host, port)).await
}

pub async fn tcp_socket_probe(
    action: &TCPSocketAction,
    pod_ip: &str,
    container: &Container,
    timeout: Duration,
) -> ProbeResult {
    let port = match resolve_port(&action.port, container) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(container = %container.name, error = %e, "tcpSocket probe");
            return ProbeResult::Unknown;
        }
    };
    let host = host_or(&action.host, pod_ip);
    match tokio::time::timeout(timeout, connect(&host, port)).await {
        Ok(Ok(_)) => ProbeResult::Success,
        Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {}: {e}", authority(&host, port))),
        Err(_) => ProbeResult::Failure(format!("dial tcp {}: i/o timeout", authority(&host, port))),
    }
}

/// Where an HTTP request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

/// What came back from one request.
struct Answer {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

pub async fn http_get_probe(
    action: &HTTPGetAction,
    pod_ip: &str,
    container: &Container,
    timeout: Duration,
) -> ProbeResult {
    let target = match http_target(action, pod_ip, container) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(container = %container.name, error = %e, "httpGet probe");
            return ProbeResult::Unknown;
        }
    };
    let headers = http_headers(action);
    let url = target_url(&target);
    match tokio::time::timeout(timeout, get_following_redirects(target, &headers)).await {
        Err(_) => ProbeResult::Failure(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
        Ok(Err(e)) => ProbeResult::Failure(format!("Get \"{url}\": {e}")),
        Ok(Ok(answer)) if (200..400).contains(&answer.status) => ProbeResult::Success,
        Ok(Ok(answer)) => ProbeResult::Failure(format!(
            "HTTP probe failed with statuscode: {}{}",
            answer.status,
            body_note(&answer.body)
        )),
    }
}

fn body_note(body: &[u8]) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {}", String::from_utf8_lossy(body).trim_end())
    }
}

fn http_target(
    action: &HTTPGetAction,
    pod_ip: &str,
    container: &Container,
) -> Result<Target, String> {
    let port = resolve_port(&action.port, container)?;
    let https = match action
        .scheme
        .as_deref()
        .unwrap_or("HTTP")
        .to_ascii_uppercase()
        .as_str()
    {
        "HTTP" => false,
        "HTTPS" => true,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let path = action.path.clone().unwrap_or_default();
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    Ok(Target {
        https,
        host: host_or(&action.host, pod_ip),
        port,
        path,
    })
}

fn http_headers(action: &HTTPGetAction) -> Vec<(String, String)> {
    let mut headers = vec![
        ("User-Agent".to_string(), USER_AGENT.to_string()),
        ("Accept".to_string(), "*/*".to_string()),
    ];
    for h in action.http_headers.iter().flatten() {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&h.name));
        headers.push((h.name.clone(), h.value.clone()));
    }
    headers
}

fn target_url(t: &Target) -> String {
    format!(
        "{}://{}{}",
        if t.https { "https" } else { "http" },
        authority(&t.host, t.port),
        t.path
    )
}

/// GET, following redirects on the same host as the kubelet does; a redirect elsewhere is
/// itself the answer (a 3xx, which passes).
async fn get_following_redirects(
    mut target: Target,
    headers: &[(String, String)],
) -> Result<Answer, String> {
    let first_host = target.host.clone();
    for _ in 0..=MAX_REDIRECTS {
        let answer = get_once(&target, headers).await?;
        let Some(location) = answer
            .location
            .clone()
            .filter(|_| (300..400).contains(&answer.status))
        else {
            return Ok(answer);
        };
        let next = redirect_target(&target, &location)?;
        if next.host != first_host {
            tracing::debug!(%location, "probe redirected to another host; taking the redirect as the answer");
            return Ok(answer);
        }
        target = next;
    }
    Err(format!("stopped after {MAX_REDIRECTS} redirects"))
}

fn redirect_target(current: &Target, location: &str) -> Result<Target, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        let uri: hyper::Uri = location
            .parse()
            .map_err(|e| format!("bad redirect {location:?}: {e}"))?;
        let https = uri.scheme_str() == Some("https");
        return Ok(Target {
            https,
            host: uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
        });
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        // Relative to the current path's directory.
        let dir = current.path.split('?').next().unwrap_or("/");
        let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
        format!("{dir}{location}")
    };
    Ok(Target {
        path,
        ..current.clone()
    })
}

async fn get_once(target: &Target, headers: &[(String, String)]) -> Result<Answer, String> {
    let tcp = connect(&target.host, target.port)
        .await
        .map_err(|e| format!("dial tcp {}: {e}", authority(&target.host, target.port)))?;
    let _ = tcp.set_nodelay(true);
    let mut request = hyper::Request::get(target.path.as_str());
    let default_port = if target.https { 443 } else { 80 };
    let host_header = if target.port == default_port {
        target.host.clone()
    } else {
        authority(&target.host, target.port)
    };
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request = request.header("Host", host_header);
    }
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    // Probes never reuse a connection.
    request = request.header("Connection", "close");
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building request: {e}"))?;
    if target.https {
        let tls = tokio_rustls::TlsConnector::from(insecure_tls_config()?)
            .connect(server_name(&target.host)?, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send_http1(tls, request).await
    } else {
        send_http1(tcp, request).await
    }
}

async fn send_http1<S>(io: S, request: hyper::Request<Empty<Bytes>>) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_prefix(response.into_body(), MAX_BODY).await;
        Ok(Answer {
            status,
            location,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

/// Up to `limit` bytes of a body; the rest is not waited for.
async fn read_prefix(mut body: Incoming, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(limit - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    out
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("server name {host:?}: {e}"))
}

/// TLS without certificate checks: the kubelet's probes skip verification too, since pods
/// serve whatever certificate they like on their IP.
pub fn insecure_tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(cairn_wire::join::AcceptAnyServer(
                    provider,
                )))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// The gRPC health protocol (`grpc.health.v1.Health/Check`) over plaintext HTTP/2 to the pod
/// IP, as the kubelet's gRPC probe speaks it.
pub async fn grpc_probe(action: &GRPCAction, pod_ip: &str, timeout: Duration) -> ProbeResult {
    let Ok(port) = u16::try_from(action.port) else {
        tracing::warn!(port = action.port, "grpc probe: invalid port");
        return ProbeResult::Unknown;
    };
    let service = action.service.clone().unwrap_or_default();
    let addr = authority(pod_ip, port);
    match tokio::time::timeout(timeout, grpc_health_check(pod_ip, port, &service)).await {
        Err(_) => ProbeResult::Failure(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
        Ok(Err(e)) => ProbeResult::Failure(format!("failed to connect service {addr:?}: {e}")),
        Ok(Ok(GrpcAnswer::Status(1))) => ProbeResult::Success,
        Ok(Ok(GrpcAnswer::Status(s))) => ProbeResult::Failure(format!(
            "service unhealthy (responded with {:?})",
            serving_status_name(s)
        )),
        Ok(Ok(GrpcAnswer::RpcError(12, _))) => ProbeResult::Failure(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health)"
                .into(),
        ),
        Ok(Ok(GrpcAnswer::RpcError(code, message))) => ProbeResult::Failure(format!(
            "health rpc failed with status code {code}: {message}"
        )),
    }
}

enum GrpcAnswer {
    /// `HealthCheckResponse.status`.
    Status(u64),
    /// `grpc-status` and `grpc-message` of a failed call.
    RpcError(u32, String),
}

fn serving_status_name(s: u64) -> &'static str {
    match s {
        0 => "UNKNOWN",
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNRECOGNIZED",
    }
}

async fn grpc_health_check(host: &str, port: u16, service: &str) -> Result<GrpcAnswer, String> {
    let tcp = connect(host, port).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = async {
        let request = hyper::Request::post(format!(
            "http://{}/grpc.health.v1.Health/Check",
            authority(host, port)
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", USER_AGENT)
        .body(Full::new(Bytes::from(grpc_frame(&health_check_request(
            service,
        )))))
        .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let header_status = grpc_status(response.headers());
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let trailer_status = collected.trailers().and_then(grpc_status);
        let (code, message) = trailer_status
            .or(header_status)
            .unwrap_or((0, String::new()));
        if code != 0 {
            return Ok(GrpcAnswer::RpcError(code, message));
        }
        let body = collected.to_bytes();
        let message = body.get(5..).ok_or("short gRPC response")?;
        Ok(GrpcAnswer::Status(health_status(message)))
    }
    .await;
    driver.abort();
    result
}

fn grpc_status(headers: &hyper::HeaderMap) -> Option<(u32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((code, message))
}

/// `HealthCheckRequest { string service = 1; }` in protobuf.
fn health_check_request(service: &str) -> Vec<u8> {
    if service.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0x0a];
    put_varint(&mut out, service.len() as u64);
    out.extend_from_slice(service.as_bytes());
    out
}

/// A gRPC length-prefixed, uncompressed message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `HealthCheckResponse.status` (field 1, varint); absent means UNKNOWN (0).
fn health_status(message: &[u8]) -> u64 {
    let mut rest = message;
    while let Some((key, n)) = get_varint(rest) {
        rest = &rest[n..];
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let Some((v, n)) = get_varint(rest) else {
                    break;
                };
                rest = &rest[n..];
                if field == 1 {
                    return v;
                }
            }
            2 => {
                let Some((len, n)) = get_varint(rest) else {
                    break;
                };
                let skip = n + len as usize;
                if skip > rest.len() {
                    break;
                }
                rest = &rest[skip..];
            }
            1 => rest = rest.get(8..).unwrap_or_default(),
            5 => rest = rest.get(4..).unwrap_or_default(),
            _ => break,
        }
    }
    0
}

/// Runs a postStart or preStop handler to completion.
pub async fn run_handler(
    handler: &LifecycleHandler,
    container_id: &str,
    pod_ip: &str,
    container: &Container,
    exec: &dyn ExecProber,
) -> Result<(), HookError> {
    if let Some(action) = &handler.exec {
        let command = action.command.clone().unwrap_or_default();
        let ran = tokio::time::timeout(
            HOOK_TIMEOUT,
            exec.exec(container_id, command.clone(), HOOK_TIMEOUT),
        )
        .await
        .map_err(|_| HookError::Timeout(HOOK_TIMEOUT))?;
        return match ran {
            Ok((0, _)) => Ok(()),
            Ok((code, output)) => Err(HookError::ExitCode {
                command,
                code,
                output,
            }),
            Err(message) => Err(HookError::Exec { command, message }),
        };
    }
    if let Some(action) = &handler.http_get {
        let target = http_target(action, pod_ip, container).map_err(HookError::Http)?;
        let headers = http_headers(action);
        // Like the kubelet: any answer will do; only failing to get one fails the hook.
        return tokio::time::timeout(HOOK_TIMEOUT, get_following_redirects(target, &headers))
            .await
            .map_err(|_| HookError::Timeout(HOOK_TIMEOUT))?
            .map(|_| ())
            .map_err(HookError::Http);
    }
    if let Some(action) = &handler.sleep {
        let secs = u64::try_from(action.seconds).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        return Ok(());
    }
    if handler.tcp_socket.is_some() {
        return Err(HookError::Unsupported("tcpSocket"));
    }
    Err(HookError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn container(v: Value) -> Container {
        serde_json::from_value(v).expect("container")
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn fail() -> ProbeResult {
        ProbeResult::Failure("boom".into())
    }

    #[test]
    fn timing_defaults_and_pins() {
        let p: Probe = serde_json::from_value(json!({"successThreshold": 3})).expect("probe");
        let live = ProbeTiming::of(&p, ProbeKind::Liveness);
        assert_eq!(
            live,
            ProbeTiming {
                initial_delay: secs(0),
                period: secs(10),
                timeout: secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        assert_eq!(
            ProbeTiming::of(&p, ProbeKind::Readiness).success_threshold,
            3
        );
    }

    #[test]
    fn no_probes_means_started_and_ready() {
        let s = ProbeState::new(&container(json!({"name": "c"})), Instant::now());
        assert!(s.started());
        assert_eq!(s.verdict(), Verdict::Ready(true));
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn liveness_kills_after_failure_threshold() {
        let t0 = Instant::now();
        let c = container(json!({"name": "app", "livenessProbe": {
            "exec": {"command": ["true"]}, "initialDelaySeconds": 5, "periodSeconds": 2,
            "failureThreshold": 3}}));
        let mut s = ProbeState::new(&c, t0);
        assert_eq!(s.verdict(), Verdict::Ready(true));
        assert!(s.due(t0).is_empty(), "initial delay");
        assert_eq!(s.next_due(), Some(t0 + secs(5)));
        assert_eq!(s.due(t0 + secs(5)), [ProbeKind::Liveness]);
        // (offset, result, verdict after)
        let table = [
            (5, fail(), Verdict::Ready(true)),
            (7, fail(), Verdict::Ready(true)),
            (9, ProbeResult::Success, Verdict::Ready(true)),
            (11, fail(), Verdict::Ready(true)),
            (13, ProbeResult::Unknown, Verdict::Ready(true)),
            (15, fail(), Verdict::Ready(true)),
        ];
        for (at, result, want) in table {
            assert_eq!(
                s.record(ProbeKind::Liveness, t0 + secs(at), result),
                want,
                "at {at}"
            );
            assert_eq!(s.next_due(), Some(t0 + secs(at + 2)));
        }
        match s.record(ProbeKind::Liveness, t0 + secs(17), fail()) {
            Verdict::Kill(reason) => {
                assert!(
                    reason.contains("Container app failed liveness probe"),
                    "{reason}"
                );
                assert!(reason.contains("boom"), "{reason}");
            }
            other => panic!("expected a kill, got {other:?}"),
        }
        assert!(
            s.due(t0 + secs(100)).is_empty(),
            "no probing after the kill"
        );
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn readiness_thresholds() {
        let t0 = Instant::now();
        let c = container(json!({"name": "c", "readinessProbe": {
            "httpGet": {"port": 80}, "successThreshold": 2, "failureThreshold": 2, "periodSeconds": 1}}));
        let mut s = ProbeState::new(&c, t0);
        assert_eq!(s.verdict(), Verdict::Ready(false));
        let table = [
            (ProbeResult::Success, false),
            (ProbeResult::Success, true),
            (fail(), true),
            (ProbeResult::Success, true),
            (fail(), true),
            (fail(), false),
            (ProbeResult::Success, false),
            (ProbeResult::Unknown, false),
            (ProbeResult::Success, true),
        ];
        for (i, (result, ready)) in table.into_iter().enumerate() {
            let v = s.record(ProbeKind::Readiness, t0 + secs(i as u64), result);
            assert_eq!(v, Verdict::Ready(ready), "step {i}");
        }
    }

    #[test]
    fn startup_gates_the_others() {
        let t0 = Instant::now();
        let c = container(json!({"name": "c",
            "startupProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1, "failureThreshold": 30},
            "livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 10},
            "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 5}}));
        let mut s = ProbeState::new(&c, t0);
        assert!(!s.started());
        assert_eq!(s.due(t0), [ProbeKind::Startup]);
        assert_eq!(
            s.record(ProbeKind::Startup, t0, fail()),
            Verdict::Ready(false)
        );
        // Results of gated probes are ignored.
        s.record(ProbeKind::Liveness, t0, fail());
        s.record(ProbeKind::Liveness, t0, fail());
        s.record(ProbeKind::Liveness, t0, fail());
        assert_eq!(s.verdict(), Verdict::Ready(false));
        assert_eq!(s.due(t0 + secs(1)), [ProbeKind::Startup]);
        s.record(ProbeKind::Startup, t0 + secs(1), ProbeResult::Success);
        assert!(s.started());
        assert_eq!(
            s.verdict(),
            Verdict::Ready(false),
            "readiness still has to pass"
        );
        assert_eq!(
            s.due(t0 + secs(1)),
            [ProbeKind::Liveness, ProbeKind::Readiness]
        );
        assert!(s
            .due(t0 + secs(100))
            .iter()
            .all(|k| *k != ProbeKind::Startup));
        assert_eq!(
            s.record(ProbeKind::Readiness, t0 + secs(1), ProbeResult::Success),
            Verdict::Ready(true)
        );
        assert_eq!(s.next_due(), Some(t0 + secs(1)), "liveness has not run yet");
        s.record(ProbeKind::Liveness, t0 + secs(1), ProbeResult::Success);
        assert_eq!(s.next_due(), Some(t0 + secs(1) + secs(5)));
    }

    #[test]
    fn startup_failure_restarts() {
        let t0 = Instant::now();
        let c = container(json!({"name": "slow",
            "startupProbe": {"exec": {"command": ["x"]}, "failureThreshold": 2}}));
        let mut s = ProbeState::new(&c, t0);
        s.record(ProbeKind::Startup, t0, fail());
        match s.record(ProbeKind::Startup, t0 + secs(10), fail()) {
            Verdict::StartupFailed(r) => assert!(r.contains("slow failed startup probe"), "{r}"),
            other => panic!("expected StartupFailed, got {other:?}"),
        }
    }

    /// Answers exec calls from a script: command → (exit code, output), recording them.
    #[derive(Default)]
    struct ScriptedExec {
        calls: Mutex<Vec<(String, Vec<String>)>>,
    }

    #[async_trait::async_trait]
    impl ExecProber for ScriptedExec {
        async fn exec(
            &self,
            container_id: &str,
            command: Vec<String>,
            _timeout: Duration,
        ) -> Result<(i32, String), String> {
            self.calls
                .lock()
                .map_err(|e| e.to_string())?
                .push((container_id.to_string(), command.clone()));
            match command.first().map(String::as_str) {
                Some("ok") => Ok((0, "fine".into())),
                Some("bad") => Ok((3, "not fine\n".into())),
                Some("hang") => {
                    tokio::time::sleep(secs(30)).await;
                    Ok((0, String::new()))
                }
                _ => Err("no such container".into()),
            }
        }
    }

    fn cmd(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    #[tokio::test]
    async fn exec_probe_results() {
        let e = ScriptedExec::default();
        assert_eq!(
            exec_probe(&e, "id1", cmd("ok"), secs(1)).await,
            ProbeResult::Success
        );
        assert_eq!(
            exec_probe(&e, "id1", cmd("bad"), secs(1)).await,
            ProbeResult::Failure("command [\"bad\"] exited with 3: not fine".into())
        );
        assert_eq!(
            exec_probe(&e, "id1", cmd("err"), secs(1)).await,
            ProbeResult::Unknown
        );
        let timed = exec_probe(&e, "id1", cmd("hang"), Duration::from_millis(50)).await;
        assert_eq!(
            timed,
            ProbeResult::Failure("command [\"hang\"] timed out".into())
        );
        let calls = e.calls.lock().expect("lock");
        assert_eq!(calls[0], ("id1".to_string(), cmd("ok")));
    }

    /// A tiny HTTP/1.1 server: path → (status, extra headers); records request heads.
    async fn http_server(
        routes: Vec<(&'static str, u16, &'static str)>,
    ) -> (u16, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let routes = routes.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let head = read_head(&mut sock).await;
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    if let Ok(mut l) = log.lock() {
                        l.push(head.clone());
                    }
                    let (status, extra) = routes
                        .iter()
                        .find(|(p, _, _)| *p == path)
                        .map(|(_, s, h)| (*s, *h))
                        .unwrap_or((404, ""));
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\n{extra}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (port, seen, task)
    }

    async fn read_head<S: AsyncRead + Unpin>(sock: &mut S) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match sock.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    fn http_action(v: Value) -> HTTPGetAction {
        serde_json::from_value(v).expect("action")
    }

    #[tokio::test]
    async fn http_get_probe_statuses_redirects_and_headers() {
        let (port, seen, server) = http_server(vec![
            ("/healthz", 200, ""),
            ("/teapot", 418, ""),
            ("/moved", 302, "Location: /healthz\r\n"),
            ("/away", 301, "Location: http://example.invalid/x\r\n"),
            ("/loop", 302, "Location: /loop\r\n"),
            ("/relative/a", 302, "Location: b\r\n"),
            ("/relative/b", 204, ""),
        ])
        .await;
        let c = container(json!({"name": "c", "ports": [{"name": "http", "containerPort": port}]}));
        let probe = |path: &str, port: Value| {
            http_action(json!({"path": path, "port": port,
                "httpHeaders": [{"name": "X-Probe", "value": "yes"}, {"name": "User-Agent", "value": "custom"}]}))
        };
        let t = secs(2);
        let run = |path: &'static str, port: Value| {
            let c = c.clone();
            let a = probe(path, port);
            async move { http_get_probe(&a, "127.0.0.1", &c, t).await }
        };
        assert_eq!(run("/healthz", json!(port)).await, ProbeResult::Success);
        assert_eq!(run("/healthz", json!("http")).await, ProbeResult::Success);
        assert_eq!(
            run("/teapot", json!(port)).await,
            ProbeResult::Failure("HTTP probe failed with statuscode: 418: hello".into())
        );
        assert_eq!(run("/moved", json!(port)).await, ProbeResult::Success);
        assert_eq!(
            run("/away", json!(port)).await,
            ProbeResult::Success,
            "other host: 3xx answer"
        );
        assert_eq!(run("/relative/a", json!(port)).await, ProbeResult::Success);
        match run("/loop", json!(port)).await {
            ProbeResult::Failure(m) => assert!(m.contains("stopped after 10 redirects"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(run("/healthz", json!("nope")).await, ProbeResult::Unknown);
        let heads = seen.lock().expect("lock").clone();
        let first = heads[0].to_ascii_lowercase();
        assert!(first.starts_with("get /healthz http/1.1"), "{first}");
        assert!(first.contains("x-probe: yes"), "{first}");
        assert!(first.contains("user-agent: custom"), "{first}");
        assert!(
            first.contains(&format!("host: 127.0.0.1:{port}")),
            "{first}"
        );
        assert!(heads.iter().filter(|h| h.contains("/moved")).count() == 1);
        server.abort();

        // Nothing listening, and a server that never answers.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead_port = closed.local_addr().expect("addr").port();
        drop(closed);
        match run("/", json!(dead_port)).await {
            ProbeResult::Failure(m) => assert!(m.contains("dial tcp"), "{m}"),
            other => panic!("{other:?}"),
        }
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let silent_port = silent.local_addr().expect("addr").port();
        let a = probe("/", json!(silent_port));
        match http_get_probe(&a, "127.0.0.1", &c, Duration::from_millis(200)).await {
            ProbeResult::Failure(m) => assert!(m.contains("deadline exceeded"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn https_probe_skips_verification() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    read_head(&mut tls).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        let c = container(json!({"name": "c"}));
        let a = http_action(json!({"scheme": "HTTPS", "port": port, "path": "healthz"}));
        assert_eq!(
            http_get_probe(&a, "127.0.0.1", &c, secs(5)).await,
            ProbeResult::Success
        );
        server.abort();
    }

    #[tokio::test]
    async fn tcp_socket_probe_connects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let c = container(json!({"name": "c", "ports": [{"name": "db", "containerPort": port}]}));
        let action = |p: Value| -> TCPSocketAction {
            serde_json::from_value(json!({"port": p})).expect("action")
        };
        assert_eq!(
            tcp_socket_probe(&action(json!("db")), "127.0.0.1", &c, secs(1)).await,
            ProbeResult::Success
        );
        drop(listener);
        match tcp_socket_probe(&action(json!(port)), "127.0.0.1", &c, secs(1)).await {
            ProbeResult::Failure(m) => {
                assert!(m.starts_with(&format!("dial tcp 127.0.0.1:{port}")), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            tcp_socket_probe(&action(json!(0)), "127.0.0.1", &c, secs(1)).await,
            ProbeResult::Unknown
        );
    }

    /// A gRPC health server over HTTP/2 answering each service with a fixed status.
    async fn grpc_server() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let name = body
                                .get(5..)
                                .and_then(|m| m.get(2..))
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .unwrap_or_default();
                            let builder = hyper::Response::builder()
                                .header("content-type", "application/grpc");
                            let response = match name.as_str() {
                                "missing" => builder
                                    .header("grpc-status", "5")
                                    .header("grpc-message", "unknown service")
                                    .body(Full::new(Bytes::new())),
                                _ => {
                                    let status = if name == "down" { 2 } else { 1 };
                                    builder
                                        .header("grpc-status", "0")
                                        .body(Full::new(Bytes::from(grpc_frame(&[0x08, status]))))
                                }
                            };
                            Ok::<_, hyper::Error>(response.unwrap_or_default())
                        });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(sock), service)
                        .await;
                });
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn grpc_health_probe() {
        let (port, server) = grpc_server().await;
        let action = |service: &str| GRPCAction {
            port: i32::from(port),
            service: Some(service.to_string()),
        };
        assert_eq!(
            grpc_probe(&action(""), "127.0.0.1", secs(2)).await,
            ProbeResult::Success
        );
        assert_eq!(
            grpc_probe(&action("down"), "127.0.0.1", secs(2)).await,
            ProbeResult::Failure("service unhealthy (responded with \"NOT_SERVING\")".into())
        );
        match grpc_probe(&action("missing"), "127.0.0.1", secs(2)).await {
            ProbeResult::Failure(m) => assert!(m.contains("status code 5: unknown service"), "{m}"),
            other => panic!("{other:?}"),
        }
        server.abort();
    }

    #[test]
    fn protobuf_helpers() {
        assert_eq!(health_check_request("ab"), vec![0x0a, 2, b'a', b'b']);
        assert_eq!(health_status(&[0x08, 0x01]), 1);
        assert_eq!(health_status(&[0x12, 0x01, b'x', 0x08, 0x03]), 3);
        assert_eq!(health_status(&[]), 0);
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(get_varint(&v), Some((300, 2)));
    }

    #[tokio::test]
    async fn container_probes_run_due_handlers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let c = container(json!({"name": "c",
            "livenessProbe": {"exec": {"command": ["bad"]}, "failureThreshold": 1},
            "readinessProbe": {"tcpSocket": {"port": port}}}));
        let exec = ScriptedExec::default();
        let mut probes = ContainerProbes::new(&c);
        let v = probes.run_due("cid", "127.0.0.1", &c, &exec).await;
        assert!(v.started);
        assert!(!v.ready, "killed containers are not ready");
        let kill = v.kill.expect("liveness kill");
        assert!(kill.contains("exited with 3"), "{kill}");
        assert_eq!(v.next_due, IDLE);
        assert_eq!(exec.calls.lock().expect("lock").len(), 1);

        let c = container(json!({"name": "c",
            "livenessProbe": {"exec": {"command": ["ok"]}, "periodSeconds": 7},
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 3}}));
        let mut probes = ContainerProbes::new(&c);
        let v = probes.run_due("cid", "127.0.0.1", &c, &exec).await;
        assert_eq!((v.started, v.ready, v.kill.clone()), (true, true, None));
        assert!(
            v.next_due <= secs(3) && v.next_due > secs(2),
            "{:?}",
            v.next_due
        );
    }

    #[tokio::test]
    async fn lifecycle_handlers() {
        let (port, seen, server) = http_server(vec![("/pre-stop", 500, "")]).await;
        let c = container(json!({"name": "c"}));
        let exec = ScriptedExec::default();
        let handler =
            |v: Value| -> LifecycleHandler { serde_json::from_value(v).expect("handler") };
        run_handler(
            &handler(json!({"exec": {"command": ["ok"]}})),
            "cid",
            "127.0.0.1",
            &c,
            &exec,
        )
        .await
        .expect("exec ok");
        let err = run_handler(
            &handler(json!({"exec": {"command": ["bad"]}})),
            "cid",
            "127.0.0.1",
            &c,
            &exec,
        )
        .await
        .expect_err("exit 3");
        assert!(matches!(err, HookError::ExitCode { code: 3, .. }), "{err}");
        // Any HTTP answer completes the hook.
        run_handler(
            &handler(json!({"httpGet": {"path": "/pre-stop", "port": port}})),
            "cid",
            "127.0.0.1",
            &c,
            &exec,
        )
        .await
        .expect("http hook");
        assert!(seen.lock().expect("lock")[0].contains("/pre-stop"));
        let started = Instant::now();
        run_handler(
            &handler(json!({"sleep": {"seconds": 1}})),
            "cid",
            "",
            &c,
            &exec,
        )
        .await
        .expect("sleep");
        assert!(started.elapsed() >= secs(1));
        assert!(matches!(
            run_handler(
                &handler(json!({"tcpSocket": {"port": 1}})),
                "cid",
                "",
                &c,
                &exec
            )
            .await,
            Err(HookError::Unsupported("tcpSocket"))
        ));
        server.abort();
    }
}
