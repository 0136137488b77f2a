//! What the sandbox backends' tests share: the VM guests' files, small netpool pools (VM slots
//! or namespaces), and the QEMU processes a test left.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `runtimes/build.sh` puts the VM guests (`$WHISK_TOOLS_DIR/vm`).
pub fn guest_dir() -> PathBuf {
    let tools = std::env::var_os("WHISK_TOOLS_DIR").unwrap_or_else(|| "/opt/whisk-tools".into());
    Path::new(&tools).join("vm")
}

/// A file of the guests, which must exist: a missing one fails the test naming the command
/// that builds it.
pub fn guest_file(name: &str) -> PathBuf {
    let path = guest_dir().join(name);
    assert!(
        path.is_file(),
        "the VM guest's {} is missing: build it with runtimes/build.sh",
        path.display()
    );
    path
}

/// A pool of slots of `kind` named `name` in `subnet`/`prefix_len`, one slot ready and at
/// most four, not isolated (the tests talk to the sandboxes from the host). Needs root.
pub async fn slot_pool(
    name: &str,
    subnet: Ipv4Addr,
    prefix_len: u8,
    kind: netpool::SlotKind,
) -> Arc<netpool::NetPool> {
    let mut cfg = netpool::PoolConfig::new(name, subnet, prefix_len);
    cfg.kind = kind;
    cfg.low_watermark = 1;
    cfg.high_watermark = 1;
    cfg.max_slots = 4;
    cfg.isolate_slots = false;
    Arc::new(
        netpool::NetPool::new(cfg)
            .await
            .expect("a netpool pool (run as root)"),
    )
}

/// [`slot_pool`] of VM slots in `10.<second_octet>.0.0/16`.
pub async fn vm_slot_pool(name: &str, second_octet: u8) -> Arc<netpool::NetPool> {
    slot_pool(
        name,
        Ipv4Addr::new(10, second_octet, 0, 0),
        16,
        netpool::SlotKind::Vm,
    )
    .await
}

/// Processes whose command line names `dir` (a VM's QEMU has its `-pidfile` and `-qmp` in its
/// folder), as `<pid>: <command line>`.
pub fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
        {
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}
