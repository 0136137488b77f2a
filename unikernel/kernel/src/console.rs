//! The serial console (COM1, 0x3f8): untagged kernel lines and the action's tagged lines.
//!
//! Kernel lines start with `uk: ` so they are never taken for action lines; the action's bytes go
//! through [`wasm_unikernel::framing::Framer`] (16 KiB line bound). Everything is written by
//! polling the transmitter: QEMU's UART drains at once, and a fault report must not depend on
//! interrupts.

use core::cell::RefCell;
use core::fmt;

use wasm_unikernel::framing::Framer;

use crate::cpu::{inb, outb};

const COM1: u16 = 0x3f8;

/// Sets COM1 to 115200 8N1 with its interrupts off (the console is polled).
pub fn init() {
    // SAFETY: COM1's registers; the writes configure the UART only.
    unsafe {
        outb(COM1 + 1, 0x00); // IER: no interrupts
        outb(COM1 + 3, 0x80); // LCR: DLAB
        outb(COM1, 0x01); // divisor 1: 115200
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03); // 8N1
        outb(COM1 + 2, 0xc7); // FIFO on, cleared
    }
}

/// Writes raw bytes to COM1.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        // SAFETY: COM1's line status and transmit registers.
        unsafe {
            while inb(COM1 + 5) & 0x20 == 0 {}
            outb(COM1, b);
        }
    }
}

/// A `fmt::Write` on COM1, for kernel lines.
#[derive(Debug)]
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints one untagged kernel line: `uk: <message>`.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::console::Serial, "uk: ");
        let _ = writeln!($crate::console::Serial, $($arg)*);
    }};
}

/// The framing state of the action's two streams.
#[derive(Debug)]
pub struct ActionOutput {
    out: Framer,
    err: Framer,
}

/// The kernel runs on one CPU and the console is never used from an interrupt handler.
struct Shared(RefCell<Option<ActionOutput>>);
// SAFETY: one CPU; the interrupt handlers (stubs.s) never touch the console.
unsafe impl Sync for Shared {}

static OUTPUT: Shared = Shared(RefCell::new(None));

impl ActionOutput {
    fn with<R>(f: impl FnOnce(&mut ActionOutput) -> R) -> R {
        let mut slot = OUTPUT.0.borrow_mut();
        let output = slot.get_or_insert_with(|| ActionOutput {
            out: Framer::new(b"out| "),
            err: Framer::new(b"err| "),
        });
        f(output)
    }

    /// Frames and writes bytes of the action's stdout (`stderr == false`) or stderr.
    pub fn write(stderr: bool, bytes: &[u8]) {
        Self::with(|o| {
            let framer = if stderr { &mut o.err } else { &mut o.out };
            framer.push(bytes, &mut |line| write_bytes(line));
        });
    }

    /// Ends partial lines of both streams (after each request).
    pub fn flush() {
        Self::with(|o| {
            o.out.flush(&mut |line| write_bytes(line));
            o.err.flush(&mut |line| write_bytes(line));
        });
    }
}
