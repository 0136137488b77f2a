//! The conformance suite (`common/mod.rs`) against the Linux microVM guest
//! (`runtimes/vm/README.md`), booted under QEMU with TCG (this machine's `/dev/kvm` cannot run
//! ordinary guests): the proxy in the VM answers through user-mode networking forwarded to a
//! loopback port, and the serial console is the log, demultiplexed by guest-init's tags.
//!
//! Boots take seconds of CPU under TCG, so the VMs run one at a time.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use common::{Backend, Kind, Patience, Sandbox, conformance};

/// The command that builds the guest, named when a piece of it is missing.
const BUILD: &str =
    "runtimes/build.sh (its last step, runtimes/vm/build-guest.sh, builds the guest)";
/// A boot under TCG takes 2–10 s when nothing else runs, longer on a busy machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const PATIENCE: Patience = Patience {
    request: Duration::from_secs(60),
    logs: Duration::from_secs(30),
};
/// The guest's side of QEMU's user-mode network (its fixed 10.0.2.0/24).
const GUEST_IP: &str = "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off";
const STDOUT_TAG: &str = "out| ";
const STDERR_TAG: &str = "err| ";

/// One VM at a time, across the tests of this binary.
static ONE_VM: Mutex<()> = Mutex::const_new(());

/// Where `runtimes/vm/build-guest.sh` puts the guest.
fn guest_dir() -> PathBuf {
    let tools = std::env::var_os("WHISK_TOOLS_DIR").unwrap_or_else(|| "/opt/whisk-tools".into());
    Path::new(&tools).join("vm")
}

fn guest_file(name: &str) -> PathBuf {
    let path = guest_dir().join(name);
    assert!(
        path.is_file(),
        "the guest's {} is missing: build it with {BUILD}",
        path.display()
    );
    path
}

fn root_image(kind: Kind) -> &'static str {
    match kind {
        Kind::Native => "root-native.ext4",
        Kind::Node => "root-nodejs18.ext4",
        Kind::Python => "root-python311.ext4",
    }
}

/// The host's TSC frequency, which the guest must be told under TCG (its own calibration
/// against the emulated PIT fails in some boots; `shared/unikernel-notes.md` §1.4).
fn tsc_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .expect("cpu MHz in /proc/cpuinfo");
    (mhz * 1000.0).round() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The kernel command line the guest needs. Under TCG the kernel's clocksource watchdog,
/// which checks the TSC against jiffies, sees late timer ticks and falls back to jiffies;
/// QEMU's TSC is the host's, so `tsc=reliable` keeps it.
fn kernel_cmdline() -> String {
    format!(
        "console=ttyS0 quiet panic=-1 root=/dev/vda rootfstype=ext4 {GUEST_IP} tsc_early_khz={} tsc=reliable",
        tsc_khz()
    )
}

/// A booted guest; QEMU is killed and its files removed when it is dropped, also when a test
/// fails.
struct Vm {
    qemu: Child,
    dir: tempfile::TempDir,
    port: u16,
    url: String,
    http: reqwest::Client,
    /// Spawn to the proxy's first HTTP answer.
    boot: Duration,
}

impl Vm {
    async fn boot(kind: Kind) -> Self {
        Self::boot_with(kind, "").await
    }

    /// Boots with `extra` appended to the kernel command line.
    async fn boot_with(kind: Kind, extra: &str) -> Self {
        let root = guest_file(root_image(kind));
        let started = Instant::now();
        let mut vm = Self::spawn(&root, extra);
        vm.wait_ready(started).await;
        vm.boot = started.elapsed();
        vm
    }

