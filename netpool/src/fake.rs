//! A fake [`Sys`] for unit tests: an in-memory host with namespace mounts, links, firewall
//! rules and conntrack flushes, a log of every operation, and failures to inject.
//!
//! It models what the pool relies on: a slot's host veth disappears with its namespace mount
//! unless something pins the namespace (then it stays until deleted by hand), and creating a
//! slot whose mount, veth or address still exists fails, as it would in the kernel; the fake
//! also records that as a violation, so a test can tell the pool asked for it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::addressing::{SlotAddress, SlotId};
use crate::config::SlotKind;
use crate::slot::{ScrubFailure, Slot, TAP_NAME};
use crate::sys::{BoxFuture, HostNet, HostNetKind, SlotNs, Sys, SysError};

/// Creations after which the fake stops answering: a pool that retries in a tight loop would
/// otherwise keep the paused test clock from ever advancing.
const RUNAWAY_CREATES: usize = 10_000;

/// One operation the pool asked for, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Prepare,
    RemoveNsDir,
    RemoveNetns(PathBuf),
    DeleteLink(String),
    FlushConntrack(Ipv4Addr),
    CreateBridge(String),
    AllowIntra(String),
    RemoveIntra(String),
    InstallGuard(String),
    GuardBridge(String),
    RemoveGuard(String),
    CreateSlot(SlotId),
    Scrub(SlotId),
}

/// How a planned scrub fails.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ScrubOutcome {
    Process,
    Socket,
    State,
}

/// The fake host's state; tests read and change it through [`FakeSys::host`].
#[derive(Debug, Default)]
pub(crate) struct Host {
    /// Mounted namespace files.
    pub(crate) ns_files: BTreeSet<PathBuf>,
    /// Host links by name, with their index.
    pub(crate) links: BTreeMap<String, u32>,
    next_index: u32,
    /// The host veth of each mounted namespace.
    veth_of: HashMap<PathBuf, String>,
    /// The address each slot veth carries at the other end.
    ip_of_veth: HashMap<String, Ipv4Addr>,
    /// Veths that outlive their namespace's mount (a tenant's fd or process pins it).
    pub(crate) pinned: HashSet<String>,
    /// Bridges with an intra-bridge firewall rule.
    pub(crate) firewall: BTreeSet<String>,
    /// Pools with a host guard, with the ports it lets through.
    pub(crate) guards: BTreeMap<String, Vec<(u16, u16)>>,
    /// Bridges sent through a guard, with the guard's pool.
    pub(crate) guarded: BTreeMap<String, String>,
    /// The next guard installs fail.
    pub(crate) fail_install_guard: usize,
    pub(crate) log: Vec<Op>,
    /// When each slot creation was asked for.
    pub(crate) create_times: Vec<Instant>,
    /// The next this many creations fail.
    pub(crate) fail_creates: usize,
    /// The next allow-intra-bridge calls fail.
    pub(crate) fail_allow_intra: usize,
    /// How the next scrub of a slot fails (once).
    pub(crate) scrub_plan: HashMap<SlotId, ScrubOutcome>,
    pub(crate) fail_remove_netns: HashSet<PathBuf>,
    pub(crate) fail_delete_link: HashSet<String>,
    /// How long a creation takes.
    pub(crate) create_delay: Duration,
    creating_now: usize,
    /// Most creations in flight at once.
    pub(crate) max_creating: usize,
    /// Requests the kernel would refuse, or that would harm a tenant.
    pub(crate) violations: Vec<String>,
    /// The host's addresses and routes; a bridge adds its gateway address and its route.
    pub(crate) nets: Vec<HostNet>,
}

impl Host {
    fn add_link(&mut self, name: &str) -> u32 {
        self.next_index += 1;
        self.links.insert(name.to_owned(), self.next_index);
        self.next_index
    }

    /// A link of someone else, or of an earlier run.
    pub(crate) fn foreign_link(&mut self, name: &str) {
        self.add_link(name);
    }

