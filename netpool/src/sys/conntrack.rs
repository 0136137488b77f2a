//! The host's connection-tracking entries of a slot's address.
//!
//! Entries keyed by a slot's IP outlive its tenant in the host namespace (Docker's bridge
//! netfilter and NAT create them); NAT'd replies could reach the next tenant. The table is read
//! from `/proc/net/nf_conntrack` (cheap, no process), and only when it holds an entry of the
//! address is `conntrack -D` run for each direction.

use std::net::Ipv4Addr;

use super::SysError;

const TABLE: &str = "/proc/net/nf_conntrack";

/// True when the host's conntrack table has an entry whose original or reply tuple names `ip`.
pub(crate) fn has_entries(ip: Ipv4Addr) -> Result<bool, SysError> {
    let text = match std::fs::read_to_string(TABLE) {
        Ok(t) => t,
        // No conntrack module loaded: nothing can be tracked.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(SysError::io("read", TABLE)(e)),
    };
    let (src, dst) = (format!(" src={ip} "), format!(" dst={ip} "));
    Ok(text.lines().any(|l| l.contains(&src) || l.contains(&dst)))
}

/// Deletes every host conntrack entry of `ip`, in both directions.
pub(crate) async fn flush(ip: Ipv4Addr) -> Result<(), SysError> {
    if !has_entries(ip)? {
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
    if has_entries(ip)? {
        return Err(SysError::Conntrack {
            ip,
            detail: "entries remain after deletion".into(),
        });
    }
    Ok(())
}
