//! The OCI-runtime backend: action containers run by `runc` directly, with no Docker daemon on
//! the cold path. The network namespace comes from a netpool lease (its path goes into the
//! spec), the root filesystem is the locally built image unpacked once and mounted per container
//! as an overlay, the cgroup limits match the Docker flags of contract §5.1, and the process's
//! stdout and stderr are read from its pipes into the container's log source as they arrive.
//! With [`RuncFactory::with_presandboxes`], cold starts take containers created ahead of need
//! and only start them ([`presandbox`]).

mod presandbox;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use futures::StreamExt;
use netpool::{Lease, NetPool};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use self::presandbox::Presandboxes;
use super::cgroup::{CGROUP_BUSY_PAUSES, cgroup_holders, rmdir_retrying_busy};
use super::image_store;
use super::logs::{self, LineSender, LogLine, LogSource, Logs, Next, Stream};
use super::{
    BackendError, BoxError, Container, ContainerFactory, ContainerSpec, CreateError, Errors,
};

/// A `runc` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot start {}", .runc.display())]
    Spawn {
        runc: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `stderr` is runc's own account of the failure.
    #[error("runc {command} exited with {status}: {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// A runc backend failure.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("cannot inspect image {image}")]
    Inspect {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot export image {image} (docker {call})")]
    Export {
        image: String,
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("cannot unpack image {image} into {}", .path.display())]
    Unpack {
        image: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the image from the image store")]
    Store(#[source] image_store::ImageStoreError),
    #[error("no network namespace")]
    Lease(#[source] netpool::PoolError),
    #[error("cannot remove cgroup {}", .path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Still busy after every retry: what holds it, as the kernel shows it then.
    #[error("cgroup {} is still busy after {:?}: {holders}", .path.display(), CGROUP_BUSY_PAUSES.iter().sum::<Duration>())]
    CgroupBusy { path: PathBuf, holders: String },
    #[error("cannot prepare bundle {}", .path.display())]
    Bundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot unmount {}", .path.display())]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot remove bundle {}", .path.display())]
    RemoveBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {} cgroup {}", if *.frozen { "freeze" } else { "thaw" }, .path.display())]
    Freeze {
        path: PathBuf,
        frozen: bool,
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking task was lost")]
    Join(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The longest line read from a pipe at once (Docker splits longer lines the same way).
const MAX_LINE: u64 = 16 << 10;

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

/// Docker's default seccomp profile, verbatim: `github.com/moby/profiles/seccomp` v0.2.3
/// `default.json`, as vendored by moby/moby at commit b985e2313a86
/// (`vendor/github.com/moby/profiles/seccomp/default.json`; before the split it was moby's
/// `profiles/seccomp/default.json`). Apache-2.0, as moby. Data only: [`docker_seccomp`] turns
/// it into the OCI section the way the daemon does.
const DOCKER_SECCOMP_PROFILE: &str = include_str!("seccomp_default.json");

/// The OCI `linux.seccomp` section of every runc container: Docker's default profile resolved
/// for this host's architecture and kernel and for [`CAPABILITIES`] as the bounding set. Made
/// on first use, which is on a blocking thread (the spec is written there).
static SECCOMP: LazyLock<Value> = LazyLock::new(|| {
    let profile: Value = serde_json::from_str(DOCKER_SECCOMP_PROFILE)
        .expect("the embedded seccomp profile is JSON (checked by a unit test)");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    docker_seccomp(
        &profile,
        CAPABILITIES,
        std::env::consts::ARCH,
        kernel_version(&release),
    )
});

/// Docker's default masked paths (moby `daemon/pkg/oci/defaults.go`,
/// `defaultLinuxMaskedPaths`, at the same commit): the fixed list, and the `thermal_throttle`
/// folder of each possible CPU that has one (GHSA-6fw5-f8r9-fgfm), as the daemon finds them on
/// its host. Read once, on a blocking thread, as [`SECCOMP`].
static MASKED_PATHS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    masked_paths(&possible, |p| Path::new(p).exists())
});

/// Docker's default read-only paths (moby `daemon/pkg/oci/defaults.go`).
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's masked paths given the content of `/sys/devices/system/cpu/possible` (`0-3,5`)
/// and a test for a path's existence on the host.
fn masked_paths(possible_cpus: &str, exists: impl Fn(&str) -> bool) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/proc/acpi",
        "/proc/asound",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/sys/devices/virtual/powercap",
        "/sys/firmware",
    ]
    .map(String::from)
    .into();
    for range in possible_cpus.trim().split(',').filter(|r| !r.is_empty()) {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (Ok(first), Ok(last)) = (first.parse::<u32>(), last.parse::<u32>()) else {
            continue;
        };
        for cpu in first..=last {
            let path = format!("/sys/devices/system/cpu/cpu{cpu}/thermal_throttle");
            if exists(&path) {
                paths.push(path);
            }
        }
    }
    paths
}

/// `major.minor` of a kernel release string (`6.18.44-fc`), as moby compares `minKernel`;
/// `(0, 0)` when it cannot be read, so that no kernel-gated rule is added on a guess.
fn kernel_version(release: &str) -> (u64, u64) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok());
    let minor = parts.next().and_then(|p| p.parse().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor),
        _ => (0, 0),
    }
}

/// moby's names for an architecture (the `arches` of a rule's `includes`/`excludes`) and its
/// seccomp name (the `archMap` key), from Rust's `std::env::consts::ARCH`.
fn moby_arch(arch: &str) -> Option<(&'static str, &'static str)> {
    Some(match arch {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "x86" => ("x86", "SCMP_ARCH_X86"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        "arm" => ("arm", "SCMP_ARCH_ARM"),
        "s390x" => ("s390x", "SCMP_ARCH_S390X"),
        "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", "SCMP_ARCH_PPC64LE"),
        "powerpc64" => ("ppc64", "SCMP_ARCH_PPC64"),
        "loongarch64" => ("loongarch64", "SCMP_ARCH_LOONGARCH64"),
        _ => return None,
    })
}

