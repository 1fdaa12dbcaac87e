//! The agent as a whole: join, containerd, node registration, pod network, Services, DNS,
//! routes, the pod manager, the tunnel and the heartbeat, started in that order.

use super::*;
use anyhow::{Context, Result};
use cairn_wire::{client, join};
use client::{ApiClient, Credentials, Reflector};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Retries `f` with back-off (0.5 s doubling to 10 s) until it succeeds, logging failures.
async fn retry<T, E: std::fmt::Display, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    retry_up_to(what, Duration::from_secs(10), f).await
}

/// [`retry`] with the back-off capped at `max_delay`.
async fn retry_up_to<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    max_delay: Duration,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let mut delay = Duration::from_millis(500).min(max_delay);
    let mut warned = false;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                if !warned || delay >= Duration::from_secs(10) {
                    tracing::warn!(error = %e, "{what} (retrying)");
                    warned = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max_delay);
            }
        }
    }
}

/// How soon a Service sync that nft refused is tried again (on a device the netfilter
/// modules may still be loading when the agent starts).
const FAILED_SYNC_RETRY: Duration = Duration::from_secs(1);

fn server_host(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let host = if let Some(h) = authority.strip_prefix('[') {
        h.split(']').next()?
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    Some(host.to_string())
}

/// The podCIDR the server gave this node, remembered so a restart with the server away can
/// still wire pods.
async fn pod_cidr(client: &ApiClient, node: &str, data_dir: &Path) -> Result<cni::Ipv4Cidr> {
    let file = data_dir.join("pod-cidr");
    let remembered = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<cni::Ipv4Cidr>().ok());
    let start = Instant::now();
    loop {
        match client.get(&format!("/api/v1/nodes/{node}")).await {
            Ok(Some(n)) => {
                if let Some(c) = n
                    .pointer("/spec/podCIDR")
                    .and_then(serde_json::Value::as_str)
                {
                    let cidr: cni::Ipv4Cidr = c
                        .parse()
                        .map_err(|e| anyhow::anyhow!("node {node} has a bad podCIDR {c}: {e}"))?;
                    std::fs::write(&file, format!("{cidr}\n"))?;
                    return Ok(cidr);
                }
            }
            Ok(None) => {}
            Err(e) => {
                if let Some(c) = remembered {
                    tracing::warn!(error = %e, "server unreachable; using the remembered podCIDR {c}");
                    return Ok(c);
                }
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            tracing::warn!(node, "still waiting for the server to assign a podCIDR");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs the node agent until the process ends.
pub async fn run(opts: AgentOptions) -> Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let node = opts.node_name.clone();
    let token = join::Token::parse(&opts.token).context("the join token")?;
    let creds = retry("joining the cluster", || {
        join::join(&opts.server, &token, &node, &opts.data_dir)
    })
    .await;
    let client = ApiClient::new(
        &opts.server,
        &creds.ca_pem,
        Credentials::ClientCert {
            cert_pem: creds.cert_pem.clone(),
            key_pem: creds.key_pem.clone(),
        },
    )?;
    let ctr = retry("connecting to containerd", || {
        containerd::Containerd::connect(&opts.containerd_address, &opts.containerd_namespace)
    })
    .await;
    let runtime_version = format!(
        "containerd://{}",
        ctr.version().await.unwrap_or_else(|_| "unknown".into())
    );

    let mut image_dirs = vec![
        opts.data_dir.join("images"),
        PathBuf::from(BUILTIN_IMAGES_DIR),
    ];
    image_dirs.extend(opts.images_dirs.iter().cloned());
    // Unpacking archives takes a second or more on a small board: it goes on beside
    // registration and the pod network, and only the pod manager waits for it.
    let imported = tokio::spawn(import_image_dirs(ctr.clone(), image_dirs));

    let node_ip = opts
        .node_ip
        .unwrap_or_else(|| node::node_ip(server_host(&opts.server).as_deref()));
    let addresses = vec![
        ("InternalIP".to_string(), node_ip.to_string()),
        ("Hostname".to_string(), node.clone()),
    ];
    let machine = node::Machine::sample(&opts.data_dir, &runtime_version);
    let not_ready = node::Health {
        runtime_ok: true,
        network_ok: false,
        problem: Some("container network is not set up yet".into()),
    };
    let initial = node::status(
        &machine,
        &not_ready,
        &addresses,
        None,
        &cairn_wire::time::now_rfc3339(),
    );
    // Registration waits for the server unless this node already knows its podCIDR.
    let registered = {
        let client = client.clone();
        let node = node.clone();
        let control_plane = opts.control_plane;
        tokio::spawn(async move {
            retry("registering the node", || {
                node::register(&client, &node, control_plane, &initial)
            })
            .await
        })
    };
    let registered = if opts.data_dir.join("pod-cidr").exists() {
        Registration::Pending(registered)
    } else {
        Registration::Done(registered.await.context("node registration")?)
    };
    let cidr = pod_cidr(&client, &node, &opts.data_dir).await?;
    tracing::info!(node, pod_cidr = %cidr, node_ip = %node_ip, "node registered");

    cni::enable_ip_forwarding().context("enabling IP forwarding")?;
    let mut net_cfg = cni::NetworkConfig::new(
        &node,
        &cni::bridge_name_for(&node),
        cidr,
        opts.data_dir.join("cni"),
    );
    net_cfg.cni_bin_dirs = opts.cni_bin_dirs.clone();
    let net = cni::Network::new(net_cfg)?;
    // On a device the bridge module may still be loading beside the agent's start.
    retry_up_to("creating the pod bridge", Duration::from_secs(1), || {
        net.ensure_bridge()
    })
    .await;
    let gateway = net.bridge_gateway();

    let dns_upstreams = dns::host_upstreams().unwrap_or_default();
    // Another process on the bridge address's port 53 (a previous agent still stopping) only
    // delays cluster DNS: keep trying rather than take the node down.
    let dns_server = retry_up_to(
        "starting cluster DNS on the pod bridge",
        Duration::from_secs(5),
        || {
            dns::DnsServer::start(
                vec![SocketAddr::new(IpAddr::V4(gateway), 53)],
                &opts.cluster_domain,
                dns_upstreams.clone(),
            )
        },
    )
    .await;

    let services = Reflector::start(client.clone(), "/api/v1/services".into());
    let slices = Reflector::start(
        client.clone(),
        "/apis/discovery.k8s.io/v1/endpointslices".into(),
    );
    let nodes = Reflector::start(client.clone(), "/api/v1/nodes".into());
    let pods = Reflector::start(
        client.clone(),
        format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
    );

    let source: Arc<dyn env::ObjectSource> = Arc::new(sources::ApiSource::new(
        client.clone(),
        services.clone(),
        opts.data_dir.join("objects"),
    ));
    let ctx = Arc::new_cyclic(|weak| NodeContext {
        node_name: node.clone(),
        data_dir: opts.data_dir.clone(),
        host_ip: node_ip.to_string(),
        ctr: ctr.clone(),
        net,
        client: client.clone(),
        source,
        cluster_dns: opts.cluster_dns,
        cluster_domain: opts.cluster_domain.clone(),
        host_facts: spec::HostFacts::detect(),
        exec_prober: Arc::new(pods::ContainerdExecProber { ctx: weak.clone() }),
        events: events::Recorder::start(client.clone(), &node),
    });

    // kube-proxy's and CoreDNS's part: Services into nftables, names into the DNS records.
    let proxy = proxy::Proxy::new(&node);
    tokio::spawn(service_loop(
        proxy,
        dns_server,
        services,
        slices,
        pods.clone(),
        proxy::NodeInfo {
            node_ips: local_ipv4s(node_ip),
            pod_cidr: cidr,
            bridge: ctx.net.config().bridge.clone(),
        },
        opts.cluster_dns,
        SocketAddr::new(IpAddr::V4(gateway), 53),
    ));
    tokio::spawn(route_loop(nodes, node.clone()));

    let manager = pods::PodManager::new(ctx.clone());
    // Pods wait for the baked images (else they would try a registry for them); the node's
    // heartbeat, and so its Ready condition, does not.
    tokio::spawn({
        let manager = manager.clone();
        async move {
            if let Err(e) = imported.await {
                tracing::warn!(error = %e, "importing image archives");
            }
            manager.run(pods).await
        }
    });
    tokio::spawn(tunnel::run(
        opts.server.clone(),
        creds.clone(),
        node.clone(),
        manager.clone(),
    ));
    heartbeat(
        ctx,
        registered,
        machine,
        addresses,
        opts.control_plane,
        runtime_version,
    )
    .await
}

/// Imports the image archives in `dirs` (those that exist) into containerd.
async fn import_image_dirs(ctr: containerd::Containerd, dirs: Vec<PathBuf>) {
    for dir in &dirs {
        if dir.is_dir() {
            let names = images::import_dir(&ctr, dir).await;
            if !names.is_empty() {
                tracing::info!(dir = %dir.display(), images = ?names, "imported image archives");
            }
        }
    }
}

fn local_ipv4s(node_ip: IpAddr) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = cairn_wire::net::local_addresses()
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    if let IpAddr::V4(ip) = node_ip {
        if !v.contains(&ip) {
            v.push(ip);
        }
    }
    v
}

#[allow(clippy::too_many_arguments)]
async fn service_loop(
    proxy: proxy::Proxy,
    dns: dns::DnsHandle,
    services: Reflector,
    slices: Reflector,
    pods: Reflector,
    info: proxy::NodeInfo,
    dns_service_ip: Ipv4Addr,
    dns_local: SocketAddr,
) {
    let mut a = services.subscribe();
    let mut b = slices.subscribe();
    let mut c = pods.subscribe();
    let mut failed = false;
    loop {
        if services.is_synced() && slices.is_synced() {
            let svc = services.snapshot();
            let eps = slices.snapshot();
            dns.update(&svc, &eps, &pods.snapshot());
            let mut view = proxy::ServiceView::from_objects(&svc, &eps, info.clone());
            view.dns = Some((dns_service_ip, dns_local));
            if let Err(e) = proxy.sync(&view).await {
                tracing::warn!(error = %e, "programming Services into nftables");
                failed = true;
            } else {
                failed = false;
            }
        }
        let idle = if failed {
            FAILED_SYNC_RETRY
        } else {
            Duration::from_secs(30)
        };
        // Coalesce bursts of changes into one rule update.
        tokio::select! {
            _ = a.changed() => {}
            _ = b.changed() => {}
            _ = c.changed() => {}
            _ = tokio::time::sleep(idle) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn route_loop(nodes: Reflector, me: String) {
    let mut changes = nodes.subscribe();
    loop {
        if nodes.is_synced() {
            let locals: Vec<Ipv4Addr> = local_ipv4s(IpAddr::V4(Ipv4Addr::LOCALHOST));
            if let Err(e) = routes::sync(&nodes.snapshot(), &me, &locals).await {
                tracing::warn!(error = %e, "routes to other nodes' pods");
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

/// The Node object once registered; registration goes on in the background when the node
/// restarts with the server away and already knows its podCIDR.
enum Registration {
    Done(serde_json::Value),
    Pending(tokio::task::JoinHandle<serde_json::Value>),
}

/// The Lease every 10 s and the node status when it changes (or every minute).
async fn heartbeat(
    ctx: Arc<NodeContext>,
    registered: Registration,
    mut machine: node::Machine,
    addresses: Vec<(String, String)>,
    control_plane: bool,
    runtime_version: String,
) -> Result<()> {
    let node_obj = match registered {
        Registration::Done(v) => v,
        Registration::Pending(h) => h.await.context("node registration")?,
    };
    let uid = node_obj
        .pointer("/metadata/uid")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_string();
    let mut conditions = node_obj.pointer("/status/conditions").cloned();
    let mut last_posted: Option<(String, Instant)> = None;
    let mut tick = tokio::time::interval(node::LEASE_RENEW_INTERVAL);
    let mut first = true;
    loop {
        tick.tick().await;
        if let Err(e) = node::renew_lease(&ctx.client, &ctx.node_name, &uid).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        if !first {
            machine = node::Machine::sample(&ctx.data_dir, &runtime_version);
        }
        first = false;
        let runtime_ok = ctx.ctr.version().await.is_ok();
        let network_ok = Path::new("/sys/class/net")
            .join(&ctx.net.config().bridge)
            .exists();
        let health = node::Health {
            runtime_ok,
            network_ok,
            problem: (!runtime_ok)
                .then(|| "containerd is not answering".to_string())
                .or_else(|| (!network_ok).then(|| "the pod bridge is missing".to_string())),
        };
        let status = node::status(
            &machine,
            &health,
            &addresses,
            conditions.as_ref(),
            &cairn_wire::time::now_rfc3339(),
        );
        let fp = node::fingerprint(&status);
        let due = match &last_posted {
            None => true,
            Some((f, at)) => *f != fp || at.elapsed() >= node::STATUS_REPORT_INTERVAL,
        };
        if due {
            match node::post_status(&ctx.client, &ctx.node_name, &status).await {
                Ok(_) => {
                    conditions = status.get("conditions").cloned();
                    last_posted = Some((fp, Instant::now()));
                }
                Err(e) if e.is_not_found() => {
                    // Someone deleted the Node: register it again.
                    let _ =
                        node::register(&ctx.client, &ctx.node_name, control_plane, &status).await;
                }
                Err(e) => tracing::warn!(error = %e, "posting node status"),
            }
        }
    }
}
