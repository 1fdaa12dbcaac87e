//! Supervision: starts services, reaps every child (container shims are reparented to PID 1),
//! restarts crashed services with exponential back-off, copies their output to the console
//! and to a bounded log under /var/log/cairn, and turns signals into shutdown requests.

use crate::info;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a service's standard streams are wired.
#[derive(Debug, Clone)]
pub enum Output {
    /// Lines go to the console and to `<log_dir>/<name>.log`.
    Logged,
    /// The process owns this terminal (the console shell).
    Terminal(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Reboot,
    Poweroff,
    Halt,
}

/// Restart delay after `restarts` consecutive quick failures: 1 s doubling to 60 s.
pub fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(1u64 << restarts.min(6)).min(Duration::from_secs(60))
}

/// A run this long counts as healthy and resets the back-off.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// Per-service log size before it is rotated to `.log.1`.
const LOG_LIMIT: u64 = 1 << 20;

struct Service {
    spec: ServiceSpec,
    pid: Option<libc::pid_t>,
    started: Instant,
    restarts: u32,
    next_start: Option<Instant>,
    pipe: Option<std::fs::File>,
    partial: Vec<u8>,
}

pub struct Supervisor {
    services: Vec<Service>,
    signals: std::fs::File,
    log_dir: PathBuf,
}

const HANDLED: [libc::c_int; 6] = [
    libc::SIGCHLD,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

fn signal_set(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in sigs {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

impl Supervisor {
    /// Blocks the handled signals and reads them from a signalfd instead.
    pub fn new(log_dir: PathBuf) -> std::io::Result<Supervisor> {
        let set = signal_set(&HANDLED);
        // SAFETY: valid sigset; blocking signals in PID 1 before anything is spawned.
        let fd = unsafe {
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let signals = unsafe { std::fs::File::from_raw_fd(fd) };
        Ok(Supervisor {
            services: Vec::new(),
            signals,
            log_dir,
        })
    }

    pub fn add(&mut self, spec: ServiceSpec) -> Option<libc::pid_t> {
        self.services.push(Service {
            spec,
            pid: None,
            started: Instant::now(),
            restarts: 0,
            next_start: None,
            pipe: None,
            partial: Vec::new(),
        });
        let i = self.services.len() - 1;
        self.start(i);
        self.services[i].pid
    }

    /// How long a service has been running in its current incarnation.
    pub fn uptime_of(&self, name: &str) -> Option<Duration> {
        self.services
            .iter()
            .find(|s| s.spec.name == name && s.pid.is_some())
            .map(|s| s.started.elapsed())
    }

    /// Starts service `i`; a failure to start is retried with the same back-off as a crash.
    fn start(&mut self, i: usize) {
        let svc = &mut self.services[i];
        svc.next_start = None;
        match spawn(&svc.spec) {
            Ok((pid, pipe)) => {
                svc.pid = Some(pid);
                svc.started = Instant::now();
                svc.pipe = pipe;
            }
            Err(e) => {
                info!("{}: cannot start {}: {e}", svc.spec.name, svc.spec.program);
                svc.restarts += 1;
                svc.next_start = Some(Instant::now() + backoff(svc.restarts));
            }
        }
    }

    /// Waits up to `timeout` for something to happen and deals with it. Returns a shutdown
    /// request when a signal asked for one.
    pub fn tick(&mut self, timeout: Duration) -> Option<Shutdown> {
        let now = Instant::now();
        let mut wait = timeout;
        for s in &self.services {
            if let Some(t) = s.next_start {
                wait = wait.min(t.saturating_duration_since(now));
            }
        }
        let mut fds = vec![libc::pollfd {
            fd: self.signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut owners = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            if let Some(p) = &s.pipe {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                owners.push(i);
            }
        }
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().min(i32::MAX as u128) as libc::c_int,
            )
        };
        for (k, i) in owners.iter().enumerate() {
            if fds[k + 1].revents != 0 {
                self.drain(*i);
            }
        }
        let mut request = None;
        if fds[0].revents & libc::POLLIN != 0 {
            request = self.read_signals();
        }
        self.reap();
        let now = Instant::now();
        for i in 0..self.services.len() {
            if self.services[i].next_start.is_some_and(|t| t <= now) {
                self.start(i);
            }
        }
        request
    }

    fn read_signals(&mut self) -> Option<Shutdown> {
        let mut request = None;
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        while let Ok(n) = self.signals.read(&mut buf) {
            if n < buf.len() {
                break;
            }
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as libc::c_int;
            request = match signo {
                libc::SIGINT => {
                    info!("Ctrl-Alt-Del: rebooting");
                    Some(Shutdown::Reboot)
                }
                libc::SIGTERM => Some(Shutdown::Reboot),
                libc::SIGUSR2 | libc::SIGPWR => Some(Shutdown::Poweroff),
                libc::SIGUSR1 => Some(Shutdown::Halt),
                _ => request,
            };
        }
        request
    }

    /// Reaps every exited child; schedules restarts for services.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status we own.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            let Some(i) = self.services.iter().position(|s| s.pid == Some(pid)) else {
                continue; // an orphan (e.g. a container shim's child): reaped, nothing else
            };
            self.drain(i);
            let svc = &mut self.services[i];
            svc.pid = None;
            svc.pipe = None;
            let ran = svc.started.elapsed();
            if ran >= STABLE_RUN {
                svc.restarts = 0;
            }
            let how = describe_status(status);
            let delay = backoff(svc.restarts);
            svc.restarts += 1;
            if svc.restarts >= 5 {
                info!(
                    "{} is crash-looping ({how} after {:.1}s, {} quick restarts); next start in {}s",
                    svc.spec.name,
                    ran.as_secs_f32(),
                    svc.restarts,
                    delay.as_secs()
                );
            } else {
                info!(
                    "{} {how} after {:.1}s; restarting in {}s",
                    svc.spec.name,
                    ran.as_secs_f32(),
                    delay.as_secs()
                );
            }
            svc.next_start = Some(Instant::now() + delay);
        }
    }

    fn drain(&mut self, i: usize) {
        let svc = &mut self.services[i];
        let Some(pipe) = svc.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => svc.partial.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        let mut lines = Vec::new();
        while let Some(pos) = svc.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = svc.partial.drain(..=pos).collect();
            lines.push(line);
        }
        if lines.is_empty() {
            return;
        }
        let name = svc.spec.name.clone();
        let mut console = std::io::stdout().lock();
        let path = self.log_dir.join(format!("{name}.log"));
        let mut log = open_log(&path);
        for line in lines {
            let _ = console.write_all(format!("[{name}] ").as_bytes());
            let _ = console.write_all(&line);
            if let Some(f) = log.as_mut() {
                let _ = f.write_all(&line);
            }
        }
        let _ = console.flush();
    }

    /// Stops services in reverse start order, then every other process.
    pub fn stop_all(&mut self, grace: Duration) {
        for i in (0..self.services.len()).rev() {
            self.services[i].next_start = None;
            let Some(pid) = self.services[i].pid else {
                continue;
            };
            info!("stopping {}", self.services[i].spec.name);
            // An interactive shell ignores SIGTERM; a hang-up ends it as a closed terminal would.
            let signal = match self.services[i].spec.output {
                Output::Terminal(_) => {
                    crate::log::drain_console(Duration::from_secs(2));
                    libc::SIGHUP
                }
                Output::Logged => libc::SIGTERM,
            };
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, signal) };
            let deadline = Instant::now() + grace;
            while self.services[i].pid.is_some() && Instant::now() < deadline {
                self.wait_for_children(Duration::from_millis(50));
            }
            if let Some(pid) = self.services[i].pid {
                info!(
                    "{} did not stop in {}s: killing it",
                    self.services[i].spec.name,
                    grace.as_secs()
                );
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                self.wait_for_children(Duration::from_millis(500));
            }
        }
        // Whatever is left (container shims and their processes).
        // SAFETY: kill(-1) from PID 1 reaches every process but init itself.
        unsafe { libc::kill(-1, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.wait_for_children(Duration::from_millis(50)) {}
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        self.wait_for_children(Duration::from_millis(200));
    }

    /// Sleeps `d`, then reaps what has exited; true while children remain.
    fn wait_for_children(&mut self, d: Duration) -> bool {
        std::thread::sleep(d);
        loop {
            let mut status = 0;
            // SAFETY: as in reap.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid < 0 {
                return false; // ECHILD: nothing left
            }
            if pid == 0 {
                return true;
            }
            if let Some(s) = self.services.iter_mut().find(|s| s.pid == Some(pid)) {
                s.pid = None;
            }
        }
    }
}