/// The OCI seccomp section moby's `setupSeccomp` (`profiles/seccomp/seccomp_linux.go`) makes of
/// `profile` for a container whose bounding set is `caps`: the default action and errno, the
/// architecture with its sub-architectures from `archMap`, and every rule whose `includes`
/// hold (all its capabilities granted, this architecture listed, the kernel at least
/// `minKernel`) and whose `excludes` do not (any capability granted, this architecture listed,
/// the kernel at least `minKernel`). Rules keep only the OCI fields.
fn docker_seccomp(profile: &Value, caps: &[&str], arch: &str, kernel: (u64, u64)) -> Value {
    let arch = moby_arch(arch);
    let mut section = serde_json::Map::new();
    for key in ["defaultAction", "defaultErrnoRet", "flags"] {
        if let Some(v) = profile.get(key).filter(|v| !v.is_null()) {
            section.insert(key.into(), v.clone());
        }
    }
    let mut architectures = Vec::new();
    if let Some((_, scmp)) = arch {
        let entries = profile["archMap"].as_array().map(Vec::as_slice);
        if let Some(entry) = entries
            .unwrap_or_default()
            .iter()
            .find(|e| e["architecture"] == scmp)
        {
            architectures.push(entry["architecture"].clone());
            architectures.extend(
                entry["subArchitectures"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
    }
    section.insert("architectures".into(), Value::Array(architectures));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let this_arch = |filter: &Value| {
        let arches = strings(&filter["arches"]);
        arch.is_some_and(|(name, _)| arches.iter().any(|a| a == name))
    };
    let granted = |c: &String| caps.contains(&c.as_str());
    let new_enough = |filter: &Value| {
        filter["minKernel"]
            .as_str()
            .map(|min| kernel >= kernel_version(min))
    };
    let mut rules = Vec::new();
    for rule in profile["syscalls"].as_array().into_iter().flatten() {
        let excludes = &rule["excludes"];
        if !excludes.is_null()
            && ((!strings(&excludes["arches"]).is_empty() && this_arch(excludes))
                || strings(&excludes["caps"]).iter().any(granted)
                || new_enough(excludes) == Some(true))
        {
            continue;
        }
        let includes = &rule["includes"];
        if !includes.is_null()
            && ((!strings(&includes["arches"]).is_empty() && !this_arch(includes))
                || !strings(&includes["caps"]).iter().all(granted)
                || new_enough(includes) == Some(false))
        {
            continue;
        }
        let mut names = strings(&rule["names"]);
        if let Some(name) = rule["name"].as_str() {
            names.push(name.to_owned());
        }
        let mut out = serde_json::Map::new();
        out.insert("names".into(), json!(names));
        out.insert("action".into(), rule["action"].clone());
        for key in ["errnoRet", "args"] {
            if let Some(v) = rule.get(key).filter(|v| !v.is_null()) {
                out.insert(key.into(), v.clone());
            }
        }
        rules.push(Value::Object(out));
    }
    section.insert("syscalls".into(), Value::Array(rules));
    Value::Object(section)
}

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes the `wsk-runc` parent cgroup from every hierarchy under `root` (v1: one per
/// controller; v2: the unified one) when it is empty; one still holding another invoker's
/// containers refuses the removal and stays.
fn remove_empty_cgroup_parents(root: &Path) {
    let parent = cgroups_path("");
    let parent = parent.trim_matches('/');
    if root.join(parent).is_dir() {
        let _ = std::fs::remove_dir(root.join(parent));
    }
    if let Ok(hierarchies) = std::fs::read_dir(root) {
        for h in hierarchies.flatten() {
            let _ = std::fs::remove_dir(h.path().join(parent));
        }
    }
}

/// The cgroup hierarchies under `root`: v1's one folder per controller (and named ones such as
/// `systemd`, and a hybrid layout's `unified`), or `root` itself when it is cgroup v2's unified
/// hierarchy.
fn cgroup_hierarchies(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if root.join("cgroup.controllers").is_file() {
        out.push(root.to_owned());
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let path = e.path();
            // A hierarchy's root has cgroup.procs; v2's own child cgroups are not hierarchies,
            // but their wsk-runc folder would be none of ours either.
            if path.join("cgroup.procs").is_file() && !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// Removes the cgroups `wsk-runc/<name>` (exactly, or every one starting with it when
/// `prefix`) on every hierarchy under `root`, each retried while busy; a missing one is not
/// an error. Keeps going past failures and returns each one.
fn remove_cgroups(root: &Path, name: &str, prefix: bool) -> Vec<BoxError> {
    remove_cgroups_with(root, name, prefix, std::thread::sleep)
}

fn remove_cgroups_with(
    root: &Path,
    name: &str,
    prefix: bool,
    mut pause: impl FnMut(Duration),
) -> Vec<BoxError> {
    let parent = cgroups_path("");
    let parent = parent.trim_matches('/');
    let mut errors: Vec<BoxError> = Vec::new();
    for h in cgroup_hierarchies(root) {
        let dir = h.join(parent);
        let targets: Vec<PathBuf> = if prefix {
            match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(name))
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect(),
                Err(_) => Vec::new(),
            }
        } else {
            vec![dir.join(name)]
        };
        for path in targets {
            if let Err(source) = rmdir_retrying_busy(
                || std::fs::remove_dir(&path),
                &CGROUP_BUSY_PAUSES,
                &mut pause,
            ) {
                let error = if source.raw_os_error() == Some(nix::libc::EBUSY) {
                    let holders = cgroup_holders(&path);
                    RuncError::CgroupBusy { path, holders }
                } else {
                    RuncError::Cgroup { path, source }
                };
                errors.push(Box::new(error));
            }
        }
    }
    errors
}

/// The container's cgroup, relative to each hierarchy's root (runc's `cgroupsPath`).
fn cgroups_path(name: &str) -> String {
    format!("/wsk-runc/{name}")
}

/// How many processes the kernel's OOM killer ended in the cgroup `path` (a `cgroupsPath`)
/// under the cgroup mount `root` (`/sys/fs/cgroup`): cgroup v2's `memory.events` (`oom_kill`)
/// when the memory controller is on the unified hierarchy, else cgroup v1's
/// `memory/<path>/memory.oom_control` (`oom_kill`, kernel 4.13 on; before that `under_oom`
/// counts as one). `None` when neither can be read (the cgroup is gone).
fn oom_kills(root: &Path, path: &str) -> Option<u64> {
    let relative = path.trim_start_matches('/');
    let field = |text: &str, key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
    };
    if let Ok(events) = std::fs::read_to_string(root.join(relative).join("memory.events")) {
        return field(&events, "oom_kill");
    }
    let control = std::fs::read_to_string(
        root.join("memory")
            .join(relative)
            .join("memory.oom_control"),
    )
    .ok()?;
    field(&control, "oom_kill").or_else(|| field(&control, "under_oom"))
}

/// Pauses between reads of a freezer's state while the kernel freezes or thaws a cgroup's
/// tasks: about 2 s in all, as runc's own wait.
const FREEZE_PAUSES: [Duration; 12] = [
    Duration::from_micros(100),
    Duration::from_micros(200),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_millis(1300),
];

/// Freezes (or thaws) the cgroup `path` (a `cgroupsPath`) under the cgroup mount `root` the way
/// `runc pause` and `runc resume` do, without starting a runtime process: cgroup v2's
/// `cgroup.freeze`, waited on in `cgroup.events` (`frozen 1`), or cgroup v1's
/// `freezer/<path>/freezer.state`, written and read until it says `FROZEN` (`THAWED`). runc and
/// crun derive a container's `paused` status from the same files, so they see what this did.
/// A freeze that does not complete in [`FREEZE_PAUSES`] is undone and is the error.
fn freeze(root: &Path, path: &str, frozen: bool) -> Result<(), RuncError> {
    freeze_with(root, path, frozen, std::thread::sleep)
}

fn freeze_with(
    root: &Path,
    path: &str,
    frozen: bool,
    mut pause: impl FnMut(Duration),
) -> Result<(), RuncError> {
    let relative = path.trim_start_matches('/');
    let v2 = root.join(relative);
    let layout = if v2.join("cgroup.freeze").is_file() {
        let done = if frozen { "frozen 1" } else { "frozen 0" };
        FreezerFiles {
            file: v2.join("cgroup.freeze"),
            value: if frozen { "1" } else { "0" },
            thawed: "0",
            state_file: v2.join("cgroup.events"),
            done,
            refreeze: false,
        }
    } else {
        let dir = root.join("freezer").join(relative);
        let value = if frozen { "FROZEN" } else { "THAWED" };
        FreezerFiles {
            file: dir.join("freezer.state"),
            value,
            thawed: "THAWED",
            state_file: dir.join("freezer.state"),
            done: value,
            refreeze: frozen,
        }
    };
    let error = |source| RuncError::Freeze {
        path: layout.file.clone(),
        frozen,
        source,
    };
    let reached = freezer_protocol(
        &layout,
        |v| std::fs::write(&layout.file, v),
        || {
            Ok(std::fs::read_to_string(&layout.state_file)?
                .lines()
                .any(|l| l.trim() == layout.done))
        },
        &mut pause,
    )
    .map_err(error)?;
    if reached {
        return Ok(());
    }
    if frozen {
        let _ = freeze_with(root, path, false, pause);
    }
    Err(error(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the kernel did not finish freezing the cgroup's tasks",
    )))
}

/// Which files a freeze writes and reads, on one cgroup layout.
struct FreezerFiles {
    file: PathBuf,
    /// What `file` is written for the wanted state, and for thawed.
    value: &'static str,
    thawed: &'static str,
    state_file: PathBuf,
    /// The line of `state_file` that says the wanted state is reached.
    done: &'static str,
    /// cgroup v1 freezing: a freeze still `FREEZING` is thawed before each longer pause and
    /// tried again, as runc does. The v1 freezer can stay `FREEZING` while tasks keep
    /// appearing or waking in the cgroup (runc's `freezer.go` on why); a thaw and a fresh
    /// freeze is what gets it through. cgroup v2's freezer does not need it.
    refreeze: bool,
}

/// Pauses from which a v1 freeze still in progress is thawed first (runc thaws every 50th
/// attempt, with a 10 ms sleep).
const REFREEZE_FROM: Duration = Duration::from_millis(10);

/// Writes the wanted state and reads the kernel's word after each of [`FREEZE_PAUSES`]
/// (`write` and `reached` the files of `layout`): whether it was reached. v1 wants the write
/// repeated while it says `FREEZING`; v2 keeps it.
fn freezer_protocol(
    layout: &FreezerFiles,
    mut write: impl FnMut(&str) -> std::io::Result<()>,
    mut reached: impl FnMut() -> std::io::Result<bool>,
    pause: &mut impl FnMut(Duration),
) -> std::io::Result<bool> {
    let mut pauses = FREEZE_PAUSES.iter();
    loop {
        write(layout.value)?;
        if reached()? {
            return Ok(true);
        }
        match pauses.next() {
            Some(&d) => {
                if layout.refreeze && d >= REFREEZE_FROM {
                    write(layout.thawed)?;
                }
                pause(d);
            }
            None => return Ok(false),
        }
    }
}

/// Whether `mounts` (`/proc/self/mounts`) is systemd's hybrid cgroup layout: cgroup v1
/// hierarchies under `/sys/fs/cgroup` and an (empty) unified v2 hierarchy at
/// `/sys/fs/cgroup/unified`. runc copes with it; crun refuses it ("cgroups in hybrid mode not
/// supported, drop all controllers from cgroupv2") unless it runs where that mount is gone.
fn is_hybrid_layout(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == "/sys/fs/cgroup/unified" && f[2] == "cgroup2"
    })
}