    /// Starts QEMU on `root` as the root image, without waiting for anything.
    fn spawn(root: &Path, extra_cmdline: &str) -> Self {
        let (kernel, initrd) = (guest_file("vmlinux"), guest_file("initrd.img"));
        let dir = tempfile::tempdir().expect("temp dir");
        let console = dir.path().join("console.log");
        let port = free_port();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-M", "microvm,pit=on,pic=on,rtc=on", "-accel", "tcg"])
            .args(["-m", "256M", "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("{} {extra_cmdline}", kernel_cmdline()))
            .arg("-drive")
            .arg(format!(
                "id=root,file={},format=raw,if=none,readonly=on",
                root.display()
            ))
            .args(["-device", "virtio-blk-device,drive=root"])
            .arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8080"))
            .args(["-device", "virtio-net-device,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("qemu.err")).expect("qemu.err"));
        let qemu = cmd.spawn().unwrap_or_else(|e| {
            panic!("qemu-system-x86_64 ({e}): build the guest with {BUILD}, which installs it")
        });
        Vm {
            qemu,
            dir,
            port,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            boot: Duration::ZERO,
        }
    }

    /// Polls the proxy with fresh sockets and short timeouts until it answers HTTP. QEMU's
    /// user-mode network accepts the host's connection itself, so a connect proves nothing:
    /// only an answer does.
    async fn wait_ready(&mut self, started: Instant) {
        while started.elapsed() < BOOT_TIMEOUT {
            if let Ok(Some(status)) = self.qemu.try_wait() {
                panic!(
                    "QEMU ended ({status}) before the proxy answered\n{}",
                    self.diagnostics()
                );
            }
            if probe(self.port).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the proxy did not answer within {BOOT_TIMEOUT:?}\n{}",
            self.diagnostics()
        );
    }

    fn console(&self) -> String {
        let raw = std::fs::read(self.dir.path().join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&raw).replace('\r', "")
    }

    fn diagnostics(&self) -> String {
        let err = std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default();
        format!(
            "--- console ---\n{}--- qemu stderr ---\n{err}",
            self.console()
        )
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.qemu.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// The guest's uptime, from guest-init's console line that starts with `prefix`.
    fn uptime_at(&self, prefix: &str) -> Option<f64> {
        self.console()
            .lines()
            .find_map(|l| l.strip_prefix(prefix)?.split(' ').next()?.parse().ok())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // QEMU ends at once on SIGKILL; the wait only reaps it.
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

async fn probe(port: u16) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        (&head == b"HTTP/").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(250), attempt).await,
        Ok(Some(()))
    )
}

impl Sandbox for Vm {
    fn url(&self) -> &str {
        &self.url
    }

    fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn patience(&self) -> Patience {
        PATIENCE
    }

    /// The console's tagged lines, split back into the proxy's two streams.
    async fn logs(&self) -> (String, String) {
        let (mut out, mut err) = (String::new(), String::new());
        for line in self.console().lines() {
            if let Some(l) = line.strip_prefix(STDOUT_TAG) {
                let _ = writeln!(out, "{l}");
            } else if let Some(l) = line.strip_prefix(STDERR_TAG) {
                let _ = writeln!(err, "{l}");
            }
        }
        (out, err)
    }

    /// The proxy's exit powers the guest off, which ends QEMU with status 0.
    async fn stopped(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.qemu.try_wait() {
                let console = self.console();
                assert!(
                    status.success()
                        && console.contains("guest-init: action-proxy exited with status"),
                    "QEMU ended ({status}); the guest must say how the proxy ended and power off:\n{console}"
                );
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn remove(self) {}
}

struct VmBackend;

impl Backend for VmBackend {
    type Sandbox = Vm;

    async fn start(&self, kind: Kind) -> Vm {
        let vm = Vm::boot(kind).await;
        println!(
            "{kind:?}: guest booted to the proxy's first answer in {:?}",
            vm.boot
        );
        vm
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_guest_conforms() {
    let _one = ONE_VM.lock().await;
    conformance(&VmBackend, Kind::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodejs_guest_conforms() {
    let _one = ONE_VM.lock().await;
    conformance(&VmBackend, Kind::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_guest_conforms() {
    let _one = ONE_VM.lock().await;
    conformance(&VmBackend, Kind::Python).await;
}

/// The VMM passes the proxy's environment on the kernel command line (unknown `KEY=VALUE`
/// words reach init's environment, and guest-init hands the `__OW_*` ones to the proxy): runs
/// overlap only with `__OW_ALLOW_CONCURRENT=true`, as in `images.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_only_when_the_command_line_allows() {
    let _one = ONE_VM.lock().await;
    for allow in [false, true] {
        let vm = Vm::boot_with(Kind::Node, &format!("__OW_ALLOW_CONCURRENT={allow}")).await;
        assert_eq!(vm.init(Kind::Node.init_value()).await.0, 200);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            vm.run(json!({"value": {"mode": "slow"}})),
            vm.run(json!({"value": {"mode": "slow"}}))
        );
        let took = started.elapsed();
        assert_eq!((a.0, b.0), (200, 200));
        if allow {
            assert!(
                took < Duration::from_millis(6000),
                "allowed runs overlap: {took:?}"
            );
        } else {
            assert!(
                took >= Duration::from_millis(6000),
                "runs must not overlap: {took:?}"
            );
        }
    }
}

/// A root image that is not a file system: guest-init says so on the console and powers the
/// guest off, so QEMU ends by itself (status 0) instead of leaving a VM that never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_root_image_ends_the_guest() {
    let _one = ONE_VM.lock().await;
    let broken = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(broken.path(), vec![0x5a; 4 << 20]).expect("write the broken image");
    let mut vm = Vm::spawn(broken.path(), "");
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let status = loop {
        if let Some(status) = vm.qemu.try_wait().expect("QEMU's status") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU still runs\n{}",
            vm.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let console = vm.console();
    assert!(
        status.success(),
        "QEMU ended with {status}\n{}",
        vm.diagnostics()
    );
    assert!(
        console.contains("guest-init: error: mount /dev/vda (ext4) on /lower")
            && console.contains("; powering off"),
        "{console}"
    );
}

/// The numbers in `runtimes/vm/README.md`: five boots per kind, spawn to the proxy's first
/// answer, the guest's uptime when the kernel started init and when init started the proxy,
/// QEMU's RSS at the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for runtimes/vm/README.md (15 boots, ~30 s of CPU): cargo test -p action-proxy --test vm_guest -- --ignored"]
async fn boot_times() {
    let _one = ONE_VM.lock().await;
    for kind in [Kind::Native, Kind::Node, Kind::Python] {
        let mut rows = Vec::new();
        for _ in 0..5 {
            let vm = Vm::boot(kind).await;
            let init = vm
                .uptime_at("guest-init: started, up ")
                .expect("guest-init's first line");
            let proxy = vm
                .uptime_at("guest-init: up ")
                .expect("guest-init's proxy start line");
            rows.push((vm.boot.as_secs_f64(), init, proxy, vm.rss_kib() / 1024));
        }
        let mut boots: Vec<f64> = rows.iter().map(|r| r.0).collect();
        boots.sort_by(f64::total_cmp);
        println!(
            "{kind:?}: boot to first answer min/median/max {:.2}/{:.2}/{:.2} s; guest uptime at init {:?} s, at proxy start {:?} s; QEMU RSS {:?} MiB",
            boots[0],
            boots[2],
            boots[4],
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            rows.iter().map(|r| r.3).collect::<Vec<_>>()
        );
    }
}