    /// A namespace mount with its host veth, as an earlier run left it.
    pub(crate) fn leftover_slot(&mut self, ns_path: &Path, veth: &str, pinned: bool) {
        self.ns_files.insert(ns_path.to_owned());
        self.add_link(veth);
        self.veth_of.insert(ns_path.to_owned(), veth.to_owned());
        if pinned {
            self.pinned.insert(veth.to_owned());
        }
    }

    /// An address of someone else on link `link`, with its subnet's route.
    pub(crate) fn foreign_address(&mut self, link: &str, ip: Ipv4Addr, prefix_len: u8) {
        if !self.links.contains_key(link) {
            self.add_link(link);
        }
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        self.nets.push(HostNet {
            kind: HostNetKind::Address,
            ip,
            prefix_len,
            link: link.to_owned(),
        });
        self.nets.push(HostNet {
            kind: HostNetKind::Route,
            ip: Ipv4Addr::from(u32::from(ip) & mask),
            prefix_len,
            link: link.to_owned(),
        });
    }

    fn remove_link(&mut self, name: &str) {
        self.nets.retain(|n| n.link != name);
        self.links.remove(name);
        self.pinned.remove(name);
        self.ip_of_veth.remove(name);
    }

    fn remove_netns(&mut self, path: &Path) -> Result<(), SysError> {
        let h = self;
        h.log.push(Op::RemoveNetns(path.to_owned()));
        if h.fail_remove_netns.contains(path) {
            return Err(injected("unmount namespace", path.display()));
        }
        h.ns_files.remove(path);
        if let Some(veth) = h.veth_of.remove(path)
            && !h.pinned.contains(&veth)
        {
            h.remove_link(&veth);
        }
        Ok(())
    }

    pub(crate) fn creates(&self) -> usize {
        self.create_times.len()
    }

    /// The position of the first logged `op`.
    pub(crate) fn position(&self, op: &Op) -> Option<usize> {
        self.log.iter().position(|o| o == op)
    }

    /// How many times `op` was logged.
    pub(crate) fn count(&self, op: &Op) -> usize {
        self.log.iter().filter(|o| *o == op).count()
    }

    /// The address of every slot veth that exists.
    pub(crate) fn slot_ips(&self) -> Vec<Ipv4Addr> {
        self.ip_of_veth.values().copied().collect()
    }
}

fn injected(op: &'static str, target: impl std::fmt::Display) -> SysError {
    SysError::Io {
        op,
        target: target.to_string(),
        source: std::io::Error::other("injected by the test"),
    }
}

/// The fake; clones share one host.
#[derive(Clone, Debug, Default)]
pub(crate) struct FakeSys {
    pub(crate) host: Arc<Mutex<Host>>,
}

