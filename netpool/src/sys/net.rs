//! Links, addresses, routes, neighbours and tc through rtnetlink, on the host's socket or on a
//! slot's socket (opened inside the slot, see [`super::ns::create_netns`]).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::tc::TcAttribute;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use super::{HostNet, HostNetKind, SysError};

/// A netlink connection: the handle, and the task that drives its socket (aborted on drop).
#[derive(Debug)]
pub(crate) struct Netlink {
    pub(crate) handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// A connection in the calling thread's namespace, which for the pool is the host's.
    pub(crate) fn host() -> Result<Self, SysError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(SysError::io("open netlink socket in", "host namespace"))?;
        Ok(Self {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// Wraps a socket opened inside a slot. Must run inside a tokio runtime.
    pub(crate) fn from_socket(fd: OwnedFd) -> Self {
        // SAFETY: `fd` is an owned NETLINK_ROUTE socket; ownership moves into the TokioSocket.
        let socket = unsafe { netlink_sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        Self {
            handle,
            task: tokio::spawn(conn),
        }
    }
}

/// The index of link `name`, if it exists.
pub(crate) async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, SysError> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(SysError::netlink("look up link", name)(e)),
    }
}

/// Every link's index and name.
pub(crate) async fn links(h: &Handle) -> Result<Vec<(u32, String)>, SysError> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(SysError::netlink("list links", "of namespace"))?;
    Ok(msgs
        .iter()
        .map(|m| (m.header.index, link_name(m)))
        .collect())
}

