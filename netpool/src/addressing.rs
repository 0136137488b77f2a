//! Slot identities: a slot's address, gateway, MAC and interface names are a pure function of
//! its `(bridge, index)`, so crash recovery can rebuild everything from names alone, and the
//! host's ARP and FDB entries stay valid when a slot is recycled.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::config::PoolConfig;

/// Where a slot sits: its bridge and its index on that bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId {
    pub bridge: u16,
    pub index: u16,
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.bridge, self.index)
    }
}

/// Everything about a slot that follows from its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotAddress {
    pub id: SlotId,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    /// The host end of the veth pair.
    pub host_if: String,
    /// The bridge the host end is attached to.
    pub bridge: String,
    /// The namespace's bind mount.
    pub ns_path: PathBuf,
}

/// Derives names and addresses for one pool.
#[derive(Clone, Debug)]
pub(crate) struct Addressing {
    name: String,
    subnet: u32,
    bridge_prefix_len: u8,
    ns_dir: PathBuf,
    mac_tag: u8,
}

impl Addressing {
    pub(crate) fn new(config: &PoolConfig) -> Self {
        // One byte of the MAC tells pools apart: a small hash of the name.
        let mac_tag = config
            .name
            .bytes()
            .fold(0x5au8, |h, b| h.rotate_left(3) ^ b);
        Self {
            name: config.name.clone(),
            subnet: u32::from(config.subnet),
            bridge_prefix_len: config.bridge_prefix_len,
            ns_dir: config.ns_dir.clone(),
            mac_tag,
        }
    }

    fn block_base(&self, bridge: u16) -> u32 {
        self.subnet + (u32::from(bridge) << (32 - u32::from(self.bridge_prefix_len)))
    }

    /// The bridge's name and its gateway address.
    pub(crate) fn bridge(&self, bridge: u16) -> (String, Ipv4Addr) {
        (
            format!("{}br{bridge}", self.name),
            Ipv4Addr::from(self.block_base(bridge) + 1),
        )
    }

    /// The bridge's MAC, fixed and derived like a slot's (from the gateway address). A Linux
    /// bridge without an assigned address takes the lowest MAC among its ports, so it would
    /// change whenever a veth with a lower random MAC is added or removed, and a namespace that
    /// had resolved the gateway would send its replies to a MAC nobody owns until its ARP entry
    /// goes stale (seconds of lost segments on a freshly leased slot).
    pub(crate) fn bridge_mac(&self, bridge: u16) -> [u8; 6] {
        let o = self.bridge(bridge).1.octets();
        [0x02, self.mac_tag, o[0], o[1], o[2], o[3]]
    }

    pub(crate) fn bridge_prefix_len(&self) -> u8 {
        self.bridge_prefix_len
    }

    pub(crate) fn slot(&self, id: SlotId) -> SlotAddress {
        let ip = Ipv4Addr::from(self.block_base(id.bridge) + 2 + u32::from(id.index));
        let o = ip.octets();
        let (bridge, gateway) = self.bridge(id.bridge);
        SlotAddress {
            id,
            ip,
            prefix_len: self.bridge_prefix_len,
            gateway,
            // Locally administered, unicast.
            mac: [0x02, self.mac_tag, o[0], o[1], o[2], o[3]],
            host_if: format!("{}v{}-{}", self.name, id.bridge, id.index),
            bridge,
            ns_path: self.ns_dir.join(id.to_string()),
        }
    }

    /// The interface-name prefix of every veth of this pool.
    pub(crate) fn veth_prefix(&self) -> String {
        format!("{}v", self.name)
    }

    /// The interface-name prefix of every bridge of this pool.
    pub(crate) fn bridge_prefix(&self) -> String {
        format!("{}br", self.name)
    }

    /// Parses a slot id back from a host veth name or a namespace file name.
    pub(crate) fn parse_id(&self, s: &str) -> Option<SlotId> {
        let rest = s.strip_prefix(&self.veth_prefix()).unwrap_or(s);
        let (b, i) = rest.split_once('-')?;
        Some(SlotId {
            bridge: b.parse().ok()?,
            index: i.parse().ok()?,
        })
    }
}

/// Hands out slot ids: the lowest free index of the lowest bridge with room, so bridges fill
/// one after the other. Ids of destroyed slots come back only once their old host veth is gone
/// (the kernel tears namespaces down asynchronously, and a reused name or address would clash).
#[derive(Debug)]
pub(crate) struct Allocator {
    slots_per_bridge: u16,
    bridges: u16,
    free: BTreeSet<SlotId>,
    next: Option<SlotId>,
    in_use: usize,
}

impl Allocator {
    pub(crate) fn new(slots_per_bridge: u16, bridges: u16) -> Self {
        Self {
            slots_per_bridge,
            bridges,
            free: BTreeSet::new(),
            next: Some(SlotId {
                bridge: 0,
                index: 0,
            }),
            in_use: 0,
        }
    }

