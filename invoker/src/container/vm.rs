//! The microVM backend: each action container is a QEMU `-M microvm` guest (the Linux guest of
//! `runtimes/vm/`: Debian's cloud kernel, an initramfs with `guest-init`, a read-only root
//! image per runtime kind) started inside a netpool VM slot's namespace on the slot's TAP
//! device, so the guest owns the slot's address and MAC exactly as a container owns them in
//! netns mode.
//!
//! - **Network:** QEMU is exec'd inside the slot's namespace (`Lease::enter_on_exec`: a
//!   `setns` between fork and exec, never on a tokio worker) and opens the slot's persistent
//!   `tap0` by name; netpool's tc redirects join it to `eth0`. The guest learns its address,
//!   gateway and netmask from `ip=` on the kernel command line (guest-init parses it: the
//!   cloud kernel has no `CONFIG_IP_PNP`), and its NIC gets the slot's MAC. The host gets a
//!   permanent neighbour entry for the guest, so the readiness probe's first SYN does not wait
//!   for ARP (an unanswered ARP while the guest boots would leave the entry FAILED and cost up
//!   to a second: `shared/unikernel-notes.md` §1.3).
//! - **Control:** QMP on a unix socket per VM: pause is `stop`, resume is `cont`, destroy is
//!   `quit`, then SIGKILL after a bound. Every QMP exchange is bounded ([`qmp`]).
//! - **Logs:** the serial console is QEMU's stdout (a `stdio` chardev), read line by line; the
//!   guest tags each line of the proxy's stdout and stderr (`out| `, `err| `), which becomes a
//!   line of that stream in the container's [`logs::channel`]; the kernel's and guest-init's
//!   own lines are kept only as diagnostics for boot errors.
//! - **Limits:** `-m` is the action's memory limit; the QEMU process goes into a cgroup of its
//!   own with the action's CPU shares (and `--cpus` quota), cgroup v1 `cpu` or v2.
//! - **Leftovers:** each VM has a folder `<run_dir>/<name>` with its QMP socket, QEMU's pid
//!   file and the neighbour entry it added; [`VmFactory::new`] (before its canary) and
//!   [`VmFactory::remove_all`] find QEMU processes of an earlier run (a killed invoker's VMs
//!   keep running) by their `-pidfile` argument under that folder, kill them and remove the
//!   folders, neighbour entries and cgroups with the factory's name prefix.
//! - **Accelerator:** `tcg`, `kvm`, or `auto`, which [`VmFactory::new`] settles once by booting
//!   a canary guest (the native root image) on a slot of the factory's own pool, with KVM and
//!   then with TCG ([`choose_accelerator`]). The canary goes through the same lease, boot and
//!   teardown as an action's VM, so what it proves is what the actions get, and it leaves
//!   exactly what an action's VM leaves: nothing.

pub mod qmp;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use netpool::{Lease, NetPool};
pub use openwhisk::settings::VmAccelerator as Accelerator;
use openwhisk::settings::VmSettings;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::cgroup::{CGROUP_BUSY_PAUSES, cgroup_holders, rmdir_retrying_busy};
use super::logs::{self, LineSender, LogLine, Logs, Stream};
use super::{
    BackendError, BoxError, Container, ContainerFactory, ContainerSpec, CreateError, Errors,
};
use qmp::{Qmp, QmpError};

/// The command that builds the guest, named when a piece of it is missing.
pub const GUEST_BUILD: &str = "runtimes/build.sh";
/// Spawn to the proxy accepting connections, by default: a Linux boot under TCG takes 2–10 s
/// on a quiet machine and much longer on a busy one.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The bound of each QMP exchange.
pub const DEFAULT_QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// `quit` to QEMU's exit, before SIGKILL.
pub const DEFAULT_QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// SIGKILL to the process being gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// The readiness probe: one fresh socket per attempt, each attempt short, so that a SYN lost
/// while the guest was not listening yet is never left to TCP's one-second retransmit.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// The action proxy's port in the guest.
const PROXY_PORT: u16 = 8080;
/// Console lines that are not the action's, kept for boot errors.
const CONSOLE_TAIL_LINES: usize = 30;
/// The end of QEMU's stderr kept for errors.
const STDERR_TAIL_BYTES: usize = 8 << 10;
/// The longest console line read at once: guest-init cuts the proxy's lines at 16 KiB and adds
/// a five-byte tag.
const MAX_CONSOLE_LINE: u64 = (16 << 10) + 64;
/// The guest's tags of the proxy's streams on the console (`runtimes/vm/init/src/console.rs`).
const STDOUT_TAG: &str = "out| ";
const STDERR_TAG: &str = "err| ";
/// The files of one VM in its folder.
const QMP_SOCKET: &str = "qmp";
const PID_FILE: &str = "qemu.pid";
const NEIGHBOUR_FILE: &str = "neighbour";
/// The bound of a KVM canary boot under `auto`: a Linux guest that KVM can run is listening
/// well within a second; one it cannot run (the PVM `/dev/kvm` of `shared/unikernel-notes.md`
/// §0) never is, and this is all `auto` spends on finding that out.
pub const DEFAULT_CANARY_TIMEOUT: Duration = Duration::from_secs(10);
/// The device KVM is reached through.
const KVM_DEVICE: &str = "/dev/kvm";
/// The canary's memory: ample for the native guest, whose proxy alone runs in it.
const CANARY_MEMORY_MB: u64 = 256;
/// The longest unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A VM backend failure.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(
        "image {image} has no VM guest (root images exist for dockerskeleton, action-nodejs-v18 and action-python-v3.11)"
    )]
    UnknownImage { image: String },
    #[error("the guest's {what} {} is missing or unreadable: build it with {GUEST_BUILD}", .path.display())]
    GuestFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no VM slot")]
    Lease(#[source] netpool::PoolError),
    #[error("slot {slot} has no TAP device (the pool does not make VM slots)")]
    NotVmSlot { slot: String },
    #[error("cannot prepare {}", .path.display())]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime folder {} is too long for a QMP socket path", .0.display())]
    RunDirTooLong(PathBuf),
    #[error("cannot set up cgroup {}", .path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `{command}`")]
    IpSpawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Ip { command: String, stderr: String },
    #[error("cannot start {}", .qemu.display())]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU ended before the guest was ready: its own stderr and the end of the console.
    #[error("QEMU exited during boot ({status}); stderr: {stderr}; console: {console}")]
    Exited {
        status: String,
        stderr: String,
        console: String,
    },
    #[error("the guest was not ready within {after:?}; console: {console}")]
    BootTimeout { after: Duration, console: String },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("QEMU (pid {pid}) did not exit within {after:?} of SIGKILL")]
    Unkillable { pid: u32, after: Duration },
    #[error("cannot scan /proc for leftover VMs")]
    Proc(#[source] std::io::Error),
    #[error("cannot remove {}", .path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A VM's cgroup still busy after the retries (its QEMU's threads still exiting, or
    /// something else in it): what holds it, as the kernel shows it then.
    #[error("cgroup {} is still busy after {:?}: {holders}", .path.display(), CGROUP_BUSY_PAUSES.iter().sum::<Duration>())]
    CgroupBusy { path: PathBuf, holders: String },
    #[error("a blocking task was lost")]
    Join(#[source] tokio::task::JoinError),
    /// What an earlier run of this factory left (its QEMU processes, folders, cgroups) could
    /// not all be removed at start-up.
    #[error("cannot remove the VMs an earlier run left in {}", .run_dir.display())]
    Leftovers {
        run_dir: PathBuf,
        #[source]
        source: Errors,
    },
    /// `auto` found no accelerator that boots the canary guest.
    #[error("no accelerator boots the canary guest: kvm: {}; tcg: {}", openwhisk::errors::chain(.kvm.as_ref()), openwhisk::errors::chain(.tcg.as_ref()))]
    NoAccelerator {
        kvm: Box<CanaryFailure>,
        tcg: Box<CanaryFailure>,
    },
}

/// Why a canary boot under `auto` failed.
#[derive(Debug, thiserror::Error)]
pub enum CanaryFailure {
    #[error("{KVM_DEVICE} cannot be opened")]
    NoDevice(#[source] std::io::Error),
    #[error("the canary guest did not boot")]
    Boot(#[source] VmError),
}

impl CanaryFailure {
    /// The `outcome` label of `invoker_vm_canary_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Self::NoDevice(_) => "unavailable",
            Self::Boot(e) => boot_outcome(e),
        }
    }
}

/// The `outcome` label of a failed boot (`invoker_vm_boots_total`).
fn boot_outcome(e: &VmError) -> &'static str {
    match e {
        VmError::BootTimeout { .. } => "timeout",
        VmError::Exited { .. } => "exited",
        _ => "error",
    }
}

/// The accelerator the VMs run with, once `auto` is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Tcg,
    Kvm,
}

impl Engine {
    /// The `accelerator` label, and QEMU's name for it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcg => "tcg",
            Self::Kvm => "kvm",
        }
    }
}

/// What `auto` chose, and why KVM was not it.
#[derive(Debug)]
pub struct Choice {
    pub engine: Engine,
    /// Set when the choice is TCG.
    pub kvm_failure: Option<CanaryFailure>,
}

/// One canary boot with an accelerator, bounded by `timeout`, that leaves nothing behind; a
/// seam so that the choice can be tested without QEMU.
#[async_trait::async_trait]
pub trait Canary: Send + Sync {
    async fn boot(&self, engine: Engine, timeout: Duration) -> Result<(), VmError>;
}

