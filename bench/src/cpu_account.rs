//! Where the CPU goes: each component of a benchmark run in a cgroup of its own, read before and
//! after a cell.
//!
//! The components: the invoker (and what it spawns and reaps: `runc` in netns mode, QEMU in vm
//! mode; the invoker's own share is split off from its `/proc/<pid>/stat`), the Kafka-API broker,
//! the CouchDB-API server, the Docker engine (dockerd, containerd and the shims containerd starts
//! from now on), the action containers (Docker's `docker/*` cgroups and the runc backend's
//! `wsk-runc/*`), and the bench controller itself. What no cgroup holds (kernel threads: the
//! namespace and mount teardown after a container ends runs in kworkers; processes started
//! before the account) is the machine's busy time minus the rest, reported as `other`.
//!
//! The groups live under the `cpuacct` controller on cgroup v1 (`/sys/fs/cgroup/cpuacct` or a
//! mount that co-mounts it, `cpuacct.usage`) or under the unified hierarchy on cgroup v2
//! (`cpu.stat` `usage_usec`). Processes are moved with `cgroup.procs` and moved back to where
//! they were when the account is dropped; the groups are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Which cgroup layout the account uses.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Layout {
    /// v1: the mount point of the hierarchy with the `cpuacct` controller.
    V1(PathBuf),
    /// v2: the unified hierarchy's mount point.
    V2(PathBuf),
}

impl Layout {
    fn detect() -> Result<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "cpuacct") {
                return Ok(Self::V1(PathBuf::from(f[1])));
            }
        }
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // v2 keeps `cpu.stat` usage in every group, with or without the cpu controller.
            if f.len() >= 3 && f[2] == "cgroup2" {
                return Ok(Self::V2(PathBuf::from(f[1])));
            }
        }
        bail!("no cgroup v1 hierarchy with cpuacct and no cgroup v2 hierarchy is mounted")
    }

    fn root(&self) -> &Path {
        match self {
            Self::V1(p) | Self::V2(p) => p,
        }
    }

    /// CPU time used by the processes of cgroup `dir` and its descendants, in seconds.
    fn usage_s(&self, dir: &Path) -> Option<f64> {
        match self {
            Self::V1(_) => {
                let ns: u64 = std::fs::read_to_string(dir.join("cpuacct.usage"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some(ns as f64 / 1e9)
            }
            Self::V2(_) => {
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let us: u64 = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(us as f64 / 1e6)
            }
        }
    }

    /// The cgroup path (relative to the root) process `pid` is in, for this hierarchy.
    fn cgroup_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let ours = match self {
                Self::V1(_) => controllers.split(',').any(|c| c == "cpuacct"),
                Self::V2(_) => controllers.is_empty(),
            };
            ours.then(|| path.to_owned())
        })
    }
}

/// CPU seconds per component at one moment.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    components: BTreeMap<String, f64>,
    machine_busy_s: f64,
}

/// CPU milliseconds per component between two snapshots, divided by a count (per cold start,
/// per activation).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuShares {
    /// Component → CPU ms per unit; `other` is what no component's cgroup holds.
    pub ms: BTreeMap<String, f64>,
    /// All cores' busy time per unit.
    pub machine_ms: f64,
    /// The components except the bench controller (what the targets count).
    pub without_bench_ms: f64,
}

impl CpuShares {
    /// The component-wise mean of `shares`.
    pub fn mean(shares: &[Self]) -> Self {
        let k = shares.len().max(1) as f64;
        let mut ms = BTreeMap::new();
        for s in shares {
            for (name, v) in &s.ms {
                *ms.entry(name.clone()).or_insert(0.0) += v / k;
            }
        }
        Self {
            ms,
            machine_ms: shares.iter().map(|s| s.machine_ms).sum::<f64>() / k,
            without_bench_ms: shares.iter().map(|s| s.without_bench_ms).sum::<f64>() / k,
        }
    }
}

