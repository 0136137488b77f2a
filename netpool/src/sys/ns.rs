//! Namespaces, their bind mounts, TAP devices and per-namespace `/proc` reads, each done on a
//! dedicated `netpool-ns` thread that dies afterwards, so no thread is ever left in a slot's
//! namespace and nothing needs restoring.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::SysError;

/// Runs `f` on a new thread named `netpool-ns`, inside namespace `ns` when given, and returns
/// its result. The thread ends with `f`, so it never has to switch back.
pub(crate) fn on_ns_thread<T, F>(ns: Option<&File>, f: F) -> Result<T, SysError>
where
    F: FnOnce() -> Result<T, SysError> + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("netpool-ns".into())
            .spawn_scoped(scope, move || {
                if let Some(ns) = ns {
                    setns(ns, CloneFlags::CLONE_NEWNET)
                        .map_err(SysError::nix("enter namespace", "of slot"))?;
                }
                f()
            })
            .map_err(SysError::Thread)?;
        handle.join().unwrap_or(Err(SysError::ThreadPanicked))
    })
}

/// Makes `dir` a shared mount point of its own, the way `ip netns add` prepares `/run/netns`:
/// then unmounting a namespace file also unmounts the copies that mount namespaces created
/// later hold, and those copies cannot keep a destroyed slot alive.
pub(crate) fn prepare_ns_dir(dir: &Path) -> Result<(), SysError> {
    std::fs::create_dir_all(dir).map_err(SysError::io("create folder", dir.display()))?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    // Changing the propagation of a path that is not a mount point fails with EINVAL.
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(SysError::nix(
                "bind-mount folder onto itself",
                dir.display(),
            ))?;
            mount(
                None::<&str>,
                dir,
                None::<&str>,
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(SysError::nix("make folder private", dir.display()))?;
            shared().map_err(SysError::nix("make folder shared", dir.display()))
        }
        Err(e) => Err(SysError::nix("make folder shared", dir.display())(e)),
    }
}

/// Unmounts and removes the pool's namespace folder (after its namespaces are gone).
pub(crate) fn remove_ns_dir(dir: &Path) -> Result<(), SysError> {
    if !dir.exists() {
        return Ok(());
    }
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) => {}
        Err(e) => return Err(SysError::nix("unmount folder", dir.display())(e)),
    }
    std::fs::remove_dir(dir).map_err(SysError::io("remove folder", dir.display()))?;
    // The shared parent (`/run/netpool`) goes too once no pool uses it.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// A namespace just created: its nsfs file and a netlink socket opened inside it.
#[derive(Debug)]
pub(crate) struct NewNamespace {
    pub(crate) ns: File,
    pub(crate) netlink: OwnedFd,
}

/// Buckets of each slot's own TCP established-connection hash table.
pub(crate) const SLOT_TCP_EHASH_ENTRIES: u32 = 1024;

/// Creates the namespace the pool's slots are made from. A new namespace takes its
/// `tcp_child_ehash_entries` from the namespace that creates it; set here (never on the host),
/// it gives every slot a small TCP hash table of its own instead of the host-wide one, so reading
/// a slot's sockets walks 1024 buckets rather than the host's hundreds of thousands (8 ms per
/// scan here), and tenants do not share hash chains. Returns `None` on kernels before 6.1,
/// which lack the setting; slots then use the global table.
pub(crate) fn create_parent_netns() -> Result<Option<File>, SysError> {
    const EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
    if !Path::new(EHASH).exists() {
        return Ok(None);
    }
    on_ns_thread(None, || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(SysError::nix(
            "unshare network namespace",
            "for slot parent",
        ))?;
        std::fs::write(EHASH, SLOT_TCP_EHASH_ENTRIES.to_string())
            .map_err(SysError::io("write", EHASH))?;
        File::open("/proc/thread-self/ns/net")
            .map(Some)
            .map_err(SysError::io("open", "/proc/thread-self/ns/net"))
    })
}

