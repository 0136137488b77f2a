//! The real [`Sys`]: the host's netlink socket, the parent namespace slots are created from,
//! and the functions of the sibling modules.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::net::{self, Netlink};
use super::{BoxFuture, HostNet, Sys, SysError, conntrack, firewall, ns};
use crate::addressing::SlotAddress;
use crate::config::SlotKind;
use crate::slot::{self, Slot};

/// The kernel as the pool sees it.
#[derive(Debug)]
pub(crate) struct Kernel {
    host: Netlink,
    /// The namespace slots are created from (see [`ns::create_parent_netns`]); set by
    /// [`Sys::prepare`], `None` inside when the kernel lacks the setting it exists for.
    parent_ns: OnceLock<Option<Arc<File>>>,
}

impl Kernel {
    /// Opens the host's netlink socket. Must run inside a tokio runtime.
    pub(crate) fn new() -> Result<Self, SysError> {
        Ok(Self {
            host: Netlink::host()?,
            parent_ns: OnceLock::new(),
        })
    }
}

impl Sys for Kernel {
    fn prepare<'a>(&'a self, ns_dir: &'a Path) -> BoxFuture<'a, Result<(), SysError>> {
        Box::pin(async move {
            let dir = ns_dir.to_owned();
            blocking(move || ns::prepare_ns_dir(&dir)).await?;
            let parent = blocking(ns::create_parent_netns).await?.map(Arc::new);
            // A second call keeps the first parent: slots already made came from it.
            let _ = self.parent_ns.set(parent);
            Ok(())
        })
    }

    fn remove_ns_dir<'a>(&'a self, ns_dir: &'a Path) -> BoxFuture<'a, Result<(), SysError>> {
        let dir = ns_dir.to_owned();
        Box::pin(blocking(move || ns::remove_ns_dir(&dir)))
    }

    fn ns_files(&self, ns_dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(ns_dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn remove_netns<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), SysError>> {
        let path = path.to_owned();
        Box::pin(blocking(move || ns::remove_netns(&path)))
    }

    fn host_networks(&self) -> BoxFuture<'_, Result<Vec<HostNet>, SysError>> {
        Box::pin(net::host_networks(&self.host.handle))
    }

    fn host_links(&self) -> BoxFuture<'_, Result<Vec<(u32, String)>, SysError>> {
        Box::pin(net::links(&self.host.handle))
    }

    fn host_link_index<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<u32>, SysError>> {
        Box::pin(net::link_index(&self.host.handle, name))
    }

    fn delete_host_link<'a>(
        &'a self,
        index: u32,
        name: &'a str,
    ) -> BoxFuture<'a, Result<(), SysError>> {
        Box::pin(net::delete_link(&self.host.handle, index, name))
    }

    fn flush_conntrack(&self, ip: Ipv4Addr) -> BoxFuture<'_, Result<(), SysError>> {
        Box::pin(conntrack::flush(ip))
    }

    fn create_bridge<'a>(
        &'a self,
        name: &'a str,
        gateway: Ipv4Addr,
        prefix_len: u8,
        mac: [u8; 6],
    ) -> BoxFuture<'a, Result<u32, SysError>> {
        Box::pin(net::create_bridge(
            &self.host.handle,
            name,
            gateway,
            prefix_len,
            mac,
        ))
    }

    fn allow_intra_bridge<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SysError>> {
        Box::pin(firewall::allow_intra_bridge(name))
    }

    fn remove_intra_bridge<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), SysError>> {
        Box::pin(firewall::remove_intra_bridge(name))
    }

    fn install_guard<'a>(
        &'a self,
        pool: &'a str,
        allow: &'a [(u16, u16)],
    ) -> BoxFuture<'a, Result<(), SysError>> {
        Box::pin(firewall::install_guard(pool, allow))
    }

    fn guard_bridge<'a>(
        &'a self,
        pool: &'a str,
        bridge: &'a str,
    ) -> BoxFuture<'a, Result<(), SysError>> {
        Box::pin(firewall::guard_bridge(pool, bridge))
    }

    fn remove_guard<'a>(&'a self, pool: &'a str) -> BoxFuture<'a, Vec<SysError>> {
        Box::pin(firewall::remove_guard(pool))
    }

    fn create_slot(
        &self,
        addr: SlotAddress,
        bridge_index: u32,
        kind: SlotKind,
        isolate: bool,
    ) -> BoxFuture<'_, Result<Slot, SysError>> {
        let parent = self.parent_ns.get().cloned().flatten();
        Box::pin(slot::create(
            &self.host,
            parent,
            addr,
            bridge_index,
            kind,
            isolate,
        ))
    }
}

/// Runs `f` (unmounts, file removals: calls that can block on the mount table's lock or the
/// file system) on tokio's blocking pool, off the workers.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, SysError>
where
    F: FnOnce() -> Result<T, SysError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| SysError::ThreadPanicked)?
}
