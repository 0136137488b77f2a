//! `wasm-unikernel`: an x86_64 unikernel for QEMU's `microvm` that serves the OpenWhisk action
//! protocol (`POST /init`, `POST /run`) on TCP port 8080 with the `wasm-action` library.
//!
//! Boot: PVH (`-kernel`), 32-bit entry, identity-mapped long mode (`boot.s`, [`mem`]); exceptions
//! and interrupts on IST stacks ([`interrupts`]); virtio-net over virtio-mmio with its interrupt
//! routed through the IOAPIC ([`net`], [`apic`]); smoltcp TCP and an HTTP/1.1 server
//! ([`server`]); the serial console ([`console`]). The CPU halts whenever there is nothing to do:
//! there is no periodic tick, only a one-shot timer for smoltcp's next deadline.
//!
//! # Exit codes
//!
//! The kernel never returns; it stops through `isa-debug-exit` (iobase 0xf4), whose QEMU exit
//! status is `2 * code + 1`:
//!
//! | code | QEMU status | meaning |
//! |---|---|---|
//! | 1 | 3 | boot failed (no usable start info or memory map, no NIC, device set-up failed) |
//! | 2 | 5 | panic, including allocation failure |
//! | 3 | 7 | CPU exception (vector, error code, RIP, CR2 for page faults on the console) |
//!
//! Without isa-debug-exit the CPU halts with interrupts off instead.

#![no_std]
#![no_main]

extern crate alloc;

mod apic;
mod clock;
mod console;
mod cpu;
mod host;
mod interrupts;
mod mem;
mod net;
mod rt;
mod server;

use core::arch::global_asm;

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use wasm_action::{Limits, Runtime};
use wasm_unikernel::cmdline::{self, CrashTest};
use wasm_unikernel::{MIB, memory_limit, microvm};

use crate::cpu::Exit;

global_asm!(include_str!("boot.s"), options(att_syntax));

/// The action protocol's port.
const PORT: u16 = 8080;

fn smoltcp_now() -> Instant {
    Instant::from_micros(clock::now_us() as i64)
}

fn fail(what: &str, detail: &dyn core::fmt::Debug) -> ! {
    kprintln!("fatal: {what}: {detail:?}");
    cpu::exit(Exit::Boot)
}