/// `auto`: KVM if `/dev/kvm` opened (`kvm_device`) and the canary boots with it within
/// `kvm_timeout`, else TCG if the canary boots with it within `tcg_timeout`, else the error
/// naming both failures. Each attempt is counted in `invoker_vm_canary_total`.
pub async fn choose_accelerator(
    kvm_device: std::io::Result<()>,
    canary: &dyn Canary,
    kvm_timeout: Duration,
    tcg_timeout: Duration,
) -> Result<Choice, VmError> {
    let count = |engine: Engine, outcome: &'static str| {
        metrics::counter!(crate::metrics::VM_CANARY_TOTAL, "accelerator" => engine.label(), "outcome" => outcome)
            .increment(1);
    };
    let kvm = match kvm_device {
        Err(e) => Err(CanaryFailure::NoDevice(e)),
        Ok(()) => canary
            .boot(Engine::Kvm, kvm_timeout)
            .await
            .map_err(CanaryFailure::Boot),
    };
    let kvm_failure = match kvm {
        Ok(()) => {
            count(Engine::Kvm, "ready");
            return Ok(Choice {
                engine: Engine::Kvm,
                kvm_failure: None,
            });
        }
        Err(f) => {
            count(Engine::Kvm, f.outcome());
            f
        }
    };
    match canary.boot(Engine::Tcg, tcg_timeout).await {
        Ok(()) => {
            count(Engine::Tcg, "ready");
            Ok(Choice {
                engine: Engine::Tcg,
                kvm_failure: Some(kvm_failure),
            })
        }
        Err(e) => {
            let tcg = CanaryFailure::Boot(e);
            count(Engine::Tcg, tcg.outcome());
            Err(VmError::NoAccelerator {
                kvm: Box::new(kvm_failure),
                tcg: Box::new(tcg),
            })
        }
    }
}

/// Whether `/dev/kvm` opens for reading and writing (what QEMU needs), on a blocking thread.
async fn open_kvm() -> std::io::Result<()> {
    tokio::task::spawn_blocking(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(KVM_DEVICE)
            .map(drop)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// What the factory needs; [`VmConfig::from_settings`] builds it from `whisk.invoker.vm.*`.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub qemu: PathBuf,
    pub accelerator: Accelerator,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The folder of `root-<kind>.ext4`.
    pub root_images: PathBuf,
    /// The unikernel that runs every `wasm:0.1` action (`unikernel/`, built by
    /// `runtimes/build.sh`).
    pub unikernel: PathBuf,
    pub boot_timeout: Duration,
    pub qmp_timeout: Duration,
    pub quit_timeout: Duration,
    /// This factory's folder: one folder per VM (QMP socket, pid file). Leftovers are found
    /// here, so two factories must not share it.
    pub run_dir: PathBuf,
    /// The name of the cgroup that holds one cgroup per VM (under the `cpu` controller's root);
    /// `None` runs QEMU in the invoker's cgroup.
    pub cgroup_parent: Option<String>,
    pub vcpus: u32,
    /// What every VM name of this factory starts with (`<invoker prefix>_`), `auto`'s canary
    /// (`<name_prefix>canary`) included: what an earlier run left with it is removed when the
    /// factory starts, before the canary boots, and by `remove_all`.
    pub name_prefix: String,
    /// The bound of `auto`'s KVM canary boot; the TCG one has `boot_timeout`, since the
    /// factory would accept a boot that slow for an action.
    pub canary_timeout: Duration,
}

impl VmConfig {
    /// `auto`'s canary VM: a name with this factory's prefix, so that what a crash left of it
    /// is found like any VM's.
    pub fn canary_name(&self) -> String {
        format!("{}canary", self.name_prefix)
    }

    /// The settings, with `<vm.dir>/<name_prefix>` as this invoker's runtime folder.
    pub fn from_settings(s: &VmSettings, name_prefix: &str) -> Self {
        Self {
            qemu: s.qemu.clone(),
            accelerator: s.accelerator,
            kernel: s.kernel.clone(),
            initrd: s.initrd.clone(),
            root_images: s.root_images.clone(),
            unikernel: s.unikernel.clone(),
            boot_timeout: s.boot_timeout,
            qmp_timeout: DEFAULT_QMP_TIMEOUT,
            quit_timeout: DEFAULT_QUIT_TIMEOUT,
            run_dir: s.dir.join(name_prefix),
            cgroup_parent: Some("wsk-vm".into()),
            vcpus: 1,
            name_prefix: format!("{name_prefix}_"),
            canary_timeout: DEFAULT_CANARY_TIMEOUT,
        }
    }
}

/// The guest kind of `wasm:0.1` actions: our unikernel, not a Linux root image.
pub const WASM_KIND: &str = "wasm";

/// Memory the unikernel gets beyond twice the action's limit (its WebAssembly memory limit):
/// its own heap reserve, the compiled module, request and output buffers. Twice, because a
/// growing linear memory is reallocated and copied (no virtual-memory tricks without an OS),
/// so reaching the limit needs the old and the new buffer at once. The guest touches only what
/// it uses, so the unused part costs the host nothing.
pub const UNIKERNEL_OVERHEAD_MB: u64 = 16;

/// What a VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Guest {
    /// The Linux kernel and initramfs with a kind's read-only root image.
    Linux { root: PathBuf },
    /// The WebAssembly unikernel: one ELF, no disk, no initramfs.
    Unikernel,
}

impl Guest {
    fn of_kind(config: &VmConfig, kind: &str) -> Self {
        if kind == WASM_KIND {
            Self::Unikernel
        } else {
            Self::Linux {
                root: config.root_images.join(format!("root-{kind}.ext4")),
            }
        }
    }

    /// The VM's memory for an action limit of `memory_mb`.
    fn memory_mb(&self, memory_mb: u64) -> u64 {
        match self {
            Self::Linux { .. } => memory_mb,
            Self::Unikernel => 2 * memory_mb + UNIKERNEL_OVERHEAD_MB,
        }
    }
}

/// Whether only a VM runs this image's actions (whatever the network mode): `wasm:0.1`'s.
pub fn requires_vm(image: &str) -> bool {
    guest_kind(image) == Some(WASM_KIND)
}

/// The guest kind of a runtime image, i.e. which `root-<kind>.ext4` of
/// `runtimes/vm/build-guest.sh` runs it: by the image's repository name, whatever its registry
/// prefix and tag (the root images are built from the same inputs as the images).
pub fn guest_kind(image: &str) -> Option<&'static str> {
    let last = image.rsplit('/').next()?;
    let repo = last.split([':', '@']).next()?;
    match repo {
        "dockerskeleton" => Some("native"),
        "action-nodejs-v18" => Some("nodejs18"),
        "action-python-v3.11" => Some("python311"),
        "action-wasm-v0.1" => Some(WASM_KIND),
        _ => None,
    }
}

/// Where the `cpu` controller lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CgroupLayout {
    /// cgroup v1: the `cpu` hierarchy's root.
    V1(PathBuf),
    /// cgroup v2: the unified hierarchy's root, with `cpu` available.
    V2(PathBuf),
}

impl CgroupLayout {
    fn detect() -> Option<Self> {
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.shares").exists() {
            return Some(Self::V1(v1.to_owned()));
        }
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
        controllers
            .split_whitespace()
            .any(|c| c == "cpu")
            .then(|| Self::V2(v2.to_owned()))
    }

    fn root(&self) -> &Path {
        match self {
            Self::V1(p) | Self::V2(p) => p,
        }
    }
}

/// The cgroup v2 weight of a v1 share (the conversion runc and crun use).
fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Makes a VM's cgroup `<root>/<parent>/<name>` with the action's CPU share and quota (QEMU's
/// pid goes in once it runs).
fn make_cgroup(
    layout: &CgroupLayout,
    parent: &str,
    name: &str,
    shares: u64,
    cpus: Option<f64>,
) -> std::io::Result<()> {
    let parent_dir = layout.root().join(parent);
    let dir = parent_dir.join(name);
    let quota = cpus.map(|c| ((c * 100_000.0).round() as u64).max(1000));
    match layout {
        CgroupLayout::V1(_) => {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("cpu.shares"), shares.to_string())?;
            if let Some(q) = quota {
                std::fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
                std::fs::write(dir.join("cpu.cfs_quota_us"), q.to_string())?;
            }
        }
        CgroupLayout::V2(root) => {
            // The controller must be enabled on every level above the VM's cgroup.
            enable_cpu(&root.join("cgroup.subtree_control"))?;
            std::fs::create_dir_all(&parent_dir)?;
            enable_cpu(&parent_dir.join("cgroup.subtree_control"))?;
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("cpu.weight"), cpu_weight(shares).to_string())?;
            if let Some(q) = quota {
                std::fs::write(dir.join("cpu.max"), format!("{q} 100000"))?;
            }
        }
    }
    Ok(())
}

fn enable_cpu(subtree_control: &Path) -> std::io::Result<()> {
    let now = std::fs::read_to_string(subtree_control)?;
    if now.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    std::fs::write(subtree_control, "+cpu")
}

/// Removes a VM's cgroup (its processes are gone); a missing one is fine. Blocks: a cgroup the
/// kernel still calls busy (the last of QEMU's threads still exiting) is tried again for about
/// 2 s, as the runc backend does.
fn remove_cgroup(dir: &Path) -> Result<(), VmError> {
    rmdir_retrying_busy(
        || std::fs::remove_dir(dir),
        &CGROUP_BUSY_PAUSES,
        std::thread::sleep,
    )
    .map_err(|source| {
        if source.raw_os_error() == Some(nix::libc::EBUSY) {
            VmError::CgroupBusy {
                path: dir.to_owned(),
                holders: cgroup_holders(dir),
            }
        } else {
            VmError::Remove {
                path: dir.to_owned(),
                source,
            }
        }
    })
}

/// The host's TSC frequency in kHz (`cpu MHz` of `/proc/cpuinfo`), which a Linux guest must be
/// told under TCG (`shared/unikernel-notes.md` §1.4).
fn tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    })?;
    Some((mhz * 1000.0).round() as u64)
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len.min(32)))
            .unwrap_or(0),
    )
}

