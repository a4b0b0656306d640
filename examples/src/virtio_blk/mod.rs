//! A virtio-blk device model in async/await on an aioctx [`IoThread`](aioctx::IoThread), and the
//! simulated guest that drives it.
//!
//! - [`request`]: the virtio-blk request parser. It turns a descriptor chain into a [`Request`] or a
//!   [`Rejected`] status, validating everything the (untrusted) guest wrote; it does no I/O.
//! - [`device`]: the device. The guest's kick is an ioeventfd registered with a poll function that peeks
//!   the avail ring; each request is a task doing block I/O with `aioctx::fs::File` straight into guest
//!   memory; completions go on the used ring and raise the irqfd only when the queue says so.
//! - [`guest`]: the guest side: guest memory, the ring layout and a virtio driver (descriptor chains,
//!   kicks, interrupts or used-ring polling) for a vCPU thread.
//! - [`workload`]: randread/randwrite/randrw at an iodepth, with every read verified, and its latencies.
//! - [`bench`](mod@bench): one measured run of device + guest, shared by the `device-model` example and the
//!   `compare` benchmark (whose tokio device uses the same guest, parser and disk).
//!
//! Guest memory and the split virtqueue come from the rust-vmm crates `vm-memory` and `virtio-queue`.

use std::io;
use std::sync::Arc;

pub mod bench;
pub mod device;
pub mod guest;
pub mod request;
pub mod workload;

pub use device::{DeviceCounters, DeviceParts, VirtioBlkDevice};
pub use guest::{Completion, DescSpec, GuestDriver, GuestLayout, GuestWait, Machine};
pub use request::{Limits, Malformed, Op, Rejected, Request, Segment, SECTOR_SIZE};

/// What a virtio queue looks like to the device: its size and where its three parts are in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Number of descriptors (a power of two).
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc_table: vm_memory::GuestAddress,
    /// Guest address of the available ring.
    pub avail_ring: vm_memory::GuestAddress,
    /// Guest address of the used ring.
    pub used_ring: vm_memory::GuestAddress,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated (notification suppression by ring indices).
    pub event_idx: bool,
}

/// The guest memory type the device model uses: anonymous mmaped regions, no dirty bitmap.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Guest memory as [`aioctx::fs::IoMemory`]: block I/O goes straight into guest RAM with safe calls.
/// An `MemRange` is a guest address and a length inside one region.
#[derive(Clone, Debug)]
pub struct GuestRam(pub Arc<GuestMemory>);

// SAFETY: the regions of a `GuestMemoryMmap` are mmaps owned (through `Arc`s) by the memory, which
// this value keeps alive: they stay mapped, at the same host addresses, until the last `GuestRam`
// and every other owner is gone. `host_range` returns a pointer only for a range that
// `get_slice` confirms lies inside one region. Rust code reaches guest memory only through
// vm-memory's volatile accessors, so the kernel writing it during an operation breaks no aliasing
// rule; that the guest itself may touch a buffer it handed to the device is virtio's contract (a
// guest that does only corrupts its own data). With the `()` bitmap there is no dirty tracking the
// kernel's writes would bypass.
unsafe impl aioctx::fs::IoMemory for GuestRam {
    fn host_range(&self, range: aioctx::fs::MemRange) -> io::Result<std::ptr::NonNull<u8>> {
        use vm_memory::GuestMemoryBackend;
        let slice = self
            .0
            .get_slice(vm_memory::GuestAddress(range.addr), range.len)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("guest range {range:?}: {e}"),
                )
            })?;
        std::ptr::NonNull::new(slice.ptr_guard_mut().as_ptr())
            .ok_or_else(|| io::Error::other("a guest region at host address 0"))
    }
}
