//! `cairn server`: the API over HTTPS on the SQLite store.

pub mod auth;
pub mod csrsigning;
pub mod front;
pub mod health;
pub mod join;
pub mod memory;
pub mod pki;
pub mod portforward;
pub mod spdy;
pub mod tokens;
pub mod tunnel;

use anyhow::{Context, Result};
use axum::body::Body;
use cairn_api::Api;
use cairn_store::{SqliteStore, Store};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct ServerOptions {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub port: u16,
    pub write_kubeconfig: Option<PathBuf>,
    pub token: Option<String>,
    pub tls_san: Vec<String>,
    /// How long Events are kept after they last happened; `None` keeps them.
    pub event_ttl: Option<Duration>,
}

/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

fn serving_names(opts: &ServerOptions) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "::1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    if !opts.bind_address.is_unspecified() {
        names.push(opts.bind_address.to_string());
    }
    names.extend(
        cairn_wire::net::local_addresses()
            .into_iter()
            .map(|a| a.to_string()),
    );
    names.extend(opts.tls_san.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// What a new cluster has before anything else: the system namespaces and the DNS Service.
pub(crate) async fn bootstrap(store: &Arc<dyn Store>) -> Result<()> {
    use cairn_controllers::util;
    cairn_api::crd::load(store).await?;
    let ns = cairn_api::resources::find("", "v1", "namespaces").context("namespaces resource")?;
    for name in SYSTEM_NAMESPACES {
        if store.get(&ns.key(None, name)).await?.is_none() {
            let obj = serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
            });
            create_once(util::create(&**store, ns, obj).await)?;
        }
    }
    // Cluster DNS is answered by every node's agent at this address (pods' resolv.conf names
    // it); the Service makes it discoverable as CoreDNS's would be in K3s.
    let services = cairn_api::resources::find("", "v1", "services").context("services resource")?;
    if store
        .get(&services.key(Some("kube-system"), "kube-dns"))
        .await?
        .is_none()
    {
        let ip = CLUSTER_DNS_IP;
        let obj = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "cairn-dns",
                                    "kubernetes.io/cluster-service": "true"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
            "status": {"loadBalancer": {}},
        });
        create_once(util::create(&**store, services, obj).await)?;
    }
    let classes = cairn_api::resources::find("scheduling.k8s.io", "v1", "priorityclasses")
        .context("priorityclasses resource")?;
    for (name, value, description) in cairn_api::registry::policy::SYSTEM_PRIORITY_CLASSES {
        if store.get(&classes.key(None, name)).await?.is_none() {
            let obj = serde_json::json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": name}, "value": value, "description": description,
            });
            create_once(util::create(&**store, classes, obj).await)?;
        }
    }
    publish_api_services(store).await
}

/// One local APIService per built-in group-version, as kube-aggregator lists them
/// (`kubectl get apiservices`); served here, so always Available.
async fn publish_api_services(store: &Arc<dyn Store>) -> Result<()> {
    use cairn_controllers::util;
    let r = cairn_api::resources::find("apiregistration.k8s.io", "v1", "apiservices")
        .context("apiservices resource")?;
    for (group, version) in cairn_api::resources::builtin_group_versions() {
        let name = if group.is_empty() {
            version.to_string()
        } else {
            format!("{version}.{group}")
        };
        if store.get(&r.key(None, &name)).await?.is_some() {
            continue;
        }
        let obj = serde_json::json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": name, "labels": {"kube-aggregator.kubernetes.io/automanaged": "onstart"}},
            "spec": {"group": group, "version": version, "groupPriorityMinimum": 18000,
                     "versionPriority": 15},
            "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Local",
                "message": "Local APIServices are always available",
                "lastTransitionTime": cairn_wire::time::now_rfc3339()}]},
        });
        create_once(util::create(&**store, r, obj).await)?;
    }
    Ok(())
}

/// A bootstrap create that another start may have won.
fn create_once(created: Result<serde_json::Value>) -> Result<()> {
    match created {
        Err(e)
            if cairn_controllers::util::is_store_error(&e, |s| {
                matches!(s, cairn_store::StoreError::AlreadyExists)
            }) =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// Endpoints and an EndpointSlice for the `kubernetes` Service, so pods reach the API at
/// 10.43.0.1:443 (the agents' proxies DNAT it to this address). Rewritten at every start, as
/// the address may have changed; skipped when the server listens on loopback only, which pods
/// cannot reach.
async fn publish_api_endpoints(store: &Arc<dyn Store>, bind: IpAddr, port: u16) -> Result<()> {
    use cairn_controllers::util;
    let ip = if bind.is_unspecified() {
        match cairn_wire::net::local_addresses()
            .into_iter()
            .find(|a| !a.is_loopback())
        {
            Some(ip) => ip,
            None => return Ok(()),
        }
    } else if bind.is_loopback() {
        return Ok(());
    } else {
        bind
    };
    let endpoints = cairn_api::resources::find("", "v1", "endpoints").context("endpoints")?;
    let slices = cairn_api::resources::find("discovery.k8s.io", "v1", "endpointslices")
        .context("endpointslices")?;
    let wanted = [
        (
            endpoints,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": [{"addresses": [{"ip": ip.to_string()}],
                             "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
            }),
        ),
        (
            slices,
            serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes",
                                        "endpointslice.kubernetes.io/managed-by": "cairn-server"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            }),
        ),
    ];
    for (r, obj) in wanted {
        let key = r.key(Some("default"), "kubernetes");
        match util::get(&**store, &key).await? {
            None => {
                util::create(&**store, r, obj).await?;
            }
            Some(old) => {
                let mut new = old.clone();
                for field in ["subsets", "endpoints", "ports", "addressType"] {
                    if let Some(v) = obj.get(field) {
                        new[field] = v.clone();
                    }
                }
                if new != old {
                    util::update(&**store, r, &old, new).await?;
                }
            }
        }
    }
    Ok(())
}