/// What the guest is told on its kernel command line. Of the container's environment only the
/// `__OW_*` variables reach the proxy (guest-init passes no others); the kernel hands unknown
/// `KEY=VALUE` words to init as its environment, and unquotes `KEY="a b"`. A value the command
/// line cannot carry (a `"` or a control character) is left out and its key returned.
fn kernel_cmdline(
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix_len: u8,
    hostname: &str,
    tsc_khz: Option<u64>,
    env: &[String],
) -> (String, Vec<String>) {
    let host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    let mut line = format!(
        "console=ttyS0 quiet panic=-1 root=/dev/vda rootfstype=ext4 ip={ip}::{gateway}:{}:{host}:eth0:off",
        netmask(prefix_len)
    );
    // Under TCG only (`runtimes/vm/README.md`): the TSC calibration against the emulated PIT
    // fails in some boots without the frequency, and the clocksource watchdog, whose jiffies
    // arrive late, would otherwise mark the (invariant, host) TSC unstable.
    if let Some(khz) = tsc_khz {
        line.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    let mut left_out = Vec::new();
    for kv in env {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if !k.starts_with("__OW_") {
            continue;
        }
        let key_ok = k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok || v.chars().any(|c| c == '"' || c.is_control()) {
            left_out.push(k.to_owned());
        } else if v.contains(' ') {
            line.push_str(&format!(" {k}=\"{v}\""));
        } else {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    (line, left_out)
}

/// A value inside a QEMU option list: commas are doubled.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A VM's folder name: its container name, shortened (its start kept, so prefixes still match,
/// plus a hash) when the QMP socket path would not fit.
fn vm_dir_name(run_dir: &Path, name: &str) -> Result<String, VmError> {
    let budget = MAX_SOCKET_PATH
        .checked_sub(run_dir.as_os_str().len() + 2 + QMP_SOCKET.len())
        .filter(|b| *b >= 32)
        .ok_or_else(|| VmError::RunDirTooLong(run_dir.to_owned()))?;
    if name.len() <= budget {
        return Ok(name.to_owned());
    }
    // FNV-1a: stable across runs and builds, unlike `DefaultHasher`.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let keep: String = name.chars().take(budget - 17).collect();
    Ok(format!("{keep}-{hash:016x}"))
}

/// The unikernel's command line (`unikernel/kernel`): its address, the TSC frequency for its
/// clock, and the action's memory limit as its WebAssembly memory limit. The environment
/// reaches the action through `/init` and `/run`, as with any runtime.
fn unikernel_cmdline(
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    prefix_len: u8,
    tsc_khz: Option<u64>,
    memory_mb: u64,
) -> String {
    let mut line = format!(
        "ip={ip}::{gateway}:{}::eth0:off wasm_memory_mb={memory_mb}",
        netmask(prefix_len)
    );
    if let Some(khz) = tsc_khz {
        line.push_str(&format!(" tsc_khz={khz}"));
    }
    line
}

/// QEMU's command line for one VM.
#[allow(clippy::too_many_arguments)]
fn qemu_args(
    config: &VmConfig,
    engine: Engine,
    name: &str,
    memory_mb: u64,
    dir: &Path,
    guest: &Guest,
    tap: &str,
    mac: &str,
    cmdline: &str,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    push("-name");
    push(name);
    // microvm has no HPET or ACPI PM timer: the guest calibrates against the PIT.
    push("-M");
    push("microvm,pit=on,pic=on,rtc=on");
    match engine {
        Engine::Tcg => {
            push("-accel");
            push("tcg");
        }
        Engine::Kvm => {
            push("-accel");
            push("kvm");
            // Without `-arch-capabilities`, QEMU aborts on a PVM `/dev/kvm`, which refuses
            // the MSR (`shared/unikernel-notes.md` §1.4), instead of failing as a boot that
            // `auto` can fall back from.
            push("-cpu");
            push("host,-arch-capabilities");
        }
    }
    push("-m");
    push(&format!("{memory_mb}M"));
    push("-smp");
    push(&config.vcpus.max(1).to_string());
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ] {
        push(s);
    }
    // The console on QEMU's stdout; `signal=off`: a byte from stdin is never a Ctrl-C.
    push("-chardev");
    push("stdio,id=console,signal=off");
    push("-serial");
    push("chardev:console");
    push("-qmp");
    push(&format!(
        "unix:{},server=on,wait=off",
        qemu_escape(&dir.join(QMP_SOCKET))
    ));
    match guest {
        Guest::Linux { root } => {
            push("-drive");
            push(&format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                qemu_escape(root)
            ));
            push("-device");
            push("virtio-blk-device,drive=root");
        }
        // The unikernel ends QEMU through this port on a fatal error, with its own exit code.
        Guest::Unikernel => {
            push("-device");
            push("isa-debug-exit,iobase=0xf4,iosize=0x04");
        }
    }
    push("-netdev");
    push(&format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
    push("-device");
    push(&format!("virtio-net-device,netdev=n0,mac={mac}"));
    push("-append");
    push(cmdline);
    a.push("-pidfile".into());
    a.push(dir.join(PID_FILE).into());
    match guest {
        Guest::Linux { .. } => {
            a.push("-kernel".into());
            a.push(config.kernel.clone().into());
            a.push("-initrd".into());
            a.push(config.initrd.clone().into());
        }
        Guest::Unikernel => {
            a.push("-kernel".into());
            a.push(config.unikernel.clone().into());
        }
    }
    a
}

/// The action's stream of a console line, and the line without its tag; `None` for the
/// kernel's and guest-init's own lines.
fn demux(line: &str) -> Option<(Stream, &str)> {
    if let Some(l) = line.strip_prefix(STDOUT_TAG) {
        Some((Stream::Stdout, l))
    } else {
        line.strip_prefix(STDERR_TAG).map(|l| (Stream::Stderr, l))
    }
}

/// `ip <args>` on the host; its stdout.
async fn ip_cmd(args: &[&str]) -> Result<String, VmError> {
    let command = format!("ip {}", args.join(" "));
    let out = tokio::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| VmError::IpSpawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(VmError::Ip {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The same for blocking contexts (leftover removal runs on a blocking thread).
fn ip_blocking(args: &[&str]) -> Result<(), VmError> {
    let command = format!("ip {}", args.join(" "));
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VmError::IpSpawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmError::Ip {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The arguments that remove the permanent entry of `ip` on `dev`: a flush, which succeeds
/// when there is nothing to remove (`del` would fail, and only its message would say why).
fn neighbour_flush_args<'a>(ip: &'a str, dev: &'a str) -> [&'a str; 8] {
    ["neigh", "flush", "to", ip, "dev", dev, "nud", "permanent"]
}

/// A permanent neighbour entry the factory added for a guest.
#[derive(Clone, Debug)]
struct Neighbour {
    ip: Ipv4Addr,
    dev: String,
}

impl Neighbour {
    /// Removes the entry; a bridge that is gone took its entries with it.
    async fn remove(&self) -> Result<(), VmError> {
        let sysfs = Path::new("/sys/class/net").join(&self.dev);
        if !tokio::fs::try_exists(&sysfs).await.unwrap_or(true) {
            return Ok(());
        }
        let ip_s = self.ip.to_string();
        ip_cmd(&neighbour_flush_args(&ip_s, &self.dev))
            .await
            .map(|_| ())
    }
}

/// The end of a stream, bounded.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: String, max_lines: usize, max_bytes: usize) {
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > max_lines || (self.bytes > max_bytes && self.lines.len() > 1) {
            if let Some(l) = self.lines.pop_front() {
                self.bytes -= l.len();
            }
        }
    }

    fn joined(&self) -> String {
        self.lines.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

/// A running QEMU process: its exit as it is observed by the task that owns the child.
#[derive(Debug)]
struct Vmm {
    pid: u32,
    exit: watch::Receiver<Option<String>>,
    kill: Arc<Notify>,
    stderr: Arc<parking_lot::Mutex<Tail>>,
    console: Arc<parking_lot::Mutex<Tail>>,
    /// The stderr and console readers, done once QEMU's stderr or stdout closed.
    stderr_done: watch::Receiver<bool>,
    console_done: watch::Receiver<bool>,
}

impl Vmm {
    /// Starts `cmd` with its console read into `logs` and its exit watched.
    fn spawn(
        mut cmd: tokio::process::Command,
        qemu: &Path,
        name: &str,
        logs: LineSender,
    ) -> Result<Self, VmError> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmError::Spawn {
                qemu: qemu.to_owned(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let console = Arc::new(parking_lot::Mutex::new(Tail::default()));
        let stderr = Arc::new(parking_lot::Mutex::new(Tail::default()));
        let (console_tx, console_done) = watch::channel(false);
        if let Some(out) = child.stdout.take() {
            let (tail, name) = (console.clone(), name.to_owned());
            tokio::spawn(async move {
                read_console(out, logs, tail, name).await;
                let _ = console_tx.send(true);
            });
        } else {
            let _ = console_tx.send(true);
        }
        let (done_tx, stderr_done) = watch::channel(false);
        if let Some(err) = child.stderr.take() {
            let (tail, name) = (stderr.clone(), name.to_owned());
            tokio::spawn(async move {
                read_lines(err, |l| {
                    tracing::warn!(vm = %name, line = %l, "qemu stderr");
                    tail.lock().push(l, usize::MAX, STDERR_TAIL_BYTES);
                })
                .await;
                let _ = done_tx.send(true);
            });
        } else {
            let _ = done_tx.send(true);
        }
        let (exit_tx, exit) = watch::channel(None);
        let kill = Arc::new(Notify::new());
        let killer = kill.clone();
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    () = killer.notified() => { let _ = child.start_kill(); }
                }
            };
            let _ = exit_tx.send(Some(match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("not known ({e})"),
            }));
        });
        Ok(Self {
            pid,
            exit,
            kill,
            stderr,
            console,
            stderr_done,
            console_done,
        })
    }

    fn exited(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Waits up to `within` for QEMU's exit; its status, if it ended.
    async fn wait(&self, within: Duration) -> Option<String> {
        let mut rx = self.exit.clone();
        match tokio::time::timeout(within, rx.wait_for(Option::is_some)).await {
            Ok(Ok(s)) => s.clone(),
            _ => self.exited(),
        }
    }

    fn kill(&self) {
        self.kill.notify_one();
    }

    /// SIGKILL, then the exit; `false` when the process outlived the bound.
    async fn kill_and_wait(&self) -> bool {
        if self.exited().is_some() {
            return true;
        }
        self.kill();
        self.wait(KILL_TIMEOUT).await.is_some()
    }

    /// The error of a QEMU that ended during boot, with its stderr and console read to their
    /// ends (bounded: a process QEMU left behind could hold them open).
    async fn exited_error(&self, status: String) -> VmError {
        let (mut err, mut out) = (self.stderr_done.clone(), self.console_done.clone());
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = err.wait_for(|d| *d).await;
            let _ = out.wait_for(|d| *d).await;
        })
        .await;
        VmError::Exited {
            status,
            stderr: self.stderr.lock().joined(),
            console: self.console.lock().joined(),
        }
    }
}

/// Reads `stream` a line at a time (without the newline and a trailing `\r`) until it ends.
async fn read_lines(stream: impl tokio::io::AsyncRead + Unpin, mut f: impl FnMut(String)) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_CONSOLE_LINE)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        f(String::from_utf8_lossy(&buf).into_owned());
    }
}

