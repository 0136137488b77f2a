//! The host's connection-tracking entries of a slot's address.
//!
//! Entries keyed by a slot's IP outlive its tenant in the host namespace (Docker's bridge
//! netfilter and NAT create them, and so does every connection the invoker made to the
//! tenant); NAT'd replies could reach the next tenant. The table is read from
//! `/proc/net/nf_conntrack` (cheap, no process); each entry of the address is deleted by its
//! original tuple through ctnetlink (`IPCTNL_MSG_CT_DELETE` on a `NETLINK_NETFILTER` socket),
//! without starting a process. Only entries whose tuple this module does not decode (protocols
//! without ports or ICMP ids, directional zones) fall back to `conntrack -D` for each direction.

use std::net::Ipv4Addr;

use super::SysError;
use super::kernel::blocking;

const TABLE: &str = "/proc/net/nf_conntrack";

/// True when the host's conntrack table has an entry whose original or reply tuple names `ip`.
/// The table can hold hundreds of thousands of lines: it is streamed on tokio's blocking pool,
/// never read on a worker.
pub(crate) async fn has_entries(ip: Ipv4Addr) -> Result<bool, SysError> {
    blocking(move || entries_of(ip).map(|e| !e.is_empty())).await
}

/// The lines of the table that name `ip` in either tuple.
fn entries_of(ip: Ipv4Addr) -> Result<Vec<String>, SysError> {
    use std::io::BufRead;
    let file = match std::fs::File::open(TABLE) {
        Ok(f) => f,
        // No conntrack module loaded: nothing can be tracked.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SysError::io("read", TABLE)(e)),
    };
    let (src, dst) = (format!(" src={ip} "), format!(" dst={ip} "));
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(SysError::io("read", TABLE))?;
        if line.contains(&src) || line.contains(&dst) {
            out.push(line);
        }
    }
    Ok(out)
}

/// What [`delete_decoded`] found.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// No entry of the address: nothing to delete or to check again (the common case, one read
    /// of the table per returned slot).
    None,
    /// Entries, each deleted through ctnetlink.
    Deleted,
    /// Entries, some of them not decoded: left to the conntrack tool.
    Undecoded,
}

/// Deletes every host conntrack entry of `ip`, in both directions.
pub(crate) async fn flush(ip: Ipv4Addr) -> Result<(), SysError> {
    match blocking(move || delete_decoded(ip)).await? {
        Found::None => return Ok(()),
        Found::Deleted => {}
        Found::Undecoded => flush_with_cli(ip).await?,
    }
    if has_entries(ip).await? {
        return Err(SysError::Conntrack {
            ip,
            detail: "entries remain after deletion".into(),
        });
    }
    Ok(())
}

/// Deletes each entry of `ip` that [`Tuple::parse`] decodes through ctnetlink; an entry gone
/// meanwhile (it expired) is not an error.
fn delete_decoded(ip: Ipv4Addr) -> Result<Found, SysError> {
    let lines = entries_of(ip)?;
    if lines.is_empty() {
        return Ok(Found::None);
    }
    let error = |detail: String| SysError::Conntrack { ip, detail };
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| error(format!("cannot open a netfilter netlink socket: {e}")))?;
    socket
        .bind_auto()
        .map_err(|e| error(format!("cannot bind a netfilter netlink socket: {e}")))?;
    let mut undecoded = false;
    let mut buf = vec![0u8; 4096];
    for (seq, line) in (1u32..).zip(&lines) {
        let Some(tuple) = Tuple::parse(line) else {
            undecoded = true;
            continue;
        };
        socket
            .send(&tuple.delete_request(seq), 0)
            .map_err(|e| error(format!("ctnetlink delete: {e}")))?;
        // The kernel handles the request within `send` and queues its answer.
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| error(format!("ctnetlink answer: {e}")))?;
        match ack_errno(&buf[..n]) {
            Some(0) => {}
            Some(e) if e == -libc::ENOENT => {}
            Some(e) => {
                return Err(error(format!(
                    "ctnetlink refused to delete {line:?}: {}",
                    std::io::Error::from_raw_os_error(-e)
                )));
            }
            None => {
                return Err(error(format!(
                    "ctnetlink answered {n} bytes without an ack"
                )));
            }
        }
    }
    Ok(if undecoded {
        Found::Undecoded
    } else {
        Found::Deleted
    })
}

