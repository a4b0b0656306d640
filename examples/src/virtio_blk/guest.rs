//! The simulated guest: its memory, where the virtqueue and the request buffers live in it, and the
//! virtio driver a vCPU thread runs (the driver side of the split virtqueue, as Linux's virtio_ring does
//! it: descriptor chains, avail ring, kick suppression with EVENT_IDX, used ring, interrupts).
//!
//! The driver is the other end of the queue, not the device's: the device uses virtio-queue's `Queue`.
//! Ring entries are written with vm-memory's checked accessors and the ring indices with atomic
//! loads and stores, so the two sides synchronise exactly as a guest and a VMM do over shared memory.

use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioctx::EventNotifier;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{GuestMemory, QueueConfig};

/// Bytes kept free for tests and tools to build their own buffers in ([`GuestLayout::scratch`]).
const SCRATCH_LEN: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Where things are in guest memory: the virtqueue at address 0, then per request slot a 16-byte header
/// and a status byte, then one page-aligned data buffer of `block_size` bytes per slot, then a scratch
/// area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// The virtqueue.
    pub queue: QueueConfig,
    /// Request slots (the most requests in flight).
    pub slots: usize,
    /// Data buffer size per slot.
    pub block_size: usize,
    headers: u64,
    statuses: u64,
    data: u64,
    /// Start of the scratch area (1 MiB, page-aligned) free for ad-hoc buffers.
    pub scratch: GuestAddress,
    /// Size of guest memory in bytes.
    pub mem_size: u64,
}

impl GuestLayout {
    /// A layout for `slots` requests of at most `block_size` data bytes (a multiple of 512, at most
    /// 1 MiB); up to 1024 slots. The queue holds three descriptors per slot.
    pub fn new(slots: usize, block_size: usize) -> io::Result<Self> {
        if slots == 0 || slots > 1024 {
            return Err(invalid(format!("{slots} request slots: use 1 to 1024")));
        }
        if block_size == 0 || block_size % 512 != 0 || block_size > 1 << 20 {
            return Err(invalid(format!(
                "block size {block_size}: use a multiple of 512 up to 1 MiB"
            )));
        }
        let size = (slots * 3).next_power_of_two().clamp(16, 4096) as u16;
        let n = u64::from(size);
        let avail = 16 * n;
        let used = round_up(avail + 6 + 2 * n, 4);
        let headers = round_up(used + 6 + 8 * n, PAGE);
        let statuses = headers + 16 * slots as u64;
        let data = round_up(statuses + slots as u64, PAGE);
        let scratch = data + round_up(block_size as u64, PAGE) * slots as u64;
        Ok(GuestLayout {
            queue: QueueConfig {
                size,
                desc_table: GuestAddress(0),
                avail_ring: GuestAddress(avail),
                used_ring: GuestAddress(used),
                event_idx: true,
            },
            slots,
            block_size,
            headers,
            statuses,
            data,
            scratch: GuestAddress(scratch),
            mem_size: scratch + SCRATCH_LEN,
        })
    }

    /// The same layout moved up by `base` bytes of guest memory (a page multiple), so that several
    /// queues can live in one guest: the layout then ends at `mem_size` = `base` + its own size.
    pub fn at(self, base: u64) -> io::Result<Self> {
        if base % PAGE != 0 || base.checked_add(self.mem_size).is_none() {
            return Err(invalid(format!(
                "base {base:#x}: use a page multiple that keeps the layout in the address space"
            )));
        }
        let up = |a: GuestAddress| GuestAddress(a.0 + base);
        Ok(GuestLayout {
            queue: QueueConfig {
                desc_table: up(self.queue.desc_table),
                avail_ring: up(self.queue.avail_ring),
                used_ring: up(self.queue.used_ring),
                ..self.queue
            },
            headers: self.headers + base,
            statuses: self.statuses + base,
            data: self.data + base,
            scratch: up(self.scratch),
            mem_size: self.mem_size + base,
            ..self
        })
    }

    /// The request header of slot `i`.
    pub fn header(&self, i: usize) -> GuestAddress {
        GuestAddress(self.headers + 16 * i as u64)
    }

    /// The status byte of slot `i`.
    pub fn status(&self, i: usize) -> GuestAddress {
        GuestAddress(self.statuses + i as u64)
    }

    /// The data buffer of slot `i`.
    pub fn data(&self, i: usize) -> GuestAddress {
        GuestAddress(self.data + round_up(self.block_size as u64, PAGE) * i as u64)
    }
}

/// A guest: its memory, its layout, and the two eventfds it shares with the device: the ioeventfd it
/// kicks and the irqfd the device raises.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Guest memory, shared with the device.
    pub mem: Arc<GuestMemory>,
    /// Where the queue and buffers are.
    pub layout: GuestLayout,
    /// The ioeventfd: the guest's queue notifications.
    pub kick: EventNotifier,
    /// The irqfd: the device's interrupts.
    pub irq: EventNotifier,
}

