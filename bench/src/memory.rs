//! Measuring memory honestly: what processes cost (RSS and PSS from `smaps_rollup`), what their
//! cgroups were charged (user and kernel), and how the kernel's own unreclaimable memory moved
//! (`/proc/meminfo`). Shared by `bench docker-start` and the later memory benchmarks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Resident and proportional set size of one process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    pub rss_kib: u64,
    /// Shared pages divided among the processes sharing them: the honest share of one process.
    pub pss_kib: u64,
}

impl ProcessMemory {
    /// Reads `/proc/<pid>/smaps_rollup`.
    pub fn of(pid: u32) -> Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("read smaps_rollup of pid {pid}"))?;
        Ok(Self {
            rss_kib: field_kib(&text, "Rss:").unwrap_or_default(),
            pss_kib: field_kib(&text, "Pss:").unwrap_or_default(),
        })
    }

    /// The sum of several.
    pub fn sum(items: impl IntoIterator<Item = Self>) -> Self {
        items.into_iter().fold(Self::default(), |a, b| Self {
            rss_kib: a.rss_kib + b.rss_kib,
            pss_kib: a.pss_kib + b.pss_kib,
        })
    }
}

/// The kernel's memory counters that grow with namespaces, devices and sockets, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelMemory {
    pub mem_available_kib: u64,
    pub slab_kib: u64,
    pub slab_unreclaimable_kib: u64,
    pub kernel_stack_kib: u64,
    pub page_tables_kib: u64,
    pub percpu_kib: u64,
}

impl KernelMemory {
    /// Reads `/proc/meminfo`.
    pub fn now() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
        let f = |k| field_kib(&text, k).unwrap_or_default();
        Ok(Self {
            mem_available_kib: f("MemAvailable:"),
            slab_kib: f("Slab:"),
            slab_unreclaimable_kib: f("SUnreclaim:"),
            kernel_stack_kib: f("KernelStack:"),
            page_tables_kib: f("PageTables:"),
            percpu_kib: f("Percpu:"),
        })
    }

    /// Memory the kernel cannot give back while the objects live: unreclaimable slab, kernel
    /// stacks, page tables, per-CPU areas.
    pub fn unreclaimable_kib(&self) -> u64 {
        self.slab_unreclaimable_kib + self.kernel_stack_kib + self.page_tables_kib + self.percpu_kib
    }

    /// `after - self`, per field, as signed KiB.
    pub fn growth_to(&self, after: &Self) -> KernelGrowth {
        let d = |a: u64, b: u64| i64::try_from(b).unwrap_or(0) - i64::try_from(a).unwrap_or(0);
        KernelGrowth {
            mem_available_drop_kib: -d(self.mem_available_kib, after.mem_available_kib),
            slab_kib: d(self.slab_kib, after.slab_kib),
            unreclaimable_kib: d(self.unreclaimable_kib(), after.unreclaimable_kib()),
        }
    }
}

/// How kernel memory moved between two readings, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelGrowth {
    pub mem_available_drop_kib: i64,
    pub slab_kib: i64,
    pub unreclaimable_kib: i64,
}

/// A process's parent pid.
pub fn parent_pid(pid: u32) -> Result<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read stat of pid {pid}"))?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    rest.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("parse stat of pid {pid}"))
}

/// A process's command name.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// What the memory cgroup of `pid` is charged, user and kernel, in KiB: `memory.current` on
/// cgroup v2, `memory.usage_in_bytes` (which includes `memory.kmem.usage_in_bytes`) on v1.
pub fn cgroup_charge_kib(pid: u32) -> Result<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("read cgroup of pid {pid}"))?;
    let path_of = |controller: &str| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, c, p) = (parts.next()?, parts.next()?, parts.next()?);
            (c == controller).then(|| p.to_owned())
        })
    };
    let candidates: Vec<PathBuf> = [
        path_of("memory").map(|p| {
            Path::new("/sys/fs/cgroup/memory")
                .join(rel(&p))
                .join("memory.usage_in_bytes")
        }),
        path_of("").map(|p| {
            Path::new("/sys/fs/cgroup")
                .join(rel(&p))
                .join("memory.current")
        }),
        path_of("").map(|p| {
            Path::new("/sys/fs/cgroup/unified")
                .join(rel(&p))
                .join("memory.current")
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    for file in &candidates {
        if let Ok(v) = std::fs::read_to_string(file) {
            let bytes: u64 = v
                .trim()
                .parse()
                .with_context(|| format!("parse {}", file.display()))?;
            return Ok(bytes / 1024);
        }
    }
    anyhow::bail!("no memory cgroup file for pid {pid} (tried {candidates:?})")
}

fn rel(p: &str) -> &str {
    p.trim_start_matches('/')
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = ProcessMemory::of(me).unwrap();
        assert!(
            m.rss_kib > 0 && m.pss_kib > 0 && m.pss_kib <= m.rss_kib,
            "{m:?}"
        );
        assert_eq!(parent_pid(me).unwrap(), std::os::unix::process::parent_id());
        assert!(KernelMemory::now().unwrap().slab_kib > 0);
    }

    #[test]
    fn growth_is_signed() {
        let a = KernelMemory {
            mem_available_kib: 1000,
            slab_kib: 10,
            ..KernelMemory::default()
        };
        let b = KernelMemory {
            mem_available_kib: 900,
            slab_kib: 5,
            ..KernelMemory::default()
        };
        let g = a.growth_to(&b);
        assert_eq!((g.mem_available_drop_kib, g.slab_kib), (100, -5));
    }
}