/// `conntrack -D` for each direction: the entries [`Tuple::parse`] does not decode.
async fn flush_with_cli(ip: Ipv4Addr) -> Result<(), SysError> {
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
    Ok(())
}

/// What identifies a conntrack entry to the kernel: its original tuple (and zone).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tuple {
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    l4: L4,
    zone: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Ports { src: u16, dst: u16 },
    Icmp { kind: u8, code: u8, id: u16 },
}

// linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h, netlink.h.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;

impl Tuple {
    /// The original tuple of one `/proc/net/nf_conntrack` line (`ipv4 2 tcp 6 117 TIME_WAIT
    /// src=… dst=… sport=… dport=… src=… …`: the first of each key is the original
    /// direction's). `None` for what this module does not decode: not IPv4, a protocol other
    /// than TCP, UDP, UDP-Lite, SCTP, DCCP (ports) and ICMP (type, code, id), or a zone of one
    /// direction only.
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "ipv4" {
            return None;
        }
        let _family = fields.next()?;
        let _name = fields.next()?;
        let proto: u8 = fields.next()?.parse().ok()?;
        let first = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        };
        if first("zone-orig").is_some() || first("zone-reply").is_some() {
            return None;
        }
        let l4 = match proto {
            6 | 17 | 33 | 132 | 136 => L4::Ports {
                src: first("sport")?.parse().ok()?,
                dst: first("dport")?.parse().ok()?,
            },
            1 => L4::Icmp {
                kind: first("type")?.parse().ok()?,
                code: first("code")?.parse().ok()?,
                id: first("id")?.parse().ok()?,
            },
            _ => return None,
        };
        Some(Self {
            proto,
            src: first("src")?.parse().ok()?,
            dst: first("dst")?.parse().ok()?,
            l4,
            zone: match first("zone") {
                Some(z) => Some(z.parse().ok()?),
                None => None,
            },
        })
    }

    /// The `IPCTNL_MSG_CT_DELETE` request for this entry, acknowledged.
    fn delete_request(&self, seq: u32) -> Vec<u8> {
        let ip = [
            attr(CTA_IP_V4_SRC, &self.src.octets()),
            attr(CTA_IP_V4_DST, &self.dst.octets()),
        ]
        .concat();
        let mut proto = attr(CTA_PROTO_NUM, &[self.proto]);
        match self.l4 {
            L4::Ports { src, dst } => {
                proto.extend(attr(CTA_PROTO_SRC_PORT, &src.to_be_bytes()));
                proto.extend(attr(CTA_PROTO_DST_PORT, &dst.to_be_bytes()));
            }
            L4::Icmp { kind, code, id } => {
                proto.extend(attr(CTA_PROTO_ICMP_ID, &id.to_be_bytes()));
                proto.extend(attr(CTA_PROTO_ICMP_TYPE, &[kind]));
                proto.extend(attr(CTA_PROTO_ICMP_CODE, &[code]));
            }
        }
        let tuple = [
            attr(CTA_TUPLE_IP | NLA_F_NESTED, &ip),
            attr(CTA_TUPLE_PROTO | NLA_F_NESTED, &proto),
        ]
        .concat();
        let mut payload = vec![libc::AF_INET as u8, 0, 0, 0]; // nfgenmsg: family, v0, res_id
        payload.extend(attr(CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple));
        if let Some(zone) = self.zone {
            payload.extend(attr(CTA_ZONE, &zone.to_be_bytes()));
        }
        let len = u32::try_from(16 + payload.len()).expect("a small message");
        let mut msg = Vec::with_capacity(16 + payload.len());
        msg.extend(len.to_ne_bytes());
        msg.extend(((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE).to_ne_bytes());
        msg.extend((NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend(seq.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes()); // the kernel fills in our port id
        msg.extend(payload);
        msg
    }
}

/// One netlink attribute, padded to 4 bytes.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).expect("a small attribute");
    let mut out = Vec::with_capacity(value.len() + 8);
    out.extend(len.to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    out.resize(out.len().next_multiple_of(4), 0);
    out
}

/// The error code of the first message of `answer` when it is an `NLMSG_ERROR` (0: success).
fn ack_errno(answer: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    (kind == NLMSG_ERROR).then_some(())?;
    Some(i32::from_ne_bytes(answer.get(16..20)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_decode_to_their_original_tuple() {
        let tcp = "ipv4     2 tcp      6 117 TIME_WAIT src=10.231.0.1 dst=10.231.0.12 sport=45678 \
                   dport=8080 src=10.231.0.12 dst=10.231.0.1 sport=8080 dport=45678 [ASSURED] mark=0 use=2";
        assert_eq!(
            Tuple::parse(tcp),
            Some(Tuple {
                proto: 6,
                src: Ipv4Addr::new(10, 231, 0, 1),
                dst: Ipv4Addr::new(10, 231, 0, 12),
                l4: L4::Ports {
                    src: 45678,
                    dst: 8080
                },
                zone: None,
            })
        );
        let icmp = "ipv4     2 icmp     1 29 src=10.231.0.12 dst=10.231.0.1 type=8 code=0 id=77 \
                    src=10.231.0.1 dst=10.231.0.12 type=0 code=0 id=77 mark=0 zone=3 use=1";
        assert_eq!(
            Tuple::parse(icmp),
            Some(Tuple {
                proto: 1,
                src: Ipv4Addr::new(10, 231, 0, 12),
                dst: Ipv4Addr::new(10, 231, 0, 1),
                l4: L4::Icmp {
                    kind: 8,
                    code: 0,
                    id: 77
                },
                zone: Some(3),
            })
        );
        // Left to the conntrack tool: GRE keys, directional zones, IPv6.
        let gre = "ipv4     2 gre      47 29 src=10.231.0.12 dst=10.1.1.1 srckey=0x0 dstkey=0x0 \
                   src=10.1.1.1 dst=10.231.0.12 srckey=0x0 dstkey=0x0 mark=0 use=1";
        assert_eq!(Tuple::parse(gre), None);
        let zoned = tcp.replace("mark=0", "mark=0 zone-orig=2");
        assert_eq!(Tuple::parse(&zoned), None);
        assert_eq!(
            Tuple::parse(&tcp.replace("ipv4     2", "ipv6     10")),
            None
        );
    }

    /// The request as libnetfilter_conntrack lays it out: the netlink header, nfgenmsg, then
    /// the nested original tuple.
    #[test]
    #[cfg(target_endian = "little")]
    fn the_delete_request_is_laid_out_as_ctnetlink_reads_it() {
        let t = Tuple {
            proto: 6,
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            l4: L4::Ports {
                src: 1000,
                dst: 8080,
            },
            zone: None,
        };
        let m = t.delete_request(7);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[2, 0, 0, 0]);
        // CTA_TUPLE_ORIG, nested: IP (2 × 8 bytes + 4) and proto (3 attributes of 8 + 4).
        assert_eq!(
            u16::from_ne_bytes(m[20..22].try_into().unwrap()) as usize,
            4 + 20 + 28
        );
        assert_eq!(u16::from_ne_bytes(m[22..24].try_into().unwrap()), 0x8001);
        assert_eq!(u16::from_ne_bytes(m[26..28].try_into().unwrap()), 0x8001);
        assert_eq!(&m[28..36], &[8, 0, 1, 0, 10, 0, 0, 1]);
        assert_eq!(&m[36..44], &[8, 0, 2, 0, 10, 0, 0, 2]);
        assert_eq!(u16::from_ne_bytes(m[46..48].try_into().unwrap()), 0x8002);
        assert_eq!(&m[48..56], &[5, 0, 1, 0, 6, 0, 0, 0]);
        assert_eq!(&m[56..64], &[6, 0, 2, 0, 0x03, 0xe8, 0, 0]);
        assert_eq!(&m[64..72], &[6, 0, 3, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(m.len(), 72);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn acks_carry_the_error_code() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(-libc::ENOENT));
        ack[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert_eq!(ack_errno(&ack), None);
        assert_eq!(ack_errno(&[0; 8]), None);
    }
}
