//! The OCI-runtime backend: action containers run by `runc` directly, with no Docker daemon on
//! the cold path. The network namespace comes from a netpool lease (its path goes into the
//! spec), the root filesystem is the locally built image unpacked once and mounted per container
//! as an overlay, the cgroup limits match the Docker flags of contract §5.1, and the process's
//! stdout and stderr are written to a log in Docker's `json-file` format, so log collection and
//! its sentinels work unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use futures::StreamExt;
use netpool::{Lease, NetPool};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{BackendError, Container, ContainerFactory, ContainerSpec, CreateError};

/// Docker's default capabilities without `NET_RAW` and `NET_ADMIN` (contract §5.1).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What an image runs and with which environment.
#[derive(Clone, Debug)]
struct ImageConfig {
    rootfs: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
}

/// Creates action containers with `runc` in netpool namespaces.
#[derive(Debug)]
pub struct RuncFactory {
    docker: Docker,
    netpool: Arc<NetPool>,
    runc: PathBuf,
    /// `runc --root`: this invoker's container state.
    state: PathBuf,
    /// Unpacked images, shared by every invoker on the host (`<images>/<image id>/rootfs`).
    images_dir: PathBuf,
    /// This invoker's container bundles.
    bundles: PathBuf,
    images: tokio::sync::Mutex<HashMap<String, ImageConfig>>,
}

impl RuncFactory {
    /// `images` holds unpacked images (shareable between invokers), `bundles` this invoker's
    /// containers, `state` is runc's state root.
    pub fn new(
        docker: Docker,
        netpool: Arc<NetPool>,
        images: &Path,
        bundles: &Path,
        state: &Path,
    ) -> Self {
        Self {
            docker,
            netpool,
            runc: PathBuf::from("runc"),
            state: state.to_owned(),
            images_dir: images.to_owned(),
            bundles: bundles.to_owned(),
            images: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Unpacks `image` now (at start-up), so that no cold start pays for it.
    pub async fn prepare(&self, image: &str) -> Result<(), CreateError> {
        self.image(image).await.map(|_| ())
    }

    /// The image's root filesystem, unpacked once (through `docker export` of a created,
    /// never started container), and its entry point and environment.
    async fn image(&self, image: &str) -> Result<ImageConfig, CreateError> {
        let mut images = self.images.lock().await;
        if let Some(c) = images.get(image) {
            return Ok(c.clone());
        }
        let info = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|_| CreateError::NoExecutable(image.to_owned()))?;
        let id = info.id.unwrap_or_default().replace("sha256:", "");
        let config = info.config.unwrap_or_default();
        let mut args = config.entrypoint.unwrap_or_default();
        args.extend(config.cmd.unwrap_or_default());
        if args.is_empty() {
            return Err(CreateError::NoExecutable(image.to_owned()));
        }
        let rootfs = self.images_dir.join(&id).join("rootfs");
        if !rootfs.exists() {
            self.unpack(image, &rootfs).await?;
        }
        let c = ImageConfig {
            rootfs,
            args,
            env: config.env.unwrap_or_default(),
            cwd: config
                .working_dir
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        };
        images.insert(image.to_owned(), c.clone());
        Ok(c)
    }

    async fn unpack(&self, image: &str, rootfs: &Path) -> Result<(), CreateError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            CreateError::Provision(format!("unpacking {image}: {what}: {e}"))
        };
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_owned()),
            ..Default::default()
        };
        let id = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(|e| fail("create", &e))?
            .id;
        let mut tar = Vec::new();
        let mut stream = self.docker.export_container(&id);
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => tar.extend_from_slice(&b),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = self.docker.remove_container(&id, Some(options)).await;
        if let Some(e) = failed {
            return Err(fail("export", &e));
        }
        // Unpacked beside the target and renamed into place: another invoker unpacking the
        // same image at the same time loses the rename and drops its copy.
        let tmp = rootfs.with_extension(format!("partial.{}", std::process::id()));
        let target = rootfs.to_owned();
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)?;
            let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
            archive.set_preserve_permissions(true);
            archive.set_preserve_ownerships(true);
            archive.unpack(&tmp)?;
            match std::fs::rename(&tmp, &target) {
                Err(_) if target.exists() => std::fs::remove_dir_all(&tmp),
                other => other,
            }
        })
        .await
        .map_err(|e| fail("unpack", &e))?
        .map_err(|e| fail("unpack", &e))
    }

    async fn runc(&self, args: &[&str]) -> Result<String, String> {
        run_runc(&self.runc, &self.state, args).await
    }

    fn spec_json(spec: &ContainerSpec, image: &ImageConfig, netns: &Path, bundle: &Path) -> Value {
        let mut env = image.env.clone();
        env.extend(spec.env.iter().cloned());
        let memory = spec.memory_mb << 20;
        let bind = |dest: &str, src: PathBuf| json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "ro"]});
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": image.args,
                "env": env,
                "cwd": image.cwd,
                "capabilities": {
                    "bounding": CAPABILITIES, "effective": CAPABILITIES,
                    "permitted": CAPABILITIES, "inheritable": CAPABILITIES,
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": bundle.join("rootfs"), "readonly": false},
            "hostname": spec.name.chars().take(63).collect::<String>(),
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
                bind("/etc/resolv.conf", bundle.join("resolv.conf")),
                bind("/etc/hosts", bundle.join("hosts")),
            ],
            "linux": {
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                    {"type": "network", "path": netns},
                ],
                "cgroupsPath": format!("/wsk-runc/{}", spec.name),
                "resources": {
                    "memory": {"limit": memory, "swap": memory},
                    "cpu": {"shares": spec.cpu_shares},
                    "pids": {"limit": 1024},
                    "devices": [{"allow": false, "access": "rwm"}],
                },
                "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            }
        })
    }

    /// Mounts the overlay and writes the bundle; undone by [`teardown_bundle`].
    fn prepare_bundle(bundle: &Path, image: &ImageConfig, config: &Value) -> std::io::Result<()> {
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(bundle.join(d))?;
        }
        std::fs::write(bundle.join("resolv.conf"), "")?;
        std::fs::write(bundle.join("hosts"), "127.0.0.1\tlocalhost\n")?;
        std::fs::write(bundle.join("config.json"), config.to_string())?;
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.rootfs.display(),
            bundle.join("upper").display(),
            bundle.join("work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &bundle.join("rootfs"),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(std::io::Error::from)
    }
}

