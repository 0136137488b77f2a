//! `guest-init`: PID 1 of the microVM guest (`runtimes/vm/README.md`).
//!
//! It runs from a small initramfs that holds only itself and the kernel modules the guest
//! needs, and turns the machine into an action container:
//!
//! 1. mounts `/proc`, `/sys` and `/dev`, and opens the serial console;
//! 2. loads the modules listed in `/lib/modules/load-order` (dependency order, written by
//!    `build-guest.sh` from each module's `depends=`);
//! 3. mounts the runtime's read-only root image (`root=`, default `/dev/vda`, ext4) under a
//!    tmpfs overlay, so that the action can write anywhere as in a container, and makes it `/`;
//! 4. configures the NIC from `ip=` on `/proc/cmdline` (the kernel ignores it);
//! 5. runs `/bin/action-proxy` with the image's `/etc/action-proxy.env` (the Dockerfile's `ENV`)
//!    plus every `__OW_*` variable the kernel passed to init (unknown `KEY=VALUE` words of the
//!    command line), its stdout and stderr tagged line by line on the console
//!    (`console.rs`);
//! 6. powers the machine off when the proxy exits, and also when any step fails (after saying
//!    why on the console), so a VMM always sees a broken guest end instead of hang.

mod cmdline;
mod console;
mod sys;

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use parking_lot::Mutex;

use cmdline::BootConfig;
use console::Console;

const MODULE_ORDER: &str = "/lib/modules/load-order";
const NEW_ROOT: &str = "/newroot";
const LOWER: &str = "/lower";
const RW: &str = "/rw";
const PROXY: &str = "/bin/action-proxy";
const PROXY_ENV: &str = "/etc/action-proxy.env";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a device the kernel is still probing may take to appear.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the copiers may take to drain the proxy's pipes after it exited (a background
/// process of the action may hold them open forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    let console = match early_setup() {
        Ok(c) => c,
        Err(e) => {
            // No console of our own: the kernel's (fd 2) is the only place to say it.
            eprintln!("guest-init: {e:#}");
            halt(None);
        }
    };
    say(&console, &format!("started, up {:.2} s", uptime()));
    match boot(&console) {
        Ok(status) => say(&console, &format!("action-proxy {status}; powering off")),
        Err(e) => say(&console, &format!("error: {e:#}; powering off")),
    }
    halt(Some(&console));
}

/// The kernel file systems and the console.
fn early_setup() -> Result<Console> {
    let kernel_fs = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    for (fstype, dir, flags) in [
        ("proc", "/proc", kernel_fs),
        ("sysfs", "/sys", kernel_fs),
        ("devtmpfs", "/dev", libc::MS_NOSUID),
    ] {
        fs::create_dir_all(dir).with_context(|| format!("mkdir {dir}"))?;
        sys::mount(fstype, Path::new(dir), fstype, flags, "")
            .with_context(|| format!("mount {fstype} on {dir}"))?;
    }
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .context("open /dev/console")?;
    sys::raw_output(&tty).context("console output mode")?;
    Ok(Arc::new(Mutex::new(tty)))
}

/// Everything between the console and the proxy's exit; returns how the proxy ended.
fn boot(console: &Console) -> Result<String> {
    let cmdline = fs::read_to_string("/proc/cmdline").context("read /proc/cmdline")?;
    let config = BootConfig::parse(&cmdline)?;
    load_modules()?;
    switch_root(&config)?;
    configure_network(&config)?;
    // From here on only emergencies reach the console, so kernel lines cannot cut into the
    // proxy's tagged lines.
    let _ = fs::write("/proc/sys/kernel/printk", "1");
    say(console, &format!("up {:.2} s, starting {PROXY}", uptime()));
    run_proxy(console)
}

fn load_modules() -> Result<()> {
    let order = fs::read_to_string(MODULE_ORDER).with_context(|| format!("read {MODULE_ORDER}"))?;
    let dir = Path::new(MODULE_ORDER)
        .parent()
        .expect("an absolute path has a parent");
    for name in order.split_whitespace() {
        let path = dir.join(name);
        sys::load_module(&path).with_context(|| format!("load module {}", path.display()))?;
    }
    Ok(())
}

