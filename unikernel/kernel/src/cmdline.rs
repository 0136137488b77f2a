//! The kernel command line the invoker passes (PVH `cmdline_paddr`):
//! `ip=<client>::<gateway>:<netmask>:<hostname>:eth0:off tsc_khz=<kHz> wasm_memory_mb=<N>`,
//! plus words the kernel ignores. The `ip=` syntax is Linux's (`Documentation/admin-guide/nfs/
//! nfsroot.rst`): `client:server:gateway:netmask:hostname:device:autoconf`.

use core::net::Ipv4Addr;

/// A fault the boot test asks for on purpose, to check the exception path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTest {
    /// A read from an unmapped address (`crash_test=pf`): a page fault.
    PageFault,
    /// A `ud2` (`crash_test=ud`): an invalid opcode.
    InvalidOpcode,
    /// A panic (`crash_test=panic`).
    Panic,
    /// Unbounded recursion (`crash_test=stack`): a page fault on the stack's guard page.
    StackOverflow,
    /// An allocation the heap cannot satisfy (`crash_test=oom`), which must end as a panic.
    OutOfMemory,
}

/// What the kernel takes from its command line; `None` where a word is absent or malformed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub ip: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    /// The prefix length of the netmask.
    pub prefix_len: Option<u8>,
    pub tsc_khz: Option<u64>,
    pub wasm_memory_mb: Option<u64>,
    pub crash_test: Option<CrashTest>,
}

/// Why a word of the command line was not used; the kernel prints these and goes on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning<'a> {
    /// `key=value` whose value does not parse.
    Malformed(&'a str),
    /// A netmask whose ones are not contiguous.
    BadNetmask(&'a str),
}

impl Config {
    /// Parses the command line; unknown words are ignored, malformed ones reported in `warn`.
    pub fn parse<'a>(cmdline: &'a str, mut warn: impl FnMut(Warning<'a>)) -> Self {
        let mut config = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let ok = match key {
                "ip" => config.parse_ip(word, value, &mut warn),
                "tsc_khz" => parse_nonzero(value)
                    .map(|v| config.tsc_khz = Some(v))
                    .is_some(),
                "wasm_memory_mb" => value
                    .parse()
                    .ok()
                    .map(|v| config.wasm_memory_mb = Some(v))
                    .is_some(),
                "crash_test" => {
                    config.crash_test = match value {
                        "pf" => Some(CrashTest::PageFault),
                        "ud" => Some(CrashTest::InvalidOpcode),
                        "panic" => Some(CrashTest::Panic),
                        "oom" => Some(CrashTest::OutOfMemory),
                        "stack" => Some(CrashTest::StackOverflow),
                        _ => None,
                    };
                    config.crash_test.is_some()
                }
                _ => true,
            };
            if !ok {
                warn(Warning::Malformed(word));
            }
        }
        config
    }

    fn parse_ip<'a>(
        &mut self,
        word: &'a str,
        value: &'a str,
        warn: &mut impl FnMut(Warning<'a>),
    ) -> bool {
        let mut fields = value.split(':');
        let client = fields.next().unwrap_or("");
        let _server = fields.next();
        let gateway = fields.next().unwrap_or("");
        let netmask = fields.next().unwrap_or("");
        let Ok(ip) = client.parse() else {
            return false;
        };
        self.ip = Some(ip);
        if !gateway.is_empty() {
            match gateway.parse() {
                Ok(g) => self.gateway = Some(g),
                Err(_) => return false,
            }
        }
        if !netmask.is_empty() {
            let Ok(mask) = netmask.parse::<Ipv4Addr>() else {
                return false;
            };
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                warn(Warning::BadNetmask(word));
            } else {
                // At most 32, so it fits.
                self.prefix_len = Some(bits.leading_ones() as u8);
            }
        }
        true
    }
}

fn parse_nonzero(value: &str) -> Option<u64> {
    value.parse().ok().filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (Config, Vec<Warning<'_>>) {
        let mut w = Vec::new();
        let c = Config::parse(s, |x| w.push(x));
        (c, w)
    }

    #[test]
    fn the_invokers_command_line() {
        let (c, w) = parse(
            "ip=10.231.0.11::10.231.0.1:255.255.255.0:fn1:eth0:off tsc_khz=2600000 \
             wasm_memory_mb=256 console=ttyS0",
        );
        assert!(w.is_empty());
        assert_eq!(c.ip, Some(Ipv4Addr::new(10, 231, 0, 11)));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 231, 0, 1)));
        assert_eq!(c.prefix_len, Some(24));
        assert_eq!(c.tsc_khz, Some(2_600_000));
        assert_eq!(c.wasm_memory_mb, Some(256));
        assert_eq!(c.crash_test, None);
    }

    #[test]
    fn absent_and_partial_words() {
        let (c, w) = parse("");
        assert_eq!(c, Config::default());
        assert!(w.is_empty());
        let (c, _) = parse("ip=10.0.2.15 crash_test=pf");
        assert_eq!(c.ip, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!((c.gateway, c.prefix_len), (None, None));
        assert_eq!(c.crash_test, Some(CrashTest::PageFault));
        assert_eq!(
            parse("crash_test=oom").0.crash_test,
            Some(CrashTest::OutOfMemory)
        );
    }

    #[test]
    fn malformed_words_are_reported_and_ignored() {
        let (c, w) = parse(
            "ip=10.0.2 tsc_khz=0 wasm_memory_mb=x crash_test=boom ip=1.2.3.4::1.2.3.1:255.0.255.0::eth0:off",
        );
        assert_eq!(
            w,
            vec![
                Warning::Malformed("ip=10.0.2"),
                Warning::Malformed("tsc_khz=0"),
                Warning::Malformed("wasm_memory_mb=x"),
                Warning::Malformed("crash_test=boom"),
                Warning::BadNetmask("ip=1.2.3.4::1.2.3.1:255.0.255.0::eth0:off"),
            ]
        );
        assert_eq!(c.tsc_khz, None);
        assert_eq!(c.ip, Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(c.prefix_len, None);
    }
}