/// Run in the runtime's forked child before it execs (see [`RuncFactory::with_runtime`]): a
/// mount namespace of its own, slave to the host's so that nothing it does leaks back, without
/// the hybrid layout's unified hierarchy, so that the runtime sees a pure cgroup v1 host.
/// Containers are made from this namespace; it goes when the runtime exits.
fn hide_unified_hierarchy() -> std::io::Result<()> {
    use nix::libc;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed: these are three
    // plain syscalls on static NUL-terminated strings and null pointers, and
    // `last_os_error` reads errno without allocating.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

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
    /// What making one container takes; shared with the refills of [`Self::presandboxes`].
    launcher: Arc<Launcher>,
    /// Unpacked images, shared by every invoker on the host (`<images>/<image id>/rootfs`).
    images_dir: PathBuf,
    /// Image archives (`docker save` format) read instead of asking dockerd; see
    /// [`super::image_store`].
    image_store: Option<PathBuf>,
    images: tokio::sync::Mutex<HashMap<String, ImageConfig>>,
    /// Sandboxes created ahead of need (`whisk.invoker.runc.presandboxes`); see [`presandbox`].
    presandboxes: Option<Arc<Presandboxes>>,
}

/// The runtime, the namespaces and the folders a container is made with: what a cold start and
/// a refill of the pre-created sandboxes both need (so a refill task can own it).
#[derive(Clone, Debug)]
struct Launcher {
    netpool: Arc<NetPool>,
    /// The OCI runtime's binary: `runc`, or one with its command line (`crun`).
    runc: PathBuf,
    /// `run` and `create` start from a mount namespace without the hybrid layout's unified
    /// hierarchy.
    hide_unified: bool,
    /// `runc --root`: this invoker's container state.
    state: PathBuf,
    /// This invoker's container bundles.
    bundles: PathBuf,
}

