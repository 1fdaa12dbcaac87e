//! The containerd layer against a real containerd (the test's own, on a private socket) with
//! runc: image import (OCI layout and docker-save archives), containers, tasks, stdio FIFOs,
//! exit events, exec, cleanup; and a pull from a real registry (Debian's docker-registry).

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as ProcStdio};
use std::time::{Duration, Instant};

use cairn_agent::containerd::{
    make_fifos, open_fifo_reader, Containerd, Stdio, TaskExit, TaskStatus,
};
use cairn_agent::images::{ensure_image, import_archive, import_dir, pull, ImageError, PullPolicy};
use common::containerd::{busybox_archive, TestContainerd, BUSYBOX_REF};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncReadExt;

/// A namespace of this process and test: runc's state directory is shared by every
/// containerd on the host, so ids must not collide with another run's leftovers.
fn namespace(test: &str) -> String {
    format!("cairn-test-{}-{test}", std::process::id())
}
const STEP: Duration = Duration::from_secs(15);

async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {STEP:?}"))
}

/// A minimal OCI runtime spec for runc: its own pid/ipc/uts/mount/network namespaces, the
/// usual /proc, /dev, /sys mounts, and a cgroup under /cairn-test.
fn spec(id: &str, args: &[&str]) -> serde_json::Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_NET_BIND_SERVICE"
    ]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "cgroupsPath": format!("/cairn-test/{id}"),
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

fn process(args: &[&str]) -> serde_json::Value {
    json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/"
    })
}

/// Opens both read ends now (before the shim opens its write ends) and returns tasks that
/// collect all output once reading may begin.
struct Output {
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
}

impl Output {
    fn open(stdio: &Stdio) -> Self {
        Output {
            stdout: open_fifo_reader(&stdio.stdout).expect("open stdout"),
            stderr: open_fifo_reader(&stdio.stderr).expect("open stderr"),
        }
    }

    /// Call after create_task/start_exec returned.
    fn collect(self) -> tokio::task::JoinHandle<(String, String)> {
        let Output {
            mut stdout,
            mut stderr,
        } = self;
        tokio::spawn(async move {
            let mut out = String::new();
            let mut err = String::new();
            let (a, b) = tokio::join!(
                stdout.read_to_string(&mut out),
                stderr.read_to_string(&mut err)
            );
            a.expect("read stdout");
            b.expect("read stderr");
            (out, err)
        })
    }
}

/// Removes what runc leaves after its containers are deleted: this test's parent cgroup on
/// every hierarchy and the namespace's (empty) runc state directory.
struct Leftovers {
    namespace: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
        let base = Path::new("/sys/fs/cgroup");
        let unified = base.join("cairn-test");
        let _ = std::fs::remove_dir(&unified);
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path().join("cairn-test"));
            }
        }
    }
}

