//! The vhost-user side of the device: what each front-end message does to the rings, the memory
//! table and the running queues.
//!
//! rust-vmm's `vhost` crate parses the messages, receives the fds and sends the replies (with
//! REPLY_ACK when negotiated); [`BlkBackend`] implements its request-handler trait. A ring runs as a
//! [`VirtioBlkDevice`] on its IoThread once it has a size, addresses, a kick fd, guest memory, and, if
//! vhost-user's PROTOCOL_FEATURES was negotiated, a `SET_VRING_ENABLE`. `GET_VRING_BASE` (or a disable,
//! a reset, a new memory table, a new call fd, the front end going away) pauses it: requests in
//! flight finish first, then the device returns the avail index to resume from. Guest memory stays
//! mapped while any device or request holds it (the devices hold `Arc`s of it).
//!
//! Every message is untrusted. Anything out of range is refused with an `io::Error` naming it, which
//! the crate turns into a REPLY_ACK failure (when the front end asked for one); the daemon then closes
//! the connection, as QEMU's own backends do on an error.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use aioctx::{EventNotifier, Remote};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error as VhostError, GpuBackend, Result as VhostResult};
use vhost::VhostUserMemoryRegionBase;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::config::{config_space, config_window, protocol_features, virtio_features};
use super::memory::{GuestMemoryTable, RegionSpec};
use crate::virtio_blk::{DeviceCounters, DeviceParts, Limits, QueueConfig, VirtioBlkDevice};

/// The largest virtqueue the device accepts (virtio's limit for split rings).
pub const MAX_QUEUE_SIZE: u32 = 32768;

/// What the backend serves: the image, its limits, and where the queues run.
#[derive(Debug)]
pub struct BackendConfig {
    /// The image (opened read-only for a read-only export: writes then fail in the kernel too).
    pub image: File,
    /// What requests the device accepts; `capacity` is the disk size.
    pub limits: Limits,
    /// Offer `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// Number of virtqueues offered.
    pub num_queues: u16,
    /// The IoThreads serving the queues: queue `i` runs on `iothreads[i % len]`.
    pub iothreads: Vec<Remote>,
}

/// One virtqueue's state, as the front end set it up.
#[derive(Debug, Default)]
struct Vring {
    size: Option<u16>,
    /// The next avail index to take (`SET_VRING_BASE`, or where a pause left off).
    base: u16,
    /// Descriptor table, used ring, avail ring, in front-end addresses.
    addrs: Option<[u64; 3]>,
    kick: Option<EventNotifier>,
    call: Option<EventNotifier>,
    enabled: bool,
    running: Option<VirtioBlkDevice>,
}

/// The device's vhost-user state, driven by the `vhost` crate's `BackendReqHandler` (wrap it in a
/// `Mutex`: the crate's handler trait is implemented for `Mutex<T>`).
#[derive(Debug)]
pub struct BlkBackend {
    config: Arc<BackendConfig>,
    config_space: Vec<u8>,
    acked_features: u64,
    acked_protocol: u64,
    memory: Option<GuestMemoryTable>,
    vrings: Vec<Vring>,
    counters: Vec<Arc<DeviceCounters>>,
}

fn refuse(what: impl Into<String>) -> VhostError {
    VhostError::ReqHandlerError(io::Error::new(io::ErrorKind::InvalidInput, what.into()))
}

fn failed(context: &str, e: io::Error) -> VhostError {
    VhostError::ReqHandlerError(io::Error::new(e.kind(), format!("{context}: {e}")))
}

impl BlkBackend {
    /// A backend with no front end yet.
    pub fn new(config: Arc<BackendConfig>) -> Self {
        let queues = usize::from(config.num_queues);
        BlkBackend {
            config_space: config_space(&config.limits, config.num_queues),
            vrings: (0..queues).map(|_| Vring::default()).collect(),
            counters: (0..queues).map(|_| Arc::default()).collect(),
            config,
            acked_features: 0,
            acked_protocol: 0,
            memory: None,
        }
    }

    /// Each queue's counters (they accumulate over front ends).
    pub fn counters(&self) -> &[Arc<DeviceCounters>] {
        &self.counters
    }

    /// How many queues are being served now.
    pub fn running_queues(&self) -> usize {
        self.vrings.iter().filter(|v| v.running.is_some()).count()
    }

    /// Forgets the front end: pauses every ring (requests in flight finish), unmaps guest memory once
    /// the last request into it is done, and starts over for the next front end.
    pub fn disconnect(&mut self) {
        for index in 0..self.vrings.len() {
            if let Err(e) = self.pause(index) {
                eprintln!("vhost-user-blk: queue {index}: stopping it: {e}");
            }
        }
        self.memory = None;
        self.acked_features = 0;
        self.acked_protocol = 0;
        for vring in &mut self.vrings {
            *vring = Vring::default();
        }
    }

