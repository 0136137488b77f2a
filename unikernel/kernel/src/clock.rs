//! Time from the TSC. Its rate comes from the command line (`tsc_khz=`, the host's: under TCG
//! the guest reads the host's TSC), else CPUID leaf 0x15 or the hypervisor leaf 0x40000010,
//! else a 10 ms measurement against the PIT.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{self, inb, outb};

static TSC_KHZ: AtomicU64 = AtomicU64::new(1);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

/// Where the TSC rate came from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    CommandLine,
    Cpuid15,
    Hypervisor,
    Pit,
}

/// Sets the TSC rate; `boot_tsc` is time zero.
pub fn init(cmdline_khz: Option<u64>, boot_tsc: u64) -> Source {
    BOOT_TSC.store(boot_tsc, Ordering::Relaxed);
    let (khz, source) = if let Some(khz) = cmdline_khz {
        (khz, Source::CommandLine)
    } else if let Some(khz) = cpuid_15() {
        (khz, Source::Cpuid15)
    } else if let Some(khz) = hypervisor_leaf() {
        (khz, Source::Hypervisor)
    } else {
        (pit_calibrate(), Source::Pit)
    };
    TSC_KHZ.store(khz.max(1), Ordering::Relaxed);
    source
}

pub fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// Microseconds since boot.
pub fn now_us() -> u64 {
    let cycles = cpu::rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed));
    (u128::from(cycles) * 1000 / u128::from(tsc_khz())) as u64
}

pub fn us_to_cycles(us: u64) -> u64 {
    us.saturating_mul(tsc_khz()) / 1000
}

fn cpuid_15() -> Option<u64> {
    if cpu::cpuid(0).0 < 0x15 {
        return None;
    }
    let (denominator, numerator, crystal_hz, _) = cpu::cpuid(0x15);
    (denominator != 0 && numerator != 0 && crystal_hz != 0)
        .then(|| u64::from(crystal_hz) * u64::from(numerator) / u64::from(denominator) / 1000)
}

fn hypervisor_leaf() -> Option<u64> {
    if cpu::cpuid(1).2 & (1 << 31) == 0 || cpu::cpuid(0x4000_0000).0 < 0x4000_0010 {
        return None;
    }
    let khz = cpu::cpuid(0x4000_0010).0;
    (khz != 0).then_some(u64::from(khz))
}

/// Counts TSC cycles over 10 ms of PIT channel 0, read back through its latch. Channel 2 (the
/// usual choice) needs the speaker port 0x61 for its gate and output, which microvm lacks. IRQ 0
/// is masked at both interrupt controllers, so channel 0's output goes nowhere.
fn pit_calibrate() -> u64 {
    const TICKS: u16 = 11_932; // 10 ms at 1.193182 MHz
    let read = || {
        // SAFETY: the PIT's command and channel 0 ports; latching only copies the count.
        unsafe {
            outb(0x43, 0x00);
            let lo = inb(0x40);
            let hi = inb(0x40);
            u16::from_le_bytes([lo, hi])
        }
    };
    // SAFETY: channel 0, lobyte/hibyte, mode 0 (count down once), from 0xffff.
    unsafe {
        outb(0x43, 0x30);
        outb(0x40, 0xff);
        outb(0x40, 0xff);
    }
    let first = read();
    let start = cpu::rdtsc();
    // Without a PIT the count never moves: give up after a bounded number of reads.
    for _ in 0..2_000_000 {
        if first.wrapping_sub(read()) >= TICKS {
            return (cpu::rdtsc() - start) / 10;
        }
    }
    crate::kprintln!("no PIT: assuming a 1 GHz TSC");
    1_000_000
}