/// How a container is made: started at once (`run --detach`), or created with its process
/// waiting to be started (`create`, then `start` when a cold start takes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Run,
    Create,
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
            launcher: Arc::new(Launcher {
                netpool,
                runc: PathBuf::from("runc"),
                hide_unified: false,
                state: state.to_owned(),
                bundles: bundles.to_owned(),
            }),
            images_dir: images.to_owned(),
            image_store: None,
            images: tokio::sync::Mutex::new(HashMap::new()),
            presandboxes: None,
        }
    }

    /// Keeps `per_shape` sandboxes created ahead of need for every shape (image, limits and
    /// environment) a cold start has asked for: a netpool namespace, the bundle with its
    /// overlay, and a container the runtime has created (namespaces, cgroup, mounts, the
    /// process waiting before it runs the image's entry point). A cold start that finds one
    /// only starts it; see [`presandbox`]. Their ids start with `prefix` (the invoker's
    /// container prefix, so that [`ContainerFactory::remove_all`] sweeps them after a crash).
    #[must_use]
    pub fn with_presandboxes(mut self, prefix: &str, per_shape: usize) -> Self {
        self.presandboxes = (per_shape > 0).then(|| Arc::new(Presandboxes::new(prefix, per_shape)));
        self
    }

    /// Reads runtime images from the archives in `store` when it has them; dockerd is asked
    /// only for an image the store lacks.
    #[must_use]
    pub fn with_image_store(mut self, store: &Path) -> Self {
        self.image_store = Some(store.to_owned());
        self
    }

    /// Pre-created sandboxes on the shelves now (0 without them).
    pub fn presandboxes_ready(&self) -> usize {
        self.presandboxes.as_ref().map_or(0, |p| p.ready())
    }

    /// Runs containers with `runtime` (a name looked up in `PATH`, or a path) instead of
    /// `runc`: an OCI runtime with runc's command line, such as `crun`. On a host with
    /// systemd's hybrid cgroup layout, a runtime other than runc creates its containers from a
    /// mount namespace without the unified hierarchy (which has no controllers there), so that
    /// it sees the cgroup v1 host it then manages; see [`hide_unified_hierarchy`].
    #[must_use]
    pub fn with_runtime(mut self, runtime: &Path) -> Self {
        let is_runc = runtime.file_name().is_some_and(|n| n == "runc");
        let launcher = Arc::make_mut(&mut self.launcher);
        // Read once at start-up (procfs answers from memory).
        launcher.hide_unified = !is_runc
            && std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| is_hybrid_layout(&m));
        launcher.runc = runtime.to_owned();
        self
    }

    /// The first line of the runtime's `--version`: asked at start-up, so that a runtime that
    /// is missing or cannot run stops the invoker there instead of failing every cold start.
    pub async fn runtime_version(&self) -> Result<String, CommandError> {
        let runc = &self.launcher.runc;
        let out = tokio::process::Command::new(runc)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| CommandError::Spawn {
                runc: runc.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            Ok(stdout.lines().next().unwrap_or_default().to_owned())
        } else {
            Err(CommandError::Failed {
                command: "--version".into(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
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
        if let Some(archive) = self
            .image_store
            .as_deref()
            .and_then(|store| image_store::find(store, image))
        {
            let c = self.image_from_store(image, archive).await?;
            images.insert(image.to_owned(), c.clone());
            return Ok(c);
        }
        let info = match self.docker.inspect_image(image).await {
            Ok(i) => i,
            Err(e) if pcpm::docker::is_not_found(&e) => {
                return Err(CreateError::NoExecutable {
                    image: image.to_owned(),
                    source: Some(Box::new(RuncError::Inspect {
                        image: image.to_owned(),
                        source: e,
                    })),
                });
            }
            Err(e) => {
                return Err(CreateError::provision(RuncError::Inspect {
                    image: image.to_owned(),
                    source: e,
                }));
            }
        };
        let id = info.id.unwrap_or_default().replace("sha256:", "");
        let config = info.config.unwrap_or_default();
        let mut args = config.entrypoint.unwrap_or_default();
        args.extend(config.cmd.unwrap_or_default());
        if args.is_empty() {
            return Err(CreateError::NoExecutable {
                image: image.to_owned(),
                source: None,
            });
        }
        let rootfs = self.images_dir.join(&id).join("rootfs");
        if !rootfs.exists() {
            self.unpack(image, &rootfs)
                .await
                .map_err(CreateError::provision)?;
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

    /// The image from its archive in the store, unpacked once into `<images>/<id>/rootfs`
    /// (beside the target, then renamed into place, as [`Self::unpack`] does).
    async fn image_from_store(
        &self,
        image: &str,
        archive: PathBuf,
    ) -> Result<ImageConfig, CreateError> {
        let images_dir = self.images_dir.clone();
        let wanted = image.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let a = image_store::Archive::open(&archive, &wanted)?;
            let rootfs = images_dir.join(&a.image().id).join("rootfs");
            if !rootfs.exists() {
                let tmp = rootfs.with_extension(format!("partial.{}", std::process::id()));
                let undo = |e| {
                    let _ = std::fs::remove_dir_all(&tmp);
                    e
                };
                let io = |source| image_store::ImageStoreError::Read {
                    path: tmp.clone(),
                    source,
                };
                let _ = std::fs::remove_dir_all(&tmp);
                std::fs::create_dir_all(&tmp).map_err(io)?;
                a.unpack(&tmp).map_err(undo)?;
                match std::fs::rename(&tmp, &rootfs) {
                    Err(_) if rootfs.exists() => {
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                    Err(e) => return Err(undo(io(e))),
                    Ok(()) => {}
                }
            }
            Ok::<_, image_store::ImageStoreError>((a.image().clone(), rootfs))
        })
        .await
        .map_err(|e| CreateError::provision(RuncError::Join(e)))?;
        let (stored, rootfs) = read.map_err(|e| CreateError::provision(RuncError::Store(e)))?;
        if stored.args.is_empty() {
            return Err(CreateError::NoExecutable {
                image: image.to_owned(),
                source: None,
            });
        }
        tracing::info!(image, id = %stored.id, "runtime image read from the image store");
        Ok(ImageConfig {
            rootfs,
            args: stored.args,
            env: stored.env,
            cwd: stored.cwd,
        })
    }

    async fn unpack(&self, image: &str, rootfs: &Path) -> Result<(), RuncError> {
        let export = |call| {
            let image = image.to_owned();
            move |source| RuncError::Export {
                image,
                call,
                source,
            }
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
            .map_err(export("create"))?
            .id;
        let mut tar = Vec::new();
        let mut stream = self.docker.export_container(&id);
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => tar.extend_from_slice(&b),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = self.docker.remove_container(&id, Some(options)).await;
        if let Some(e) = failed {
            return Err(export("export")(e));
        }
        // Unpacked beside the target and renamed into place: another invoker unpacking the
        // same image at the same time loses the rename and drops its copy.
        let tmp = rootfs.with_extension(format!("partial.{}", std::process::id()));
        let target = rootfs.to_owned();
        let unpacked = tokio::task::spawn_blocking(move || {
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
        .map_err(RuncError::Join)?;
        unpacked.map_err(|source| RuncError::Unpack {
            image: image.to_owned(),
            path: rootfs.to_owned(),
            source,
        })
    }

    async fn runc(&self, args: &[&str]) -> Result<String, CommandError> {
        self.launcher.runc(args).await
    }
}

impl Launcher {
    async fn runc(&self, args: &[&str]) -> Result<String, CommandError> {
        run_runc(&self.runc, &self.state, args).await
    }

    fn spec_json(spec: &ContainerSpec, image: &ImageConfig, netns: &Path, bundle: &Path) -> Value {
        let mut env = image.env.clone();
        env.extend(spec.env.iter().cloned());
        let memory = spec.memory_mb << 20;
        // Docker's `--cpus`: a CFS quota per 100 ms period.
        let mut cpu = json!({"shares": spec.cpu_shares});
        if let Some(cpus) = spec.cpus {
            cpu["period"] = json!(100_000);
            cpu["quota"] = json!((cpus * 100_000.0).round() as i64);
        }
        let bind = |dest: &str, src: PathBuf| json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "ro"]});
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": image.args,
                "env": env,
                "cwd": image.cwd,
                // Docker leaves the inheritable set empty since 20.10.14 (CVE-2022-24769)
                // and never sets an ambient one.
                "capabilities": {
                    "bounding": CAPABILITIES, "effective": CAPABILITIES,
                    "permitted": CAPABILITIES, "inheritable": [], "ambient": [],
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                // Docker sets no-new-privileges only when asked (`--security-opt
                // no-new-privileges` or the daemon's `no-new-privileges` option), which the
                // stock invoker never does.
                "noNewPrivileges": false
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
                "cgroupsPath": cgroups_path(&spec.name),
                "resources": {
                    "memory": {"limit": memory, "swap": memory},
                    "cpu": cpu,
                    "pids": {"limit": 1024},
                    "devices": [{"allow": false, "access": "rwm"}],
                },
                "maskedPaths": &*MASKED_PATHS,
                "readonlyPaths": READONLY_PATHS,
                "seccomp": &*SECCOMP,
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

/// [`teardown_bundle`] on the blocking pool (unmount and removal of a tree block).
async fn teardown_bundle_off_workers(bundle: PathBuf) -> Vec<BoxError> {
    match tokio::task::spawn_blocking(move || teardown_bundle(&bundle)).await {
        Ok(errors) => errors,
        Err(e) => vec![Box::new(RuncError::Join(e))],
    }
}

/// Logs what undoing a failed create could not undo (the create's own error is what is
/// reported).
fn log_teardown(container: &str, errors: Vec<BoxError>) {
    for e in errors {
        tracing::warn!(container, error = %openwhisk::errors::chain(e.as_ref()), "undoing a failed create");
    }
}

/// Unmounts a bundle's overlay and removes the bundle; keeps going past errors.
fn teardown_bundle(bundle: &Path) -> Vec<BoxError> {
    let mut errors: Vec<BoxError> = Vec::new();
    let rootfs = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
        && e != nix::errno::Errno::EINVAL
        && e != nix::errno::Errno::ENOENT
    {
        errors.push(Box::new(RuncError::Unmount {
            path: rootfs,
            source: e,
        }));
    }
    if let Err(e) = std::fs::remove_dir_all(bundle)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        errors.push(Box::new(RuncError::RemoveBundle {
            path: bundle.to_owned(),
            source: e,
        }));
    }
    errors
}

/// Whether `program` (the entry point) names an executable file in `rootfs`, found as runc
/// finds it: a path with a `/` relative to `cwd`, a bare name through the `PATH` of `env`.
fn entry_point_exists(rootfs: &Path, program: &str, cwd: &str, env: &[String]) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![Path::new(cwd).join(program)]
    } else {
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(program))
            .collect()
    };
    candidates.iter().any(|c| {
        resolve_in_root(rootfs, c)
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `path` inside `root` with symbolic links followed as if `root` were `/`.
fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut todo: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut at = PathBuf::new();
    let mut hops = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            at.pop();
            continue;
        }
        let next = at.join(&name);
        let full = root.join(&next);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = std::fs::read_link(&full).ok()?;
                if target.is_absolute() {
                    at = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push(n.to_owned()),
                        Component::ParentDir => todo.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => at = next,
            Err(_) => return None,
        }
    }
    Some(root.join(at))
}

#[async_trait::async_trait]
impl ContainerFactory for RuncFactory {
    async fn create(&self, spec: &ContainerSpec) -> Result<Box<dyn Container>, CreateError> {
        // Refills of pre-created sandboxes wait while cold starts run (they would take the
        // same CPUs).
        let _starting = self.presandboxes.as_ref().map(|p| p.starting());
        let image = self.image(&spec.image.name).await?;
        let mut env = image.env.clone();
        env.extend(spec.env.iter().cloned());
        let program = image.args[0].clone();
        let found = {
            let (rootfs, cwd) = (image.rootfs.clone(), image.cwd.clone());
            tokio::task::spawn_blocking(move || entry_point_exists(&rootfs, &program, &cwd, &env))
                .await
                .map_err(|e| CreateError::provision(RuncError::Join(e)))?
        };
        if !found {
            return Err(CreateError::NoExecutable {
                image: spec.image.name.clone(),
                source: None,
            });
        }
        if let Some(sandbox) = self
            .presandboxes
            .as_ref()
            .and_then(|p| p.take(spec, &image, &self.launcher))
        {
            // Only its process is left to start: it runs the image's entry point now.
            match self.launcher.runc(&["start", &sandbox.id]).await {
                Ok(_) => return Ok(Box::new(sandbox)),
                Err(e) => {
                    metrics::counter!(crate::metrics::PRESANDBOX_FAILURES_TOTAL, "stage" => "start")
                        .increment(1);
                    tracing::warn!(container = %sandbox.id, error = %openwhisk::errors::chain(&e), "a pre-created sandbox did not start; making a container instead");
                    if let Err(e) = sandbox.destroy().await {
                        tracing::warn!(container = %sandbox.id, error = %openwhisk::errors::chain(&e), "removing a pre-created sandbox");
                    }
                }
            }
        }
        let container = self
            .launcher
            .make(spec, &image, Verb::Run)
            .await
            .map_err(CreateError::provision)?;
        Ok(Box::new(container))
    }

    async fn remove_all(&self, prefix: &str) -> Result<usize, BackendError> {
        let mut removed = 0;
        let mut errors = Vec::new();
        // The pre-created sandboxes first: their refills stopped and waited for, each removed
        // with its lease given back (the sweep below would only find the containers).
        if let Some(p) = &self.presandboxes {
            errors.extend(p.drain().await);
        }
        if let Ok(list) = self.runc(&["list", "-q"]).await {
            for id in list.lines().filter(|l| l.starts_with(prefix)) {
                let _ = self.runc(&["resume", id]).await;
                match self.runc(&["delete", "--force", id]).await {
                    Ok(_) => removed += 1,
                    Err(e) => errors.push(Box::new(e) as BoxError),
                }
            }
        }
        // Unmounts and folder removals: on the blocking pool.
        let (bundles, state, prefix_owned) = (
            self.launcher.bundles.clone(),
            self.launcher.state.clone(),
            prefix.to_owned(),
        );
        let swept = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            if let Ok(entries) = std::fs::read_dir(&bundles) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix_owned) {
                        errors.extend(teardown_bundle(&e.path()));
                    }
                }
            }
            // Cgroups that runc did not remove (busy while their last process exited), on
            // every hierarchy.
            errors.extend(remove_cgroups(Path::new(CGROUP_ROOT), &prefix_owned, true));
            // This invoker's folders go too when nothing is left in them (runc and the next
            // create make them again); a folder still holding something is kept.
            if errors.is_empty() {
                for dir in [&state, &bundles] {
                    let _ = std::fs::remove_dir(dir);
                }
                remove_empty_cgroup_parents(Path::new(CGROUP_ROOT));
            }
            errors
        })
        .await;
        match swept {
            Ok(e) => errors.extend(e),
            Err(e) => errors.push(Box::new(RuncError::Join(e))),
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(BackendError {
                action: "remove",
                id: prefix.to_owned(),
                source: Box::new(Errors(errors)),
            })
        }
    }
}