    fn vring_index(&self, index: u32) -> VhostResult<usize> {
        let i = index as usize;
        if i < self.vrings.len() {
            Ok(i)
        } else {
            Err(refuse(format!(
                "queue index {index} out of range (the device has {} queues)",
                self.vrings.len()
            )))
        }
    }

    /// Stops a running ring and keeps where it stopped.
    fn pause(&mut self, index: usize) -> io::Result<()> {
        if let Some(device) = self.vrings[index].running.take() {
            self.vrings[index].base = device.pause()?;
        }
        Ok(())
    }

    /// Starts a ring if it has everything it needs; does nothing otherwise.
    fn try_start(&mut self, index: usize) -> VhostResult<()> {
        let protocol = self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        let vring = &self.vrings[index];
        let (Some(size), Some(addrs), Some(kick), Some(memory)) = (
            vring.size,
            vring.addrs,
            vring.kick.clone(),
            self.memory.as_ref(),
        ) else {
            return Ok(());
        };
        if vring.running.is_some() || (protocol && !vring.enabled) {
            return Ok(());
        }
        let n = u64::from(size);
        let translate = |addr: u64, len: u64, what: &str| {
            memory.translate(addr, len).ok_or_else(|| {
                refuse(format!(
                    "queue {index}: the {what} at {addr:#x} is outside guest memory"
                ))
            })
        };
        let queue = QueueConfig {
            size,
            desc_table: translate(addrs[0], 16 * n, "descriptor table")?,
            used_ring: translate(addrs[1], 6 + 8 * n, "used ring")?,
            avail_ring: translate(addrs[2], 6 + 2 * n, "avail ring")?,
            event_idx: self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
        };
        // Interrupts raised before the front end sends its call fd go nowhere, as in QEMU.
        let irq = match &vring.call {
            Some(call) => call.clone(),
            None => EventNotifier::new().map_err(|e| failed("a placeholder call fd", e))?,
        };
        let disk = self
            .config
            .image
            .try_clone()
            .map_err(|e| failed("duplicating the image fd", e))?;
        let parts = DeviceParts {
            disk,
            mem: memory.memory().clone(),
            queue,
            kick,
            irq,
            limits: self.config.limits,
        };
        let remote = &self.config.iothreads[index % self.config.iothreads.len()];
        let device = VirtioBlkDevice::resume_with_counters(
            remote,
            parts,
            vring.base,
            self.counters[index].clone(),
        )
        .map_err(|e| failed(&format!("queue {index}: starting it"), e))?;
        self.vrings[index].running = Some(device);
        Ok(())
    }

    /// Pauses the ring, applies `change`, and starts it again if it ran (or can run now).
    fn restart_with(&mut self, index: usize, change: impl FnOnce(&mut Vring)) -> VhostResult<()> {
        self.pause(index)
            .map_err(|e| failed(&format!("queue {index}: stopping it"), e))?;
        change(&mut self.vrings[index]);
        self.try_start(index)
    }

    fn notifier(index: u8, fd: Option<File>, what: &str) -> VhostResult<EventNotifier> {
        let fd = fd.ok_or_else(|| {
            refuse(format!(
                "queue {index}: no {what} fd (polling without one is not supported)"
            ))
        })?;
        EventNotifier::from_eventfd(OwnedFd::from(fd))
            .map_err(|e| failed(&format!("queue {index}: the {what} fd"), e))
    }

    fn unsupported(what: &str) -> VhostError {
        VhostError::ReqHandlerError(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{what} is not supported by this device"),
        ))
    }
}