impl CpuSnapshot {
    /// What was used from `earlier` to `self`, in ms per `units`.
    pub fn since(&self, earlier: &Self, units: usize) -> CpuShares {
        let per = |s: f64| s * 1e3 / units.max(1) as f64;
        let mut ms = BTreeMap::new();
        let mut accounted = 0.0;
        for (name, &now) in &self.components {
            let d = (now - earlier.components.get(name).copied().unwrap_or(0.0)).max(0.0);
            accounted += d;
            ms.insert(name.clone(), per(d));
        }
        let machine = (self.machine_busy_s - earlier.machine_busy_s).max(0.0);
        ms.insert("other".into(), per((machine - accounted).max(0.0)));
        let bench = ms.get("bench").copied().unwrap_or(0.0);
        CpuShares {
            without_bench_ms: per(machine) - bench,
            machine_ms: per(machine),
            ms,
        }
    }
}

/// A moved process and the cgroup it came from.
#[derive(Debug)]
struct Moved {
    pid: u32,
    from: String,
}

/// The account: a cgroup per component, the processes moved into them.
#[derive(Debug)]
pub struct CpuAccount {
    layout: Layout,
    /// `<root>/wsk-bench-<pid>`.
    base: PathBuf,
    groups: BTreeMap<String, PathBuf>,
    moved: Vec<Moved>,
    /// The invoker's pid, whose own CPU is split from its group's.
    invoker: Option<u32>,
}

impl CpuAccount {
    /// Creates the groups and moves the stack's processes (from `$WHISK_STACK_DIR/pids`, and
    /// dockerd's containerd) and the bench itself into them.
    pub fn start(stack_dir: &Path) -> Result<Self> {
        let layout = Layout::detect()?;
        let base = layout
            .root()
            .join(format!("wsk-bench-{}", std::process::id()));
        std::fs::create_dir_all(&base).with_context(|| format!("{}", base.display()))?;
        let mut account = Self {
            layout,
            base,
            groups: BTreeMap::new(),
            moved: Vec::new(),
            invoker: None,
        };
        let pid_of = |name: &str| -> Option<u32> {
            std::fs::read_to_string(stack_dir.join("pids").join(format!("{name}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        if let Some(p) = pid_of("kafka") {
            account.add("broker", p)?;
        }
        if let Some(p) = pid_of("couchdb") {
            account.add("couchdb", p)?;
        }
        let dockerd = pid_of("docker").or_else(|| pgrep_exact("dockerd"));
        if let Some(p) = dockerd {
            account.add("docker_engine", p)?;
        }
        if let Some(p) = pgrep_exact("containerd") {
            account.add("docker_engine", p)?;
        }
        account.add("bench", std::process::id())?;
        Ok(account)
    }

    /// Moves process `pid` (all its threads) into component `name`'s group.
    pub fn add(&mut self, name: &str, pid: u32) -> Result<()> {
        let dir = self.base.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let from = self.layout.cgroup_of(pid).unwrap_or_else(|| "/".into());
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", dir.display()))?;
        self.groups.insert(name.to_owned(), dir);
        self.moved.push(Moved { pid, from });
        Ok(())
    }

    /// Accounts the invoker `pid`: its group holds what it spawns too (runc, QEMU); its own
    /// share is taken from `/proc/<pid>/stat`.
    pub fn add_invoker(&mut self, pid: u32) -> Result<()> {
        self.add("invoker_tree", pid)?;
        self.invoker = Some(pid);
        Ok(())
    }

    /// CPU seconds per component now.
    pub fn snapshot(&self) -> CpuSnapshot {
        let mut components = BTreeMap::new();
        for (name, dir) in &self.groups {
            if let Some(s) = self.layout.usage_s(dir) {
                components.insert(name.clone(), s);
            }
        }
        // The invoker's tree: its own CPU, and what its children (runc, QEMU) used.
        if let (Some(pid), Some(tree)) = (self.invoker, components.remove("invoker_tree")) {
            let own = process_cpu_s(pid).unwrap_or(0.0);
            components.insert("invoker".into(), own);
            components.insert("invoker_children".into(), (tree - own).max(0.0));
        }
        // Action containers: Docker's cgroup parent and the runc backend's.
        let root = self.layout.root();
        let containers = ["docker", "wsk-runc"]
            .iter()
            .filter_map(|d| self.layout.usage_s(&root.join(d)))
            .sum::<f64>();
        components.insert("containers".into(), containers);
        CpuSnapshot {
            components,
            machine_busy_s: machine_busy_s().unwrap_or(0.0),
        }
    }
}

impl Drop for CpuAccount {
    /// Moves every process back (a process that has ended needs nothing) and removes the groups;
    /// every failure is reported and the rest still done.
    fn drop(&mut self) {
        for m in self.moved.drain(..).rev() {
            let back = self.layout.root().join(m.from.trim_start_matches('/'));
            if let Err(e) = std::fs::write(back.join("cgroup.procs"), m.pid.to_string())
                && Path::new(&format!("/proc/{}", m.pid)).exists()
            {
                eprintln!(
                    "cpu account: cannot move {} back to {}: {e}",
                    m.pid,
                    back.display()
                );
            }
        }
        for dir in self.groups.values() {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("cpu account: cannot remove {}: {e}", dir.display());
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.base) {
            eprintln!("cpu account: cannot remove {}: {e}", self.base.display());
        }
    }
}

fn pgrep_exact(name: &str) -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-x", name])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A process's own CPU time so far (user + system, without reaped children), in seconds.
pub fn process_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("/proc/{pid}/stat"))?;
    // After the command name in parentheses, field 3 (state) comes first: utime and stime are
    // fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() != 2 {
        bail!("/proc/{pid}/stat: unreadable");
    }
    Ok((f[0] + f[1]) as f64 / clock_ticks())
}