impl Machine {
    /// Allocates guest memory (zeroed) for `layout`, and the eventfds.
    pub fn new(layout: GuestLayout) -> io::Result<Self> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), layout.mem_size as usize)])
            .map_err(|e| io::Error::other(format!("allocating guest memory: {e}")))?;
        Ok(Machine {
            mem: Arc::new(mem),
            layout,
            kick: EventNotifier::new()?,
            irq: EventNotifier::new()?,
        })
    }

    /// The parts a device serving this guest's queue needs, with `disk` behind it.
    pub fn device_parts(&self, disk: std::fs::File, limits: super::Limits) -> super::DeviceParts {
        super::DeviceParts {
            disk,
            mem: self.mem.clone(),
            queue: self.layout.queue,
            kick: self.kick.clone(),
            irq: self.irq.clone(),
            limits,
        }
    }

    /// A driver for this guest's queue, which starts empty. The queue has one driver for its whole
    /// life: a second one would not know the ring indices of the first.
    pub fn driver(&self, wait: GuestWait) -> GuestDriver {
        GuestDriver::new(self, wait)
    }
}

/// How the driver waits for completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestWait {
    /// Ask for an interrupt and sleep on the irqfd.
    Interrupt,
    /// Spin on the used ring, with interrupts suppressed.
    Poll,
}

/// One descriptor of a chain to submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescSpec {
    /// Guest address (any value: tests submit bad ones on purpose).
    pub addr: GuestAddress,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl DescSpec {
    /// A device-readable descriptor.
    pub fn read(addr: GuestAddress, len: u32) -> Self {
        DescSpec {
            addr,
            len,
            write: false,
        }
    }

    /// A device-writable descriptor.
    pub fn write(addr: GuestAddress, len: u32) -> Self {
        DescSpec {
            addr,
            len,
            write: true,
        }
    }
}

/// A chain the device put on the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index, as [`GuestDriver::submit`] returned it.
    pub head: u16,
    /// Bytes the device says it wrote into the chain.
    pub len: u32,
}

/// The guest's virtio driver for one split virtqueue. Not `Sync`: one vCPU drives it.
#[derive(Debug)]
pub struct GuestDriver {
    mem: Arc<GuestMemory>,
    queue: QueueConfig,
    kick: EventNotifier,
    irq: EventNotifier,
    wait: GuestWait,
    free: Vec<u16>,
    /// The descriptors of each chain in flight, by head.
    chains: Vec<Vec<u16>>,
    next_avail: Wrapping<u16>,
    kicked_avail: Wrapping<u16>,
    last_used: Wrapping<u16>,
    kicks: u64,
    timeout: Duration,
}

impl GuestDriver {
    fn new(machine: &Machine, wait: GuestWait) -> Self {
        let queue = machine.layout.queue;
        let driver = GuestDriver {
            mem: machine.mem.clone(),
            queue,
            kick: machine.kick.clone(),
            irq: machine.irq.clone(),
            wait,
            free: (0..queue.size).rev().collect(),
            chains: vec![Vec::new(); queue.size.into()],
            next_avail: Wrapping(0),
            kicked_avail: Wrapping(0),
            last_used: Wrapping(0),
            kicks: 0,
            timeout: Duration::from_secs(10),
        };
        driver.suppress_interrupts();
        driver
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// Kicks sent so far (notifications the device asked for).
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Chains submitted and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.chains.iter().filter(|c| !c.is_empty()).count()
    }

    /// Changes how the driver waits for completions.
    pub fn set_wait(&mut self, wait: GuestWait) {
        self.wait = wait;
        self.suppress_interrupts();
    }

