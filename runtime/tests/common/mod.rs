//! A `cairn server` process for client tests: its own data directory, a free port, an admin
//! kubeconfig, and helpers to run the real kubectl and the Python client against it.

#![allow(dead_code)] // each test file uses a different part of this helper

pub mod containerd;
pub mod http;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub kubeconfig: PathBuf,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir)
    }

    pub fn start_in(dir: tempfile::TempDir) -> Server {
        Self::launch(dir, &["--disable-agent".to_string()])
    }

    /// A server whose embedded agent runs pods (the caller passes its agent flags).
    pub fn start_with_agent(dir: tempfile::TempDir, agent_flags: &[String]) -> Server {
        Self::launch(dir, agent_flags)
    }

    fn launch(dir: tempfile::TempDir, extra: &[String]) -> Server {
        let port = free_port();
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let child = Self::spawn(&dir, port, &kubeconfig, extra);
        let server = Server {
            child,
            dir,
            port,
            kubeconfig,
            extra: extra.to_vec(),
        };
        server.wait_ready();
        server
    }

    /// Stops the server process (SIGKILL) and leaves it down until [`Server::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.dir, self.port, &self.kubeconfig, &self.extra);
        self.wait_ready();
    }

    fn spawn(dir: &tempfile::TempDir, port: u16, kubeconfig: &Path, extra: &[String]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("log");
        Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["server", "--bind-address", "127.0.0.1"])
            .args(extra)
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--write-kubeconfig")
            .arg(kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cairn server")
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if self.kubeconfig.exists() {
                let out = self.kubectl(&["get", "--raw", "/readyz"]);
                if out.status.success() {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "server did not become ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        self.kubectl_binary_cmd(Path::new("kubectl"), args)
    }

    /// [`Server::kubectl_cmd`] with a given kubectl binary (one of [`kubectl_versions`]).
    pub fn kubectl_binary_cmd(&self, binary: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(binary);
        c.env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .arg("--request-timeout=30s")
            .args(args);
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("run kubectl")
    }

    /// Runs kubectl, failing the test with its stderr if it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// kubectl with a manifest on stdin.
    pub fn ok_stdin(&self, args: &[&str], input: &str) -> String {
        let out = self.with_stdin(args, input);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn with_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("kubectl output")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store revision, as a list of ConfigMaps in `default` reports it: it moves on every
/// write, so an unchanged revision proves a request changed nothing.
pub fn store_revision(s: &Server) -> String {
    let list: serde_json::Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
            .expect("list json");
    list["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

/// The repository's Python with the `kubernetes` package (made by `make deps`).
pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run 'make deps' to create the venv with the kubernetes client",
        p.display()
    );
    p
}

/// The kubectl binaries the dispatcher behind `/usr/bin/kubectl` carries, beside it.
pub fn kubectl_versions() -> Vec<PathBuf> {
    let real = std::fs::canonicalize(which("kubectl")).expect("kubectl resolves");
    let dir = real.parent().expect("kubectl's directory");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("kubectl's directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kubectl.1."))
        })
        .collect();
    found.sort();
    found
}

pub fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} is not on PATH: run 'make deps'"))
}

/// Starts `kubectl port-forward` and returns it with the local port it listens on.
pub fn start_port_forward(cmd: &mut Command) -> (std::process::Child, u16) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    BufRead::read_line(&mut out, &mut line).expect("kubectl says where it listens");
    // "Forwarding from 127.0.0.1:41234 -> 8080"
    let local = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("kubectl port-forward printed {line:?}: {err}")
        });
    // Keep reading stdout so kubectl never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, local)
}
