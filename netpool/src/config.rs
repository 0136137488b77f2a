//! The pool's configuration and its validation.
//!
//! Every kernel object a pool creates carries the pool's `name` as a prefix, and every address
//! comes from its `subnet`, so two pools (two tests, two invokers) on one host never collide as
//! long as their names differ and their subnets do not overlap; a pool whose subnet overlaps
//! an address or route on the host is refused at start-up.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

/// Default number of slots per bridge: below the kernel's 1023-port bridge limit.
pub const DEFAULT_SLOTS_PER_BRIDGE: u16 = 1000;
/// Default size of each bridge's subnet: a /22 holds 1021 slots plus the gateway.
pub const DEFAULT_BRIDGE_PREFIX_LEN: u8 = 22;
/// Default bound on slots being created at once: enough to keep up with bursts, low enough not
/// to starve the hot path of the kernel's RTNL lock.
pub const DEFAULT_MAX_CONCURRENT_CREATES: usize = 4;
/// Default time `lease` waits for a slot when the pool is empty.
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// The kernel refuses a bridge's 1024th port (`BR_MAX_PORTS`, port 0 reserved).
pub const MAX_BRIDGE_PORTS: u16 = 1023;
/// Bridges per pool; keeps interface names within the kernel's 15 characters.
pub const MAX_BRIDGES: u16 = 100;
/// Longest pool name; it prefixes every interface name.
pub const MAX_NAME_LEN: usize = 5;
/// Where [`PoolConfig::subnet_auto`] looks for a free range: 10.200.0.0 to 10.250.255.255.
pub const AUTO_SUBNET_FIRST: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// The last address [`PoolConfig::subnet_auto`] may use.
pub const AUTO_SUBNET_LAST: Ipv4Addr = Ipv4Addr::new(10, 250, 255, 255);

/// What a slot is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// A namespace for a container: `lo` and `eth0`.
    Container,
    /// A namespace for a VMM: `eth0` plus a persistent TAP device wired to it by tc ingress
    /// redirects both ways, so the guest owns the slot's address and MAC.
    Vm,
}

/// What `lease` does when no slot is idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEmpty {
    /// Wait for the background refill, up to the lease deadline.
    Wait,
    /// Create a slot on the caller's task (a few milliseconds and a turn on the RTNL lock).
    CreateInline,
}

/// A pool's configuration. Build one with [`PoolConfig::new`] and adjust the fields.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// 1 to 5 characters `[a-z0-9]`: the prefix of every interface and the folder name of the
    /// pool's namespaces. Crash recovery finds an earlier run's objects by it.
    pub name: String,
    /// The first address of the pool's range; each bridge takes the next block of
    /// `bridge_prefix_len`, its first host address being the gateway.
    pub subnet: Ipv4Addr,
    /// Length of the pool's whole range, e.g. 16.
    pub subnet_prefix_len: u8,
    /// Instead of `subnet`, take the first range of `subnet_prefix_len` between
    /// 10.200.0.0 and 10.250.255.255 that overlaps no address or route on the
    /// host ([`crate::NetPool::subnet`] tells which). A pool that has not created a bridge yet
    /// is invisible to the search, so the pool creates its first bridge at start-up to claim
    /// the range. Off by default: an operator's fixed range is predictable.
    pub subnet_auto: bool,
    /// Length of each bridge's block, e.g. 22.
    pub bridge_prefix_len: u8,
    /// Slots attached to one bridge before the next bridge is created.
    pub slots_per_bridge: u16,
    /// Most slots the pool holds at once, idle and leased.
    pub max_slots: usize,
    /// The refill starts when fewer slots than this are idle...
    pub low_watermark: usize,
    /// ...and stops when this many are idle.
    pub high_watermark: usize,
    /// Most slots being created at once by the refill.
    pub max_concurrent_creates: usize,
    /// What `lease` does when no slot is idle.
    pub on_empty: OnEmpty,
    /// How long `lease` waits at most.
    pub lease_timeout: Duration,
    /// Container or VM slots.
    pub kind: SlotKind,
    /// Keep slots from reaching each other (isolated bridge ports); they still reach the
    /// gateway, i.e. the host.
    pub isolate_slots: bool,
    /// Keep slots off the host and other networks (the host guard of [`crate`]'s firewall
    /// rules): a slot's connections to any of the host's addresses, to other bridges and to
    /// private ranges are refused, but for `allow_host_ports`; connections the host opens to a
    /// slot, and their replies, pass. On by default.
    pub guard_host: bool,
    /// Host ports (inclusive ranges, TCP and UDP) slots may reach despite `guard_host`.
    pub allow_host_ports: Vec<(u16, u16)>,
    /// Where the namespaces are bind-mounted (`<ns_dir>/<bridge>-<index>`); this path is what an
    /// OCI runtime gets as `linux.namespaces[].path`.
    pub ns_dir: PathBuf,
}