/// The console: the action's tagged lines into its log source, the rest into the diagnostics
/// tail. It keeps reading after the log source's reader is gone: a console nobody drains
/// would stall the guest on its next write.
async fn read_console(
    out: impl tokio::io::AsyncRead + Unpin,
    logs: LineSender,
    tail: Arc<parking_lot::Mutex<Tail>>,
    name: String,
) {
    read_lines(out, |line| match demux(&line) {
        Some((stream, text)) => {
            logs.send(LogLine::now(stream, text.to_owned()));
        }
        None => {
            tracing::debug!(vm = %name, line = %line, "console");
            tail.lock().push(line, CONSOLE_TAIL_LINES, usize::MAX);
        }
    })
    .await;
}

/// Polls the proxy's port with fresh sockets until it accepts, QEMU ends or `deadline` (the end
/// of the boot `timeout`).
async fn wait_ready(
    addr: SocketAddr,
    vmm: &Vmm,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), VmError> {
    loop {
        if let Some(status) = vmm.exited() {
            return Err(vmm.exited_error(status).await);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(VmError::BootTimeout {
                after: timeout,
                console: vmm.console.lock().joined(),
            });
        }
        let attempt = PROBE_CONNECT_TIMEOUT.min(deadline - now);
        if let Ok(Ok(_)) = tokio::time::timeout(attempt, tokio::net::TcpStream::connect(addr)).await
        {
            return Ok(());
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Creates action containers as microVMs on netpool VM slots.
#[derive(Debug)]
pub struct VmFactory {
    netpool: Arc<NetPool>,
    config: VmConfig,
    /// The accelerator every VM runs with (`auto` settled at start).
    engine: Engine,
    /// Under `auto`, when TCG was chosen: why KVM was not.
    kvm_failure: Option<CanaryFailure>,
    tsc_khz: Option<u64>,
    cgroups: Option<CgroupLayout>,
    /// The host device of each of the pool's bridges, by bridge index.
    bridges: parking_lot::Mutex<HashMap<u16, String>>,
}

impl VmFactory {
    /// A factory on `netpool` (a pool of [`netpool::SlotKind::Vm`] slots). Reads the host's TSC
    /// frequency and finds the `cpu` cgroup controller once; under `auto`, boots the canary
    /// and fails when neither accelerator boots it.
    pub async fn new(netpool: Arc<NetPool>, config: VmConfig) -> Result<Self, VmError> {
        let want_cgroup = config.cgroup_parent.is_some();
        let (tsc, cgroups) = tokio::task::spawn_blocking(move || {
            (tsc_khz(), want_cgroup.then(CgroupLayout::detect).flatten())
        })
        .await
        .unwrap_or((None, None));
        if want_cgroup && cgroups.is_none() {
            tracing::warn!("no cpu cgroup controller found: VMs run without their CPU share");
        }
        // A killed invoker's QEMU processes outlive it: they go first, before the canary
        // competes with them for the CPU (and before anything is made under their names).
        let (run_dir, prefix) = (config.run_dir.clone(), config.name_prefix.clone());
        let cgroup_parent = match (&cgroups, &config.cgroup_parent) {
            (Some(l), Some(p)) => Some(l.root().join(p)),
            _ => None,
        };
        let (removed, errors) = tokio::task::spawn_blocking(move || {
            remove_leftovers(&run_dir, cgroup_parent.as_deref(), &prefix)
        })
        .await
        .map_err(VmError::Join)?;
        if !errors.is_empty() {
            return Err(VmError::Leftovers {
                run_dir: config.run_dir.clone(),
                source: Errors(errors),
            });
        }
        if removed > 0 {
            tracing::warn!(
                removed,
                run_dir = %config.run_dir.display(),
                "removed the VMs an earlier run left"
            );
        }
        let setting = config.accelerator;
        let mut factory = Self {
            netpool,
            config,
            engine: Engine::Tcg,
            kvm_failure: None,
            tsc_khz: tsc,
            cgroups,
            bridges: parking_lot::Mutex::new(HashMap::new()),
        };
        let engine = match setting {
            Accelerator::Tcg => Engine::Tcg,
            Accelerator::Kvm => Engine::Kvm,
            Accelerator::Auto => {
                let choice = match choose_accelerator(
                    open_kvm().await,
                    &factory,
                    factory.config.canary_timeout,
                    factory.config.boot_timeout,
                )
                .await
                {
                    Ok(choice) => choice,
                    Err(e) => {
                        factory.remove_empty_dirs().await;
                        return Err(e);
                    }
                };
                match &choice.kvm_failure {
                    Some(why) => tracing::warn!(
                        accelerator = choice.engine.label(),
                        kvm = %openwhisk::errors::chain(why),
                        "VM accelerator auto: KVM ({KVM_DEVICE}) does not boot the canary guest; using TCG"
                    ),
                    None => tracing::info!(
                        accelerator = choice.engine.label(),
                        "VM accelerator auto: KVM boots the canary guest"
                    ),
                }
                factory.kvm_failure = choice.kvm_failure;
                choice.engine
            }
        };
        factory.engine = engine;
        for e in [Engine::Tcg, Engine::Kvm] {
            metrics::gauge!(crate::metrics::VM_ACCELERATOR, "accelerator" => e.label())
                .set(if e == factory.engine { 1.0 } else { 0.0 });
        }
        Ok(factory)
    }

    /// Undoes what a failed start-up made: the canary's teardown removed its own VM folder and
    /// cgroup, which leaves this factory's run folder and the cgroup parent, removed here when
    /// empty (another factory's VMs may share the parent).
    async fn remove_empty_dirs(&self) {
        let run_dir = self.config.run_dir.clone();
        let cgroup_parent = match (&self.cgroups, &self.config.cgroup_parent) {
            (Some(l), Some(p)) => Some(l.root().join(p)),
            _ => None,
        };
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir(&run_dir);
            if let Some(parent) = cgroup_parent {
                let _ = std::fs::remove_dir(parent);
            }
        })
        .await;
    }

    /// The accelerator the VMs run with.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Under `auto`, when it chose TCG: why KVM was not chosen.
    pub fn kvm_failure(&self) -> Option<&CanaryFailure> {
        self.kvm_failure.as_ref()
    }

    /// The host device that reaches the slot at `ip` on bridge `bridge` (the bridge itself),
    /// looked up once per bridge.
    async fn bridge_of(&self, bridge: u16, ip: Ipv4Addr) -> Result<String, VmError> {
        if let Some(dev) = self.bridges.lock().get(&bridge) {
            return Ok(dev.clone());
        }
        let ip_s = ip.to_string();
        let route = ip_cmd(&["-o", "route", "get", &ip_s]).await?;
        let dev = route
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .ok_or_else(|| VmError::Ip {
                command: format!("ip -o route get {ip_s}"),
                stderr: format!("no device in {route:?}"),
            })?
            .to_owned();
        self.bridges.lock().insert(bridge, dev.clone());
        Ok(dev)
    }

    /// Checks that the guest's files are readable, so that a missing one is a clear error
    /// rather than QEMU's.
    async fn check_guest(&self, guest: &Guest) -> Result<(), VmError> {
        let files = match guest {
            Guest::Linux { root } => vec![
                ("kernel", self.config.kernel.clone()),
                ("initramfs", self.config.initrd.clone()),
                ("root image", root.clone()),
            ],
            Guest::Unikernel => vec![("unikernel", self.config.unikernel.clone())],
        };
        tokio::task::spawn_blocking(move || {
            for (what, path) in files {
                if let Err(source) = std::fs::File::open(&path) {
                    return Err(VmError::GuestFile { what, path, source });
                }
            }
            Ok(())
        })
        .await
        .map_err(VmError::Join)?
    }

    /// Everything after the lease: folder, cgroup, neighbour, QEMU, QMP, readiness. What was
    /// set up is recorded in `vm` as it is made, for [`VmParts::teardown`] when this fails.
    #[allow(clippy::too_many_arguments)]
    async fn boot(
        &self,
        spec: &ContainerSpec,
        guest: &Guest,
        engine: Engine,
        boot_timeout: Duration,
        vm: &mut VmParts,
        logs: LineSender,
    ) -> Result<(), VmError> {
        let started = Instant::now();
        let (slot, ip, gateway, prefix_len, mac, tap) = {
            let lease = vm
                .lease
                .get_mut()
                .as_ref()
                .ok_or_else(|| VmError::NotVmSlot { slot: "?".into() })?;
            let tap = lease.tap_name().ok_or_else(|| VmError::NotVmSlot {
                slot: lease.id().to_string(),
            })?;
            (
                lease.id(),
                lease.ip(),
                lease.gateway(),
                lease.prefix_len(),
                lease.mac_string(),
                tap.to_owned(),
            )
        };

        let dir = vm.dir.clone();
        vm.dir_made = true;
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|source| VmError::RunDir { path: dir, source })
        })
        .await
        .map_err(VmError::Join)??;

        if let (Some(layout), Some(parent)) = (&self.cgroups, &self.config.cgroup_parent) {
            let path = layout.root().join(parent).join(&spec.name);
            // Recorded first: a half-made cgroup is removed with the rest.
            vm.cgroup = Some(path.clone());
            let (layout, parent, name) = (layout.clone(), parent.clone(), spec.name.clone());
            let (shares, cpus) = (spec.cpu_shares, spec.cpus);
            tokio::task::spawn_blocking(move || {
                make_cgroup(&layout, &parent, &name, shares, cpus)
                    .map_err(|source| VmError::Cgroup { path, source })
            })
            .await
            .map_err(VmError::Join)??;
        }

        let dev = self.bridge_of(slot.bridge, ip).await?;
        let ip_s = ip.to_string();
        ip_cmd(&[
            "neigh",
            "replace",
            &ip_s,
            "lladdr",
            &mac,
            "dev",
            &dev,
            "nud",
            "permanent",
        ])
        .await?;
        vm.neighbour = Some(Neighbour {
            ip,
            dev: dev.clone(),
        });
        // For `remove_all` after a crash.
        let record = vm.dir.join(NEIGHBOUR_FILE);
        let line = format!("{ip} {dev}\n");
        tokio::task::spawn_blocking(move || {
            std::fs::write(&record, line).map_err(|source| VmError::RunDir {
                path: record,
                source,
            })
        })
        .await
        .map_err(VmError::Join)??;

        let tsc = match engine {
            Engine::Tcg => self.tsc_khz,
            Engine::Kvm => None,
        };
        let cmdline = match guest {
            Guest::Linux { .. } => {
                let (cmdline, left_out) =
                    kernel_cmdline(ip, gateway, prefix_len, &spec.name, tsc, &spec.env);
                if !left_out.is_empty() {
                    tracing::warn!(vm = %spec.name, keys = ?left_out, "environment variables the kernel command line cannot carry are left out");
                }
                cmdline
            }
            Guest::Unikernel => {
                unikernel_cmdline(ip, gateway, prefix_len, self.tsc_khz, spec.memory_mb)
            }
        };
        let args = qemu_args(
            &self.config,
            engine,
            &spec.name,
            guest.memory_mb(spec.memory_mb),
            &vm.dir,
            guest,
            &tap,
            &mac,
            &cmdline,
        );
        let mut cmd = std::process::Command::new(&self.config.qemu);
        cmd.args(&args);
        let spawned_at = Instant::now();
        let spawned = {
            let lease = vm
                .lease
                .get_mut()
                .as_ref()
                .ok_or_else(|| VmError::NotVmSlot { slot: "?".into() })?;
            lease.enter_on_exec(&mut cmd);
            // Fork and exec (the setns runs in the child) while the lease that owns the
            // namespace fd is alive.
            Vmm::spawn(
                tokio::process::Command::from(cmd),
                &self.config.qemu,
                &spec.name,
                logs,
            )
        };
        let vmm: &Vmm = vm.vmm.insert(spawned?);
        let pid = vmm.pid;

        if let Some(cg) = vm.cgroup.clone() {
            // All of QEMU's threads move with its pid; it has run for a moment outside, before
            // the guest started.
            let procs = cg.join("cgroup.procs");
            tokio::task::spawn_blocking(move || {
                std::fs::write(&procs, pid.to_string())
                    .map_err(|source| VmError::Cgroup { path: cg, source })
            })
            .await
            .map_err(VmError::Join)??;
        }

        let deadline = started + boot_timeout;
        let socket = vm.dir.join(QMP_SOCKET);
        let connected = tokio::select! {
            // Within the boot's bound: with many VMs starting on a busy host QEMU may take
            // longer than one exchange's bound to answer its first.
            q = Qmp::connect_within(
                &socket,
                boot_timeout.saturating_sub(started.elapsed()).max(self.config.qmp_timeout),
                self.config.qmp_timeout,
            ) => q,
            status = vmm.wait(boot_timeout) => {
                return Err(match status {
                    Some(s) => vmm.exited_error(s).await,
                    None => VmError::BootTimeout {
                        after: boot_timeout,
                        console: vmm.console.lock().joined(),
                    },
                });
            }
        };
        match connected {
            Ok(q) => *vm.qmp.get_mut() = Some(q),
            Err(e) => {
                // A QEMU that fails at start-up (a corrupt kernel, say) closes the socket on
                // its way out: its exit says more than the socket.
                if let Some(s) = vmm.wait(Duration::from_secs(1)).await {
                    return Err(vmm.exited_error(s).await);
                }
                return Err(e.into());
            }
        }

        let addr = SocketAddr::new(ip.into(), PROXY_PORT);
        wait_ready(addr, vmm, deadline, boot_timeout).await?;
        metrics::histogram!(crate::metrics::VM_BOOT_SECONDS)
            .record(spawned_at.elapsed().as_secs_f64());
        tracing::info!(vm = %spec.name, %ip, %slot, pid, accelerator = engine.label(), boot_ms = started.elapsed().as_millis() as u64, "microVM ready");
        Ok(())
    }

    /// Leases a slot and boots the guest of `kind` on it with `engine`; on failure, everything
    /// is undone (the slot released without waiting for its scrub). Each boot is counted by
    /// its outcome.
    async fn start(
        &self,
        spec: &ContainerSpec,
        kind: &str,
        engine: Engine,
        boot_timeout: Duration,
    ) -> Result<VmContainer, VmError> {
        let guest = Guest::of_kind(&self.config, kind);
        self.check_guest(&guest).await?;
        let dir = self
            .config
            .run_dir
            .join(vm_dir_name(&self.config.run_dir, &spec.name)?);
        let lease = self.netpool.lease().await.map_err(VmError::Lease)?;
        let addr = SocketAddr::new(lease.ip().into(), PROXY_PORT);
        let mut vm = VmParts {
            name: spec.name.clone(),
            dir,
            dir_made: false,
            cgroup: None,
            neighbour: None,
            vmm: None,
            qmp: tokio::sync::Mutex::new(None),
            lease: parking_lot::Mutex::new(Some(lease)),
            qmp_timeout: self.config.qmp_timeout,
            quit_timeout: self.config.quit_timeout,
        };
        let (tx, rx) = logs::channel(logs::CHANNEL_CAPACITY);
        if let Err(e) = self
            .boot(spec, &guest, engine, boot_timeout, &mut vm, tx)
            .await
        {
            metrics::counter!(crate::metrics::VM_BOOTS_TOTAL, "outcome" => boot_outcome(&e))
                .increment(1);
            tracing::warn!(vm = %spec.name, error = %openwhisk::errors::chain(&e), "microVM did not boot");
            let errors = vm.teardown(false, false).await;
            for t in &errors {
                tracing::warn!(vm = %spec.name, error = %openwhisk::errors::chain(t.as_ref()), "cleaning up after a failed boot");
            }
            return Err(e);
        }
        metrics::counter!(crate::metrics::VM_BOOTS_TOTAL, "outcome" => "ready").increment(1);
        Ok(VmContainer {
            id: spec.name.clone(),
            addr,
            logs: Logs::new(rx),
            vm,
        })
    }
}

