//! The host's connection-tracking entries of a slot's address.
//!
//! Entries keyed by a slot's IP outlive its tenant in the host namespace (Docker's bridge
//! netfilter and NAT create them); NAT'd replies could reach the next tenant. The table is read
//! from `/proc/net/nf_conntrack` (cheap, no process), and only when it holds an entry of the
//! address is `conntrack -D` run for each direction.

use std::net::Ipv4Addr;

use super::SysError;
use super::kernel::blocking;

const TABLE: &str = "/proc/net/nf_conntrack";

/// True when the host's conntrack table has an entry whose original or reply tuple names `ip`.
/// The table can hold hundreds of thousands of lines: it is streamed on tokio's blocking pool,
/// never read on a worker.
pub(crate) async fn has_entries(ip: Ipv4Addr) -> Result<bool, SysError> {
    blocking(move || has_entries_blocking(ip)).await
}

fn has_entries_blocking(ip: Ipv4Addr) -> Result<bool, SysError> {
    use std::io::BufRead;
    let file = match std::fs::File::open(TABLE) {
        Ok(f) => f,
        // No conntrack module loaded: nothing can be tracked.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(SysError::io("read", TABLE)(e)),
    };
    let (src, dst) = (format!(" src={ip} "), format!(" dst={ip} "));
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(SysError::io("read", TABLE))?;
        if line.contains(&src) || line.contains(&dst) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Deletes every host conntrack entry of `ip`, in both directions.
pub(crate) async fn flush(ip: Ipv4Addr) -> Result<(), SysError> {
    if !has_entries(ip).await? {
        return Ok(());
    }
    let ip_s = ip.to_string();
    // Original source/destination and reply source/destination.
    for flag in ["-s", "-d", "-r", "-q"] {
        let out = tokio::process::Command::new("conntrack")
            .args(["-D", flag, &ip_s])
            .output()
            .await
            .map_err(|e| SysError::Conntrack {
                ip,
                detail: format!("cannot run conntrack (apt-get install conntrack): {e}"),
            })?;
        // conntrack exits 1 when it deleted nothing; that is success here.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !stderr.contains("flow entries have been deleted") {
            return Err(SysError::Conntrack {
                ip,
                detail: stderr.trim().to_owned(),
            });
        }
    }
    if has_entries(ip).await? {
        return Err(SysError::Conntrack {
            ip,
            detail: "entries remain after deletion".into(),
        });
    }
    Ok(())
}