/// Every IPv4 address on a link, and every IPv4 unicast route of the main table but the
/// default route (which overlaps everything and is not a claim on a range).
pub(crate) async fn host_networks(h: &Handle) -> Result<Vec<HostNet>, SysError> {
    let names: std::collections::HashMap<u32, String> = links(h).await?.into_iter().collect();
    let name = |index: u32| names.get(&index).cloned().unwrap_or_default();
    let mut out = Vec::new();
    let addrs: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(SysError::netlink("list addresses", "of host"))?;
    for a in &addrs {
        // IFA_LOCAL is the link's own address; IFA_ADDRESS is the peer's on point-to-point links.
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let address = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(address) {
            out.push(HostNet {
                kind: HostNetKind::Address,
                ip,
                prefix_len: a.header.prefix_len,
                link: name(a.header.index),
            });
        }
    }
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(SysError::netlink("list routes", "of host"))?;
    for r in &routes {
        let mut table = u32::from(r.header.table);
        let mut dst = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if table != u32::from(RouteHeader::RT_TABLE_MAIN)
            || r.header.kind != RouteType::Unicast
            || r.header.destination_prefix_length == 0
        {
            continue;
        }
        if let Some(ip) = dst {
            out.push(HostNet {
                kind: HostNetKind::Route,
                ip,
                prefix_len: r.header.destination_prefix_length,
                link: oif.map(name).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

fn link_name(m: &LinkMessage) -> String {
    m.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Creates bridge `name` with MAC `mac` and address `gateway/prefix_len` and brings it up;
/// returns its index.
pub(crate) async fn create_bridge(
    h: &Handle,
    name: &str,
    gateway: Ipv4Addr,
    prefix_len: u8,
    mac: [u8; 6],
) -> Result<u32, SysError> {
    h.link()
        .add(LinkBridge::new(name).address(mac.to_vec()).up().build())
        .execute()
        .await
        .map_err(SysError::netlink("create bridge", name))?;
    let index = link_index(h, name)
        .await?
        .ok_or_else(|| SysError::NotFound(format!("bridge {name}")))?;
    if let Err(e) = h
        .address()
        .add(index, IpAddr::V4(gateway), prefix_len)
        .execute()
        .await
    {
        let _ = h.link().del(index).execute().await;
        return Err(SysError::netlink("add gateway address to", name)(e));
    }
    Ok(index)
}

/// Deletes link `index`.
pub(crate) async fn delete_link(h: &Handle, index: u32, name: &str) -> Result<(), SysError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(e) => Err(SysError::netlink("delete link", name)(e)),
    }
}

/// Creates a veth pair whose host end `host_if` is attached to bridge `bridge` and up, and
/// whose peer `eth0` (with MAC `mac`) is born inside the namespace `ns_fd`: creating the peer in
/// place costs about half a millisecond where moving it would cost 16 (netpool-notes §6).
/// With `isolated`, the host end is an isolated bridge port: it reaches the bridge (the host)
/// but not another isolated port. Returns the host end's index.
pub(crate) async fn create_veth(
    h: &Handle,
    host_if: &str,
    bridge: u32,
    ns_fd: RawFd,
    mac: [u8; 6],
    isolated: bool,
) -> Result<u32, SysError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0".to_owned())
        .address(mac.to_vec())
        .setns_by_fd(ns_fd)
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(
        netlink_packet_route::link::InfoKind::Veth,
    )
    .name(host_if.to_owned())
    .set_info_data(netlink_packet_route::link::InfoData::Veth(
        netlink_packet_route::link::InfoVeth::Peer(peer),
    ))
    .controller(bridge)
    .up()
    .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(SysError::netlink("create veth", host_if))?;
    let index = link_index(h, host_if)
        .await?
        .ok_or_else(|| SysError::NotFound(format!("veth {host_if}")))?;
    if isolated
        && let Err(e) = h
            .link()
            .set_port(LinkBridgePort::new(index).isolated(true).build())
            .execute()
            .await
    {
        let _ = h.link().del(index).execute().await;
        return Err(SysError::netlink("isolate bridge port", host_if)(e));
    }
    Ok(index)
}

/// Inside a slot: `lo` up, `eth0` with `ip/prefix_len` and up, default route via `gateway`.
/// Returns eth0's index.
pub(crate) async fn configure_slot(
    h: &Handle,
    ip: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
) -> Result<u32, SysError> {
    let lo = link_index(h, "lo")
        .await?
        .ok_or_else(|| SysError::NotFound("lo".into()))?;
    h.link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(SysError::netlink("bring up", "lo"))?;
    let eth0 = link_index(h, "eth0")
        .await?
        .ok_or_else(|| SysError::NotFound("eth0".into()))?;
    h.address()
        .add(eth0, IpAddr::V4(ip), prefix_len)
        .execute()
        .await
        .map_err(SysError::netlink("add address to", "eth0"))?;
    h.link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .map_err(SysError::netlink("bring up", "eth0"))?;
    h.route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gateway)
                .build(),
        )
        .execute()
        .await
        .map_err(SysError::netlink("add default route via", gateway))?;
    Ok(eth0)
}

/// Inside a VM slot: brings the TAP up and redirects every frame arriving on eth0 to the TAP
/// and every frame arriving on the TAP to eth0 (ingress qdisc plus a u32 match-all filter with
/// `mirred egress redirect`, the tc-redirect-tap scheme), so the guest behind the TAP owns
/// eth0's address and MAC.
pub(crate) async fn wire_tap(h: &Handle, eth0: u32, tap: &str) -> Result<(), SysError> {
    let tap_index = link_index(h, tap)
        .await?
        .ok_or_else(|| SysError::NotFound(format!("tap {tap}")))?;
    h.link()
        .set(LinkUnspec::new_with_index(tap_index).up().build())
        .execute()
        .await
        .map_err(SysError::netlink("bring up", tap))?;
    for (src, dst, name) in [(eth0, tap_index, "eth0"), (tap_index, eth0, tap)] {
        h.qdisc()
            .add(src as i32)
            .ingress()
            .execute()
            .await
            .map_err(SysError::netlink("add ingress qdisc to", name))?;
        h.traffic_filter(src as i32)
            .add()
            .parent(0xffff_0000)
            // The kernel reads the protocol in network byte order.
            .protocol((libc::ETH_P_ALL as u16).to_be())
            .redirect(dst)
            .map_err(SysError::netlink("build redirect filter for", name))?
            .execute()
            .await
            .map_err(SysError::netlink("add redirect filter to", name))?;
    }
    Ok(())
}

/// The neighbour entries the kernel learned (not the permanent or no-ARP ones).
async fn learned_neighbours(h: &Handle) -> Result<Vec<NeighbourMessage>, SysError> {
    let entries: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(SysError::netlink("list neighbours", "of slot"))?;
    Ok(entries
        .into_iter()
        .filter(|n| {
            !matches!(
                n.header.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            )
        })
        .collect())
}

/// Deletes every neighbour entry the kernel learned.
pub(crate) async fn flush_neighbours(h: &Handle) -> Result<(), SysError> {
    for n in learned_neighbours(h).await? {
        match h.neighbours().del(n).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
            Err(e) => return Err(SysError::netlink("delete neighbour", "of slot")(e)),
        }
    }
    Ok(())
}