impl vhost::vhost_user::VhostUserBackendReqHandlerMut for BlkBackend {
    fn set_owner(&mut self) -> VhostResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        self.disconnect();
        Ok(())
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(virtio_features(self.config.read_only))
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        let offered = virtio_features(self.config.read_only);
        if features & !offered != 0 {
            return Err(refuse(format!(
                "features {:#x} were not offered",
                features & !offered
            )));
        }
        if self.running_queues() > 0 && features != self.acked_features {
            return Err(refuse("features changed while queues run"));
        }
        self.acked_features = features;
        // Without PROTOCOL_FEATURES, rings are enabled as they start (vhost-user spec).
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for vring in &mut self.vrings {
                vring.enabled = true;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let specs: Vec<RegionSpec> = ctx
            .iter()
            .map(|r| RegionSpec {
                guest_phys_addr: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .collect();
        let table = GuestMemoryTable::map(&specs, files).map_err(|e| failed("SET_MEM_TABLE", e))?;
        if table.unsealed_regions() > 0 {
            eprintln!(
                "vhost-user-blk: {} guest memory region(s) can be shrunk by the front end (no \
                 F_SEAL_SHRINK): a front end that does so crashes this daemon",
                table.unsealed_regions()
            );
        }
        // Rings in use move to the new memory: pause them, swap, start them again.
        let was_running: Vec<usize> = (0..self.vrings.len())
            .filter(|&i| self.vrings[i].running.is_some())
            .collect();
        for &i in &was_running {
            self.pause(i)
                .map_err(|e| failed(&format!("queue {i}: stopping it"), e))?;
        }
        self.memory = Some(table);
        for i in 0..self.vrings.len() {
            self.try_start(i)?;
        }
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        if num == 0 || num > MAX_QUEUE_SIZE || !num.is_power_of_two() {
            return Err(refuse(format!(
                "queue {index}: size {num} (a power of two up to {MAX_QUEUE_SIZE})"
            )));
        }
        if self.vrings[i].running.is_some() {
            return Err(refuse(format!("queue {index}: resized while running")));
        }
        self.vrings[i].size = Some(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        if let (Some(memory), Some(size)) = (&self.memory, self.vrings[i].size) {
            let n = u64::from(size);
            for (addr, len, what) in [
                (descriptor, 16 * n, "descriptor table"),
                (used, 6 + 8 * n, "used ring"),
                (available, 6 + 2 * n, "avail ring"),
            ] {
                if memory.translate(addr, len).is_none() {
                    return Err(refuse(format!(
                        "queue {index}: the {what} at {addr:#x} is outside guest memory"
                    )));
                }
            }
        }
        self.restart_with(i, |v| v.addrs = Some([descriptor, used, available]))
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        let base = u16::try_from(base)
            .map_err(|_| refuse(format!("queue {index}: base {base} is not a ring index")))?;
        if self.vrings[i].running.is_some() {
            return Err(refuse(format!("queue {index}: base set while running")));
        }
        self.vrings[i].base = base;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        let i = self.vring_index(index)?;
        self.pause(i)
            .map_err(|e| failed(&format!("queue {index}: stopping it"), e))?;
        // The ring is stopped until the front end sets it up again (vhost-user spec): it needs a new
        // kick fd to start.
        let vring = &mut self.vrings[i];
        vring.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(vring.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let i = self.vring_index(u32::from(index))?;
        let kick = Self::notifier(index, fd, "kick")?;
        let protocol = self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        self.restart_with(i, |v| {
            v.kick = Some(kick);
            if !protocol {
                v.enabled = true;
            }
        })
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let i = self.vring_index(u32::from(index))?;
        let call = Self::notifier(index, fd, "call")?;
        if self.vrings[i].running.is_none() {
            self.vrings[i].call = Some(call);
            return Ok(());
        }
        self.restart_with(i, |v| v.call = Some(call))
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        // The device reports no ring errors through it; check the fd and drop it.
        self.vring_index(u32::from(index))?;
        if fd.is_some() {
            Self::notifier(index, fd, "error")?;
        }
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !protocol_features().bits() != 0 {
            return Err(refuse(format!(
                "protocol features {:#x} were not offered",
                features & !protocol_features().bits()
            )));
        }
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(u64::from(self.config.num_queues))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        let i = self.vring_index(index)?;
        if enable {
            self.vrings[i].enabled = true;
            self.try_start(i)
        } else {
            self.restart_with(i, |v| v.enabled = false)
        }
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        config_window(&self.config_space, offset, size)
            .ok_or_else(|| refuse(format!("config window {offset}+{size} is out of range")))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<()> {
        // No field of the offered configuration is writable (CONFIG_WCE is not offered).
        Err(Self::unsupported("SET_CONFIG"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostResult<()> {
        Err(Self::unsupported("GPU_SET_SOCKET"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(Self::unsupported("GET_SHARED_OBJECT"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        Err(Self::unsupported("GET_INFLIGHT_FD"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VhostResult<()> {
        Err(Self::unsupported("SET_INFLIGHT_FD"))
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Err(Self::unsupported("GET_MAX_MEM_SLOTS"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        Err(Self::unsupported("ADD_MEM_REG"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        Err(Self::unsupported("REM_MEM_REG"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(Self::unsupported("SET_DEVICE_STATE_FD"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(Self::unsupported("CHECK_DEVICE_STATE"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(Self::unsupported("GET_SHMEM_CONFIG"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostResult<()> {
        Err(Self::unsupported("SET_LOG_BASE"))
    }
}