/// Makes `ro root image + tmpfs` the root file system and moves the kernel mounts into it.
fn switch_root(config: &BootConfig) -> Result<()> {
    wait_for(Path::new(&config.root))?;
    for dir in [LOWER, RW, NEW_ROOT] {
        fs::create_dir_all(dir).with_context(|| format!("mkdir {dir}"))?;
    }
    sys::mount(
        &config.root,
        Path::new(LOWER),
        &config.root_fstype,
        libc::MS_RDONLY,
        "",
    )
    .with_context(|| format!("mount {} ({}) on {LOWER}", config.root, config.root_fstype))?;
    sys::mount("tmpfs", Path::new(RW), "tmpfs", 0, "mode=0755")
        .with_context(|| format!("mount tmpfs on {RW}"))?;
    for dir in ["upper", "work"] {
        fs::create_dir(Path::new(RW).join(dir)).with_context(|| format!("mkdir {RW}/{dir}"))?;
    }
    let options = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    sys::mount("overlay", Path::new(NEW_ROOT), "overlay", 0, &options)
        .with_context(|| format!("mount overlay {options} on {NEW_ROOT}"))?;
    // The initramfs stays mounted underneath; its modules are loaded and need no memory.
    let _ = fs::remove_dir_all(Path::new(MODULE_ORDER).parent().expect("has a parent"));
    for dir in ["/proc", "/sys", "/dev"] {
        let target = Path::new(NEW_ROOT).join(&dir[1..]);
        fs::create_dir_all(&target).with_context(|| format!("mkdir {}", target.display()))?;
        sys::move_mount(Path::new(dir), &target)
            .with_context(|| format!("move {dir} to {}", target.display()))?;
    }
    std::env::set_current_dir(NEW_ROOT).with_context(|| format!("chdir {NEW_ROOT}"))?;
    sys::move_mount(Path::new("."), Path::new("/")).context("move the new root onto /")?;
    sys::chroot(Path::new(".")).context("chroot")?;
    std::env::set_current_dir("/").context("chdir /")?;
    fs::create_dir_all("/dev/shm").context("mkdir /dev/shm")?;
    sys::mount(
        "shm",
        Path::new("/dev/shm"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )
    .context("mount tmpfs on /dev/shm")?;
    fs::create_dir_all("/tmp").context("mkdir /tmp")?;
    Ok(())
}

fn configure_network(config: &BootConfig) -> Result<()> {
    sys::link_up("lo").context("set lo up")?;
    let Some(ip) = &config.ip else { return Ok(()) };
    wait_for(&Path::new("/sys/class/net").join(&ip.device))?;
    // A gratuitous ARP when the link comes up tells the other end our MAC at once: QEMU's
    // user-mode network otherwise asks for it only when it first forwards a connection, and
    // retries a SYN that waited for the answer a second later.
    let arp_notify = format!("/proc/sys/net/ipv4/conf/{}/arp_notify", ip.device);
    fs::write(&arp_notify, "1").with_context(|| format!("write {arp_notify}"))?;
    sys::set_address(&ip.device, ip.client, ip.netmask)
        .with_context(|| format!("address {}/{} on {}", ip.client, ip.netmask, ip.device))?;
    sys::link_up(&ip.device).with_context(|| format!("set {} up", ip.device))?;
    if let Some(gw) = ip.gateway {
        sys::add_default_route(gw).with_context(|| format!("default route via {gw}"))?;
    }
    if let Some(name) = &ip.hostname {
        sys::sethostname(name).with_context(|| format!("hostname {name}"))?;
    }
    if !ip.dns.is_empty() {
        let resolv: String = ip.dns.iter().map(|a| format!("nameserver {a}\n")).collect();
        fs::write("/etc/resolv.conf", resolv).context("write /etc/resolv.conf")?;
    }
    Ok(())
}

/// The proxy's environment: the image's `ENV`, then what the VMM passed on the command line.
fn proxy_env() -> Result<Vec<(String, String)>> {
    let mut env = vec![
        ("PATH".to_owned(), PATH.to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
    ];
    let file = fs::read_to_string(PROXY_ENV).with_context(|| format!("read {PROXY_ENV}"))?;
    for line in file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let Some((k, v)) = line.split_once('=') else {
            bail!("{PROXY_ENV}: not KEY=VALUE: {line:?}")
        };
        env.push((k.to_owned(), v.to_owned()));
    }
    env.extend(std::env::vars().filter(|(k, _)| k.starts_with("__OW_")));
    Ok(env)
}

fn run_proxy(console: &Console) -> Result<String> {
    let mut child = Command::new(PROXY)
        .env_clear()
        .envs(proxy_env()?)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {PROXY}"))?;
    let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    spawn_copier(stdout, console::STDOUT_TAG, console, &done_tx);
    spawn_copier(stderr, console::STDERR_TAG, console, &done_tx);
    // PID 1 reaps every orphan; only the proxy's end matters.
    let status = loop {
        match sys::wait_any() {
            Some((p, status)) if p == pid => break status,
            Some(_) => {}
            None => bail!("{PROXY} vanished without an exit status"),
        }
    };
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..2 {
        if done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            say(
                console,
                "the action's output did not end with the proxy (a process still holds it)",
            );
            break;
        }
    }
    Ok(describe(status))
}

fn spawn_copier(
    pipe: impl Read + Send + 'static,
    tag: &'static [u8],
    console: &Console,
    done: &mpsc::Sender<()>,
) {
    let (console, done) = (console.clone(), done.clone());
    std::thread::spawn(move || {
        console::copy(pipe, tag, &console);
        let _ = done.send(());
    });
}

fn describe(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status:#x}")
    }
}

/// Waits for a device the kernel is still probing.
fn wait_for(path: &Path) -> Result<()> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    while !path.exists() {
        if Instant::now() > deadline {
            bail!(
                "{} did not appear within {DEVICE_TIMEOUT:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// A line of init's own on the console (untagged: not the action's output).
fn say(console: &Console, msg: &str) {
    console::write_line(console, format!("guest-init: {msg}\n").as_bytes());
}

/// Ends the machine. PID 1 must never return: the kernel would panic.
fn halt(console: Option<&Console>) -> ! {
    let off = sys::power_off();
    let reset = sys::restart();
    let msg = format!("cannot power off ({off}) or reset ({reset})");
    match console {
        Some(c) => say(c, &msg),
        None => eprintln!("guest-init: {msg}"),
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
