//! cairn: the node runtime. `cairn server` grows into the Kubernetes-compatible API server of
//! ARCHITECTURE.md; today it keeps its data directory and answers the health endpoints
//! (`/version`, `/healthz`, `/livez`, `/readyz`) that init and load balancers probe.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "cairn node runtime: server and agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (API and, later, the embedded agent).
    Server {
        /// Where the server keeps its state.
        #[arg(long, default_value = "/var/lib/cairn/server")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: IpAddr,
        /// Port for the API.
        #[arg(long, default_value_t = 6443)]
        https_listen_port: u16,
    },
    /// Print the version.
    Version,
}

fn main() {
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
        } => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let listener = TcpListener::bind((bind_address, https_listen_port))
                .with_context(|| format!("listening on {bind_address}:{https_listen_port}"))?;
            eprintln!("cairn server: listening on {bind_address}:{https_listen_port}");
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        std::thread::spawn(move || {
                            if let Err(e) = serve(stream) {
                                eprintln!("cairn server: connection: {e}");
                            }
                        });
                    }
                    Err(e) => eprintln!("cairn server: accept: {e}"),
                }
            }
            Ok(())
        }
    }
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path.split('?').next().unwrap_or("/") {
        "/healthz" | "/livez" | "/readyz" => ("200 OK", "ok".to_string()),
        "/version" => (
            "200 OK",
            format!(
                "{{\"major\":\"1\",\"minor\":\"32\",\"gitVersion\":\"v1.32.0-cairn.{}\",\"platform\":\"linux/{}\"}}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::ARCH
            ),
        ),
        _ => (
            "404 Not Found",
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"reason\":\"NotFound\",\"code\":404}".to_string(),
        ),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}