impl FakeSys {
    async fn create(
        &self,
        addr: SlotAddress,
        bridge_index: u32,
        kind: SlotKind,
    ) -> Result<Slot, SysError> {
        let delay = {
            let mut h = self.host.lock();
            h.create_times.push(Instant::now());
            if h.creates() > RUNAWAY_CREATES {
                h.violations
                    .push("slot creation retried in a tight loop".into());
                None
            } else {
                h.creating_now += 1;
                h.max_creating = h.max_creating.max(h.creating_now);
                Some(h.create_delay)
            }
        };
        let Some(delay) = delay else {
            return std::future::pending().await;
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut h = self.host.lock();
        h.creating_now -= 1;
        h.log.push(Op::CreateSlot(addr.id));
        if h.fail_creates > 0 {
            h.fail_creates -= 1;
            return Err(injected("create namespace file", addr.ns_path.display()));
        }
        let mut clash = Vec::new();
        if h.ns_files.contains(&addr.ns_path) {
            clash.push(format!("mount {} exists", addr.ns_path.display()));
        }
        if h.links.contains_key(&addr.host_if) {
            clash.push(format!("veth {} exists", addr.host_if));
        }
        if h.ip_of_veth.values().any(|ip| *ip == addr.ip) {
            clash.push(format!("address {} is in use", addr.ip));
        }
        if h.links.get(&addr.bridge) != Some(&bridge_index) {
            clash.push(format!(
                "bridge {} has no index {bridge_index}",
                addr.bridge
            ));
        }
        if !clash.is_empty() {
            let what = format!("slot {}: {}", addr.id, clash.join(", "));
            h.violations.push(what.clone());
            return Err(SysError::NotFound(what));
        }
        h.ns_files.insert(addr.ns_path.clone());
        h.add_link(&addr.host_if);
        h.veth_of.insert(addr.ns_path.clone(), addr.host_if.clone());
        h.ip_of_veth.insert(addr.host_if.clone(), addr.ip);
        drop(h);
        let file = File::open("/dev/null").map_err(SysError::io("open", "/dev/null"))?;
        Ok(Slot {
            tap: (kind == SlotKind::Vm).then_some(TAP_NAME),
            ns: Box::new(FakeNs {
                file,
                id: addr.id,
                host: self.host.clone(),
            }),
            addr,
        })
    }
}

impl Sys for FakeSys {
    fn prepare<'a>(&'a self, _ns_dir: &'a Path) -> BoxFuture<'a, Result<(), SysError>> {
        self.host.lock().log.push(Op::Prepare);
        Box::pin(async { Ok(()) })
    }

    fn remove_ns_dir<'a>(&'a self, _ns_dir: &'a Path) -> BoxFuture<'a, Result<(), SysError>> {
        self.host.lock().log.push(Op::RemoveNsDir);
        Box::pin(async { Ok(()) })
    }

    fn ns_files(&self, ns_dir: &Path) -> Vec<PathBuf> {
        let h = self.host.lock();
        h.ns_files
            .iter()
            .filter(|p| p.parent() == Some(ns_dir))
            .cloned()
            .collect()
    }

    fn remove_netns<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), SysError>> {
        let result = self.host.lock().remove_netns(path);
        Box::pin(async { result })
    }

