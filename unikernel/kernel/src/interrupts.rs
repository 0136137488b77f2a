//! The GDT with a TSS, the IDT, and the exception report.
//!
//! Every gate switches to an IST stack: exceptions to IST1, device and timer interrupts to IST2.
//! The code the kernel is compiled to (x86_64-unknown-linux-gnu) keeps data in the 128-byte red
//! zone below `rsp`, which an interrupt frame pushed on the same stack would overwrite.
//! Interrupt handlers themselves are in `stubs.s`.

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::cpu::{self, Exit};

global_asm!(include_str!("stubs.s"), options(att_syntax));

/// The vector of the LAPIC timer.
pub const VECTOR_TIMER: u8 = 0x20;
/// The vector of the NIC's interrupt.
pub const VECTOR_VIRTIO: u8 = 0x21;
/// The LAPIC's spurious-interrupt vector.
pub const VECTOR_SPURIOUS: u8 = 0xff;

/// Set by every device or timer interrupt; the main loop clears it before it looks for work.
#[unsafe(no_mangle)]
pub static IRQ_PENDING: AtomicU32 = AtomicU32::new(0);
/// The NIC's virtio-mmio base, for the interrupt stub's InterruptACK; 0 before the NIC is set up.
#[unsafe(no_mangle)]
pub static VIRTIO_IRQ_BASE: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static EXCEPTION_STUBS: [u64; 32];
    fn irq_virtio();
    fn irq_timer();
    fn irq_spurious();
}

const IST_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; IST_SIZE]);

static mut IST1: Stack = Stack([0; IST_SIZE]);
static mut IST2: Stack = Stack([0; IST_SIZE]);

/// The 64-bit TSS (Intel SDM vol. 3, 8.7).
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: size_of::<Tss>() as u16,
};

/// null, 0x08 code, 0x10 data (as in the boot GDT), 0x18 TSS (two entries).
static mut GDT: [u64; 5] = [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0];

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

fn set_gate(vector: u8, handler: u64, ist: u8) {
    let low = (handler & 0xffff)
        | (0x08 << 16)
        | (u64::from(ist) << 32)
        | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
        | (((handler >> 16) & 0xffff) << 48);
    let i = usize::from(vector) * 2;
    // SAFETY: boot is single-threaded and the IDT is not loaded yet while gates are set.
    unsafe {
        (*addr_of_mut!(IDT)).0[i] = low;
        (*addr_of_mut!(IDT)).0[i + 1] = handler >> 32;
    }
}

/// Loads the GDT with the TSS and the IDT. Interrupts stay disabled.
pub fn init() {
    // SAFETY: boot is single-threaded; the statics are set before the CPU uses them and
    // live forever.
    unsafe {
        let tss = &mut *addr_of_mut!(TSS);
        tss.ist[0] = addr_of!(IST1) as u64 + IST_SIZE as u64;
        tss.ist[1] = addr_of!(IST2) as u64 + IST_SIZE as u64;
        let base = addr_of!(TSS) as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        let gdt = &mut *addr_of_mut!(GDT);
        gdt[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40) // present, 64-bit TSS (available)
            | (((base >> 24) & 0xff) << 56);
        gdt[4] = base >> 32;
        let gdtr = Pointer {
            limit: (size_of::<[u64; 5]>() - 1) as u16,
            base: addr_of!(GDT) as u64,
        };
        // The selectors keep their values: 0x08 and 0x10 describe the same segments as before.
        asm!("lgdt [{}]", "ltr {:x}", in(reg) &gdtr, in(reg) 0x18u16, options(nostack));
    }
    // SAFETY: the stub table from stubs.s.
    let stubs = unsafe { &*addr_of!(EXCEPTION_STUBS) };
    for (vector, &stub) in stubs.iter().enumerate() {
        set_gate(vector as u8, stub, 1);
    }
    set_gate(VECTOR_TIMER, irq_timer as *const () as u64, 2);
    set_gate(VECTOR_VIRTIO, irq_virtio as *const () as u64, 2);
    set_gate(VECTOR_SPURIOUS, irq_spurious as *const () as u64, 2);
    let idtr = Pointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: addr_of!(IDT) as u64,
    };
    // SAFETY: a complete IDT whose gates point at the stubs.
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(nostack)) };
}

/// What `exc_common` passes: its pushes, then the CPU's frame.
#[repr(C)]
pub struct ExceptionFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "SIMD floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Reports a CPU exception on the console and leaves QEMU with [`Exit::Exception`].
#[unsafe(no_mangle)]
extern "C" fn kernel_exception(frame: &ExceptionFrame) -> ! {
    let name = NAMES.get(frame.vector as usize).copied().unwrap_or("?");
    // A fresh line: the fault may have interrupted a half-written one.
    crate::console::write_bytes(b"\n");
    crate::kprintln!(
        "fatal: CPU exception {} ({name}) error {:#x} rip {:#x} cs {:#x} rflags {:#x} rsp {:#x} ss {:#x}",
        frame.vector,
        frame.error,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss
    );
    if frame.vector == 14 {
        crate::kprintln!("fatal: page fault address (cr2) {:#x}", cpu::cr2());
    }
    cpu::exit(Exit::Exception)
}

/// Takes and clears the pending-interrupt flag.
pub fn take_pending() -> bool {
    IRQ_PENDING.swap(0, Ordering::AcqRel) != 0
}

/// Whether an interrupt arrived since the last [`take_pending`].
pub fn pending() -> bool {
    IRQ_PENDING.load(Ordering::Acquire) != 0
}
