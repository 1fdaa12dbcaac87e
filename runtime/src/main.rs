//! cairn: the node runtime. `cairn server` is the Kubernetes-compatible API server on a
//! revisioned SQLite store (see ARCHITECTURE.md, Runtime design).

use anyhow::Result;
use cairn_runtime::server;
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
        /// Do not run the embedded agent (no pods on this machine).
        #[arg(long)]
        disable_agent: bool,
    },
    /// Print the version.
    Version,
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
            disable_agent: _,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(server::run(server::ServerOptions {
                data_dir,
                bind_address,
                port: https_listen_port,
                write_kubeconfig: Some(write_kubeconfig),
                token,
                tls_san,
            }))
        }
    }
}
