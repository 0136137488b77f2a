//! What the guest reads from the kernel command line (`/proc/cmdline`).
//!
//! The cloud kernel is built without `CONFIG_IP_PNP`, so it ignores `ip=` and the guest
//! configures its NIC itself from the same syntax the kernel documents
//! (`Documentation/admin-guide/nfs/nfsroot.rst`):
//! `ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>`.
//! Only a static configuration is supported (`autoconf` empty, `off` or `none`).

use std::net::Ipv4Addr;

/// The root image's device when the command line names none.
pub const DEFAULT_ROOT: &str = "/dev/vda";
/// Its file system type when the command line names none (built into the cloud kernel).
pub const DEFAULT_ROOT_FSTYPE: &str = "ext4";
/// The NIC configured when `ip=` names no device.
pub const DEFAULT_DEVICE: &str = "eth0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("ip=: field {field} is not an IPv4 address: {value:?}")]
    Address { field: &'static str, value: String },
    #[error("ip=: the client address is missing")]
    NoClient,
    #[error("ip=: autoconf {0:?} is not supported (only a static configuration: off or none)")]
    Autoconf(String),
}

/// The guest's boot parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct BootConfig {
    /// The NIC's static configuration, `None` without `ip=` (the guest then has loopback only).
    pub ip: Option<IpConfig>,
    /// The block device that holds the read-only root image (`root=`).
    pub root: String,
    /// Its file system type (`rootfstype=`).
    pub root_fstype: String,
}

/// A static IPv4 configuration from `ip=`.
#[derive(Debug, PartialEq, Eq)]
pub struct IpConfig {
    pub client: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub netmask: Ipv4Addr,
    pub hostname: Option<String>,
    pub device: String,
    pub dns: Vec<Ipv4Addr>,
}

impl BootConfig {
    /// Reads the parameters this guest uses from a kernel command line; every other word is
    /// left to the kernel.
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let mut config = BootConfig {
            ip: None,
            root: DEFAULT_ROOT.into(),
            root_fstype: DEFAULT_ROOT_FSTYPE.into(),
        };
        for word in words(cmdline) {
            if let Some(spec) = word.strip_prefix("ip=") {
                config.ip = Some(IpConfig::parse(spec)?);
            } else if let Some(dev) = word.strip_prefix("root=") {
                config.root = dev.into();
            } else if let Some(fstype) = word.strip_prefix("rootfstype=") {
                config.root_fstype = fstype.into();
            }
        }
        Ok(config)
    }
}

impl IpConfig {
    fn parse(spec: &str) -> Result<Self, CmdlineError> {
        let fields: Vec<&str> = spec.split(':').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("");
        let addr = |i: usize, name: &'static str| -> Result<Option<Ipv4Addr>, CmdlineError> {
            match field(i) {
                "" => Ok(None),
                v => v.parse().map(Some).map_err(|_| CmdlineError::Address {
                    field: name,
                    value: v.into(),
                }),
            }
        };
        let client = addr(0, "client")?.ok_or(CmdlineError::NoClient)?;
        let gateway = addr(2, "gateway")?;
        let netmask = addr(3, "netmask")?.unwrap_or_else(|| classful_netmask(client));
        let hostname = Some(field(4)).filter(|h| !h.is_empty()).map(str::to_owned);
        let device = match field(5) {
            "" => DEFAULT_DEVICE.to_owned(),
            d => d.to_owned(),
        };
        match field(6) {
            "" | "off" | "none" => {}
            other => return Err(CmdlineError::Autoconf(other.into())),
        }
        let dns = [addr(7, "dns0")?, addr(8, "dns1")?]
            .into_iter()
            .flatten()
            .collect();
        Ok(IpConfig {
            client,
            gateway,
            netmask,
            hostname,
            device,
            dns,
        })
    }
}

/// The kernel's default when `ip=` gives no netmask: the address's class.
fn classful_netmask(a: Ipv4Addr) -> Ipv4Addr {
    match a.octets()[0] {
        0..=127 => Ipv4Addr::new(255, 0, 0, 0),
        128..=191 => Ipv4Addr::new(255, 255, 0, 0),
        _ => Ipv4Addr::new(255, 255, 255, 0),
    }
}

/// Splits a command line as the kernel does: on spaces, except inside double quotes, which
/// are removed.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in cmdline.trim_end_matches('\n').chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_ascii_whitespace() && !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backends_command_line() {
        let c = BootConfig::parse(
            "console=ttyS0 quiet panic=-1 root=/dev/vda rootfstype=ext4 \
             ip=10.231.0.11::10.231.0.1:255.255.255.0::eth0:off tsc_early_khz=2596000\n",
        )
        .unwrap();
        assert_eq!(
            c,
            BootConfig {
                ip: Some(IpConfig {
                    client: Ipv4Addr::new(10, 231, 0, 11),
                    gateway: Some(Ipv4Addr::new(10, 231, 0, 1)),
                    netmask: Ipv4Addr::new(255, 255, 255, 0),
                    hostname: None,
                    device: "eth0".into(),
                    dns: vec![],
                }),
                root: "/dev/vda".into(),
                root_fstype: "ext4".into(),
            }
        );
    }

    #[test]
    fn defaults_without_parameters() {
        let c = BootConfig::parse("console=ttyS0").unwrap();
        assert_eq!(
            (c.ip, c.root.as_str(), c.root_fstype.as_str()),
            (None, DEFAULT_ROOT, DEFAULT_ROOT_FSTYPE)
        );
    }

    #[test]
    fn every_field() {
        let ip = IpConfig::parse(
            "10.0.2.15:10.0.2.2:10.0.2.2:255.255.255.0:fn1:eth1:none:10.0.2.3:1.1.1.1",
        )
        .unwrap();
        assert_eq!(ip.hostname.as_deref(), Some("fn1"));
        assert_eq!(ip.device, "eth1");
        assert_eq!(
            ip.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
    }

    #[test]
    fn address_only_takes_the_kernels_defaults() {
        let ip = IpConfig::parse("172.16.0.2").unwrap();
        assert_eq!(
            (ip.gateway, ip.netmask, ip.device.as_str()),
            (None, Ipv4Addr::new(255, 255, 0, 0), "eth0")
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(
            IpConfig::parse("10.0.0.300::10.0.0.1:255.255.255.0::eth0:off"),
            Err(CmdlineError::Address {
                field: "client",
                value: "10.0.0.300".into()
            })
        );
        assert_eq!(IpConfig::parse("::10.0.0.1"), Err(CmdlineError::NoClient));
        assert_eq!(
            IpConfig::parse("10.0.0.2::10.0.0.1:255.255.255.0::eth0:dhcp"),
            Err(CmdlineError::Autoconf("dhcp".into()))
        );
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(words("a \"b c\" d=\"e f\"\n"), ["a", "b c", "d=e f"]);
    }
}