/// Unmounts a bundle's overlay and removes the bundle; keeps going past errors.
fn teardown_bundle(bundle: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let rootfs = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
        && e != nix::errno::Errno::EINVAL
        && e != nix::errno::Errno::ENOENT
    {
        errors.push(format!("umount {}: {e}", rootfs.display()));
    }
    if let Err(e) = std::fs::remove_dir_all(bundle)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(format!("remove {}: {e}", bundle.display()));
    }
    errors
}

#[async_trait::async_trait]
impl ContainerFactory for RuncFactory {
    async fn create(&self, spec: &ContainerSpec) -> Result<Box<dyn Container>, CreateError> {
        let image = self.image(&spec.image).await?;
        let lease = self
            .netpool
            .lease()
            .await
            .map_err(|e| CreateError::Provision(format!("no network namespace: {e}")))?;
        let bundle = self.bundles.join(&spec.name);
        let config = Self::spec_json(spec, &image, lease.netns_path(), &bundle);
        let prepared = {
            let (bundle, image) = (bundle.clone(), image.clone());
            tokio::task::spawn_blocking(move || Self::prepare_bundle(&bundle, &image, &config))
                .await
        };
        if let Err(e) = prepared
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            teardown_bundle(&bundle);
            lease.release_nowait();
            return Err(CreateError::Provision(format!(
                "bundle {}: {e}",
                bundle.display()
            )));
        }
        let log = bundle.join(format!("{}-json.log", spec.name));
        let started = async {
            let file = tokio::fs::File::create(&log)
                .await
                .map_err(|e| e.to_string())?;
            let mut child = tokio::process::Command::new(&self.runc)
                .arg("--root")
                .arg(&self.state)
                .args(["run", "--detach", "--bundle"])
                .arg(&bundle)
                .arg(&spec.name)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("runc: {e}"))?;
            let writer = Arc::new(tokio::sync::Mutex::new(file));
            let stderr_text = Arc::new(Mutex::new(String::new()));
            if let Some(out) = child.stdout.take() {
                tokio::spawn(pump(out, "stdout", writer.clone(), None));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(pump(
                    err,
                    "stderr",
                    writer.clone(),
                    Some(stderr_text.clone()),
                ));
            }
            let status = child.wait().await.map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Err(format!(
                    "runc run: {}",
                    stderr_text.lock().map(|s| s.clone()).unwrap_or_default()
                ))
            }
        }
        .await;
        if let Err(e) = started {
            let _ = self.runc(&["delete", "--force", &spec.name]).await;
            teardown_bundle(&bundle);
            lease.release_nowait();
            return Err(if e.contains("executable file not found") {
                CreateError::NoExecutable(spec.image.clone())
            } else {
                CreateError::Provision(e)
            });
        }
        Ok(Box::new(RuncContainer {
            id: spec.name.clone(),
            addr: SocketAddr::new(lease.ip().into(), 8080),
            log,
            bundle,
            runc: self.runc.clone(),
            state: self.state.clone(),
            lease: Mutex::new(Some(lease)),
        }))
    }

    async fn remove_all(&self, prefix: &str) -> Result<usize, BackendError> {
        let mut removed = 0;
        let mut errors = Vec::new();
        if let Ok(list) = self.runc(&["list", "-q"]).await {
            for id in list.lines().filter(|l| l.starts_with(prefix)) {
                let _ = self.runc(&["resume", id]).await;
                match self.runc(&["delete", "--force", id]).await {
                    Ok(_) => removed += 1,
                    Err(e) => errors.push(e),
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.bundles) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    errors.extend(teardown_bundle(&e.path()));
                }
            }
        }
        // This invoker's folders go too when nothing is left in them (runc and the next
        // create make them again); a folder still holding something is kept.
        if errors.is_empty() {
            for dir in [&self.state, &self.bundles] {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(BackendError {
                action: "remove",
                id: prefix.to_owned(),
                detail: errors.join("; "),
            })
        }
    }
}