impl Launcher {
    /// A container for `spec` in a leased namespace, on an overlay of `image`: started
    /// (`verb` [`Verb::Run`]) or created with its process waiting for `start`
    /// ([`Verb::Create`]). A failure undoes what was done.
    async fn make(
        &self,
        spec: &ContainerSpec,
        image: &ImageConfig,
        verb: Verb,
    ) -> Result<RuncContainer, RuncError> {
        let lease = self.netpool.lease().await.map_err(RuncError::Lease)?;
        let bundle = self.bundles.join(&spec.name);
        let prepared = {
            let (dir, image, spec) = (bundle.clone(), image.clone(), spec.clone());
            let netns = lease.netns_path().to_owned();
            // The spec is made here too: its first use reads the host (kernel, CPUs).
            tokio::task::spawn_blocking(move || {
                let config = Self::spec_json(&spec, &image, &netns, &dir);
                Self::prepare_bundle(&dir, &image, &config)
            })
            .await
            .map_err(RuncError::Join)
            .and_then(|r| {
                r.map_err(|source| RuncError::Bundle {
                    path: bundle.clone(),
                    source,
                })
            })
        };
        if let Err(e) = prepared {
            log_teardown(&spec.name, teardown_bundle_off_workers(bundle).await);
            lease.release_nowait();
            return Err(e);
        }
        let (tx, rx) = logs::channel(logs::CHANNEL_CAPACITY);
        if let Err(e) = self.start(verb, &spec.name, &bundle, tx).await {
            let _ = self.runc(&["delete", "--force", &spec.name]).await;
            log_teardown(&spec.name, teardown_bundle_off_workers(bundle).await);
            lease.release_nowait();
            return Err(e);
        }
        Ok(RuncContainer {
            id: spec.name.clone(),
            addr: SocketAddr::new(lease.ip().into(), 8080),
            logs: Logs::new(rx),
            bundle,
            runc: self.runc.clone(),
            state: self.state.clone(),
            frozen: std::sync::atomic::AtomicBool::new(false),
            lease: parking_lot::Mutex::new(Some(lease)),
        })
    }