/// Called by the boot stub in long mode with the PVH start info's address.
#[unsafe(no_mangle)]
extern "C" fn rust_main(start_info: u64) -> ! {
    let boot_tsc = cpu::rdtsc();
    console::init();
    interrupts::init();
    // SAFETY: first thing after the IDT, with the loader's pointer; nothing allocated yet.
    let memory = unsafe { mem::init(start_info) }.unwrap_or_else(|e| fail("memory", &e));
    let config =
        cmdline::Config::parse(memory.cmdline, |w| kprintln!("command line: ignored {w:?}"));
    let source = clock::init(config.tsc_khz, boot_tsc);
    let heap = memory.heap_end - memory.heap_start;
    kprintln!(
        "image {:#x}-{:#x}, heap {:#x}-{:#x} ({} MiB), RAM end {:#x}, start info v{}",
        memory.image_start,
        memory.image_end,
        memory.heap_start,
        memory.heap_end,
        heap / MIB,
        memory.ram_end,
        memory.start_info.version
    );
    match config.crash_test {
        Some(CrashTest::PageFault) => {
            kprintln!("crash test: reading unmapped 0x4000000000");
            // SAFETY: deliberately not safe: the address is outside the identity mapping and the
            // page fault handler ends the VM (the boot test checks that path).
            let v = unsafe { (0x40_0000_0000 as *const u64).read_volatile() };
            kprintln!("crash test: read {v:#x}: no fault?");
        }
        Some(CrashTest::InvalidOpcode) => {
            // SAFETY: deliberately raises #UD, which ends the VM.
            unsafe { core::arch::asm!("ud2") };
        }
        Some(CrashTest::Panic) => panic!("crash test"),
        Some(CrashTest::StackOverflow) => {
            kprintln!("crash test: recursing until the stack's guard page");
            let v = recurse(0);
            kprintln!("crash test: {v}?");
        }
        Some(CrashTest::OutOfMemory) => {
            let v = alloc::vec::Vec::<u8>::with_capacity(1 << 40);
            kprintln!("crash test: allocated {} bytes?", v.capacity());
        }
        None => {}
    }

    apic::mask_pic();
    apic::init();
    let Some(found) = net::discover() else {
        fail("no virtio-net device", &"");
    };
    let nic = net::Nic::new(found).unwrap_or_else(|e| fail("virtio-net", &e));
    let acpi = memory.start_info.rsdp_paddr != 0;
    let route = microvm::virtio_irq(found.slot, found.transports, acpi);
    interrupts::VIRTIO_IRQ_BASE.store(found.base, core::sync::atomic::Ordering::Release);
    apic::route(route, interrupts::VECTOR_VIRTIO);
    let mut nic = nic;
    let mac = nic.mac();

    let ip = config.ip.unwrap_or(core::net::Ipv4Addr::new(10, 0, 2, 15));
    let prefix = config.prefix_len.unwrap_or(24);
    let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    iface_config.random_seed = cpu::rdtsc();
    let mut iface = Interface::new(iface_config, &mut nic, smoltcp_now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
    });
    if let Some(gateway) = config.gateway
        && iface.routes_mut().add_default_ipv4_route(gateway).is_err()
    {
        kprintln!("no room for the default route via {gateway}");
    }
    let mut sockets = SocketSet::new(alloc::vec![]);
    let mut server = server::Server::new(&mut sockets, PORT);
    let mut host = host::KernelHost::new();
    let limit = memory_limit(config.wasm_memory_mb, heap);
    let mut runtime = Runtime::new(Limits {
        memory_bytes: limit,
    });
    let (timer, timer_rate) = apic::timer_mode();
    kprintln!(
        "tsc {} kHz ({source:?}), timer {timer} ({timer_rate}/ms), random {}",
        clock::tsc_khz(),
        host.random_source()
    );
    kprintln!(
        "virtio-net slot {} of {} at {:#x}, ioapic {} pin {} (gsi {}), mac {:02x?}",
        found.slot,
        found.transports,
        found.base,
        route.ioapic,
        route.pin,
        route.gsi,
        mac
    );
    kprintln!(
        "ready: {ip}/{prefix} gateway {:?} port {PORT}, action memory {} MiB (asked {:?}), boot {} us",
        config.gateway,
        limit / MIB,
        config.wasm_memory_mb,
        clock::now_us()
    );

    cpu::sti();
    loop {
        interrupts::take_pending();
        let polled = iface.poll(smoltcp_now(), &mut nic, &mut sockets);
        let served = server.serve(&mut sockets, &mut runtime, &mut host);
        if served || polled == PollResult::SocketStateChanged {
            continue;
        }
        let delay = iface.poll_delay(smoltcp_now(), &sockets);
        cpu::cli();
        if interrupts::pending() || nic.can_recv() {
            cpu::sti();
            continue;
        }
        apic::arm_timer(delay.map(|d| d.total_micros()));
        cpu::enable_and_halt();
    }
}

/// Recursion without end and without a tail call, for `crash_test=stack`.
#[allow(unconditional_recursion, reason = "the stack overflow is the point")]
fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 32]);
    recurse(depth + 1).wrapping_add(frame[depth as usize % 32])
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cpu::cli();
    console::write_bytes(b"\n");
    // One line: PanicInfo's Display puts the message on a line of its own.
    match info.location() {
        Some(at) => kprintln!(
            "fatal: panic: {} (at {}:{})",
            info.message(),
            at.file(),
            at.line()
        ),
        None => kprintln!("fatal: panic: {}", info.message()),
    }
    cpu::exit(Exit::Panic)
}