/// The cluster DNS Service address (K3s's default), written into pods' resolv.conf.
pub const CLUSTER_DNS_IP: &str = "10.43.0.10";

fn read_or_make_token(path: &std::path::Path) -> Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let t = cairn_wire::secret::random_secret(24)?;
    std::fs::write(path, format!("{t}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(t)
}

pub async fn run(opts: ServerOptions) -> Result<()> {
    memory::hold_down();
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let pki = pki::load_or_create(&opts.data_dir.join("tls"), &serving_names(&opts))?;
    std::fs::create_dir_all(opts.data_dir.join("db"))?;
    let sqlite = Arc::new(SqliteStore::open(&opts.data_dir.join("db/state.db"))?);
    sqlite.spawn_compactor(Duration::from_secs(300), 1000);
    let store: Arc<dyn Store> = sqlite;
    bootstrap(&store).await?;
    publish_api_endpoints(&store, opts.bind_address, opts.port).await?;
    // Scheduler, ReplicaSet, Deployment and garbage collector: they run for the server's life.
    let _controllers = cairn_controllers::spawn_all(store.clone(), opts.event_ttl);

    let admin_token = read_or_make_token(&opts.data_dir.join("token"))?;
    let mut tokens = auth::Tokens::default();
    tokens.add(&admin_token, "system:admin", &["system:masters"]);
    if let Some(t) = &opts.token {
        tokens.add(t, "system:node", &["system:nodes"]);
    }

    if let Some(path) = &opts.write_kubeconfig {
        let host = if opts.bind_address.is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            opts.bind_address.to_string()
        };
        let url = format!("https://{}", SocketAddr::new(host.parse()?, opts.port));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(
            path,
            cairn_wire::kubeconfig::render(
                &url,
                &pki.ca_cert_pem,
                &pki.admin_cert_pem,
                &pki.admin_key_pem,
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }

    health::spawn(&opts.data_dir, store.clone())
        .with_context(|| format!("health socket in {}", opts.data_dir.display()))?;
    let tls = tls_config(&pki)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let node_token =
        tokens::load_or_create_server_token(&opts.data_dir, opts.token.as_deref(), &pki.ca_hash())?;
    let pki = Arc::new(pki);
    // The signer needs the CA, so it runs here rather than with the other controllers.
    let _signer = cairn_controllers::spawn(
        csrsigning::CsrSigner { pki: pki.clone() },
        store.clone(),
        cairn_controllers::LoopOptions::default(),
    );
    let tunnels = tunnel::Tunnels::default();
    let api = Arc::new(front::Front {
        api: Api {
            store: store.clone(),
            ca_pem: pki.ca_cert_pem.clone(),
            pod_streams: Some(Arc::new(tunnel::TunnelPodStreams {
                store: store.clone(),
                tunnels: tunnels.clone(),
            })),
        },
        joiner: Some(Arc::new(join::Joiner {
            pki: pki.clone(),
            server_secret: node_token.secret,
            store,
        })),
        tunnels,
    });
    let tokens = Arc::new(tokens);
    let listener = tokio::net::TcpListener::bind((opts.bind_address, opts.port))
        .await
        .with_context(|| format!("listening on {}:{}", opts.bind_address, opts.port))?;
    tracing::info!(address = %listener.local_addr()?, "cairn server listening (HTTPS)");
    eprintln!(
        "cairn server: listening on https://{}",
        listener.local_addr()?
    );
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept");
                continue;
            }
        };
        // Responses are written in pieces; Nagle would hold the last one for a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let api = api.clone();
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let cert_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| auth::from_client_certificate(c));
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let api = api.clone();
                    let who = cert_identity.clone().or_else(|| {
                        req.headers()
                            .get(hyper::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|h| tokens.authenticate(h))
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(api.serve(who, req.map(Body::new)).await)
                    }
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

fn tls_config(pki: &pki::Pki) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pemfile::certs(&mut pki.server_cert_pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .context("serving certificate")?;
    let key = rustls_pemfile::private_key(&mut pki.server_key_pem.as_bytes())
        .context("serving key")?
        .context("no serving key")?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pemfile::certs(&mut pki.ca_cert_pem.as_bytes()) {
        roots.add(ca.context("CA certificate")?)?;
    }
    // Client certificates are checked against our CA when offered; token clients offer none.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("client certificate verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("serving certificate")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