    /// How long [`wait_used`](Self::wait_used) waits before it reports the device as stuck.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn ring_addr(&self, base: GuestAddress, offset: u64) -> GuestAddress {
        GuestAddress(base.0 + offset)
    }

    fn store_u16(&self, val: u16, addr: GuestAddress, order: Ordering) -> io::Result<()> {
        self.mem
            .store(val.to_le(), addr, order)
            .map_err(|e| io::Error::other(format!("guest ring write: {e}")))
    }

    fn load_u16(&self, addr: GuestAddress, order: Ordering) -> io::Result<u16> {
        self.mem
            .load(addr, order)
            .map(u16::from_le)
            .map_err(|e| io::Error::other(format!("guest ring read: {e}")))
    }

    /// Writes a chain into the descriptor table and publishes it on the avail ring (no kick yet: see
    /// [`kick`](Self::kick)). Returns its head index. Fails with `WouldBlock` when the table is full.
    pub fn submit(&mut self, descs: &[DescSpec]) -> io::Result<u16> {
        if descs.is_empty() || descs.len() > self.free.len() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} descriptors wanted, {} free",
                    descs.len(),
                    self.free.len()
                ),
            ));
        }
        let ids: Vec<u16> = (0..descs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, spec) in descs.iter().enumerate() {
            let mut flags = if spec.write { VRING_DESC_F_WRITE } else { 0 } as u16;
            let next = ids.get(i + 1).copied().unwrap_or(0);
            if i + 1 < ids.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc = Descriptor::new(spec.addr.0, spec.len, flags, next);
            let at = self.ring_addr(self.queue.desc_table, 16 * u64::from(ids[i]));
            self.mem
                .write_obj(desc, at)
                .map_err(|e| io::Error::other(format!("descriptor write: {e}")))?;
        }
        let head = ids[0];
        let size = self.queue.size;
        let slot = 4 + 2 * u64::from(self.next_avail.0 % size);
        self.store_u16(
            head,
            self.ring_addr(self.queue.avail_ring, slot),
            Ordering::Relaxed,
        )?;
        self.next_avail += Wrapping(1);
        // Release: the descriptors and the ring entry are visible before the new index.
        let idx_addr = self.ring_addr(self.queue.avail_ring, 2);
        self.store_u16(self.next_avail.0, idx_addr, Ordering::Release)?;
        self.chains[usize::from(head)] = ids;
        Ok(head)
    }

    /// Notifies the device of the chains published since the last kick, if it asked for it: with
    /// EVENT_IDX when the avail index crossed the device's `avail_event`, else unless the used ring says
    /// `VRING_USED_F_NO_NOTIFY` (Linux's `virtqueue_kick_prepare`). Returns whether it kicked.
    pub fn kick(&mut self) -> io::Result<bool> {
        // The new avail index must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        let (new, old) = (self.next_avail, self.kicked_avail);
        if new == old {
            return Ok(false);
        }
        let need = if self.queue.event_idx {
            let at = 4 + 8 * u64::from(self.queue.size);
            let event = Wrapping(
                self.load_u16(self.ring_addr(self.queue.used_ring, at), Ordering::Relaxed)?,
            );
            // vring_need_event: the device wants a kick once the index passes `event`.
            (new - event - Wrapping(1)) < (new - old)
        } else {
            let flags = self.load_u16(self.queue.used_ring, Ordering::Relaxed)?;
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        self.kicked_avail = new;
        if need {
            self.kick.set()?;
            self.kicks += 1;
        }
        Ok(need)
    }

    /// Takes the next completion off the used ring, if there is one.
    pub fn poll_used(&mut self) -> io::Result<Option<Completion>> {
        let used_idx = self.load_u16(self.ring_addr(self.queue.used_ring, 2), Ordering::Acquire)?;
        if used_idx == self.last_used.0 {
            return Ok(None);
        }
        let slot = 4 + 8 * u64::from(self.last_used.0 % self.queue.size);
        // virtq_used_elem: le32 id, le32 len.
        let elem: [u8; 8] = self
            .mem
            .read_obj(self.ring_addr(self.queue.used_ring, slot))
            .map_err(|e| io::Error::other(format!("used ring read: {e}")))?;
        let id = u32::from_le_bytes([elem[0], elem[1], elem[2], elem[3]]);
        let len = u32::from_le_bytes([elem[4], elem[5], elem[6], elem[7]]);
        self.last_used += Wrapping(1);
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.queue.size && !self.chains[usize::from(h)].is_empty())
            .ok_or_else(|| {
                io::Error::other(format!("device completed chain {id} that is not in flight"))
            })?;
        let ids = std::mem::take(&mut self.chains[usize::from(head)]);
        self.free.extend(ids);
        if self.wait == GuestWait::Poll {
            self.suppress_interrupts();
        }
        Ok(Some(Completion { head, len }))
    }

    /// Pushes `used_event` half the index space ahead, so the device does not interrupt (the driver
    /// polls). Only meaningful with EVENT_IDX; without it the device always interrupts.
    fn suppress_interrupts(&self) {
        if self.queue.event_idx {
            let at = 4 + 2 * u64::from(self.queue.size);
            let far = (self.last_used + Wrapping(0x7fff)).0;
            let _ = self.store_u16(
                far,
                self.ring_addr(self.queue.avail_ring, at),
                Ordering::Relaxed,
            );
        }
    }

    /// Waits for the next completion, by interrupt or by polling the used ring (see [`GuestWait`]).
    /// Fails with `TimedOut` if the device completes nothing for the timeout (10 s by default).
    pub fn wait_used(&mut self) -> io::Result<Completion> {
        let deadline = Instant::now() + self.timeout;
        let mut spins = 0u32;
        loop {
            if let Some(c) = self.poll_used()? {
                return Ok(c);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the device completed nothing in {:?}", self.timeout),
                ));
            }
            match self.wait {
                GuestWait::Poll => {
                    spins = spins.wrapping_add(1);
                    if spins % 1024 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                GuestWait::Interrupt => {
                    if self.queue.event_idx {
                        // Interrupt me at the next used entry.
                        let at = 4 + 2 * u64::from(self.queue.size);
                        let addr = self.ring_addr(self.queue.avail_ring, at);
                        self.store_u16(self.last_used.0, addr, Ordering::Relaxed)?;
                    }
                    fence(Ordering::SeqCst);
                    if let Some(c) = self.poll_used()? {
                        return Ok(c);
                    }
                    wait_readable(&self.irq, deadline - now)?;
                    self.irq.test_and_clear()?;
                }
            }
        }
    }
}

/// Blocks until the eventfd is readable or `timeout` passes.
fn wait_readable(n: &EventNotifier, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: n.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one live pollfd, count 1.
    let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}