/// Copies one stream of the container into the json-file log, a line at a time.
async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    name: &'static str,
    log: Arc<tokio::sync::Mutex<tokio::fs::File>>,
    keep: Option<Arc<Mutex<String>>>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(k) = &keep
            && let Ok(mut k) = k.lock()
            && k.len() < 4096
        {
            k.push_str(&line);
            k.push('\n');
        }
        let entry =
            json!({"log": format!("{line}\n"), "stream": name, "time": super::logs::rfc3339_now()});
        let mut f = log.lock().await;
        let _ = f.write_all(format!("{entry}\n").as_bytes()).await;
        let _ = f.flush().await;
    }
}

#[derive(Debug)]
struct RuncContainer {
    id: String,
    addr: SocketAddr,
    log: PathBuf,
    bundle: PathBuf,
    runc: PathBuf,
    state: PathBuf,
    lease: Mutex<Option<Lease>>,
}

impl RuncContainer {
    async fn runc(&self, action: &'static str, args: &[&str]) -> Result<(), BackendError> {
        run_runc(&self.runc, &self.state, args)
            .await
            .map(|_| ())
            .map_err(|detail| BackendError {
                action,
                id: self.id.clone(),
                detail,
            })
    }
}

/// `runc --root <state> <args>`: its stdout, or the error with its stderr.
async fn run_runc(runc: &Path, state: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(runc)
        .arg("--root")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("runc: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "runc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[async_trait::async_trait]
impl Container for RuncContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log_file(&self) -> Option<&Path> {
        Some(&self.log)
    }

    async fn pause(&self) -> Result<(), BackendError> {
        self.runc("pause", &["pause", &self.id]).await
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.runc("resume", &["resume", &self.id]).await
    }

    async fn oom_killed(&self) -> bool {
        false
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        let _ = self.runc("resume", &["resume", &self.id]).await;
        let deleted = self.runc("delete", &["delete", "--force", &self.id]).await;
        let bundle = self.bundle.clone();
        let errors = tokio::task::spawn_blocking(move || teardown_bundle(&bundle))
            .await
            .unwrap_or_default();
        let lease = self.lease.lock().ok().and_then(|mut l| l.take());
        if let Some(lease) = lease {
            // Processes are gone: the slot's scrub decides whether it is reused.
            lease.release().await;
        }
        deleted?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BackendError {
                action: "remove bundle",
                id: self.id.clone(),
                detail: errors.join("; "),
            })
        }
    }
}