impl PoolConfig {
    /// A configuration with defaults: container slots, no pre-created slots, isolation and the
    /// host guard on, and namespaces under `/run/netpool/<name>`.
    pub fn new(name: &str, subnet: Ipv4Addr, subnet_prefix_len: u8) -> Self {
        Self {
            name: name.to_owned(),
            subnet,
            subnet_prefix_len,
            subnet_auto: false,
            bridge_prefix_len: DEFAULT_BRIDGE_PREFIX_LEN.max(subnet_prefix_len),
            slots_per_bridge: DEFAULT_SLOTS_PER_BRIDGE,
            max_slots: 1000,
            low_watermark: 0,
            high_watermark: 0,
            max_concurrent_creates: DEFAULT_MAX_CONCURRENT_CREATES,
            on_empty: OnEmpty::Wait,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            kind: SlotKind::Container,
            isolate_slots: true,
            guard_host: true,
            allow_host_ports: Vec::new(),
            ns_dir: PathBuf::from("/run/netpool").join(name),
        }
    }

    /// Number of bridges the range holds.
    pub fn bridge_count(&self) -> u32 {
        1 << (self.bridge_prefix_len - self.subnet_prefix_len)
    }

    /// Checks every rule; the error names the one broken.
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        use PoolConfigError as E;
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        if self.name.is_empty()
            || self.name.len() > MAX_NAME_LEN
            || !self.name.chars().all(valid_char)
        {
            return Err(E::Name(self.name.clone()));
        }
        if !(8..=30).contains(&self.subnet_prefix_len) {
            return Err(E::SubnetPrefix(self.subnet_prefix_len));
        }
        let host_bits = 32 - u32::from(self.subnet_prefix_len);
        if u32::from(self.subnet) & ((1u32 << host_bits) - 1) != 0 {
            return Err(E::SubnetUnaligned {
                subnet: self.subnet,
                prefix_len: self.subnet_prefix_len,
            });
        }
        if self.bridge_prefix_len < self.subnet_prefix_len || self.bridge_prefix_len > 30 {
            return Err(E::BridgePrefix {
                bridge: self.bridge_prefix_len,
                subnet: self.subnet_prefix_len,
            });
        }
        if self.bridge_count() > u32::from(MAX_BRIDGES) {
            return Err(E::TooManyBridges(self.bridge_count()));
        }
        // Network address, gateway and broadcast are not slots.
        let block_hosts = (1u32 << (32 - u32::from(self.bridge_prefix_len))) - 3;
        let per_bridge_max = block_hosts.min(u32::from(MAX_BRIDGE_PORTS));
        if self.slots_per_bridge == 0 || u32::from(self.slots_per_bridge) > per_bridge_max {
            return Err(E::SlotsPerBridge {
                slots: self.slots_per_bridge,
                max: per_bridge_max,
            });
        }
        let capacity = self.bridge_count() as usize * usize::from(self.slots_per_bridge);
        if self.max_slots == 0 || self.max_slots > capacity {
            return Err(E::MaxSlots {
                max_slots: self.max_slots,
                capacity,
            });
        }
        if self.low_watermark > self.high_watermark || self.high_watermark > self.max_slots {
            return Err(E::Watermarks {
                low: self.low_watermark,
                high: self.high_watermark,
                max_slots: self.max_slots,
            });
        }
        if self.max_concurrent_creates == 0 {
            return Err(E::MaxConcurrentCreates);
        }
        if let Some(&(lo, hi)) = self
            .allow_host_ports
            .iter()
            .find(|&&(lo, hi)| lo == 0 || lo > hi)
        {
            return Err(E::AllowHostPorts { lo, hi });
        }
        if !self.ns_dir.is_absolute() {
            return Err(E::NsDir(self.ns_dir.clone()));
        }
        Ok(())
    }
}