    pub(crate) fn allocate(&mut self) -> Option<SlotId> {
        let id = match self.free.pop_first() {
            Some(id) => id,
            None => {
                let id = self.next?;
                self.next = if id.index + 1 < self.slots_per_bridge {
                    Some(SlotId {
                        index: id.index + 1,
                        ..id
                    })
                } else if id.bridge + 1 < self.bridges {
                    Some(SlotId {
                        bridge: id.bridge + 1,
                        index: 0,
                    })
                } else {
                    None
                };
                id
            }
        };
        self.in_use += 1;
        Some(id)
    }

    /// Returns an id whose kernel objects are gone.
    pub(crate) fn free(&mut self, id: SlotId) {
        if self.free.insert(id) {
            self.in_use = self.in_use.saturating_sub(1);
        }
    }

    pub(crate) fn in_use(&self) -> usize {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addressing() -> Addressing {
        Addressing::new(&PoolConfig::new("np0", Ipv4Addr::new(10, 99, 0, 0), 16))
    }

    #[test]
    fn addresses_follow_from_the_id() {
        let a = addressing();
        let s = a.slot(SlotId {
            bridge: 1,
            index: 5,
        });
        assert_eq!(s.ip, Ipv4Addr::new(10, 99, 4, 7));
        assert_eq!(s.gateway, Ipv4Addr::new(10, 99, 4, 1));
        assert_eq!(s.prefix_len, 22);
        assert_eq!(s.host_if, "np0v1-5");
        assert_eq!(s.bridge, "np0br1");
        assert_eq!(s.ns_path, PathBuf::from("/run/netpool/np0/1-5"));
        assert_eq!(&s.mac[2..], &[10, 99, 4, 7]);
        assert_eq!(s.mac[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn names_fit_the_kernel_limit_and_parse_back() {
        let a = Addressing::new(&PoolConfig::new("abcde", Ipv4Addr::new(10, 0, 0, 0), 16));
        let s = a.slot(SlotId {
            bridge: 63,
            index: 1022,
        });
        assert!(s.host_if.len() <= 15, "{}", s.host_if);
        assert_eq!(a.parse_id(&s.host_if), Some(s.id));
        assert_eq!(a.parse_id("63-1022"), Some(s.id));
        assert_eq!(a.parse_id("abcdebr0"), None);
    }

    #[test]
    fn allocator_fills_bridges_in_order_and_reuses_freed_ids() {
        let mut al = Allocator::new(2, 2);
        let ids: Vec<_> = std::iter::from_fn(|| al.allocate()).collect();
        assert_eq!(
            ids,
            vec![
                SlotId {
                    bridge: 0,
                    index: 0
                },
                SlotId {
                    bridge: 0,
                    index: 1
                },
                SlotId {
                    bridge: 1,
                    index: 0
                },
                SlotId {
                    bridge: 1,
                    index: 1
                },
            ]
        );
        assert_eq!(al.in_use(), 4);
        al.free(ids[1]);
        al.free(ids[1]);
        assert_eq!(al.in_use(), 3);
        assert_eq!(al.allocate(), Some(ids[1]));
        assert_eq!(al.allocate(), None);
    }

    #[test]
    fn every_id_of_a_pool_has_its_own_address_names_and_mac() {
        let mut c = PoolConfig::new("np1", Ipv4Addr::new(10, 98, 0, 0), 20);
        c.bridge_prefix_len = 24;
        c.slots_per_bridge = 253;
        let a = Addressing::new(&c);
        let mut al = Allocator::new(c.slots_per_bridge, c.bridge_count() as u16);
        let slots: Vec<SlotAddress> = std::iter::from_fn(|| al.allocate())
            .map(|id| a.slot(id))
            .collect();
        assert_eq!(slots.len(), 16 * 253);
        let gateways: BTreeSet<Ipv4Addr> = (0..16).map(|b| a.bridge(b).1).collect();
        let distinct =
            |f: &dyn Fn(&SlotAddress) -> String| slots.iter().map(f).collect::<BTreeSet<_>>().len();
        assert_eq!(distinct(&|s| s.ip.to_string()), slots.len());
        assert_eq!(distinct(&|s| format!("{:?}", s.mac)), slots.len());
        assert_eq!(distinct(&|s| s.host_if.clone()), slots.len());
        assert_eq!(distinct(&|s| s.ns_path.display().to_string()), slots.len());
        for s in &slots {
            assert!(!gateways.contains(&s.ip), "{} is a gateway", s.ip);
            let host = u32::from(s.ip) & 0xff;
            assert!(
                (2..255).contains(&host),
                "{} is a network or broadcast address",
                s.ip
            );
            assert_eq!(s.gateway, a.bridge(s.id.bridge).1);
        }
    }
}
