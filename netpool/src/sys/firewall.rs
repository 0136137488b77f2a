//! The host's packet filter around a pool's bridges, through `iptables`.
//!
//! **Guard.** A slot's traffic to the host arrives on the pool's bridge and goes through the
//! host's `INPUT` chain, whatever host address it is sent to (the gateway, the host's other
//! interfaces, Docker's bridge); its traffic to other bridges (other pools, Docker's
//! containers) goes through `FORWARD`. The guard is two chains per pool, `NETPOOL-<name>-IN`
//! and `NETPOOL-<name>-FWD`, and one jump into each at the top of `INPUT` and `FORWARD` per
//! bridge. The chains only refuse or return, never accept, so the host's own rules still
//! decide what they do not refuse:
//! - `-IN`: replies and related ICMP (`ESTABLISHED,RELATED`, e.g. a function answering the
//!   invoker, which connects from the host to the slot) return; pings return; TCP and UDP
//!   to the allowed ports return; everything else is refused (a TCP reset, an ICMP port unreachable), so a
//!   function's connect fails at once instead of hanging until its time limit.
//! - `-FWD`: replies return; new traffic to a private, shared or link-local range (10/8,
//!   172.16/12, 192.168/16, 100.64/10, 169.254/16: other slots, containers, a cloud's metadata
//!   service) is refused; anything else returns to the host's rules (egress, if the host
//!   routes and masquerades it).
//!
//! Slots of one bridge do not cross the host's stack: isolated bridge ports keep them apart.
//! Slot namespaces have IPv6 off, so only `iptables` (IPv4) is needed.
//!
//! **Backends.** `iptables` may be the nf_tables or the legacy build; the first of `iptables`,
//! `iptables-nft` and `iptables-legacy` found is used. A refusal in either backend's tables
//! drops the packet (the kernel runs both), so the guard holds whichever one the host's other
//! rules use. (The intra-bridge accept below must share Docker's backend; Docker uses the
//! default `iptables` as we do.)
//!
//! **Intra-bridge.** With `br_netfilter` loaded (Docker loads it), frames crossing a Linux
//! bridge go through the host's `FORWARD` chain, whose policy Docker sets to `DROP`; turning
//! bridge-port isolation off is then not enough. Like Docker for `docker0`, the pool adds
//! `FORWARD -i <bridge> -o <bridge> -j ACCEPT` for each of its bridges, and removes it with the
//! bridge. Nothing is done when bridged frames bypass iptables.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::SysError;

const BRIDGE_NF: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Destinations a slot may not open connections to through the host's routing.
const PRIVATE_RANGES: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
];

fn bridged_frames_filtered() -> bool {
    std::fs::read_to_string(BRIDGE_NF).is_ok_and(|v| v.trim() == "1")
}

/// The `iptables` build to run, found once.
fn binary() -> Result<&'static PathBuf, SysError> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let dirs: Vec<PathBuf> = std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .collect();
            ["iptables", "iptables-nft", "iptables-legacy"]
                .iter()
                .find_map(|name| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()))
        })
        .as_ref()
        .ok_or_else(|| SysError::NotFound("iptables, iptables-nft or iptables-legacy".into()))
}

/// Runs one `iptables` command; `Ok(Err(stderr))` when iptables refused it.
async fn run(args: &[&str]) -> Result<Result<String, String>, SysError> {
    let bin = binary()?;
    let out = tokio::process::Command::new(bin)
        .args(["-w", "5"])
        .args(args)
        .output()
        .await
        .map_err(SysError::io("run", bin.display()))?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    })
}

/// Runs one `iptables` command that must succeed.
async fn must(args: &[&str]) -> Result<String, SysError> {
    run(args).await?.map_err(|detail| SysError::Firewall {
        command: args.join(" "),
        detail,
    })
}

async fn iptables(args: &[&str]) -> Result<bool, SysError> {
    Ok(run(args).await?.is_ok())
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
    must(&[&["-I"], &r[..]].concat()).await.map(drop)
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

/// The guard's chains of pool `pool`: (input, forward).
pub(crate) fn chains(pool: &str) -> (String, String) {
    (format!("NETPOOL-{pool}-IN"), format!("NETPOOL-{pool}-FWD"))
}

/// The rules of the guard's chains, as `iptables -A` argument lists.
pub(crate) fn guard_rules(pool: &str, allow: &[(u16, u16)]) -> Vec<Vec<String>> {
    let (input, forward) = chains(pool);
    let mut rules = Vec::new();
    let mut add = |chain: &str, rest: &[&str]| {
        let mut r = vec![chain.to_owned()];
        r.extend(rest.iter().map(|s| (*s).to_owned()));
        rules.push(r);
    };
    let replies = [
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED,RELATED",
        "-j",
        "RETURN",
    ];
    add(&input, &replies);
    // A ping of the gateway reaches no service; it tells a function (and a VM guest's
    // network test) that its link works.
    add(
        &input,
        &["-p", "icmp", "--icmp-type", "echo-request", "-j", "RETURN"],
    );
    for &(lo, hi) in allow {
        let ports = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}:{hi}")
        };
        for proto in ["tcp", "udp"] {
            add(&input, &["-p", proto, "--dport", &ports, "-j", "RETURN"]);
        }
    }
    let reset = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"];
    let unreachable = ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"];
    add(&input, &reset);
    add(&input, &unreachable);
    add(&forward, &replies);
    for net in PRIVATE_RANGES {
        add(&forward, &[&["-d", net], &reset[..]].concat());
        add(&forward, &[&["-d", net], &unreachable[..]].concat());
    }
    rules
}