/// Creates a network namespace bind-mounted at `path`, with IPv6 off (no link-local addresses,
/// DAD or router solicitations: less state to verify, and only a VM guest speaks with a VM
/// slot's MAC), and opens a netlink socket inside it. The namespace is created from inside
/// `parent` when given (see [`create_parent_netns`]). Undoes itself on failure.
pub(crate) fn create_netns(path: &Path, parent: Option<&File>) -> Result<NewNamespace, SysError> {
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(SysError::io("create namespace file", path.display()))?;
    let result = on_ns_thread(parent, || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(SysError::nix(
            "unshare network namespace for",
            path.display(),
        ))?;
        // Not /proc/self: that is the main thread's namespace, not this thread's.
        mount(
            Some("/proc/thread-self/ns/net"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(SysError::nix("bind-mount namespace at", path.display()))?;
        for key in ["all", "default"] {
            let p = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
            std::fs::write(&p, "1").map_err(SysError::io("write", &p))?;
        }
        let ns = File::open("/proc/thread-self/ns/net")
            .map_err(SysError::io("open", "/proc/thread-self/ns/net"))?;
        let netlink = route_socket()?;
        Ok(NewNamespace { ns, netlink })
    });
    if result.is_err() {
        let _ = umount2(path, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Unmounts and removes a namespace's bind mount. The kernel frees the namespace, and the
/// veth and TAP inside it, once the last reference (an fd, a process, a socket) is gone.
pub(crate) fn remove_netns(path: &Path) -> Result<(), SysError> {
    let mut first_error = None;
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => first_error = Some(SysError::nix("unmount namespace", path.display())(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            first_error.get_or_insert(SysError::io("remove namespace file", path.display())(e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Opens a netlink socket inside namespace `ns` (on a `netpool-ns` thread).
pub(crate) fn netlink_socket_in(ns: &File) -> Result<OwnedFd, SysError> {
    on_ns_thread(Some(ns), route_socket)
}

/// A NETLINK_ROUTE socket in the calling thread's namespace, for good.
fn route_socket() -> Result<OwnedFd, SysError> {
    let socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
        .map_err(SysError::io("open netlink socket in", "namespace"))?;
    // SAFETY: `into_raw_fd` hands over sole ownership of the socket's open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
}

/// The inode that identifies a namespace, as `/proc/<pid>/ns/net` links show it.
pub(crate) fn ns_inode(ns: &File) -> Result<u64, SysError> {
    ns.metadata()
        .map(|m| m.ino())
        .map_err(SysError::io("stat", "namespace"))
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and attaches to TAP `name`, creating it in the calling thread's
/// namespace when it does not exist. Call on a thread inside the slot's namespace.
fn tap_fd(name: &str) -> Result<OwnedFd, SysError> {
    let path =
        CString::new("/dev/net/tun").map_err(|_| SysError::NotFound("/dev/net/tun".into()))?;
    // SAFETY: `path` is a valid NUL-terminated string; the returned fd is checked and then
    // owned by exactly one OwnedFd.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(SysError::io("open", "/dev/net/tun")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a freshly opened fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(SysError::NotFound(format!("tap name {name:?} (too long)")));
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReq` has its layout (16-byte
    // name, then the flags union padded to 24 bytes) and lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(SysError::io("attach tap", name)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(fd)
}

/// Creates a persistent TAP device `name` inside namespace `ns`: it lives on without an open
/// fd, so a VMM can attach to it by name, or through [`open_tap`].
pub(crate) fn create_tap(ns: &File, name: &str) -> Result<(), SysError> {
    on_ns_thread(Some(ns), || {
        let fd = tap_fd(name)?;
        // SAFETY: TUNSETPERSIST takes an int argument by value; `fd` is a TAP fd.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_int) } < 0 {
            return Err(SysError::io("make tap persistent", name)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    })
}

/// Opens an fd on the slot's TAP device, for a VMM that takes TAP fds.
pub(crate) fn open_tap(ns: &File, name: &str) -> Result<OwnedFd, SysError> {
    on_ns_thread(Some(ns), || tap_fd(name))
}

/// Sockets found in a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SocketInventory {
    /// Sockets held by an fd (a non-zero inode): a process, or an fd passed out of one, can
    /// still use them.
    pub(crate) live: Vec<String>,
    /// TCP sockets no fd holds any more (`TIME_WAIT`, `FIN_WAIT`, `LAST_ACK` after their owner
    /// exited): the kernel finishes and frees them by itself; they carry nothing to the next
    /// tenant but a four-tuple.
    pub(crate) orphans: usize,
}

/// The `/proc/net` tables scanned, with the column of each one's inode.
const SOCKET_TABLES: [(&str, usize); 8] = [
    ("tcp", 9),
    ("tcp6", 9),
    ("udp", 9),
    ("udp6", 9),
    ("raw", 9),
    ("raw6", 9),
    ("unix", 6),
    ("packet", 8),
];

/// Lists the sockets of namespace `ns` (TCP, UDP, raw, UNIX and packet; not netlink, which
/// includes the pool's own socket) from `/proc/thread-self/net`.
pub(crate) fn sockets(ns: &File) -> Result<SocketInventory, SysError> {
    on_ns_thread(Some(ns), || {
        let mut inv = SocketInventory::default();
        for (table, inode_col) in SOCKET_TABLES {
            let path = format!("/proc/thread-self/net/{table}");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SysError::io("read", &path)(e)),
            };
            for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(inode_col) == Some(&"0") {
                    inv.orphans += 1;
                } else {
                    inv.live.push(format!(
                        "{table}: {}",
                        fields.get(1..4).map(|f| f.join(" ")).unwrap_or_default()
                    ));
                }
            }
        }
        Ok(inv)
    })
}

/// The processes (other than this one) with a thread in the namespace whose inode is `inode`.
pub(crate) fn processes_in(inode: u64) -> Result<Vec<u32>, SysError> {
    let me = std::process::id();
    let needle = format!("net:[{inode}]");
    let mut found = Vec::new();
    let procs = std::fs::read_dir("/proc").map_err(SysError::io("list", "/proc"))?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes come and go while we look: a vanished one is simply not in the namespace.
        let Ok(tasks) = std::fs::read_dir(entry.path().join("task")) else {
            continue;
        };
        let inside = tasks.flatten().any(|t| {
            std::fs::read_link(t.path().join("ns/net"))
                .map(|l| l.as_os_str() == needle.as_str())
                .unwrap_or(false)
        });
        if inside {
            found.push(pid);
        }
    }
    Ok(found)
}