async fn connect(ctd: &TestContainerd, test: &str) -> Containerd {
    Containerd::connect(&ctd.socket, &namespace(test))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", ctd.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_tasks_exec_and_cleanup() {
    let _leftovers = Leftovers {
        namespace: namespace("tasks"),
    };
    let ctd = TestContainerd::start();
    let cd = connect(&ctd, "tasks").await;
    assert!(!cd.version().await.unwrap().is_empty());
    let work = tempfile::tempdir().unwrap();

    let archive = busybox_archive(work.path());
    let names = step("import", import_archive(&cd, &archive)).await.unwrap();
    assert_eq!(names, vec![BUSYBOX_REF.to_string()]);
    let image = step("ensure", ensure_image(&cd, "busybox", PullPolicy::Never))
        .await
        .unwrap();
    assert_eq!(image.name, BUSYBOX_REF);
    assert!(image.chain_id.starts_with("sha256:"), "{image:?}");
    assert_eq!(image.config.cmd, vec!["sh".to_string()]);

    // A container that prints and exits 3, observed through FIFOs and the exit event.
    let exits = cd.subscribe_task_exits().await.unwrap();
    let mut exits = Box::pin(exits);
    let id = "once";
    let mounts = cd
        .prepare_snapshot("once-snap", &image.chain_id, HashMap::new())
        .await
        .unwrap();
    let labels = HashMap::from([("io.cairn.test".to_string(), "yes".to_string())]);
    cd.create_container(
        id,
        &image.name,
        "once-snap",
        &spec(id, &["/bin/sh", "-c", "echo hello; echo err >&2; exit 3"]),
        labels,
    )
    .await
    .unwrap();
    let got = cd.get_container(id).await.unwrap().expect("container");
    assert_eq!(got.labels["io.cairn.test"], "yes");
    assert_eq!(got.snapshot_key, "once-snap");
    assert_eq!(got.spec.as_ref().unwrap()["process"]["args"][0], "/bin/sh");
    let listed = cd
        .list_containers(&[r#"labels."io.cairn.test"==yes"#.to_string()])
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    let stdio = make_fifos(&work.path().join("fifos"), id, false).unwrap();
    let output = Output::open(&stdio);
    step("create task", cd.create_task(id, mounts, &stdio))
        .await
        .unwrap_or_else(|e| panic!("create task: {e}\n{}", ctd.log()));
    let output = output.collect();
    assert_eq!(
        cd.task_state(id).await.unwrap().unwrap().status,
        TaskStatus::Created
    );
    let pid = cd.start_task(id).await.unwrap();
    assert!(pid > 0);
    let exit: TaskExit = step("exit event", async {
        loop {
            let e = exits.next().await.expect("event stream ended").unwrap();
            if e.container_id == id {
                return e;
            }
        }
    })
    .await;
    assert_eq!((exit.id.as_str(), exit.exit_status), (id, 3));
    assert!(exit.exited_at.is_some());
    let (out, err) = step("output", output).await.unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("hello\n", "err\n"));
    let state = cd.task_state(id).await.unwrap().unwrap();
    assert_eq!((state.status, state.exit_status), (TaskStatus::Stopped, 3));
    assert_eq!(cd.wait(id).await.unwrap().code, 3);
    assert_eq!(cd.delete_task(id).await.unwrap().unwrap().code, 3);
    assert_eq!(cd.delete_task(id).await.unwrap(), None, "second delete");
    cd.delete_container(id).await.unwrap();
    assert!(cd.get_container(id).await.unwrap().is_none());

    // A long-running container, exec into it, then kill it.
    let id = "sleeper";
    let mounts = cd
        .prepare_snapshot("sleeper-snap", &image.chain_id, HashMap::new())
        .await
        .unwrap();
    cd.create_container(
        id,
        &image.name,
        "sleeper-snap",
        &spec(id, &["sleep", "30"]),
        HashMap::new(),
    )
    .await
    .unwrap();
    let stdio = make_fifos(&work.path().join("fifos"), id, false).unwrap();
    let main_output = Output::open(&stdio);
    step("create task", cd.create_task(id, mounts, &stdio))
        .await
        .unwrap();
    let main_output = main_output.collect();
    cd.start_task(id).await.unwrap();
    assert_eq!(
        cd.task_state(id).await.unwrap().unwrap().status,
        TaskStatus::Running
    );
    assert!(cd
        .list_tasks()
        .await
        .unwrap()
        .iter()
        .any(|t| t.container_id == id));

    let exec_stdio = make_fifos(&work.path().join("fifos"), "sleeper-e1", false).unwrap();
    let exec_output = Output::open(&exec_stdio);
    cd.exec(
        id,
        "e1",
        &process(&["/bin/sh", "-c", "echo from-exec; hostname; exit 7"]),
        &exec_stdio,
    )
    .await
    .unwrap();
    cd.start_exec(id, "e1").await.unwrap();
    let exec_output = exec_output.collect();
    let exec_exit = step("wait exec", cd.wait_exec(id, "e1")).await.unwrap();
    assert_eq!(exec_exit.code, 7);
    let (out, _) = step("exec output", exec_output).await.unwrap();
    assert_eq!(out, "from-exec\nsleeper\n");
    assert_eq!(cd.delete_process(id, "e1").await.unwrap().unwrap().code, 7);

    cd.kill(id, libc::SIGKILL as u32, true).await.unwrap();
    let exit = step("wait", cd.wait(id)).await.unwrap();
    assert_eq!(exit.code, 128 + libc::SIGKILL as u32);
    step("main output", main_output).await.unwrap();
    cd.delete_task(id).await.unwrap();
    cd.delete_container(id).await.unwrap();

    // Nothing left but the image's committed layers.
    assert!(cd.list_containers(&[]).await.unwrap().is_empty());
    assert!(cd.list_tasks().await.unwrap().is_empty());
    let snaps = cd.list_snapshots().await.unwrap();
    assert_eq!(
        snaps,
        vec![image.chain_id.clone()],
        "snapshots left: {snaps:?}"
    );
}

/// The `docker save` layout: manifest.json with RepoTags, the config as `<hex>.json`, and an
/// uncompressed `<id>/layer.tar`, built from the OCI archive's blobs.
fn docker_save_archive(oci: &Path, out: &Path, tag: &str) {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(oci).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let blob = |digest: &str| files[&format!("blobs/sha256/{}", &digest[7..])].clone();
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = blob(config_digest);
    let mut layer = Vec::new();
    flate2::read::GzDecoder::new(&blob(manifest["layers"][0]["digest"].as_str().unwrap())[..])
        .read_to_end(&mut layer)
        .unwrap();
    let config_name = format!("{}.json", &config_digest[7..]);
    let save_manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [tag],
        "Layers": ["0123abcd/layer.tar"],
    }]))
    .unwrap();
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for (name, data) in [
        (config_name.as_str(), &config),
        ("0123abcd/layer.tar", &layer),
        ("manifest.json", &save_manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_save_archives_and_the_images_dir() {
    let ctd = TestContainerd::start();
    let cd = connect(&ctd, "save").await;
    let work = tempfile::tempdir().unwrap();
    let oci = busybox_archive(work.path());

    let missing = ensure_image(&cd, "busybox", PullPolicy::Never)
        .await
        .unwrap_err();
    assert!(matches!(missing, ImageError::NotPresent { .. }));
    assert_eq!(
        missing.to_string(),
        "image docker.io/library/busybox:latest not found in the content store and imagePullPolicy is Never"
    );

    // The images dir: one good OCI archive, one docker-save archive, one broken file.
    let images_dir = work.path().join("images");
    std::fs::create_dir_all(&images_dir).unwrap();
    std::fs::copy(&oci, images_dir.join("a-busybox.tar")).unwrap();
    docker_save_archive(&oci, &images_dir.join("b-saved.tar"), "cairn.test/saved:v1");
    std::fs::write(images_dir.join("c-broken.tar"), b"not a tar archive").unwrap();
    let mut names = step("import dir", import_dir(&cd, &images_dir)).await;
    names.sort();
    assert_eq!(
        names,
        vec!["cairn.test/saved:v1".to_string(), BUSYBOX_REF.to_string()]
    );

    let oci_image = ensure_image(&cd, BUSYBOX_REF, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    let saved = ensure_image(&cd, "cairn.test/saved:v1", PullPolicy::Never)
        .await
        .unwrap();
    // The same layer: the same chain, unpacked once.
    assert_eq!(saved.chain_id, oci_image.chain_id);
    assert_ne!(saved.digest, oci_image.digest);
    assert_eq!(saved.config.cmd, vec!["sh".to_string()]);
    assert_eq!(
        cd.list_snapshots().await.unwrap(),
        vec![saved.chain_id.clone()]
    );

    // A lost snapshot is unpacked again from the content store.
    cd.remove_snapshot(&saved.chain_id).await.unwrap();
    assert!(cd.list_snapshots().await.unwrap().is_empty());
    let again = ensure_image(&cd, "cairn.test/saved:v1", PullPolicy::Never)
        .await
        .unwrap();
    assert_eq!(again, saved);
    assert_eq!(
        cd.list_snapshots().await.unwrap(),
        vec![saved.chain_id.clone()]
    );

    // Importing again changes nothing and does not fail.
    assert_eq!(
        import_archive(&cd, &images_dir.join("b-saved.tar"))
            .await
            .unwrap(),
        vec!["cairn.test/saved:v1".to_string()]
    );
    let err = import_archive(&cd, &images_dir.join("c-broken.tar"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("c-broken.tar"), "{err}");
}

// --- pull from a real registry ---

const REGISTRY: &str = "/usr/bin/docker-registry";

struct RegistryProcess {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> RegistryProcess {
    assert!(
        Path::new(REGISTRY).exists(),
        "{REGISTRY} is missing: run 'make deps' (docker-registry)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(REGISTRY)
        .arg("serve")
        .arg(&config_path)
        .stdout(ProcStdio::null())
        .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let reg = RegistryProcess {
        child,
        _dir: dir,
        port,
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    reg
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-D", "-"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Pushes the OCI archive's blobs and manifest (under an index, as registries serve
/// multi-platform images) to the registry over the distribution API.
fn push(oci: &Path, base: &str, repo: &str, tag: &str, work: &Path) {
    let mut ar = tar::Archive::new(std::fs::File::open(oci).unwrap());
    let blobs = work.join("push");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut manifest_digest = String::new();
    let mut manifest_size = 0;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if name == "index.json" {
            let index: serde_json::Value = serde_json::from_slice(&data).unwrap();
            manifest_digest = index["manifests"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string();
            manifest_size = index["manifests"][0]["size"].as_u64().unwrap();
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            std::fs::write(blobs.join(hex), &data).unwrap();
        }
    }
    let manifest_hex = manifest_digest[7..].to_string();
    let upload = |path: &Path, hex: &str| {
        let headers = curl(&["-X", "POST", &format!("{base}/v2/{repo}/blobs/uploads/")]);
        let location = headers
            .lines()
            .find_map(|l| {
                l.strip_prefix("Location: ")
                    .or_else(|| l.strip_prefix("location: "))
            })
            .expect("upload location")
            .trim()
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = if location.starts_with("http") {
            location.clone()
        } else {
            format!("{base}{location}")
        };
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", path.display()),
            &format!("{url}{sep}digest=sha256:{hex}"),
        ]);
    };
    let put_manifest = |path: &Path, media_type: &str, reference: &str| {
        curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", path.display()),
            &format!("{base}/v2/{repo}/manifests/{reference}"),
        ]);
    };
    let mut manifest: Option<serde_json::Value> = None;
    for e in std::fs::read_dir(&blobs).unwrap() {
        let path: PathBuf = e.unwrap().path();
        let hex = path.file_name().unwrap().to_string_lossy().into_owned();
        if hex == manifest_hex {
            manifest = Some(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
            continue;
        }
        upload(&path, &hex);
    }
    let manifest_path = blobs.join(&manifest_hex);
    put_manifest(
        &manifest_path,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest_digest,
    );

    // A second platform (same layer, config saying s390x), so the pull has to choose.
    let mut manifest = manifest.expect("manifest blob");
    let config_hex = manifest["config"]["digest"].as_str().unwrap()[7..].to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&config_hex)).unwrap()).unwrap();
    config["architecture"] = json!("s390x");
    let other_config = serde_json::to_vec(&config).unwrap();
    let other_config_hex = hex_sha256(&other_config);
    let other_config_path = work.join("other-config");
    std::fs::write(&other_config_path, &other_config).unwrap();
    upload(&other_config_path, &other_config_hex);
    manifest["config"]["digest"] = json!(format!("sha256:{other_config_hex}"));
    manifest["config"]["size"] = json!(other_config.len());
    let other_manifest = serde_json::to_vec(&manifest).unwrap();
    let other_digest = format!("sha256:{}", hex_sha256(&other_manifest));
    let other_manifest_path = work.join("other-manifest");
    std::fs::write(&other_manifest_path, &other_manifest).unwrap();
    put_manifest(
        &other_manifest_path,
        "application/vnd.oci.image.manifest.v1+json",
        &other_digest,
    );

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other_digest, "size": other_manifest.len(),
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
             "platform": {"os": "linux", "architecture": common::containerd::oci_arch()}}
        ]
    }))
    .unwrap();
    let index_path = work.join("index.json");
    std::fs::write(&index_path, index).unwrap();
    put_manifest(&index_path, "application/vnd.oci.image.index.v1+json", tag);
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_registry() {
    let registry = start_registry();
    let ctd = TestContainerd::start();
    let cd = connect(&ctd, "pull").await;
    let work = tempfile::tempdir().unwrap();
    let oci = busybox_archive(work.path());
    let base = format!("http://127.0.0.1:{}", registry.port);
    push(&oci, &base, "tools/busybox", "v1", work.path());

    let reference = format!("127.0.0.1:{}/tools/busybox:v1", registry.port);
    let image = step("pull", pull(&cd, &reference)).await.unwrap();
    assert_eq!(image.name, reference);
    assert_eq!(image.config.cmd, vec!["sh".to_string()]);
    // IfNotPresent now finds it locally; the same chain as an import of the same archive.
    let again = ensure_image(&cd, &reference, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(again, image);
    let imported = import_archive(&cd, &oci).await.unwrap();
    let local = ensure_image(&cd, &imported[0], PullPolicy::Never)
        .await
        .unwrap();
    assert_eq!(local.chain_id, image.chain_id);

    let missing = format!("127.0.0.1:{}/tools/nothing:v1", registry.port);
    let err = pull(&cd, &missing).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(err.to_string().contains("tools/nothing"), "{err}");
}
