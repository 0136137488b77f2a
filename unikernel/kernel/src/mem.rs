//! Memory: the PVH start info, the identity mapping beyond 4 GiB and the heap.
//!
//! The boot stub maps the first 4 GiB (all of microvm's low RAM and the MMIO hole with the
//! virtio-mmio slots, the IOAPICs and the LAPIC). RAM the memory map reports above 4 GiB is
//! mapped here, with page directories taken from the start of the heap region. The heap is the
//! rest of the RAM region the image ends in; the stack and the boot page tables are in `.bss`,
//! inside the image.

use core::ptr::{addr_of, addr_of_mut};

use linked_list_allocator::LockedHeap;
use wasm_unikernel::memmap::{self, MEMMAP_ENTRY_LEN, Region, START_INFO_LEN, StartInfo};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static mut boot_pdpt: [u64; 512];
    static mut boot_pml4: [u64; 512];
    static mut boot_pd: [u64; 2048];
    static mut boot_pt_guard: [u64; 512];
    static boot_stack_guard: u8;
}

/// The most memory map entries read; microvm has a handful.
const MAX_REGIONS: usize = 64;
/// The longest command line kept.
const CMDLINE_MAX: usize = 4096;
const GIB: u64 = 1 << 30;

/// What boot learnt about memory.
#[derive(Debug)]
pub struct Memory {
    pub start_info: StartInfo,
    pub heap_start: u64,
    pub heap_end: u64,
    pub ram_end: u64,
    pub image_start: u64,
    pub image_end: u64,
    pub cmdline: &'static str,
}

/// Why memory could not be set up.
#[derive(Debug)]
#[allow(dead_code, reason = "the fields are printed through Debug")]
pub enum Error {
    StartInfo(memmap::StartInfoError),
    /// The image does not end inside RAM, or no RAM is left above it.
    NoHeap,
}

static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];

/// Reads the start info at `start_info_paddr`, maps RAM above 4 GiB and sets up the heap.
///
/// # Safety
/// Call once, first thing, with the pointer the PVH loader passed in %ebx; nothing may be
/// allocated before.
pub unsafe fn init(start_info_paddr: u64) -> Result<Memory, Error> {
    // SAFETY: the loader put a start info there (it is below 4 GiB, so it is mapped); the magic
    // check below rejects anything else.
    let bytes = unsafe { &*(start_info_paddr as *const [u8; START_INFO_LEN]) };
    let start_info = StartInfo::parse(bytes).map_err(Error::StartInfo)?;
    let mut regions = [Region {
        addr: 0,
        size: 0,
        kind: 0,
    }; MAX_REGIONS];
    let n = (start_info.memmap_entries as usize).min(MAX_REGIONS);
    for (i, region) in regions.iter_mut().enumerate().take(n) {
        let entry = start_info.memmap_paddr + (i * MEMMAP_ENTRY_LEN) as u64;
        // SAFETY: the loader's memory map table, `memmap_entries` entries long.
        *region = Region::parse(unsafe { &*(entry as *const [u8; MEMMAP_ENTRY_LEN]) });
    }
    let regions = &regions[..n];
    // Linker symbols: only their addresses are used.
    let (image_start, image_end) = (addr_of!(__image_start) as u64, addr_of!(__image_end) as u64);
    // SAFETY: the command line is a NUL-terminated string the loader left below the image; it is
    // copied before the heap can overwrite anything.
    let cmdline = unsafe { copy_cmdline(start_info.cmdline_paddr) };
    let ram_end = memmap::ram_end(regions);
    let (mut heap_start, heap_end) =
        memmap::choose_heap(regions, image_end).ok_or(Error::NoHeap)?;
    if ram_end > 4 * GIB {
        // SAFETY: the pages come from the heap region, which nothing uses yet.
        heap_start = unsafe { map_above_4g(ram_end, heap_start) };
        if heap_start >= heap_end {
            return Err(Error::NoHeap);
        }
    }
    // SAFETY: boot is single-threaded and the boot tables are only changed here.
    unsafe { guard_stack() };
    // SAFETY: [heap_start, heap_end) is RAM that is mapped and used by nothing else.
    unsafe {
        HEAP.lock()
            .init(heap_start as *mut u8, (heap_end - heap_start) as usize)
    };
    for r in regions.iter().filter(|r| r.size != 0) {
        crate::kprintln!(
            "memmap {:#011x}-{:#011x} type {}",
            r.addr,
            r.addr.saturating_add(r.size),
            r.kind
        );
    }
    Ok(Memory {
        start_info,
        heap_start,
        heap_end,
        ram_end,
        image_start,
        image_end,
        cmdline,
    })
}

/// Free heap bytes (fragmentation aside).
pub fn heap_free() -> usize {
    HEAP.lock().free()
}

/// Copies the command line into a static buffer; non-UTF-8 or absent lines are empty.
unsafe fn copy_cmdline(paddr: u64) -> &'static str {
    if paddr == 0 {
        return "";
    }
    // SAFETY: boot is single-threaded and this is the buffer's only writer, called once.
    let buf = unsafe { &mut *addr_of_mut!(CMDLINE) };
    let src = paddr as *const u8;
    let mut len = 0;
    // SAFETY: the caller's string, read up to its NUL or the buffer's size.
    while len < CMDLINE_MAX && unsafe { src.add(len).read() } != 0 {
        // SAFETY: as above.
        buf[len] = unsafe { src.add(len).read() };
        len += 1;
    }
    core::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// Maps the 2 MiB page that holds the stack's guard page with 4 KiB pages, all but the guard:
/// a stack overflow then faults (reported on IST1) instead of overwriting the page tables that
/// lie below the stack.
unsafe fn guard_stack() {
    let guard = addr_of!(boot_stack_guard) as u64;
    let large = guard & !0x1f_ffff;
    // SAFETY: the boot page table set aside for this, not yet in use.
    let pt = unsafe { &mut *addr_of_mut!(boot_pt_guard) };
    for (i, entry) in pt.iter_mut().enumerate() {
        let phys = large + (i as u64) * 4096;
        *entry = if phys == guard { 0 } else { phys | 0x3 };
    }
    // SAFETY: the PD entry of that 2 MiB page; the new table maps the same frames but the guard.
    unsafe {
        (*addr_of_mut!(boot_pd))[(large >> 21) as usize] = addr_of!(boot_pt_guard) as u64 | 0x3
    };
    // SAFETY: reloading CR3 flushes the TLB; only the guard page changed.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) addr_of!(boot_pml4) as u64, options(nostack))
    };
}

/// Identity-maps [4 GiB, ram_end) with 2 MiB pages, one page directory per GiB taken from
/// `free`; returns the first byte after them.
unsafe fn map_above_4g(ram_end: u64, mut free: u64) -> u64 {
    // One PDPT covers 512 GiB, more than microvm is ever given here.
    let gibs = ram_end.div_ceil(GIB).min(512);
    for gib in 4..gibs {
        let pd = free as *mut u64;
        free += 4096;
        for i in 0..512u64 {
            let phys = gib * GIB + (i << 21);
            // SAFETY: `pd` is a page of unused RAM below 4 GiB or already mapped above.
            unsafe { pd.add(i as usize).write(phys | 0x83) };
        }
        // SAFETY: the boot PDPT; entries 4.. are unused until now.
        unsafe { (*addr_of_mut!(boot_pdpt))[gib as usize] = pd as u64 | 0x3 };
    }
    // SAFETY: reloading CR3 with the same PML4 flushes the TLB; the mapping only grew.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) addr_of!(boot_pml4) as u64, options(nostack))
    };
    free
}