/// The real canary: the native guest on a slot of the factory's pool, destroyed at once.
#[async_trait::async_trait]
impl Canary for VmFactory {
    async fn boot(&self, engine: Engine, timeout: Duration) -> Result<(), VmError> {
        let spec = ContainerSpec {
            name: self.config.canary_name(),
            image: super::ImageRef::local("openwhisk/dockerskeleton"),
            memory_mb: CANARY_MEMORY_MB,
            cpu_shares: 1024,
            cpus: None,
            env: Vec::new(),
            sandbox: super::Sandbox::Mode,
        };
        let c = self.start(&spec, "native", engine, timeout).await?;
        // The canary booted, so the choice stands whatever its teardown reports; what a
        // failed teardown left is `remove_all`'s to find (the name carries the prefix).
        for e in c.vm.teardown(true, true).await {
            tracing::warn!(vm = %spec.name, error = %openwhisk::errors::chain(e.as_ref()), "removing the canary VM");
        }
        Ok(())
    }
}

/// What one VM holds, set up step by step; [`VmParts::teardown`] undoes whatever is there.
#[derive(Debug)]
struct VmParts {
    name: String,
    dir: PathBuf,
    dir_made: bool,
    cgroup: Option<PathBuf>,
    neighbour: Option<Neighbour>,
    vmm: Option<Vmm>,
    qmp: tokio::sync::Mutex<Option<Qmp>>,
    lease: parking_lot::Mutex<Option<Lease>>,
    qmp_timeout: Duration,
    quit_timeout: Duration,
}

