//! The only place that talks to the kernel: namespaces, mounts and TAP devices through `nix`
//! and `libc` on dedicated threads ([`ns`]), links, addresses, routes, neighbours and tc through
//! rtnetlink ([`net`]), the host's conntrack table ([`conntrack`]) and, for non-isolated pools, the host's
//! `FORWARD` chain ([`firewall`]).
//!
//! Namespace switches (`unshare`, `setns`) happen only on short-lived threads named
//! `netpool-ns` that this module spawns and joins; a tokio worker never changes namespace.
//! A namespace's netlink socket is opened on such a thread while it is inside the namespace,
//! then driven from async code.

pub(crate) mod conntrack;
pub(crate) mod firewall;
pub(crate) mod net;
pub(crate) mod ns;

/// A failed kernel operation; each variant names the operation and its target.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("cannot {op} {target}")]
    Io {
        op: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {op} {target}")]
    Nix {
        op: &'static str,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("netlink: cannot {op} {target}")]
    Netlink {
        op: &'static str,
        target: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot start a netpool-ns thread")]
    Thread(#[source] std::io::Error),
    #[error("a netpool-ns thread panicked")]
    ThreadPanicked,
    #[error("{0} not found")]
    NotFound(String),
    #[error("cannot flush conntrack entries of {ip}: {detail}")]
    Conntrack {
        ip: std::net::Ipv4Addr,
        detail: String,
    },
}

impl SysError {
    pub(crate) fn io(
        op: &'static str,
        target: impl std::fmt::Display,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let target = target.to_string();
        move |source| Self::Io { op, target, source }
    }

    pub(crate) fn nix(
        op: &'static str,
        target: impl std::fmt::Display,
    ) -> impl FnOnce(nix::Error) -> Self {
        let target = target.to_string();
        move |source| Self::Nix { op, target, source }
    }

    pub(crate) fn netlink(
        op: &'static str,
        target: impl std::fmt::Display,
    ) -> impl FnOnce(rtnetlink::Error) -> Self {
        let target = target.to_string();
        move |source| Self::Netlink { op, target, source }
    }
}