    /// `runc run --detach` or `runc create`, with the container's stdout and stderr read into
    /// `logs` from then on (a created container's process holds the pipes until it runs).
    /// runc writes its own errors to the same stderr before it detaches, which is where a
    /// failure's account is read from.
    async fn start(
        &self,
        verb: Verb,
        name: &str,
        bundle: &Path,
        logs: LineSender,
    ) -> Result<(), RuncError> {
        let spawn = |source| CommandError::Spawn {
            runc: self.runc.clone(),
            source,
        };
        let mut command = tokio::process::Command::new(&self.runc);
        command.arg("--root").arg(&self.state);
        match verb {
            Verb::Run => command.args(["run", "--detach"]),
            Verb::Create => command.arg("create"),
        };
        command
            .arg("--bundle")
            .arg(bundle)
            .arg(name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.hide_unified {
            // SAFETY: the closure runs in the forked child before exec and makes only
            // async-signal-safe calls (see `hide_unified_hierarchy`).
            unsafe {
                command.pre_exec(hide_unified_hierarchy);
            }
        }
        let mut child = command.spawn().map_err(spawn)?;
        // runc's own account of a failure, read from the same stderr (a second channel, so the
        // container's source holds only the container's lines).
        let (errors_tx, mut errors_rx) = logs::channel(4096);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, Stream::Stdout, logs.clone(), None));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, Stream::Stderr, logs, Some(errors_tx)));
        }
        let status = child.wait().await.map_err(spawn)?;
        if status.success() {
            return Ok(());
        }
        // The pipes close when runc exits (no container process holds them): read to there.
        let mut stderr = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(Next::Line(l)) = errors_rx.next(true).await {
                stderr.push_str(&l.text);
                stderr.push('\n');
            }
        })
        .await;
        Err(CommandError::Failed {
            command: match verb {
                Verb::Run => "run".into(),
                Verb::Create => "create".into(),
            },
            status,
            stderr: stderr.trim_end().to_owned(),
        }
        .into())
    }
}

/// Reads one of the container's streams into its log source, a line at a time; `copy` gets
/// the same lines until it is full (runc's error before it detached).
async fn pump(
    stream: impl tokio::io::AsyncRead + Unpin,
    which: Stream,
    logs: LineSender,
    mut copy: Option<LineSender>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = LogLine::now(which, String::from_utf8_lossy(&buf).into_owned());
        // The copy's reader goes once runc has detached or failed.
        if let Some(c) = &copy
            && !c.send(line.clone())
        {
            copy = None;
        }
        logs.send(line);
    }
}

#[derive(Debug)]
struct RuncContainer {
    id: String,
    addr: SocketAddr,
    logs: Logs,
    bundle: PathBuf,
    runc: PathBuf,
    state: PathBuf,
    /// Set before a freeze, cleared once thawed: whether `destroy` must thaw first (a frozen
    /// process cannot act on the runtime's SIGKILL, so `delete --force` would wait on it).
    frozen: std::sync::atomic::AtomicBool,
    lease: parking_lot::Mutex<Option<Lease>>,
}

impl RuncContainer {
    async fn runc(&self, action: &'static str, args: &[&str]) -> Result<(), BackendError> {
        run_runc(&self.runc, &self.state, args)
            .await
            .map(|_| ())
            .map_err(|e| BackendError {
                action,
                id: self.id.clone(),
                source: Box::new(e),
            })
    }

    /// [`freeze`] on the blocking pool (it polls the freezer's state).
    async fn freeze(&self, frozen: bool) -> Result<(), BackendError> {
        let path = cgroups_path(&self.id);
        let done =
            tokio::task::spawn_blocking(move || freeze(Path::new(CGROUP_ROOT), &path, frozen))
                .await
                .map_err(RuncError::Join)
                .and_then(|r| r);
        done.map_err(|e| BackendError {
            action: if frozen { "pause" } else { "resume" },
            id: self.id.clone(),
            source: Box::new(e),
        })
    }
}