impl VmParts {
    /// Stops QEMU (`quit` first when `graceful`, SIGKILL after the bound or at once) and
    /// removes the rest. The slot is released when QEMU is known to be gone (the scrub decides
    /// whether it is reused) and dropped otherwise (tainted: netpool destroys it). Keeps going
    /// past every failure and reports all of them.
    async fn teardown(&self, graceful: bool, wait_for_scrub: bool) -> Vec<BoxError> {
        let mut errors: Vec<BoxError> = Vec::new();
        let mut gone = true;
        if let Some(vmm) = &self.vmm {
            if graceful && vmm.exited().is_none() {
                let quit = async {
                    let mut qmp = self.qmp.lock().await;
                    // An earlier exchange that broke dropped the connection: make it again.
                    if qmp.is_none() {
                        *qmp =
                            Some(Qmp::connect(&self.dir.join(QMP_SOCKET), self.qmp_timeout).await?);
                    }
                    match qmp.as_mut() {
                        Some(q) => q.quit().await,
                        None => Ok(()),
                    }
                }
                .await;
                if let Err(e) = quit {
                    tracing::warn!(vm = %self.name, error = %openwhisk::errors::chain(&e), "QMP quit failed; killing QEMU");
                } else if vmm.wait(self.quit_timeout).await.is_none() {
                    tracing::warn!(vm = %self.name, "QEMU did not quit in time; killing it");
                }
            }
            if !vmm.kill_and_wait().await {
                gone = false;
                errors.push(Box::new(VmError::Unkillable {
                    pid: vmm.pid,
                    after: KILL_TIMEOUT,
                }));
            }
        }
        *self.qmp.lock().await = None;
        let lease = self.lease.lock().take();
        if !gone {
            // QEMU still holds the TAP: the slot's state is unknown, and the folder stays for
            // the next `remove_all`.
            drop(lease);
            return errors;
        }
        if let Some(n) = &self.neighbour
            && let Err(e) = n.remove().await
        {
            errors.push(Box::new(e));
        }
        let (cgroup, dir, dir_made) = (self.cgroup.clone(), self.dir.clone(), self.dir_made);
        let removed = tokio::task::spawn_blocking(move || {
            let mut errors: Vec<BoxError> = Vec::new();
            if let Some(cg) = cgroup
                && let Err(e) = remove_cgroup(&cg)
            {
                errors.push(Box::new(e));
            }
            if dir_made
                && let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                errors.push(Box::new(VmError::Remove {
                    path: dir,
                    source: e,
                }));
            }
            errors
        })
        .await;
        match removed {
            Ok(e) => errors.extend(e),
            Err(e) => errors.push(Box::new(VmError::Join(e))),
        }
        if let Some(lease) = lease {
            if wait_for_scrub {
                let verdict = lease.release().await;
                tracing::debug!(vm = %self.name, ?verdict, "VM slot released");
            } else {
                lease.release_nowait();
            }
        }
        errors
    }
}

impl Drop for VmParts {
    /// A VM dropped without its teardown (a panic, a lost container) must not keep running:
    /// QEMU is killed by the task that owns it. Its folder and cgroup wait for `remove_all`,
    /// and the dropped lease marks the slot tainted.
    fn drop(&mut self) {
        if let Some(vmm) = &self.vmm
            && vmm.exited().is_none()
        {
            vmm.kill();
        }
    }
}

#[async_trait::async_trait]
impl ContainerFactory for VmFactory {
    async fn create(&self, spec: &ContainerSpec) -> Result<Box<dyn Container>, CreateError> {
        let Some(kind) = guest_kind(&spec.image.name) else {
            return Err(CreateError::NoExecutable {
                image: spec.image.name.clone(),
                source: Some(Box::new(VmError::UnknownImage {
                    image: spec.image.name.clone(),
                })),
            });
        };
        let c = self
            .start(spec, kind, self.engine, self.config.boot_timeout)
            .await
            .map_err(CreateError::provision)?;
        Ok(Box::new(c))
    }

    async fn remove_all(&self, prefix: &str) -> Result<usize, BackendError> {
        let run_dir = self.config.run_dir.clone();
        let cgroup_parent = match (&self.cgroups, &self.config.cgroup_parent) {
            (Some(l), Some(p)) => Some(l.root().join(p)),
            _ => None,
        };
        let owned = prefix.to_owned();
        let (removed, errors) = tokio::task::spawn_blocking(move || {
            remove_leftovers(&run_dir, cgroup_parent.as_deref(), &owned)
        })
        .await
        .unwrap_or_else(|e| (0, vec![Box::new(VmError::Join(e)) as BoxError]));
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

/// QEMU processes whose `-pidfile` lies in a VM folder under `run_dir` whose name starts with
/// `prefix`: `(pid, folder name)`.
fn leftover_processes(run_dir: &Path, prefix: &str) -> std::io::Result<Vec<(i32, String)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let Some(at) = args.iter().position(|a| *a == b"-pidfile") else {
            continue;
        };
        let Some(pidfile) = args.get(at + 1) else {
            continue;
        };
        let pidfile = Path::new(std::ffi::OsStr::from_bytes(pidfile));
        let Some(dir) = pidfile.parent() else {
            continue;
        };
        if dir.parent() != Some(run_dir) {
            continue;
        }
        if let Some(name) = dir.file_name().and_then(|n| n.to_str())
            && name.starts_with(prefix)
        {
            found.push((pid, name.to_owned()));
        }
    }
    Ok(found)
}

/// Whether `/proc/<pid>` is gone or a zombie (dead, waiting for its parent to reap it).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name's closing parenthesis. A zombie leader is not
        // enough: QEMU's other threads may still be exiting (and still count in its cgroup)
        // until only the leader is listed under `task`.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_none_or(|state| state == "Z" || state == "X")
                && std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map_or(true, |tasks| tasks.count() <= 1)
        }
    }
}

/// Kills this factory's QEMU processes with `prefix`, removes their folders, neighbour entries
/// and cgroups; keeps going past failures. How many VMs there were, and every error.
fn remove_leftovers(
    run_dir: &Path,
    cgroup_parent: Option<&Path>,
    prefix: &str,
) -> (usize, Vec<BoxError>) {
    let mut errors: Vec<BoxError> = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    match leftover_processes(run_dir, prefix) {
        Ok(procs) => {
            for (pid, name) in &procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                names.insert(name.clone());
            }
            let deadline = std::time::Instant::now() + KILL_TIMEOUT;
            for (pid, _) in &procs {
                while !process_gone(*pid) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !process_gone(*pid) {
                    errors.push(Box::new(VmError::Unkillable {
                        pid: u32::try_from(*pid).unwrap_or(0),
                        after: KILL_TIMEOUT,
                    }));
                }
            }
        }
        Err(e) => errors.push(Box::new(VmError::Proc(e))),
    }
    if errors.is_empty()
        && let Ok(entries) = std::fs::read_dir(run_dir)
    {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(prefix) {
                continue;
            }
            names.insert(name);
            let path = e.path();
            if let Ok(record) = std::fs::read_to_string(path.join(NEIGHBOUR_FILE))
                && let Some((ip, dev)) = record.trim().split_once(' ')
                && Path::new("/sys/class/net").join(dev).exists()
                && let Err(e) = ip_blocking(&neighbour_flush_args(ip, dev))
            {
                errors.push(Box::new(e));
            }
            if let Err(source) = std::fs::remove_dir_all(&path) {
                errors.push(Box::new(VmError::Remove { path, source }));
            }
        }
    }
    if let Some(parent) = cgroup_parent
        && let Ok(entries) = std::fs::read_dir(parent)
    {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && e.file_name().to_string_lossy().starts_with(prefix)
                && let Err(err) = remove_cgroup(&e.path())
            {
                errors.push(Box::new(err));
            }
        }
        // Kept while another factory's VMs are in it (the kernel refuses a non-empty cgroup).
        let _ = std::fs::remove_dir(parent);
    }
    if errors.is_empty() {
        let _ = std::fs::remove_dir(run_dir);
    }
    (names.len(), errors)
}

#[derive(Debug)]
struct VmContainer {
    id: String,
    addr: SocketAddr,
    logs: Logs,
    vm: VmParts,
}

impl VmContainer {
    /// One QMP command, on the VM's connection (made again if an earlier exchange broke it).
    /// A failed exchange drops the connection: its state is unknown.
    async fn qmp(&self, action: &'static str, command: &str) -> Result<(), BackendError> {
        let err = |e: VmError| BackendError {
            action,
            id: self.id.clone(),
            source: Box::new(e),
        };
        let mut guard = self.vm.qmp.lock().await;
        if guard.is_none() {
            let q = Qmp::connect(&self.vm.dir.join(QMP_SOCKET), self.vm.qmp_timeout)
                .await
                .map_err(|e| err(e.into()))?;
            *guard = Some(q);
        }
        let Some(q) = guard.as_mut() else {
            return Ok(());
        };
        match q.execute(command).await {
            Ok(_) => Ok(()),
            Err(e) => {
                *guard = None;
                Err(err(e.into()))
            }
        }
    }
}