/// Creates (or refills) the guard's chains of `pool`, allowing `allow` on the host. Undoes
/// itself on failure.
pub(crate) async fn install_guard(pool: &str, allow: &[(u16, u16)]) -> Result<(), SysError> {
    let (input, forward) = chains(pool);
    let result = async {
        for chain in [&input, &forward] {
            if !iptables(&["-N", chain]).await? {
                // Left by an earlier run that could not remove it: start from empty.
                must(&["-F", chain]).await?;
            }
        }
        for r in guard_rules(pool, allow) {
            let args: Vec<&str> = std::iter::once("-A")
                .chain(r.iter().map(String::as_str))
                .collect();
            must(&args).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = remove_guard(pool).await;
    }
    result
}

/// The jumps of bridge `bridge` into the guard's chains.
fn jumps(pool: &str, bridge: &str) -> [Vec<String>; 2] {
    let (input, forward) = chains(pool);
    let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    [
        v(&["INPUT", "-i", bridge, "-j", &input]),
        v(&["FORWARD", "-i", bridge, "!", "-o", bridge, "-j", &forward]),
    ]
}

/// Sends the traffic of `bridge` through the guard of `pool`, ahead of the host's rules.
/// Undoes itself on failure.
pub(crate) async fn guard_bridge(pool: &str, bridge: &str) -> Result<(), SysError> {
    let mut done: Vec<&[String]> = Vec::new();
    let all = jumps(pool, bridge);
    for j in &all {
        let mut args = vec!["-I", j[0].as_str(), "1"];
        args.extend(j[1..].iter().map(String::as_str));
        if let Err(e) = must(&args).await {
            for d in done {
                let mut args = vec!["-D"];
                args.extend(d.iter().map(String::as_str));
                let _ = run(&args).await;
            }
            return Err(e);
        }
        done.push(j);
    }
    Ok(())
}

/// Removes the guard of `pool`: every jump into its chains (of any bridge, also of a bridge
/// gone since), then the chains. Missing ones are not errors; keeps going past failures and
/// reports every one.
pub(crate) async fn remove_guard(pool: &str) -> Vec<SysError> {
    if binary().is_err() {
        // No iptables: no guard could have been installed.
        return Vec::new();
    }
    let (input, forward) = chains(pool);
    let mut errors = Vec::new();
    for (builtin, chain) in [("INPUT", &input), ("FORWARD", &forward)] {
        let listed = match run(&["-S", builtin]).await {
            Ok(Ok(out)) => out,
            Ok(Err(detail)) => {
                errors.push(SysError::Firewall {
                    command: format!("-S {builtin}"),
                    detail,
                });
                continue;
            }
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for line in listed.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let jumps_here = words.windows(2).any(|w| w == ["-j", chain.as_str()]);
            if words.first() != Some(&"-A") || !jumps_here {
                continue;
            }
            let mut args = vec!["-D"];
            args.extend(&words[1..]);
            if let Err(e) = must(&args).await {
                errors.push(e);
            }
        }
    }
    for chain in [&input, &forward] {
        match run(&["-F", chain]).await {
            // No such chain: nothing to remove.
            Ok(Err(_)) => continue,
            Ok(Ok(_)) => {}
            Err(e) => {
                errors.push(e);
                continue;
            }
        }
        if let Err(e) = must(&["-X", chain]).await {
            errors.push(e);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_returns_replies_and_allowed_ports_and_refuses_the_rest() {
        let rules = guard_rules("w0", &[(3233, 3233), (30000, 30099)]);
        let lines: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            lines[..8],
            [
                "NETPOOL-w0-IN -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
                "NETPOOL-w0-IN -p icmp --icmp-type echo-request -j RETURN",
                "NETPOOL-w0-IN -p tcp --dport 3233 -j RETURN",
                "NETPOOL-w0-IN -p udp --dport 3233 -j RETURN",
                "NETPOOL-w0-IN -p tcp --dport 30000:30099 -j RETURN",
                "NETPOOL-w0-IN -p udp --dport 30000:30099 -j RETURN",
                "NETPOOL-w0-IN -p tcp -j REJECT --reject-with tcp-reset",
                "NETPOOL-w0-IN -j REJECT --reject-with icmp-port-unreachable",
            ]
        );
        assert_eq!(
            lines[8],
            "NETPOOL-w0-FWD -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"
        );
        assert!(lines.contains(
            &"NETPOOL-w0-FWD -d 10.0.0.0/8 -p tcp -j REJECT --reject-with tcp-reset".to_owned()
        ));
        assert!(
            lines.contains(
                &"NETPOOL-w0-FWD -d 169.254.0.0/16 -j REJECT --reject-with icmp-port-unreachable"
                    .to_owned()
            )
        );
        // The chains refuse or return; accepting is left to the host's own rules.
        assert!(lines.iter().all(|l| !l.contains("ACCEPT")));
    }

    #[test]
    fn a_bridges_jumps_leave_its_own_ports_to_the_bridge() {
        let [input, forward] = jumps("w0", "w0br1");
        assert_eq!(input.join(" "), "INPUT -i w0br1 -j NETPOOL-w0-IN");
        assert_eq!(
            forward.join(" "),
            "FORWARD -i w0br1 ! -o w0br1 -j NETPOOL-w0-FWD"
        );
    }
}
