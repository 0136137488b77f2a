//! The PVH start of day structure and the choice of the heap from its memory map.
//!
//! Layout (Xen's `xen/include/public/arch-x86/hvm/start_info.h`, version 1, all little endian):
//!
//! ```text
//! hvm_start_info:            0 magic u32 (0x336ec578)   4 version u32   8 flags u32
//!                           12 nr_modules u32  16 modlist_paddr u64  24 cmdline_paddr u64
//!                           32 rsdp_paddr u64  40 memmap_paddr u64   48 memmap_entries u32
//!                           52 reserved u32    (56 bytes; version 0 ends at 40)
//! hvm_memmap_table_entry:    0 addr u64  8 size u64  16 type u32  20 reserved u32  (24 bytes)
//! ```

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const START_MAGIC: u32 = 0x336e_c578;
/// The size of `hvm_start_info` version 1.
pub const START_INFO_LEN: usize = 56;
/// The size of one `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_LEN: usize = 24;
/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const TYPE_RAM: u32 = 1;

/// The fields of `hvm_start_info` the kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    pub version: u32,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
}

/// Why the start info cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    BadMagic(u32),
    /// Version 0 has no memory map.
    NoMemoryMap {
        version: u32,
    },
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

impl StartInfo {
    /// Reads the structure from its bytes.
    pub fn parse(b: &[u8; START_INFO_LEN]) -> Result<Self, StartInfoError> {
        let magic = u32_at(b, 0);
        if magic != START_MAGIC {
            return Err(StartInfoError::BadMagic(magic));
        }
        let version = u32_at(b, 4);
        let memmap_entries = u32_at(b, 48);
        let memmap_paddr = u64_at(b, 40);
        if version < 1 || memmap_paddr == 0 || memmap_entries == 0 {
            return Err(StartInfoError::NoMemoryMap { version });
        }
        Ok(Self {
            version,
            cmdline_paddr: u64_at(b, 24),
            rsdp_paddr: u64_at(b, 32),
            memmap_paddr,
            memmap_entries,
        })
    }
}

/// One entry of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl Region {
    /// Reads one `hvm_memmap_table_entry`.
    pub fn parse(b: &[u8; MEMMAP_ENTRY_LEN]) -> Self {
        Self {
            addr: u64_at(b, 0),
            size: u64_at(b, 8),
            kind: u32_at(b, 16),
        }
    }

    fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// The end of the highest RAM region: what the identity mapping has to cover.
pub fn ram_end(regions: &[Region]) -> u64 {
    regions
        .iter()
        .filter(|r| r.kind == TYPE_RAM)
        .map(Region::end)
        .max()
        .unwrap_or(0)
}

/// The heap: the RAM region that holds the end of the image, from the first page after the image
/// to the end of that region, less any other (non-RAM) region that overlaps it. `None` when the
/// image does not end in RAM or nothing is left.
pub fn choose_heap(regions: &[Region], image_end: u64) -> Option<(u64, u64)> {
    const PAGE: u64 = 4096;
    let start = image_end.checked_add(PAGE - 1)? & !(PAGE - 1);
    let ram = regions
        .iter()
        .find(|r| r.kind == TYPE_RAM && r.addr <= image_end && image_end < r.end())?;
    // Entries can overlap in a sloppy map: anything not RAM that starts inside ends the heap.
    let end = regions
        .iter()
        .filter(|r| r.kind != TYPE_RAM && r.end() > start && r.addr < ram.end())
        .map(|r| r.addr)
        .fold(ram.end(), u64::min)
        & !(PAGE - 1);
    (end > start).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ram(addr: u64, size: u64) -> Region {
        Region {
            addr,
            size,
            kind: TYPE_RAM,
        }
    }

    #[test]
    fn start_info_layout() {
        let mut b = [0u8; START_INFO_LEN];
        b[0..4].copy_from_slice(&START_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&0x2_0000u64.to_le_bytes());
        b[32..40].copy_from_slice(&0xe_0000u64.to_le_bytes());
        b[40..48].copy_from_slice(&0x7000u64.to_le_bytes());
        b[48..52].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            StartInfo::parse(&b),
            Ok(StartInfo {
                version: 1,
                cmdline_paddr: 0x2_0000,
                rsdp_paddr: 0xe_0000,
                memmap_paddr: 0x7000,
                memmap_entries: 3,
            })
        );
        b[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            StartInfo::parse(&b),
            Err(StartInfoError::NoMemoryMap { version: 0 })
        );
        b[0] = 0;
        assert!(matches!(
            StartInfo::parse(&b),
            Err(StartInfoError::BadMagic(_))
        ));
    }

    #[test]
    fn memmap_entry_layout() {
        let mut b = [0u8; MEMMAP_ENTRY_LEN];
        b[0..8].copy_from_slice(&0x10_0000u64.to_le_bytes());
        b[8..16].copy_from_slice(&(0x1_0000_0000u64).to_le_bytes());
        b[16..20].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            Region::parse(&b),
            Region {
                addr: 0x10_0000,
                size: 0x1_0000_0000,
                kind: 2
            }
        );
    }

    #[test]
    fn heap_is_the_ram_above_the_image() {
        // What QEMU's microvm gives a 64 MiB guest.
        let map = [
            ram(0, 0x9_fc00),
            Region {
                addr: 0x9_fc00,
                size: 0x400,
                kind: 2,
            },
            ram(0x10_0000, 63 * MIB),
        ];
        assert_eq!(choose_heap(&map, 0x18_2345), Some((0x18_3000, 64 * MIB)));
        assert_eq!(ram_end(&map), 64 * MIB);
        // A single region from 0, as microvm's e820 has it.
        assert_eq!(
            choose_heap(&[ram(0, 32 * MIB)], 0x20_0000),
            Some((0x20_0000, 32 * MIB))
        );
    }

    #[test]
    fn heap_stops_at_a_reserved_hole_and_needs_ram() {
        let map = [
            ram(0, 64 * MIB),
            Region {
                addr: 40 * MIB,
                size: MIB,
                kind: 2,
            },
        ];
        assert_eq!(choose_heap(&map, 2 * MIB), Some((2 * MIB, 40 * MIB)));
        assert_eq!(choose_heap(&[ram(0, 2 * MIB)], 2 * MIB), None);
        assert_eq!(choose_heap(&[ram(4 * MIB, 8 * MIB)], 2 * MIB), None);
        assert_eq!(choose_heap(&[], 2 * MIB), None);
        assert_eq!(ram_end(&[]), 0);
        let above = [ram(0, 3072 * MIB), ram(4096 * MIB, 1024 * MIB)];
        assert_eq!(ram_end(&above), 5120 * MIB);
    }
}
