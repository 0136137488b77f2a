//! Facts about QEMU's `microvm` machine that the kernel relies on.
//!
//! The virtio-mmio transports sit at `0xfeb00000 + slot * 0x200`. Their interrupt lines
//! (`hw/i386/microvm.c`, `microvm_devices_init`): with a second IOAPIC (ACPI on, `ioapic2` not
//! off: the default) there are 24 transports on GSIs 24..47, the second IOAPIC's pins 0..23;
//! otherwise 8 transports on GSI 16 + slot with ACPI, GSI 5 + slot without, on the first IOAPIC.

/// The first virtio-mmio transport.
pub const VIRTIO_MMIO_BASE: u64 = 0xfeb0_0000;
/// The stride (and size) of one transport.
pub const VIRTIO_MMIO_STRIDE: u64 = 0x200;
/// The most transports microvm creates.
pub const VIRTIO_MMIO_MAX_SLOTS: u64 = 24;
/// The first IOAPIC; the second follows at +0x10000.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The second IOAPIC.
pub const IOAPIC2_BASE: u64 = 0xfec1_0000;
/// The local APIC.
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// Where a transport's interrupt arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqRoute {
    /// 0: the first IOAPIC, 1: the second.
    pub ioapic: u8,
    pub pin: u8,
    pub gsi: u32,
}

/// The route of transport `slot`, given how many transports the machine has (counted by their
/// magic) and whether it has ACPI (an RSDP in the start info).
pub fn virtio_irq(slot: u8, transports: u8, acpi: bool) -> IrqRoute {
    if transports > 8 {
        IrqRoute {
            ioapic: 1,
            pin: slot,
            gsi: 24 + u32::from(slot),
        }
    } else {
        let base = if acpi { 16 } else { 5 };
        IrqRoute {
            ioapic: 0,
            pin: base + slot,
            gsi: u32::from(base + slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_microvm_c() {
        assert_eq!(
            virtio_irq(7, 8, false),
            IrqRoute {
                ioapic: 0,
                pin: 12,
                gsi: 12
            }
        );
        assert_eq!(
            virtio_irq(7, 8, true),
            IrqRoute {
                ioapic: 0,
                pin: 23,
                gsi: 23
            }
        );
        assert_eq!(
            virtio_irq(23, 24, true),
            IrqRoute {
                ioapic: 1,
                pin: 23,
                gsi: 47
            }
        );
    }
}
