//! Letting slots of one bridge talk to each other when isolation is off.
//!
//! With `br_netfilter` loaded (Docker loads it), frames crossing a Linux bridge go through the
//! host's iptables `FORWARD` chain, whose policy Docker sets to `DROP`; turning bridge-port
//! isolation off is then not enough. Like Docker for `docker0`, the pool adds
//! `FORWARD -i <bridge> -o <bridge> -j ACCEPT` for each of its bridges, and removes it with the
//! bridge. Nothing is done when bridged frames bypass iptables.

use super::SysError;

const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn bridged_frames_filtered() -> bool {
    std::fs::read_to_string(BRIDGE_NF).is_ok_and(|v| v.trim() == "1")
}

async fn iptables(args: &[&str]) -> Result<bool, SysError> {
    let out = tokio::process::Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .await
        .map_err(SysError::io("run", "iptables"))?;
    Ok(out.status.success())
}

fn rule(bridge: &str) -> [&str; 7] {
    ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
}

/// Accepts forwarding between ports of `bridge`, once.
pub(crate) async fn allow_intra_bridge(bridge: &str) -> Result<(), SysError> {
    if !bridged_frames_filtered() {
        return Ok(());
    }
    let r = rule(bridge);
    if iptables(&[&["-C"], &r[..]].concat()).await? {
        return Ok(());
    }
    if iptables(&[&["-I"], &r[..]].concat()).await? {
        Ok(())
    } else {
        Err(SysError::NotFound(format!("iptables rule {}", r.join(" "))))
    }
}

/// Removes every copy of the rule for `bridge`; a missing rule is not an error.
pub(crate) async fn remove_intra_bridge(bridge: &str) -> Result<(), SysError> {
    let r = rule(bridge);
    for _ in 0..16 {
        if !iptables(&[&["-D"], &r[..]].concat()).await.unwrap_or(false) {
            break;
        }
    }
    Ok(())
}