/// Forks and executes one service with a clean signal mask in a session of its own;
/// returns its pid and, for logged services, the read end of its output pipe.
fn spawn(spec: &ServiceSpec) -> std::io::Result<(libc::pid_t, Option<std::fs::File>)> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin")
        .env("HOME", "/root")
        .env("TERM", "vt100");
    let mut read_end = None;
    let on_terminal = match &spec.output {
        Output::Logged => {
            let mut fds = [0; 2];
            // SAFETY: pipe2 fills two descriptors we then own.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: both descriptors were just created and are owned here.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // Non-blocking, so a quiet service never stalls PID 1.
            // SAFETY: fcntl on a descriptor we own.
            unsafe {
                let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
            cmd.stdin(Stdio::null()).stderr(w.try_clone()?).stdout(w);
            read_end = Some(std::fs::File::from(r));
            false
        }
        Output::Terminal(path) => {
            let tty = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?;
            cmd.stdout(tty.try_clone()?)
                .stderr(tty.try_clone()?)
                .stdin(tty);
            true
        }
    };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let empty = signal_set(&[]);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::setsid();
            if on_terminal {
                // The terminal on stdin becomes the new session's controlling terminal, so
                // the shell gets job control and Ctrl-C.
                libc::ioctl(0, libc::TIOCSCTTY, 1);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The std handle is dropped on purpose: PID 1 reaps every child with waitpid(-1).
    Ok((child.id() as libc::pid_t, read_end))
}

fn open_log(path: &std::path::Path) -> Option<std::fs::File> {
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.len() > LOG_LIMIT {
            let _ = std::fs::rename(path, path.with_extension("log.1"));
        }
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .ok()
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended ({status:#x})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(6), Duration::from_secs(60));
        assert_eq!(backoff(40), Duration::from_secs(60));
    }

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(describe_status(3 << 8), "exited with status 3");
        assert_eq!(describe_status(9), "was killed by signal 9");
    }
}
