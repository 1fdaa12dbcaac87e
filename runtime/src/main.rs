//! cairn: the node runtime. `cairn server` is the Kubernetes-compatible API server on a
//! revisioned SQLite store (see ARCHITECTURE.md, Runtime design).

mod update;

use anyhow::Result;
use cairn_agent as agent;
use cairn_server as server;
use clap::{Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "cairn node runtime: Kubernetes-compatible server and agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--event-ttl`: `None` keeps Events for ever.
#[derive(Clone, Copy, Debug)]
struct EventTtl(Option<std::time::Duration>);

fn parse_event_ttl(s: &str) -> Result<EventTtl, String> {
    server::tokens::parse_ttl(s)
        .map(EventTtl)
        .map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (HTTPS) on a SQLite store.
    Server {
        /// Where the server keeps its state (database, certificates, tokens).
        #[arg(long, default_value = "/var/lib/cairn/server")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: IpAddr,
        /// HTTPS port for the API.
        #[arg(long, default_value_t = 6443)]
        https_listen_port: u16,
        /// Write an admin kubeconfig here.
        #[arg(long, default_value = "/etc/cairn/cairn.yaml")]
        write_kubeconfig: PathBuf,
        /// Shared secret nodes join with.
        #[arg(long, env = "CAIRN_TOKEN")]
        token: Option<String>,
        /// Extra names or addresses for the serving certificate.
        #[arg(long)]
        tls_san: Vec<String>,
        /// How long Events are kept after they last happened, e.g. 1h, 30m; 0 keeps them.
        #[arg(long, default_value = "1h", value_parser = parse_event_ttl)]
        event_ttl: EventTtl,
        /// Do not run the embedded agent (no pods on this machine).
        #[arg(long)]
        disable_agent: bool,
        #[command(flatten)]
        agent: AgentFlags,
    },
    /// Join a server as a node and run the pods it schedules here.
    Agent {
        /// The server to join, e.g. https://10.0.0.1:6443.
        #[arg(long, env = "CAIRN_URL")]
        server: String,
        /// The join token (`K10<ca hash>::node:<secret>` from the server's node-token file,
        /// or one made with `cairn token create`).
        #[arg(long, env = "CAIRN_TOKEN")]
        token: String,
        #[command(flatten)]
        agent: AgentFlags,
    },
    /// Manage join tokens (bootstrap tokens stored as Secrets in kube-system).
    Token {
        /// Admin kubeconfig to reach the server with.
        #[arg(long, default_value = "/etc/cairn/cairn.yaml", env = "KUBECONFIG")]
        kubeconfig: PathBuf,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// A/B updates of this device: install a signed bundle into the inactive slot, show the
    /// slots, commit or roll back (see `cairn update <command> --help`).
    Update {
        #[command(subcommand)]
        command: UpdateCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Stream a bundle (.cairnb) from a file or an http(s):// URL into the inactive slot:
    /// it is verified (signature, board, architecture, anti-rollback floor, size, hash) and
    /// read back before the bootloader is pointed at it, on trial. Nothing touches the
    /// running slot.
    Install {
        /// A path or an http:// / https:// URL.
        source: String,
        /// Reboot into the new slot once it is installed.
        #[arg(long)]
        reboot: bool,
        /// The public keys bundles may be signed with.
        #[arg(long, default_value = crate::update::KEYS_DIR)]
        keys_dir: PathBuf,
    },
    /// Both slots: version, good/trial/bad/empty, which is booted and which boots next, and
    /// why the last trial failed.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Commit the booted slot now (cairn-init does this by itself once the node is Ready).
    MarkGood,
    /// Boot the other slot from now on; it must hold a good image.
    Rollback {
        /// Reboot into it now.
        #[arg(long)]
        reboot: bool,
    },
}

/// The node agent's settings, shared by `cairn agent` and the agent embedded in `cairn server`.
#[derive(clap::Args)]
struct AgentFlags {
    /// The node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Where the agent keeps its state (credentials, pod directories, logs, images/).
    #[arg(
        long = "agent-data-dir",
        alias = "agent-dir",
        default_value = "/var/lib/cairn/agent"
    )]
    agent_data_dir: PathBuf,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_address: PathBuf,
    /// The containerd namespace pods run in.
    #[arg(long, default_value = "k8s.io")]
    containerd_namespace: String,
    /// The address other nodes and the server reach this node at (default: the source
    /// address of the route to the server).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Directories with the CNI plugins (bridge, host-local, loopback).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/usr/lib/cni,/opt/cni/bin"
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// The cluster DNS Service address written into pods' resolv.conf.
    #[arg(long, default_value = "10.43.0.10")]
    cluster_dns: std::net::Ipv4Addr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// More directories whose `*.tar` image archives are imported at start-up (air-gapped).
    #[arg(long)]
    images_dir: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a new join token and print it (the only time its secret is shown).
    Create {
        /// How long the token is valid, e.g. 24h, 30m, 0 for ever.
        #[arg(long, default_value = "24h")]
        ttl: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (ids, expiry, description; never secrets).
    List,
    /// Delete a join token by id.
    Delete { id: String },
}

impl AgentFlags {
    fn options(
        self,
        server: String,
        token: String,
        control_plane: bool,
    ) -> Result<agent::AgentOptions> {
        let node_name = match self.node_name {
            Some(n) => n,
            None => agent::default_node_name()?,
        };
        Ok(agent::AgentOptions {
            server,
            token,
            node_name,
            data_dir: self.agent_data_dir,
            containerd_address: self.containerd_address,
            containerd_namespace: self.containerd_namespace,
            node_ip: self.node_ip,
            cni_bin_dirs: self.cni_bin_dir,
            cluster_dns: self.cluster_dns,
            cluster_domain: self.cluster_domain,
            images_dirs: self.images_dir,
            control_plane,
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("cairn: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Version => {
            println!("cairn {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Server {
            data_dir,
            bind_address,
            https_listen_port,
            write_kubeconfig,
            token,
            tls_san,
            event_ttl,
            disable_agent,
            agent,
        } => {
            let host = if bind_address.is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                bind_address.to_string()
            };
            let url = format!(
                "https://{}",
                std::net::SocketAddr::new(host.parse()?, https_listen_port)
            );
            let node_token_file = data_dir.join("node-token");
            let embedded = if disable_agent {
                None
            } else {
                // The token is filled in once the server has written its node-token file.
                Some(agent.options(url, String::new(), true)?)
            };
            runtime()?.block_on(async move {
                let server = tokio::spawn(server::run(server::ServerOptions {
                    data_dir,
                    bind_address,
                    port: https_listen_port,
                    write_kubeconfig: Some(write_kubeconfig),
                    token,
                    tls_san,
                    event_ttl: event_ttl.0,
                }));
                if let Some(mut opts) = embedded {
                    opts.token = agent::wait_for_token_file(&node_token_file).await?;
                    tokio::spawn(async move {
                        if let Err(e) = agent::run(opts).await {
                            tracing::error!(error = %format!("{e:#}"), "embedded agent stopped");
                            eprintln!("cairn: error: embedded agent: {e:#}");
                            std::process::exit(1);
                        }
                    });
                }
                server.await?
            })
        }
        Command::Agent {
            server,
            token,
            agent,
        } => {
            let opts = agent.options(server, token, false)?;
            runtime()?.block_on(agent::run(opts))
        }
        Command::Token {
            kubeconfig,
            command,
        } => runtime()?.block_on(token_command(&kubeconfig, command)),
        Command::Update { command } => {
            use crate::update;
            match command {
                UpdateCommand::Install {
                    source,
                    reboot,
                    keys_dir,
                } => update::install_command(&source, reboot, &keys_dir),
                UpdateCommand::Status { json } => update::status_command(json),
                UpdateCommand::MarkGood => update::mark_good_command(),
                UpdateCommand::Rollback { reboot } => update::rollback_command(reboot),
            }
        }
    }
}

async fn token_command(kubeconfig: &std::path::Path, command: TokenCommand) -> Result<()> {
    use server::tokens;
    match command {
        TokenCommand::Create { ttl, description } => {
            println!(
                "{}",
                tokens::create_with_kubeconfig(kubeconfig, &ttl, &description).await?
            )
        }
        TokenCommand::List => print!("{}", tokens::list_with_kubeconfig(kubeconfig).await?),
        TokenCommand::Delete { id } => {
            tokens::delete_with_kubeconfig(kubeconfig, &id).await?;
            println!("token {id} deleted");
        }
    }
    Ok(())
}
