//! The pure parts of the `wasm-unikernel` kernel: everything that can be decided without the
//! machine, so that it is tested on the host (`cargo test -p wasm-unikernel --lib`).
//!
//! The kernel binary (`src/main.rs`) uses these modules for its command line, the choice of its
//! heap from the PVH memory map, the HTTP/1.1 request heads, the console's line framing, the
//! virtio-mmio interrupt routing of QEMU's microvm and the action's memory limit.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod cmdline;
pub mod framing;
pub mod http;
pub mod memmap;
pub mod microvm;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// What the kernel keeps for itself out of the heap when it sets the action's memory limit:
/// socket buffers, the request body (the code of an `/init` is held twice: body and module),
/// the compiled module and the library's own allocations. 8 MiB is half the overhead the invoker
/// adds to the VM's memory (16 MiB), the other half covers the image, stacks and page tables.
pub const KERNEL_RESERVE: u64 = 8 * MIB;

/// The action's memory limit: what the command line asks for, but never more than the heap can
/// hold next to [`KERNEL_RESERVE`]. Without `wasm_memory_mb=` the action gets all of that.
pub fn memory_limit(requested_mb: Option<u64>, heap_bytes: u64) -> u64 {
    let available = heap_bytes.saturating_sub(KERNEL_RESERVE);
    match requested_mb {
        Some(mb) => mb.saturating_mul(MIB).min(available),
        None => available,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limit_is_capped_by_the_heap() {
        assert_eq!(memory_limit(Some(128), 200 * MIB), 128 * MIB);
        assert_eq!(memory_limit(Some(128), 130 * MIB), 122 * MIB);
        assert_eq!(memory_limit(None, 100 * MIB), 92 * MIB);
        assert_eq!(memory_limit(Some(1), 4 * MIB), 0);
        assert_eq!(memory_limit(Some(u64::MAX), 64 * MIB), 56 * MIB);
    }
}