/// The machine's CPU time so far (`/proc/stat`, all CPUs): idle (+ iowait) and total ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    idle: u64,
    total: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat`; `None` if it cannot be read.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        Some(Self {
            idle: cpu.get(3)? + cpu.get(4)?,
            total: cpu.iter().sum(),
        })
    }

    /// The share of CPU time that was busy between `self` and `later`.
    pub fn busy_share_until(&self, later: &Self) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        1.0 - later.idle.saturating_sub(self.idle) as f64 / total as f64
    }

    /// All CPUs' busy time so far (everything but idle and iowait), in seconds.
    pub fn busy_s(&self) -> f64 {
        self.total.saturating_sub(self.idle) as f64 / clock_ticks()
    }
}

/// All CPUs' busy time so far (everything but idle and iowait), in seconds.
pub fn machine_busy_s() -> Result<f64> {
    CpuTimes::now()
        .map(|t| t.busy_s())
        .context("/proc/stat: unreadable")
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_machine_and_leave_the_rest_as_other() {
        let at = |b: f64, i: f64, m: f64| CpuSnapshot {
            components: BTreeMap::from([("bench".to_owned(), b), ("invoker".to_owned(), i)]),
            machine_busy_s: m,
        };
        let s = at(2.0, 4.0, 10.0).since(&at(1.0, 1.0, 4.0), 10);
        assert_eq!(s.ms["bench"], 100.0);
        assert_eq!(s.ms["invoker"], 300.0);
        assert_eq!(s.ms["other"], 200.0);
        assert_eq!(s.machine_ms, 600.0);
        assert_eq!(s.without_bench_ms, 500.0);
    }

    #[test]
    fn a_busy_process_s_cpu_time_grows() {
        let pid = std::process::id();
        let before = process_cpu_s(pid).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut x = 0u64;
        // Spin until the kernel's tick-granular counter moves (at most 10 s).
        while process_cpu_s(pid).unwrap() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no CPU time counted in 10 s"
            );
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(machine_busy_s().unwrap() > 0.0);
    }
}