    fn host_networks(&self) -> BoxFuture<'_, Result<Vec<HostNet>, SysError>> {
        let nets = self.host.lock().nets.clone();
        Box::pin(async { Ok(nets) })
    }

    fn host_links(&self) -> BoxFuture<'_, Result<Vec<(u32, String)>, SysError>> {
        let links = self
            .host
            .lock()
            .links
            .iter()
            .map(|(n, i)| (*i, n.clone()))
            .collect();
        Box::pin(async { Ok(links) })
    }

    fn host_link_index<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, SysError>> {
        let index = self.host.lock().links.get(name).copied();
        Box::pin(async move { Ok(index) })
    }

    fn delete_host_link<'a>(
        &'a self,
        index: u32,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), SysError>> {
        let mut h = self.host.lock();
        h.log.push(Op::DeleteLink(name.to_owned()));
        let result = if h.fail_delete_link.contains(name) {
            Err(injected("delete link", name))
        } else {
            if h.links.get(name) == Some(&index) {
                h.remove_link(name);
            }
            Ok(())
        };
        Box::pin(async { result })
    }

    fn flush_conntrack(&self, ip: Ipv4Addr) -> BoxFuture<'_, Result<(), SysError>> {
        self.host.lock().log.push(Op::FlushConntrack(ip));
        Box::pin(async { Ok(()) })
    }

    fn create_bridge<'a>(
        &'a self,
        name: &'a str,
        gateway: Ipv4Addr,
        prefix_len: u8,
        _mac: [u8; 6],
    ) -> BoxFuture<'a, Result<u32, SysError>> {
        let mut h = self.host.lock();
        h.log.push(Op::CreateBridge(name.to_owned()));
        let result = if h.links.contains_key(name) {
            h.violations.push(format!("bridge {name} created twice"));
            Err(SysError::NotFound(format!("bridge {name} exists")))
        } else {
            let index = h.add_link(name);
            h.foreign_address(name, gateway, prefix_len);
            Ok(index)
        };
        Box::pin(async { result })
    }

    fn allow_intra_bridge<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SysError>> {
        let mut h = self.host.lock();
        h.log.push(Op::AllowIntra(name.to_owned()));
        let result = if h.fail_allow_intra > 0 {
            h.fail_allow_intra -= 1;
            Err(injected("insert iptables rule for", name))
        } else {
            h.firewall.insert(name.to_owned());
            Ok(())
        };
        Box::pin(async { result })
    }

    fn remove_intra_bridge<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SysError>> {
        let mut h = self.host.lock();
        h.log.push(Op::RemoveIntra(name.to_owned()));
        h.firewall.remove(name);
        Box::pin(async { Ok(()) })
    }

    fn install_guard<'a>(
        &'a self,
        pool: &'a str,
        allow: &'a [(u16, u16)],
    ) -> BoxFuture<'a, Result<(), SysError>> {
        let mut h = self.host.lock();
        h.log.push(Op::InstallGuard(pool.to_owned()));
        let result = if h.fail_install_guard > 0 {
            h.fail_install_guard -= 1;
            Err(injected("create iptables chains for", pool))
        } else {
            h.guards.insert(pool.to_owned(), allow.to_vec());
            Ok(())
        };
        Box::pin(async { result })
    }

    fn guard_bridge<'a>(
        &'a self,
        pool: &'a str,
        bridge: &'a str,
    ) -> BoxFuture<'a, Result<(), SysError>> {
        let mut h = self.host.lock();
        h.log.push(Op::GuardBridge(bridge.to_owned()));
        if !h.guards.contains_key(pool) {
            h.violations.push(format!(
                "bridge {bridge} guarded before pool {pool}'s chains exist"
            ));
        }
        h.guarded.insert(bridge.to_owned(), pool.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn remove_guard<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Vec<SysError>> {
        let mut h = self.host.lock();
        h.log.push(Op::RemoveGuard(pool.to_owned()));
        h.guards.remove(pool);
        h.guarded.retain(|_, p| p != pool);
        Box::pin(async { Vec::new() })
    }

    fn create_slot(
        &self,
        addr: SlotAddress,
        bridge_index: u32,
        kind: SlotKind,
        _isolate: bool,
    ) -> BoxFuture<'_, Result<Slot, SysError>> {
        Box::pin(self.create(addr, bridge_index, kind))
    }
}

/// A fake slot's namespace: `/dev/null` stands in for the nsfs file.
#[derive(Debug)]
struct FakeNs {
    file: File,
    id: SlotId,
    host: Arc<Mutex<Host>>,
}

impl SlotNs for FakeNs {
    fn file(&self) -> &File {
        &self.file
    }

    fn scrub<'a>(&'a self, _addr: &'a SlotAddress) -> BoxFuture<'a, Result<(), ScrubFailure>> {
        let mut h = self.host.lock();
        h.log.push(Op::Scrub(self.id));
        let result = match h.scrub_plan.remove(&self.id) {
            None => Ok(()),
            Some(ScrubOutcome::Process) => Err(ScrubFailure::Process(vec![4242])),
            Some(ScrubOutcome::Socket) => Err(ScrubFailure::Socket(vec!["tcp: 0.0.0.0:80".into()])),
            Some(ScrubOutcome::State) => Err(ScrubFailure::State("+route 10.0.0.0/8".into())),
        };
        Box::pin(async { result })
    }

    fn open_tap(&self, name: &'static str) -> BoxFuture<'_, Result<OwnedFd, SysError>> {
        Box::pin(async move { Err(SysError::NotFound(format!("tap {name} (fake namespace)"))) })
    }
}