/// A broken configuration rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolConfigError {
    #[error("pool name {0:?} must be 1 to 5 characters [a-z0-9]")]
    Name(String),
    #[error("subnet prefix length /{0} must be between /8 and /30")]
    SubnetPrefix(u8),
    #[error("subnet {subnet}/{prefix_len} has host bits set")]
    SubnetUnaligned { subnet: Ipv4Addr, prefix_len: u8 },
    #[error("bridge prefix length /{bridge} must lie between the subnet's /{subnet} and /30")]
    BridgePrefix { bridge: u8, subnet: u8 },
    #[error("the subnet splits into {0} bridge blocks; at most 100 are supported")]
    TooManyBridges(u32),
    #[error("slots per bridge must be between 1 and {max}, not {slots}")]
    SlotsPerBridge { slots: u16, max: u32 },
    #[error("max slots {max_slots} must be between 1 and the subnet's capacity {capacity}")]
    MaxSlots { max_slots: usize, capacity: usize },
    #[error("watermarks must satisfy low ({low}) <= high ({high}) <= max slots ({max_slots})")]
    Watermarks {
        low: usize,
        high: usize,
        max_slots: usize,
    },
    #[error("max concurrent creates must be at least 1")]
    MaxConcurrentCreates,
    #[error("allowed host ports {lo}-{hi} must be a range of ports 1 to 65535, low to high")]
    AllowHostPorts { lo: u16, hi: u16 },
    #[error("namespace folder {0:?} must be an absolute path")]
    NsDir(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> PoolConfig {
        PoolConfig::new("t1", Ipv4Addr::new(10, 77, 0, 0), 16)
    }

    #[test]
    fn defaults_validate() {
        let c = ok();
        c.validate().unwrap();
        assert_eq!(c.bridge_count(), 64);
        assert_eq!(c.ns_dir, PathBuf::from("/run/netpool/t1"));
    }

    #[test]
    fn each_rule_is_named() {
        type Mutation = Box<dyn Fn(&mut PoolConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.name = "Bad".into()), "pool name"),
            (Box::new(|c| c.name = "toolong".into()), "pool name"),
            (
                Box::new(|c| c.subnet = Ipv4Addr::new(10, 77, 1, 0)),
                "host bits",
            ),
            (Box::new(|c| c.bridge_prefix_len = 12), "bridge prefix"),
            (Box::new(|c| c.slots_per_bridge = 1022), "slots per bridge"),
            (Box::new(|c| c.slots_per_bridge = 0), "slots per bridge"),
            (Box::new(|c| c.max_slots = 0), "max slots"),
            (Box::new(|c| c.low_watermark = 5), "watermarks"),
            (Box::new(|c| c.max_concurrent_creates = 0), "concurrent"),
            (Box::new(|c| c.ns_dir = "rel".into()), "absolute"),
            (
                Box::new(|c| c.allow_host_ports = vec![(80, 80), (90, 89)]),
                "allowed host ports 90-89",
            ),
        ];
        for (mutate, expect) in cases {
            let mut c = ok();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(expect), "{err:?} should mention {expect:?}");
        }
    }

    #[test]
    fn small_blocks_bound_slots_per_bridge() {
        let mut c = PoolConfig::new("t2", Ipv4Addr::new(10, 78, 0, 0), 24);
        c.bridge_prefix_len = 28;
        c.slots_per_bridge = 13;
        c.max_slots = 10;
        c.validate().unwrap();
        c.slots_per_bridge = 14;
        assert!(matches!(
            c.validate(),
            Err(PoolConfigError::SlotsPerBridge { max: 13, .. })
        ));
    }
}
