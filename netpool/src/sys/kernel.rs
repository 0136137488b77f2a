//! The real [`Sys`]: the host's netlink socket, the parent namespace slots are created from,
//! and the functions of the sibling modules.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::net::{self, Netlink};
use super::{BoxFuture, Sys, SysError, conntrack, firewall, ns};
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
            ns::prepare_ns_dir(ns_dir)?;
            let parent = tokio::task::spawn_blocking(ns::create_parent_netns)
                .await
                .map_err(|_| SysError::ThreadPanicked)??
                .map(Arc::new);
            // A second call keeps the first parent: slots already made came from it.
            let _ = self.parent_ns.set(parent);
            Ok(())
        })
    }

    fn remove_ns_dir(&self, ns_dir: &Path) -> Result<(), SysError> {
        ns::remove_ns_dir(ns_dir)
    }

    fn ns_files(&self, ns_dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(ns_dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    fn remove_netns(&self, path: &Path) -> Result<(), SysError> {
        ns::remove_netns(path)
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