/// `runc --root <state> <args>`: its stdout, or the error with its stderr.
async fn run_runc(runc: &Path, state: &Path, args: &[&str]) -> Result<String, CommandError> {
    let out = tokio::process::Command::new(runc)
        .arg("--root")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| CommandError::Spawn {
            runc: runc.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
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

    fn logs(&self) -> Option<&Logs> {
        Some(&self.logs)
    }

    /// The container's freezer written directly: what `runc pause` does, without starting
    /// the runtime's process (a Go program's start costs several ms of CPU).
    async fn pause(&self) -> Result<(), BackendError> {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
        self.freeze(true).await
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.freeze(false).await?;
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// From the container's memory cgroup, which lasts until `destroy` deletes the container.
    async fn oom_killed(&self) -> bool {
        let path = cgroups_path(&self.id);
        let kills =
            tokio::task::spawn_blocking(move || oom_kills(Path::new(CGROUP_ROOT), &path)).await;
        match kills {
            Ok(Some(n)) => n > 0,
            Ok(None) => {
                tracing::warn!(container = %self.id, "no memory cgroup to read OOM kills from");
                false
            }
            Err(e) => {
                tracing::warn!(container = %self.id, error = %e, "OOM check lost");
                false
            }
        }
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        // runc keeps a container's state in `<root>/<id>`: without it (an earlier try deleted
        // the container and failed further on) there is nothing to delete, and `runc delete`
        // would fail, so a removal tried again goes on with the bundle and the cgroups.
        let deleted = match tokio::fs::try_exists(self.state.join(&self.id)).await {
            Ok(false) => Ok(()),
            _ => {
                if self.frozen.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = self.freeze(false).await;
                }
                self.runc("delete", &["delete", "--force", &self.id]).await
            }
        };
        let bundle = self.bundle.clone();
        let mut errors = teardown_bundle_off_workers(bundle).await;
        // runc gives up on a cgroup that is still busy with an exiting process; retried here
        // (on the blocking pool: the pauses block) until the kernel lets it go.
        let id = self.id.clone();
        match tokio::task::spawn_blocking(move || {
            remove_cgroups(Path::new(CGROUP_ROOT), &id, false)
        })
        .await
        {
            Ok(e) => errors.extend(e),
            Err(e) => errors.push(Box::new(RuncError::Join(e))),
        }
        let lease = self.lease.lock().take();
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
                source: Box::new(Errors(errors)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The sweep finds the containers' cgroups by prefix on every hierarchy of both layouts,
    /// removes the empty ones, leaves other names alone and reports one it cannot remove. A
    /// plain folder tree stands in for the cgroup file systems (there, rmdir of a cgroup with
    /// only its interface files works; here those are absent).
    #[test]
    fn the_sweep_removes_prefixed_cgroups_on_every_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // v1 hierarchies, a hybrid layout's unified one, and a v2 root of its own below.
        for h in ["memory", "cpu", "pids", "unified"] {
            std::fs::create_dir_all(r.join(h).join("wsk-runc/wskx0_1_guest_a")).unwrap();
            std::fs::create_dir_all(r.join(h).join("wsk-runc/other_1")).unwrap();
            std::fs::write(r.join(h).join("cgroup.procs"), "").unwrap();
        }
        // One that is not empty cannot go (stands for a cgroup still holding a process).
        std::fs::create_dir_all(r.join("memory/wsk-runc/wskx0_2_guest_b/child")).unwrap();
        let mut pauses = 0;
        let errors = remove_cgroups_with(r, "wskx0_", true, |_| pauses += 1);
        for h in ["memory", "cpu", "pids", "unified"] {
            assert!(!r.join(h).join("wsk-runc/wskx0_1_guest_a").exists(), "{h}");
            assert!(r.join(h).join("wsk-runc/other_1").exists(), "{h}");
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            openwhisk::errors::chain(errors[0].as_ref()).contains("wskx0_2_guest_b"),
            "{errors:?}"
        );
        assert_eq!(pauses, 0, "not empty is not busy");
        // v2: the mount itself is the hierarchy.
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::create_dir_all(v2.path().join("wsk-runc/wskx0_3_guest_c")).unwrap();
        assert!(remove_cgroups_with(v2.path(), "wskx0_3_guest_c", false, |_| ()).is_empty());
        assert!(!v2.path().join("wsk-runc/wskx0_3_guest_c").exists());
    }

    /// The entry point is found as runc finds it, with links resolved inside the root (an
    /// absolute link target names the image's file, never the host's).
    #[test]
    fn entry_points_are_found_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        executable(&root.join("usr/local/bin/node"));
        executable(&root.join("action/proxy"));
        std::fs::write(root.join("usr/local/bin/data"), "").unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("/usr/local/bin/node", root.join("usr/bin/nodejs")).unwrap();
        symlink("../local/bin/node", root.join("usr/bin/relative")).unwrap();
        symlink("/bin/sh", root.join("usr/bin/host-shell")).unwrap();
        let env = ["PATH=/usr/bin:/usr/local/bin".to_owned()];
        for found in ["node", "nodejs", "relative", "/action/proxy", "./proxy"] {
            assert!(entry_point_exists(root, found, "/action", &env), "{found}");
        }
        for missing in ["nope", "data", "host-shell", "/action/nope", "sh"] {
            assert!(
                !entry_point_exists(root, missing, "/action", &env),
                "{missing}"
            );
        }
        // The default PATH when the image sets none.
        assert!(entry_point_exists(root, "node", "/", &[]));
    }

    fn profile() -> Value {
        serde_json::from_str(DOCKER_SECCOMP_PROFILE).unwrap()
    }

    /// The rules that allow `name` (or answer for it with an errno), in order.
    fn rules_for<'a>(section: &'a Value, name: &str) -> Vec<&'a Value> {
        section["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .collect()
    }

    /// On x86_64 with our capabilities: EPERM by default, the x86 family, the plain allow list,
    /// and the capability-gated rules resolved as the daemon resolves them: CAP_SYS_CHROOT is
    /// granted (chroot allowed), CAP_SYS_ADMIN is not (no mount, no unshare; clone only
    /// without namespace flags; clone3 answers ENOSYS so libc falls back to clone).
    #[test]
    fn the_seccomp_section_is_dockers_default_for_our_capabilities() {
        let s = docker_seccomp(&profile(), CAPABILITIES, "x86_64", (6, 18));
        assert_eq!(s["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(s["defaultErrnoRet"], 1);
        assert_eq!(
            s["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        for allowed in ["read", "openat", "socket", "chroot", "arch_prctl", "ptrace"] {
            assert!(
                rules_for(&s, allowed)
                    .iter()
                    .any(|r| r["action"] == "SCMP_ACT_ALLOW"),
                "{allowed}"
            );
        }
        for refused in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "reboot",
            "init_module",
            "syslog",
            "kcmp",
            "s390_runtime_instr",
            "arm_fadvise64_64",
            "open_by_handle_at",
        ] {
            assert!(rules_for(&s, refused).is_empty(), "{refused}");
        }
        let clone = rules_for(&s, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(
            clone[0]["args"],
            json!([{"index": 0, "value": 2114060288u64, "op": "SCMP_CMP_MASKED_EQ"}])
        );
        let clone3 = rules_for(&s, "clone3");
        assert_eq!(clone3.len(), 1, "{clone3:?}");
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        // Only OCI fields are left in a rule.
        for rule in s["syscalls"].as_array().unwrap() {
            for key in rule.as_object().unwrap().keys() {
                assert!(
                    ["names", "action", "errnoRet", "args"].contains(&key.as_str()),
                    "{key}"
                );
            }
        }
    }

    /// The same profile elsewhere: CAP_SYS_ADMIN turns the namespace calls on (and the clone
    /// filters off), an old kernel loses the `minKernel` rule, another architecture gets its
    /// own sub-architectures and rules, and an unknown one leaves the choice to libseccomp.
    #[test]
    fn the_seccomp_section_follows_capabilities_kernel_and_architecture() {
        let mut admin = CAPABILITIES.to_vec();
        admin.push("CAP_SYS_ADMIN");
        let s = docker_seccomp(&profile(), &admin, "x86_64", (6, 18));
        assert!(!rules_for(&s, "mount").is_empty());
        assert!(
            rules_for(&s, "clone3")
                .iter()
                .all(|r| r["action"] == "SCMP_ACT_ALLOW")
        );
        assert!(
            rules_for(&s, "clone")
                .iter()
                .all(|r| r.get("args").is_none())
        );

        let old = docker_seccomp(&profile(), CAPABILITIES, "x86_64", (4, 4));
        assert!(rules_for(&old, "ptrace").is_empty());

        let arm = docker_seccomp(&profile(), CAPABILITIES, "aarch64", (6, 18));
        assert_eq!(
            arm["architectures"],
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        assert!(!rules_for(&arm, "arm_fadvise64_64").is_empty());
        assert!(rules_for(&arm, "arch_prctl").is_empty());

        let unknown = docker_seccomp(&profile(), CAPABILITIES, "sparc64", (6, 18));
        assert_eq!(unknown["architectures"], json!([]));
    }

    #[test]
    fn kernel_versions_are_major_and_minor() {
        assert_eq!(kernel_version("6.18.44-fc-v1045\n"), (6, 18));
        assert_eq!(kernel_version("4.8"), (4, 8));
        assert_eq!(kernel_version("5"), (0, 0));
        assert_eq!(kernel_version(""), (0, 0));
    }

    /// Docker's fixed list, and the thermal_throttle folder of each possible CPU that has one.
    #[test]
    fn masked_paths_are_dockers() {
        let none = masked_paths("0-1\n", |_| false);
        assert_eq!(none.len(), 12);
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/interrupts",
            "/sys/firmware",
        ] {
            assert!(none.iter().any(|m| m == p), "{p}");
        }
        let some = masked_paths("0-2,5", |p| !p.contains("cpu1/"));
        let cpus: Vec<_> = some[12..].iter().map(String::as_str).collect();
        assert_eq!(
            cpus,
            [
                "/sys/devices/system/cpu/cpu0/thermal_throttle",
                "/sys/devices/system/cpu/cpu2/thermal_throttle",
                "/sys/devices/system/cpu/cpu5/thermal_throttle",
            ]
        );
    }

    /// Both cgroup layouts, read from fake hierarchies: v2 `memory.events`, v1
    /// `memory.oom_control` with its `oom_kill` line, and an old v1 kernel's `under_oom`.
    #[test]
    fn oom_kills_are_read_from_either_cgroup_layout() {
        let v2 = tempfile::tempdir().unwrap();
        let dir = v2.path().join("wsk-runc/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(v2.path(), "/wsk-runc/c1"), Some(1));
        assert_eq!(oom_kills(v2.path(), "/wsk-runc/gone"), None);

        let v1 = tempfile::tempdir().unwrap();
        let dir = v1.path().join("memory/wsk-runc/c2");
        std::fs::create_dir_all(&dir).unwrap();
        let control = dir.join("memory.oom_control");
        std::fs::write(&control, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        assert_eq!(oom_kills(v1.path(), "/wsk-runc/c2"), Some(0));
        std::fs::write(&control, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(v1.path(), "/wsk-runc/c2"), Some(2));
        std::fs::write(&control, "oom_kill_disable 0\nunder_oom 1\n").unwrap();
        assert_eq!(oom_kills(v1.path(), "/wsk-runc/c2"), Some(1));
    }

    /// Freezing writes the layout's freezer file and waits for the kernel's word: v2's
    /// `cgroup.events`, v1's `freezer.state` read back. One that never completes is thawed
    /// again and reported.
    #[test]
    fn freezing_uses_either_cgroup_layout_and_gives_up_thawed() {
        let v2 = tempfile::tempdir().unwrap();
        let dir = v2.path().join("wsk-runc/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        freeze_with(v2.path(), "/wsk-runc/c1", true, |_| panic!("no wait")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "1"
        );
        // The kernel never says frozen: every pause is waited, then the cgroup is thawed.
        std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let mut waited = Vec::new();
        let e = freeze_with(v2.path(), "/wsk-runc/c1", true, |d| waited.push(d)).unwrap_err();
        assert_eq!(waited, FREEZE_PAUSES.to_vec());
        assert!(
            matches!(&e, RuncError::Freeze { frozen: true, source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
            "{e:?}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "0"
        );

        let v1 = tempfile::tempdir().unwrap();
        let dir = v1.path().join("freezer/wsk-runc/c2");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("freezer.state"), "THAWED\n").unwrap();
        freeze_with(v1.path(), "/wsk-runc/c2", true, |_| panic!("no wait")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("freezer.state")).unwrap(),
            "FROZEN"
        );
        freeze_with(v1.path(), "/wsk-runc/c2", false, |_| panic!("no wait")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("freezer.state")).unwrap(),
            "THAWED"
        );
        // A container whose cgroup is gone cannot be frozen.
        assert!(matches!(
            freeze_with(v1.path(), "/wsk-runc/gone", true, |_| {}),
            Err(RuncError::Freeze { .. })
        ));
    }

    /// A v1 freeze that stays FREEZING (the kernel's v1 freezer while tasks keep waking) is
    /// thawed before each longer pause and frozen again, and goes through once the kernel
    /// catches every task; v2's is only waited on.
    #[test]
    fn a_v1_freeze_stuck_freezing_is_thawed_and_tried_again() {
        let layout = |refreeze| FreezerFiles {
            file: PathBuf::new(),
            value: "FROZEN",
            thawed: "THAWED",
            state_file: PathBuf::new(),
            done: "FROZEN",
            refreeze,
        };
        // A kernel that freezes only on the first freeze after a second thaw.
        let kernel = |refreeze| {
            let written = std::cell::RefCell::new(Vec::<String>::new());
            let mut waited = Vec::new();
            let reached = freezer_protocol(
                &layout(refreeze),
                |v| {
                    written.borrow_mut().push(v.to_owned());
                    Ok(())
                },
                || {
                    let w = written.borrow();
                    Ok(w.iter().filter(|v| *v == "THAWED").count() >= 2
                        && w.last().map(String::as_str) == Some("FROZEN"))
                },
                &mut |d| waited.push(d),
            )
            .unwrap();
            (reached, written.into_inner(), waited)
        };
        let (reached, written, waited) = kernel(true);
        assert!(reached);
        let thaws_before: Vec<Duration> = FREEZE_PAUSES
            .iter()
            .copied()
            .filter(|d| *d >= REFREEZE_FROM)
            .take(2)
            .collect();
        assert_eq!(waited.last(), thaws_before.last(), "{waited:?}");
        assert_eq!(written.last().map(String::as_str), Some("FROZEN"));
        assert_eq!(written.iter().filter(|v| *v == "THAWED").count(), 2);
        // Without the thaws (v2) the same kernel never freezes: every pause is waited.
        let (reached, written, waited) = kernel(false);
        assert!(!reached);
        assert!(written.iter().all(|v| v == "FROZEN"));
        assert_eq!(waited, FREEZE_PAUSES.to_vec());
    }

    #[test]
    fn the_hybrid_layout_is_recognised() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert!(is_hybrid_layout(hybrid));
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n";
        assert!(!is_hybrid_layout(v2));
        let v1 = "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        assert!(!is_hybrid_layout(v1));
    }

    /// The spec carries the sandbox Docker applies: the seccomp section, empty inheritable and
    /// ambient sets, Docker's masked and read-only paths, no-new-privileges off as in Docker.
    #[test]
    fn the_spec_has_dockers_sandbox() {
        let spec = ContainerSpec {
            name: "wsk0_1_guest_a".into(),
            image: super::super::ImageRef::local("img"),
            memory_mb: 128,
            cpu_shares: 64,
            cpus: None,
            env: vec![],
            sandbox: crate::container::Sandbox::Mode,
        };
        let image = ImageConfig {
            rootfs: "/images/x/rootfs".into(),
            args: vec!["/bin/proxy".into()],
            env: vec![],
            cwd: "/".into(),
        };
        let v = Launcher::spec_json(&spec, &image, Path::new("/run/ns"), Path::new("/b"));
        let caps = &v["process"]["capabilities"];
        assert_eq!(caps["inheritable"], json!([]));
        assert_eq!(caps["ambient"], json!([]));
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(caps[set], json!(CAPABILITIES), "{set}");
        }
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["linux"]["readonlyPaths"], json!(READONLY_PATHS));
        assert!(
            v["linux"]["maskedPaths"]
                .as_array()
                .unwrap()
                .contains(&json!("/proc/kcore"))
        );
        assert_eq!(v["linux"]["cgroupsPath"], "/wsk-runc/wsk0_1_guest_a");
    }
}