/// The state of a slot's network stack that a tenant could change, in a form that compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NetState {
    pub(crate) links: Vec<String>,
    pub(crate) addresses: Vec<String>,
    pub(crate) routes: Vec<String>,
    /// Learned (non-permanent) neighbour entries.
    pub(crate) neighbours: Vec<String>,
    pub(crate) qdiscs: Vec<String>,
}

impl NetState {
    /// What `after` has that `self` lacks (`+`) and the reverse (`-`), `; `-separated.
    pub(crate) fn diff(&self, after: &NetState) -> String {
        let mut out = Vec::new();
        for (what, b, a) in [
            ("link", &self.links, &after.links),
            ("address", &self.addresses, &after.addresses),
            ("route", &self.routes, &after.routes),
            ("neighbour", &self.neighbours, &after.neighbours),
            ("qdisc", &self.qdiscs, &after.qdiscs),
        ] {
            out.extend(
                a.iter()
                    .filter(|x| !b.contains(x))
                    .map(|x| format!("+{what} {x}")),
            );
            out.extend(
                b.iter()
                    .filter(|x| !a.contains(x))
                    .map(|x| format!("-{what} {x}")),
            );
        }
        out.join("; ")
    }
}

/// Reads a slot's links (name, MAC, MTU, up, controller), addresses, routes of every table and
/// family, learned neighbours and qdiscs through its netlink socket.
pub(crate) async fn net_state(h: &Handle) -> Result<NetState, SysError> {
    let mut s = NetState::default();
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(SysError::netlink("list links", "of slot"))?;
    for l in &links {
        let mut mac = None;
        let mut mtu = None;
        let mut controller = None;
        for a in &l.attributes {
            match a {
                LinkAttribute::Address(m) => mac = Some(m.clone()),
                LinkAttribute::Mtu(m) => mtu = Some(*m),
                LinkAttribute::Controller(c) => controller = Some(*c),
                _ => {}
            }
        }
        s.links.push(format!(
            "{} {} mac={mac:02x?} mtu={mtu:?} up={} controller={controller:?} type={:?}",
            l.header.index,
            link_name(l),
            l.header.flags.contains(LinkFlags::Up),
            l.header.link_layer_type,
        ));
    }
    let addrs: Vec<_> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(SysError::netlink("list addresses", "of slot"))?;
    for a in addrs {
        let ips: Vec<String> = a
            .attributes
            .iter()
            .filter_map(|x| match x {
                AddressAttribute::Address(ip) => Some(ip.to_string()),
                _ => None,
            })
            .collect();
        s.addresses.push(format!(
            "{} {}/{}",
            a.header.index,
            ips.join(","),
            a.header.prefix_len
        ));
    }
    for family in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let routes: Vec<RouteMessage> = h
            .route()
            .get(family)
            .execute()
            .try_collect()
            .await
            .map_err(SysError::netlink("list routes", "of slot"))?;
        s.routes.extend(routes.iter().map(route_line));
    }
    for n in learned_neighbours(h).await? {
        s.neighbours
            .push(format!("{} {:?}", n.header.ifindex, n.attributes));
    }
    let qdiscs: Vec<_> = h
        .qdisc()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(SysError::netlink("list qdiscs", "of slot"))?;
    for q in qdiscs {
        let kind = q.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        });
        s.qdiscs.push(format!(
            "{} {} parent={:?}",
            q.header.index,
            kind.unwrap_or_default(),
            q.header.parent
        ));
    }
    for v in [
        &mut s.links,
        &mut s.addresses,
        &mut s.routes,
        &mut s.neighbours,
        &mut s.qdiscs,
    ] {
        v.sort();
    }
    Ok(s)
}

fn route_line(r: &RouteMessage) -> String {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(r.header.table);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = Some(route_addr(d)),
            RouteAttribute::Gateway(g) => gw = Some(route_addr(g)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    format!(
        "table={table} {:?} dst={}/{} gw={} oif={oif:?} type={:?}",
        r.header.address_family,
        dst.unwrap_or_else(|| "default".into()),
        r.header.destination_prefix_length,
        gw.unwrap_or_default(),
        r.header.kind,
    )
}

fn route_addr(a: &RouteAddress) -> String {
    match a {
        RouteAddress::Inet(ip) => ip.to_string(),
        RouteAddress::Inet6(ip) => ip.to_string(),
        other => format!("{other:?}"),
    }
}
