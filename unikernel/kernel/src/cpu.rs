//! CPU primitives: port I/O, CPUID, MSRs, the TSC, RDRAND, halting and leaving QEMU.

use core::arch::asm;

/// QEMU's exit status is `(code << 1) | 1` for a byte `code` written to isa-debug-exit.
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Why the kernel stops; the discriminant is what it writes to isa-debug-exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Boot failed: no usable memory map, no NIC, device set-up failed (QEMU status 3).
    Boot = 1,
    /// A Rust panic, including allocation failure (QEMU status 5).
    Panic = 2,
    /// A CPU exception (QEMU status 7).
    Exception = 3,
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The port's device must accept the write without breaking memory safety.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller vouches for the device; `out` touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// Reading the port must have no effect that breaks memory safety.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// CPUID leaf `leaf`, subleaf 0: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID only reads; rbx is reserved by LLVM, so it is saved around the instruction.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) b,
            inout("eax") leaf => a,
            inout("ecx") 0u32 => c,
            out("edx") d,
            options(nomem, nostack, preserves_flags),
        )
    }
    (a, b, c, d)
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR and value must be valid for this CPU and not break the kernel's assumptions.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller vouches for the MSR; wrmsr touches no memory.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem, nostack, preserves_flags))
    }
}

/// The time stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Whether CPUID offers RDRAND (leaf 1, ECX bit 30).
pub fn has_rdrand() -> bool {
    cpuid(1).2 & (1 << 30) != 0
}

/// One RDRAND value, retried a few times as Intel's guidance says; `None` if it keeps failing.
/// Only call it when [`has_rdrand`] holds.
pub fn rdrand() -> Option<u64> {
    for _ in 0..10 {
        let (value, ok): (u64, u8);
        // SAFETY: the caller checked CPUID; rdrand only writes its registers.
        unsafe {
            asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok, options(nomem, nostack))
        }
        if ok != 0 {
            return Some(value);
        }
    }
    None
}

/// The CR2 register: the faulting address of the last page fault.
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) }
    value
}

/// Disables interrupts. Not `nomem`: the compiler must not move memory accesses (the pending
/// flags, the NIC's rings) across it, or a wakeup could be checked before interrupts are off.
pub fn cli() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nostack)) }
}

/// Enables interrupts and halts until the next one; the instruction after `sti` runs before any
/// interrupt, so an interrupt that is already pending wakes the `hlt` instead of being lost.
pub fn enable_and_halt() {
    // SAFETY: all gates run on IST stacks and return to this code unchanged. Not `nomem`
    // (see `cli`): handlers change memory this code reads afterwards.
    unsafe { asm!("sti", "hlt", options(nostack)) }
}

/// Enables interrupts.
pub fn sti() {
    // SAFETY: the IDT is loaded before the first call (interrupts::init). Not `nomem` (see
    // `cli`).
    unsafe { asm!("sti", options(nostack)) }
}

/// Leaves QEMU through isa-debug-exit; halts forever if the device is absent.
pub fn exit(code: Exit) -> ! {
    // SAFETY: port 0xf4 is isa-debug-exit or nothing.
    unsafe { outb(DEBUG_EXIT_PORT, code as u8) };
    loop {
        cli();
        // SAFETY: halting with interrupts off just stops the CPU.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}
