//! virtio-net over virtio-mmio (virtio-drivers) as a smoltcp device.
//!
//! All memory is identity-mapped, so the virtio HAL is trivial: DMA buffers are page-aligned heap
//! allocations and a buffer's physical address is its virtual one.

use alloc::alloc::{alloc_zeroed, dealloc};
use core::alloc::Layout;
use core::cell::RefCell;
use core::ptr::NonNull;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::{RxBuffer, VirtIONet};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};
use wasm_unikernel::microvm::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_MAX_SLOTS, VIRTIO_MMIO_STRIDE};

/// Descriptors per queue.
const QUEUE_SIZE: usize = 64;
/// Receive buffer size: a full Ethernet frame and the virtio-net header.
const RX_BUFFER: usize = 2048;
const VIRTIO_MAGIC: u32 = 0x7472_6976; // "virt"
const DEVICE_ID_NET: u32 = 1;

/// The virtio HAL for an identity-mapped kernel.
#[derive(Debug)]
pub struct IdentityHal;

fn dma_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("DMA layout")
}

// SAFETY: allocations are zeroed, page-aligned, owned by the device until `dma_dealloc`, and
// physical addresses equal virtual ones.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: a non-zero-sized layout.
        let ptr = unsafe { alloc_zeroed(dma_layout(pages)) };
        let ptr = NonNull::new(ptr).expect("out of memory for virtio DMA");
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: allocated by `dma_alloc` with the same layout.
        unsafe { dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

type Driver = VirtIONet<IdentityHal, MmioTransport<'static>, QUEUE_SIZE>;

/// The NIC found among the microvm slots.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub slot: u8,
    pub base: u64,
    /// How many transports the machine has (8, or 24 with the second IOAPIC).
    pub transports: u8,
}

/// Scans the virtio-mmio slots: the first network device, and the number of transports.
pub fn discover() -> Option<Found> {
    let mut transports = 0;
    let mut found = None;
    for slot in 0..VIRTIO_MMIO_MAX_SLOTS {
        let base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_STRIDE;
        // SAFETY: the slot range is in the identity-mapped MMIO hole; absent slots read as 0.
        let (magic, device) = unsafe {
            (
                (base as *const u32).read_volatile(),
                ((base + 8) as *const u32).read_volatile(),
            )
        };
        if magic != VIRTIO_MAGIC {
            continue;
        }
        transports += 1;
        if device == DEVICE_ID_NET && found.is_none() {
            found = Some((slot as u8, base));
        }
    }
    found.map(|(slot, base)| Found {
        slot,
        base,
        transports,
    })
}

/// Why the NIC could not be set up.
#[derive(Debug)]
#[allow(dead_code, reason = "the fields are printed through Debug")]
pub enum Error {
    Transport(virtio_drivers::transport::mmio::MmioError),
    Driver(virtio_drivers::Error),
}

/// The NIC as a smoltcp device.
pub struct Nic {
    driver: RefCell<Driver>,
}

impl core::fmt::Debug for Nic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Nic")
    }
}

impl Nic {
    /// Initialises the device and enables its queue interrupts.
    pub fn new(found: Found) -> Result<Self, Error> {
        let header = NonNull::new(found.base as *mut VirtIOHeader).expect("nonzero base");
        // SAFETY: a virtio-mmio transport (checked magic) in mapped MMIO, used only by this driver
        // (the interrupt stub touches only InterruptStatus/InterruptACK).
        let transport = unsafe { MmioTransport::new(header, VIRTIO_MMIO_STRIDE as usize) }
            .map_err(Error::Transport)?;
        let mut driver = Driver::new(transport, RX_BUFFER).map_err(Error::Driver)?;
        driver.enable_interrupts();
        Ok(Self {
            driver: RefCell::new(driver),
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.driver.borrow().mac_address()
    }

    /// Whether a received frame waits.
    pub fn can_recv(&self) -> bool {
        self.driver.borrow().can_recv()
    }
}

/// A received frame; its buffer goes back to the device after use.
pub struct Rx<'a>(&'a RefCell<Driver>, RxBuffer);
/// Room for one frame to send.
pub struct Tx<'a>(&'a RefCell<Driver>);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(self.1.packet());
        if let Err(e) = self.0.borrow_mut().recycle_rx_buffer(self.1) {
            crate::kprintln!("virtio-net: rx buffer lost: {e:?}");
        }
        result
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut driver = self.0.borrow_mut();
        let mut tx = driver.new_tx_buffer(len);
        let result = f(tx.packet_mut());
        // The driver waits for the device to take the frame; QEMU does so on the notify.
        if let Err(e) = driver.send(tx) {
            crate::kprintln!("virtio-net: send failed: {e:?}");
        }
        result
    }
}

impl phy::Device for Nic {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let buffer = self.driver.borrow_mut().receive().ok()?;
        Some((Rx(&self.driver, buffer), Tx(&self.driver)))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Tx<'_>> {
        self.driver.borrow().can_send().then_some(Tx(&self.driver))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(1);
        caps
    }
}