#[async_trait::async_trait]
impl Container for VmContainer {
    fn id(&self) -> &str {
        &self.id
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn logs(&self) -> Option<&Logs> {
        Some(&self.logs)
    }

    /// QEMU's exit: the guest's connections die without a FIN or RST, so a request in
    /// flight would wait out its time limit.
    async fn ended(&self) {
        match &self.vm.vmm {
            Some(vmm) => {
                let mut exit = vmm.exit.clone();
                if exit.wait_for(Option::is_some).await.is_err() {
                    // The watcher is gone without a status: the process is not watched any more.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// Stops the vCPUs; the guest's memory and connections stay as they are.
    async fn pause(&self) -> Result<(), BackendError> {
        self.qmp("pause", "stop").await
    }

    async fn resume(&self) -> Result<(), BackendError> {
        self.qmp("resume", "cont").await
    }

    /// Always false: the guest's kernel handles its own memory pressure (it kills a process
    /// inside the guest, which the proxy reports as the action's failure), and QEMU's `-m` is
    /// a fixed size, so the host never OOM-kills the guest for the action's use. The guest's
    /// console is quiet after boot (only emergencies), so its OOM messages cannot be read
    /// there either.
    async fn oom_killed(&self) -> bool {
        false
    }

    async fn destroy(&self) -> Result<(), BackendError> {
        let errors = self.vm.teardown(true, true).await;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BackendError {
                action: "remove",
                id: self.id.clone(),
                source: Box::new(Errors(errors)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            qemu: "qemu-system-x86_64".into(),
            accelerator: Accelerator::Tcg,
            kernel: "/g/vmlinux".into(),
            initrd: "/g/initrd.img".into(),
            root_images: "/g".into(),
            unikernel: "/g/wasm-unikernel".into(),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            qmp_timeout: DEFAULT_QMP_TIMEOUT,
            quit_timeout: DEFAULT_QUIT_TIMEOUT,
            run_dir: "/run/wsk-vm/wskinv0".into(),
            cgroup_parent: Some("wsk-vm".into()),
            vcpus: 1,
            name_prefix: "wskinv0_".into(),
            canary_timeout: DEFAULT_CANARY_TIMEOUT,
        }
    }

    /// A canary whose boots answer as told, recording what was asked.
    struct FakeCanary {
        kvm: fn() -> Result<(), VmError>,
        tcg: fn() -> Result<(), VmError>,
        asked: parking_lot::Mutex<Vec<(Engine, Duration)>>,
    }

    impl FakeCanary {
        fn new(kvm: fn() -> Result<(), VmError>, tcg: fn() -> Result<(), VmError>) -> Self {
            Self {
                kvm,
                tcg,
                asked: parking_lot::Mutex::new(Vec::new()),
            }
        }
    }

    #[async_trait::async_trait]
    impl Canary for FakeCanary {
        async fn boot(&self, engine: Engine, timeout: Duration) -> Result<(), VmError> {
            self.asked.lock().push((engine, timeout));
            match engine {
                Engine::Kvm => (self.kvm)(),
                Engine::Tcg => (self.tcg)(),
            }
        }
    }

    fn ready() -> Result<(), VmError> {
        Ok(())
    }

    fn hangs() -> Result<(), VmError> {
        Err(VmError::BootTimeout {
            after: Duration::from_secs(10),
            console: String::new(),
        })
    }

    fn exits() -> Result<(), VmError> {
        Err(VmError::Exited {
            status: "exit status: 1".into(),
            stderr: "qemu: no kernel".into(),
            console: String::new(),
        })
    }

    const KVM_T: Duration = Duration::from_secs(10);
    const TCG_T: Duration = Duration::from_secs(60);

    /// KVM boots: it is chosen, and TCG is never tried.
    #[tokio::test]
    async fn auto_takes_kvm_when_it_boots() {
        let c = FakeCanary::new(ready, exits);
        let choice = choose_accelerator(Ok(()), &c, KVM_T, TCG_T).await.unwrap();
        assert_eq!(choice.engine, Engine::Kvm);
        assert!(choice.kvm_failure.is_none());
        assert_eq!(*c.asked.lock(), [(Engine::Kvm, KVM_T)]);
    }

    /// KVM's canary hangs (the PVM case): TCG, with the hang as the reason.
    #[tokio::test]
    async fn auto_falls_back_to_tcg_when_kvm_does_not_boot() {
        let c = FakeCanary::new(hangs, ready);
        let choice = choose_accelerator(Ok(()), &c, KVM_T, TCG_T).await.unwrap();
        assert_eq!(choice.engine, Engine::Tcg);
        match &choice.kvm_failure {
            Some(f @ CanaryFailure::Boot(VmError::BootTimeout { .. })) => {
                assert_eq!(f.outcome(), "timeout")
            }
            other => panic!("expected KVM's boot timeout, got {other:?}"),
        }
        assert_eq!(
            *c.asked.lock(),
            [(Engine::Kvm, KVM_T), (Engine::Tcg, TCG_T)]
        );
    }

    /// `/dev/kvm` does not open: no KVM boot is tried at all.
    #[tokio::test]
    async fn auto_skips_kvm_when_the_device_does_not_open() {
        let c = FakeCanary::new(ready, ready);
        let no_device = std::io::Error::from(std::io::ErrorKind::NotFound);
        let choice = choose_accelerator(Err(no_device), &c, KVM_T, TCG_T)
            .await
            .unwrap();
        assert_eq!(choice.engine, Engine::Tcg);
        let why = choice.kvm_failure.expect("a reason");
        assert!(matches!(why, CanaryFailure::NoDevice(_)), "{why:?}");
        assert_eq!(why.outcome(), "unavailable");
        assert!(why.to_string().contains("/dev/kvm"), "{why}");
        assert_eq!(*c.asked.lock(), [(Engine::Tcg, TCG_T)]);
    }

    /// Neither boots: the typed error carries both failures, and its message names both.
    #[tokio::test]
    async fn auto_fails_naming_both_failures_when_neither_boots() {
        let c = FakeCanary::new(hangs, exits);
        match choose_accelerator(Ok(()), &c, KVM_T, TCG_T).await {
            Err(e @ VmError::NoAccelerator { .. }) => {
                let text = e.to_string();
                let VmError::NoAccelerator { kvm, tcg } = e else {
                    unreachable!()
                };
                assert!(matches!(
                    *kvm,
                    CanaryFailure::Boot(VmError::BootTimeout { .. })
                ));
                assert!(matches!(*tcg, CanaryFailure::Boot(VmError::Exited { .. })));
                assert!(text.contains("not ready within 10s"), "{text}");
                assert!(text.contains("qemu: no kernel"), "{text}");
            }
            other => panic!("expected NoAccelerator, got {other:?}"),
        }
    }

    #[test]
    fn runtime_images_map_to_guest_kinds() {
        assert_eq!(
            guest_kind("openwhisk/dockerskeleton:nightly"),
            Some("native")
        );
        assert_eq!(
            guest_kind("registry:5000/openwhisk/action-nodejs-v18:nightly"),
            Some("nodejs18")
        );
        assert_eq!(
            guest_kind("openwhisk/action-python-v3.11"),
            Some("python311")
        );
        assert_eq!(
            guest_kind("openwhisk/action-python-v3.11@sha256:ab"),
            Some("python311")
        );
        assert_eq!(guest_kind("someone/custom:latest"), None);
        assert_eq!(guest_kind(""), None);
    }

    #[test]
    fn netmasks_follow_the_prefix() {
        assert_eq!(netmask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(netmask(22), Ipv4Addr::new(255, 255, 252, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
    }

    /// The guest gets its address, gateway and mask in guest-init's `ip=` syntax, the TSC
    /// frequency under TCG, and the `__OW_*` variables as init's environment; what the command
    /// line cannot carry is named, never sent half.
    #[test]
    fn the_kernel_command_line_carries_address_and_environment() {
        let env = [
            "__OW_API_HOST=http://10.0.0.1:3233".to_owned(),
            "__OW_NOTE=two words".to_owned(),
            "__OW_BAD=say \"hi\"".to_owned(),
            "OTHER=x".to_owned(),
        ];
        let (line, left_out) = kernel_cmdline(
            Ipv4Addr::new(10, 213, 0, 2),
            Ipv4Addr::new(10, 213, 0, 1),
            22,
            "wskvb0_1_guest:bad",
            Some(2_599_998),
            &env,
        );
        assert_eq!(
            line,
            "console=ttyS0 quiet panic=-1 root=/dev/vda rootfstype=ext4 \
             ip=10.213.0.2::10.213.0.1:255.255.252.0:wskvb0_1_guestbad:eth0:off \
             tsc_early_khz=2599998 tsc=reliable __OW_API_HOST=http://10.0.0.1:3233 __OW_NOTE=\"two words\""
        );
        assert_eq!(left_out, ["__OW_BAD"]);
        let (line, _) = kernel_cmdline(
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 1),
            24,
            "h",
            None,
            &[],
        );
        assert!(!line.contains("tsc_early_khz"), "{line}");
    }

    /// QEMU's arguments as strings.
    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Every value given to `flag`.
    fn values_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn qemu_gets_the_slot_s_tap_mac_and_the_action_s_memory() {
        let c = config();
        let args = qemu_args(
            &c,
            Engine::Tcg,
            "wskinv0_1_guest_x",
            256,
            Path::new("/run/wsk-vm/wskinv0/wskinv0_1_guest_x"),
            &Guest::Linux {
                root: "/g/root,native.ext4".into(),
            },
            "tap0",
            "02:aa:00:00:00:02",
            "console=ttyS0",
        );
        let args = strings(&args);
        let after = |flag: &str| values_after(&args, flag);
        assert_eq!(after("-m"), ["256M"]);
        assert_eq!(after("-accel"), ["tcg"]);
        assert_eq!(after("-name"), ["wskinv0_1_guest_x"]);
        assert_eq!(
            after("-netdev"),
            ["tap,id=n0,ifname=tap0,script=no,downscript=no"]
        );
        assert!(after("-device").contains(&"virtio-net-device,netdev=n0,mac=02:aa:00:00:00:02"));
        assert_eq!(
            after("-qmp"),
            ["unix:/run/wsk-vm/wskinv0/wskinv0_1_guest_x/qmp,server=on,wait=off"]
        );
        assert_eq!(
            after("-pidfile"),
            ["/run/wsk-vm/wskinv0/wskinv0_1_guest_x/qemu.pid"]
        );
        // A comma in a path inside an option list is doubled.
        assert_eq!(
            after("-drive"),
            ["id=root,file=/g/root,,native.ext4,format=raw,if=none,readonly=on"]
        );
        assert_eq!(after("-kernel"), ["/g/vmlinux"]);
        let args = qemu_args(
            &c,
            Engine::Kvm,
            "n",
            128,
            Path::new("/d"),
            &Guest::Linux { root: "/r".into() },
            "tap0",
            "m",
            "",
        );
        let args = strings(&args);
        assert!(args.windows(2).any(|w| w == ["-accel", "kvm"]));
        assert!(
            args.windows(2)
                .any(|w| w == ["-cpu", "host,-arch-capabilities"])
        );
    }

    /// A `wasm:0.1` VM boots the unikernel alone (no disk, no initramfs), with the debug-exit
    /// port it reports faults through, twice the action's memory plus the overhead, and the limit
    /// on its command line.
    #[test]
    fn the_unikernel_boots_alone_with_its_memory_limit() {
        let c = config();
        let guest = Guest::of_kind(
            &c,
            guest_kind("openwhisk/action-wasm-v0.1:nightly").unwrap(),
        );
        assert_eq!(guest, Guest::Unikernel);
        let line = unikernel_cmdline(
            Ipv4Addr::new(10, 232, 0, 5),
            Ipv4Addr::new(10, 232, 0, 1),
            24,
            Some(2_596_000),
            128,
        );
        assert_eq!(
            line,
            "ip=10.232.0.5::10.232.0.1:255.255.255.0::eth0:off wasm_memory_mb=128 tsc_khz=2596000"
        );
        let args = qemu_args(
            &c,
            Engine::Tcg,
            "n",
            guest.memory_mb(128),
            Path::new("/d"),
            &guest,
            "tap0",
            "m",
            &line,
        );
        let args = strings(&args);
        let after = |flag: &str| values_after(&args, flag);
        assert_eq!(
            after("-m"),
            [format!("{}M", 2 * 128 + UNIKERNEL_OVERHEAD_MB)]
        );
        assert_eq!(after("-kernel"), ["/g/wasm-unikernel"]);
        assert!(after("-initrd").is_empty() && after("-drive").is_empty());
        assert!(after("-device").contains(&"isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert_eq!(after("-append"), [line.as_str()]);
        let linux = Guest::of_kind(&c, "native");
        assert_eq!(
            linux,
            Guest::Linux {
                root: "/g/root-native.ext4".into()
            }
        );
        assert_eq!(linux.memory_mb(128), 128);
    }

    #[test]
    fn console_lines_are_split_by_the_guest_s_tags() {
        assert_eq!(demux("out| hello"), Some((Stream::Stdout, "hello")));
        assert_eq!(demux("err| "), Some((Stream::Stderr, "")));
        assert_eq!(
            demux(logs::SENTINEL).map(|(s, _)| s),
            None,
            "an untagged line is the guest's own"
        );
        assert_eq!(demux("[    1.2] virtio_net"), None);
        assert_eq!(demux("guest-init: started, up 1.30 s"), None);
    }

    /// The console reader splits the streams, passes the sentinels through, keeps the rest as
    /// diagnostics, and goes on draining after the log's reader is gone.
    #[tokio::test]
    async fn the_console_feeds_the_log_source() {
        let (tx, mut rx) = logs::channel(logs::CHANNEL_CAPACITY);
        let tail = Arc::new(parking_lot::Mutex::new(Tail::default()));
        let console = format!(
            "[    0.5] Linux version\r\nguest-init: up 1.2 s\nout| hi\nerr| oops\r\nout| {s}\nerr| {s}\n",
            s = logs::SENTINEL
        );
        read_console(console.as_bytes(), tx, tail.clone(), "vm".into()).await;
        let mut got = Vec::new();
        while let Ok(logs::Next::Line(l)) = logs::LogSource::next(&mut rx, false).await {
            got.push((l.stream, l.text));
        }
        assert_eq!(
            got,
            [
                (Stream::Stdout, "hi".to_owned()),
                (Stream::Stderr, "oops".to_owned()),
                (Stream::Stdout, logs::SENTINEL.to_owned()),
                (Stream::Stderr, logs::SENTINEL.to_owned()),
            ]
        );
        assert_eq!(
            tail.lock().joined(),
            "[    0.5] Linux version | guest-init: up 1.2 s"
        );
        assert_eq!(
            logs::LogSource::next(&mut rx, true).await.unwrap(),
            logs::Next::Closed
        );
        // Nobody reads: the console is drained all the same.
        let (tx, rx) = logs::channel(logs::CHANNEL_CAPACITY);
        drop(rx);
        let long = "out| x\n".repeat(10_000);
        let mut reader = long.as_bytes();
        read_console(&mut reader, tx, tail, "vm".into()).await;
        assert!(reader.is_empty());
    }

    #[test]
    fn tails_are_bounded() {
        let mut t = Tail::default();
        for i in 0..100 {
            t.push(format!("line {i}"), 3, usize::MAX);
        }
        assert_eq!(t.joined(), "line 97 | line 98 | line 99");
        let mut t = Tail::default();
        t.push("a".repeat(10), usize::MAX, 15);
        t.push("b".repeat(10), usize::MAX, 15);
        assert_eq!(t.joined(), "b".repeat(10));
    }

    #[test]
    fn cgroup_weights_follow_runc_s_conversion() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_weight(0), 1);
    }

    /// Long names are shortened so that the QMP socket path fits, keeping their start (a
    /// prefix still finds them) and staying distinct.
    #[test]
    fn vm_folders_fit_a_socket_path() {
        let run = Path::new("/run/wsk-vm/wskinv0");
        assert_eq!(vm_dir_name(run, "wskinv0_1_a").unwrap(), "wskinv0_1_a");
        let long_a = format!("wskinv0_1_guest_{}", "a".repeat(200));
        let long_b = format!("wskinv0_1_guest_{}b", "a".repeat(199));
        let (a, b) = (
            vm_dir_name(run, &long_a).unwrap(),
            vm_dir_name(run, &long_b).unwrap(),
        );
        assert_ne!(a, b);
        for d in [&a, &b] {
            assert!(d.starts_with("wskinv0_1_guest_"));
            let sock = run.join(d).join(QMP_SOCKET);
            assert!(
                sock.as_os_str().len() <= MAX_SOCKET_PATH,
                "{}",
                sock.display()
            );
        }
        assert_eq!(vm_dir_name(run, &long_a).unwrap(), a, "stable");
        let deep = PathBuf::from(format!("/{}", "d".repeat(90)));
        assert!(matches!(
            vm_dir_name(&deep, "x"),
            Err(VmError::RunDirTooLong(_))
        ));
    }

    /// A VMM that ends while the probe waits is `Exited` with its status and all of its
    /// stderr, long before the boot deadline. The VMM is a stand-in shell; nothing listens on
    /// the probed port.
    #[tokio::test]
    async fn a_vmm_that_ends_during_boot_is_exited_with_its_stderr() {
        let (tx, _rx) = logs::channel(logs::CHANNEL_CAPACITY);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg("echo 'guest-init: error: no root; powering off'; echo boom >&2; exit 3");
        let vmm = Vmm::spawn(cmd, Path::new("sh"), "x", tx).unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let timeout = Duration::from_secs(60);
        match wait_ready(addr, &vmm, Instant::now() + timeout, timeout).await {
            Err(VmError::Exited {
                status,
                stderr,
                console,
            }) => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "boom");
                assert_eq!(console, "guest-init: error: no root; powering off");
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    /// A QMP socket that accepts but never answers: pause fails with the typed timeout, and
    /// destroy, whose `quit` gets no answer either, kills the process and removes the VM's
    /// folder. The VMM is a stand-in process (`sleep`), the QMP end a silent listener.
    #[tokio::test]
    async fn an_unanswering_qmp_socket_ends_in_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        let vm_dir = dir.path().join("wskt0_1_guest_q");
        std::fs::create_dir_all(&vm_dir).unwrap();
        let listener = tokio::net::UnixListener::bind(vm_dir.join(QMP_SOCKET)).unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let (tx, _rx) = logs::channel(logs::CHANNEL_CAPACITY);
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("30");
        let vmm = Vmm::spawn(cmd, Path::new("sleep"), "q", tx).unwrap();
        let pid = vmm.pid;
        let c = VmContainer {
            id: "wskt0_1_guest_q".into(),
            addr: "127.0.0.1:8080".parse().unwrap(),
            logs: Logs::new(logs::channel(1).1),
            vm: VmParts {
                name: "wskt0_1_guest_q".into(),
                dir: vm_dir.clone(),
                dir_made: true,
                cgroup: None,
                neighbour: None,
                vmm: Some(vmm),
                qmp: tokio::sync::Mutex::new(None),
                lease: parking_lot::Mutex::new(None),
                qmp_timeout: Duration::from_millis(200),
                quit_timeout: Duration::from_millis(200),
            },
        };
        let e = c.pause().await.expect_err("no answer");
        assert_eq!(e.action, "pause");
        match e.source.downcast_ref::<VmError>() {
            Some(VmError::Qmp(QmpError::Timeout { what, .. })) => assert_eq!(what, "the greeting"),
            other => panic!("expected a QMP timeout, got {other:?}"),
        }
        c.destroy().await.expect("killed and cleaned up");
        assert!(c.vm.vmm.as_ref().unwrap().exited().is_some());
        assert!(process_gone(i32::try_from(pid).unwrap()));
        assert!(!vm_dir.exists());
        silent.abort();
    }

    /// Leftovers are found by the `-pidfile` of QEMU's command line: a process of ours (a
    /// stand-in that sleeps with the same arguments) is killed, its folder removed; folders of
    /// another prefix stay.
    #[tokio::test]
    async fn leftovers_are_found_by_their_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let ours = run.join("wskt0_1_guest_x");
        let theirs = run.join("wskz0_1_guest_y");
        for d in [&ours, &theirs] {
            std::fs::create_dir_all(d).unwrap();
        }
        // A shell running a loop keeps its own argv (it does not exec the loop's commands):
        // `sh -c SCRIPT sh -pidfile <path>` carries QEMU's marker.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("while :; do sleep 0.05; done")
            .arg("sh")
            .arg("-pidfile")
            .arg(ours.join(PID_FILE))
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !leftover_processes(&run, "wskt0_")
            .unwrap()
            .iter()
            .any(|(p, _)| *p == pid)
        {
            assert!(std::time::Instant::now() < deadline, "stand-in not found");
            std::thread::sleep(Duration::from_millis(10));
        }
        let (n, errors) = tokio::task::spawn_blocking({
            let run = run.clone();
            move || remove_leftovers(&run, None, "wskt0_")
        })
        .await
        .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(n, 1);
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not ended by itself");
        assert!(!ours.exists());
        assert!(theirs.exists());
        assert!(
            run.exists(),
            "a folder still holding another prefix's VM stays"
        );
    }
}
