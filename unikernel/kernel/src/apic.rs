//! The legacy PIC (masked), the local APIC and its one-shot timer, and the IOAPICs.
//!
//! The timer is the only clock interrupt: the main loop arms it for smoltcp's next deadline and
//! halts. With CPUID's TSC-deadline mode it is armed in TSC cycles; otherwise it counts the
//! LAPIC's own clock (divide by 16), whose rate is measured against the TSC at boot.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wasm_unikernel::microvm::{IOAPIC_BASE, IOAPIC2_BASE, IrqRoute, LAPIC_BASE};

use crate::clock;
use crate::cpu::{self, outb};
use crate::interrupts::{VECTOR_SPURIOUS, VECTOR_TIMER};

const REG_ID: u64 = 0x20;
const REG_TPR: u64 = 0x80;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_LVT_LINT0: u64 = 0x350;
const REG_LVT_LINT1: u64 = 0x360;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3e0;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;
const MSR_TSC_DEADLINE: u32 = 0x6e0;

static TSC_DEADLINE: AtomicBool = AtomicBool::new(false);
/// LAPIC timer ticks (after the divider) per millisecond.
static TICKS_PER_MS: AtomicU64 = AtomicU64::new(0);

fn read(reg: u64) -> u32 {
    // SAFETY: the LAPIC's MMIO page is identity-mapped (uncached) by the boot stub.
    unsafe { ((LAPIC_BASE + reg) as *const u32).read_volatile() }
}

fn write(reg: u64, value: u32) {
    // SAFETY: as for `read`.
    unsafe { ((LAPIC_BASE + reg) as *mut u32).write_volatile(value) }
}

/// Remaps the 8259 pair away from the exception vectors and masks every line: all interrupts
/// come through the IOAPIC.
pub fn mask_pic() {
    // SAFETY: the standard 8259 initialisation sequence on its ports.
    unsafe {
        outb(0x20, 0x11);
        outb(0xa0, 0x11);
        outb(0x21, 0xe0); // vectors 0xe0.. (never delivered: masked)
        outb(0xa1, 0xe8);
        outb(0x21, 4);
        outb(0xa1, 2);
        outb(0x21, 0x01);
        outb(0xa1, 0x01);
        outb(0x21, 0xff);
        outb(0xa1, 0xff);
    }
}

/// Enables the LAPIC, masks LINT0/LINT1 and sets the timer up (mode, rate).
pub fn init() {
    write(REG_SVR, 0x100 | u32::from(VECTOR_SPURIOUS));
    write(REG_TPR, 0);
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
    if cpu::cpuid(1).2 & (1 << 24) != 0 {
        TSC_DEADLINE.store(true, Ordering::Relaxed);
        write(REG_LVT_TIMER, LVT_TSC_DEADLINE | u32::from(VECTOR_TIMER));
        return;
    }
    write(REG_TIMER_DIVIDE, 0b0011); // divide by 16
    write(REG_LVT_TIMER, LVT_MASKED | u32::from(VECTOR_TIMER));
    // Count down over 2 ms of TSC time.
    write(REG_TIMER_INITIAL, u32::MAX);
    let start = cpu::rdtsc();
    let cycles = 2 * clock::tsc_khz();
    while cpu::rdtsc() - start < cycles {}
    let elapsed = u64::from(u32::MAX - read(REG_TIMER_CURRENT));
    write(REG_TIMER_INITIAL, 0);
    TICKS_PER_MS.store((elapsed / 2).max(1), Ordering::Relaxed);
    write(REG_LVT_TIMER, u32::from(VECTOR_TIMER)); // one-shot
}

/// Describes the timer for the boot log.
pub fn timer_mode() -> (&'static str, u64) {
    if TSC_DEADLINE.load(Ordering::Relaxed) {
        ("tsc-deadline", clock::tsc_khz())
    } else {
        ("one-shot", TICKS_PER_MS.load(Ordering::Relaxed))
    }
}

/// Arms the timer to fire once after `us` microseconds (or earlier, at its range's end: the loop
/// then simply re-arms it); `None` disarms it.
pub fn arm_timer(us: Option<u64>) {
    match (us, TSC_DEADLINE.load(Ordering::Relaxed)) {
        (None, true) => {
            // SAFETY: 0 disarms the TSC-deadline timer.
            unsafe { cpu::wrmsr(MSR_TSC_DEADLINE, 0) }
        }
        (None, false) => write(REG_TIMER_INITIAL, 0),
        (Some(us), true) => {
            let deadline = cpu::rdtsc() + clock::us_to_cycles(us.max(1));
            // SAFETY: arming the deadline the LVT timer is set up for.
            unsafe { cpu::wrmsr(MSR_TSC_DEADLINE, deadline) }
        }
        (Some(us), false) => {
            let ticks = us.saturating_mul(TICKS_PER_MS.load(Ordering::Relaxed)) / 1000;
            write(
                REG_TIMER_INITIAL,
                ticks.clamp(1, u64::from(u32::MAX)) as u32,
            );
        }
    }
}

/// The LAPIC id of this CPU, the destination for the IOAPIC's routes.
fn apic_id() -> u32 {
    read(REG_ID) >> 24
}

/// Routes an IOAPIC pin to `vector` on this CPU: fixed delivery, physical destination,
/// level-triggered, active high (virtio-mmio's line stays up until InterruptACK).
pub fn route(route: IrqRoute, vector: u8) {
    let base = if route.ioapic == 0 {
        IOAPIC_BASE
    } else {
        IOAPIC2_BASE
    };
    let index = 0x10 + 2 * u32::from(route.pin);
    let ioapic_write = |reg: u32, value: u32| {
        // SAFETY: IOREGSEL (base) and IOWIN (base + 0x10) of an IOAPIC in the mapped MMIO hole.
        unsafe {
            (base as *mut u32).write_volatile(reg);
            ((base + 0x10) as *mut u32).write_volatile(value);
        }
    };
    ioapic_write(index + 1, apic_id() << 24);
    ioapic_write(index, u32::from(vector) | (1 << 15));
}
