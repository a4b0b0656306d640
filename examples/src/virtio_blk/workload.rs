//! The guest's workloads: random reads, writes or a mix at a fixed iodepth, one block per request, with
//! every read checked against what the guest last wrote there.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::Bytes;

use super::guest::{Completion, DescSpec, GuestDriver, GuestLayout};
use super::request::SECTOR_SIZE;

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rw {
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random reads and writes, half each.
    RandRw,
}

impl fmt::Display for Rw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::RandRw => "randrw",
        })
    }
}

impl FromStr for Rw {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "randread" => Ok(Rw::RandRead),
            "randwrite" => Ok(Rw::RandWrite),
            "randrw" => Ok(Rw::RandRw),
            other => Err(format!(
                "unknown workload {other:?}: randread, randwrite or randrw"
            )),
        }
    }
}

/// One workload run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Access pattern.
    pub rw: Rw,
    /// Requests kept in flight (at most the layout's slots).
    pub iodepth: usize,
    /// Stop issuing after this long...
    pub duration: Duration,
    /// ...or after this many requests, whichever comes first.
    pub max_ios: u64,
    /// Seed of the block and operation choices.
    pub seed: u64,
}

/// What the guest knows about the disk's content: the generation last written to each block (0: never
/// written by this guest, so zeroes if the disk started zeroed, else unknown).
#[derive(Clone, Debug)]
pub struct DiskModel {
    generations: Vec<u32>,
    block_size: usize,
    started_zeroed: bool,
}

impl DiskModel {
    /// A model of a disk of `capacity` bytes read and written in `block_size` units. Pass
    /// `started_zeroed` only for a disk known to read as zeroes (a fresh sparse image).
    pub fn new(capacity: u64, block_size: usize, started_zeroed: bool) -> io::Result<Self> {
        let blocks = capacity / block_size as u64;
        if blocks == 0 || blocks > u32::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {capacity}-byte disk holds no (or too many) {block_size}-byte blocks"),
            ));
        }
        Ok(DiskModel {
            generations: vec![0; blocks as usize],
            block_size,
            started_zeroed,
        })
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.generations.len() as u64
    }

    /// The content the guest expects in `block`, or `None` if it cannot know.
    pub fn expected(&self, block: u64) -> Option<Vec<u8>> {
        match self.generations[block as usize] {
            0 if self.started_zeroed => Some(vec![0; self.block_size]),
            0 => None,
            g => Some(pattern(block, g, self.block_size)),
        }
    }
}

/// The bytes generation `generation` of `block` holds: distinct for every block and generation.
pub fn pattern(block: u64, generation: u32, len: usize) -> Vec<u8> {
    let mut state = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(generation) << 40;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SplitMix64: a tiny, well-mixed generator for block choices and data patterns.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a workload did.
#[derive(Clone, Debug, Default)]
pub struct WorkloadResult {
    /// Requests completed.
    pub ios: u64,
    /// Reads completed (each one verified where the content is known).
    pub reads: u64,
    /// Reads whose content was checked.
    pub verified_reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// From the first submission to the last completion.
    pub elapsed: Duration,
    /// Request latencies (submission to completion seen by the guest), sorted, in ns.
    pub latencies_ns: Vec<u64>,
    /// Kicks the guest sent.
    pub kicks: u64,
}

impl WorkloadResult {
    /// Requests per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency (0 < p <= 100).
    pub fn percentile(&self, p: f64) -> Duration {
        let n = self.latencies_ns.len();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Duration::from_nanos(self.latencies_ns[rank.clamp(1, n) - 1])
    }
}

/// A request of slot `i` in flight.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    block: u64,
    write: Option<u32>,
    submitted: Instant,
}

fn failed(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// The state of one run: which blocks and slots are busy, and what was measured.
struct Runner<'a> {
    layout: &'a GuestLayout,
    model: &'a mut DiskModel,
    workload: &'a Workload,
    rng: u64,
    busy: Vec<bool>,
    slots: Vec<Option<InFlight>>,
    slot_of_head: Vec<usize>,
    buf: Vec<u8>,
    res: WorkloadResult,
}

fn guest_err(e: vm_memory::GuestMemoryError) -> io::Error {
    failed(format!("guest buffer: {e}"))
}

impl Runner<'_> {
    /// Prepares and submits a request in `slot` (no kick).
    fn issue(&mut self, driver: &mut GuestDriver, slot: usize) -> io::Result<()> {
        let layout = self.layout;
        let write = match self.workload.rw {
            Rw::RandRead => false,
            Rw::RandWrite => true,
            Rw::RandRw => splitmix64(&mut self.rng) & 1 == 1,
        };
        // A block with a request in flight is skipped, so that every read has one right answer.
        let block = loop {
            let b = splitmix64(&mut self.rng) % self.model.blocks();
            if !self.busy[b as usize] {
                break b;
            }
        };
        let sector = block * layout.block_size as u64 / SECTOR_SIZE;
        let kind = if write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        let mem = driver.mem();
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&header, layout.header(slot))
            .map_err(guest_err)?;
        // Not a status the device uses: a completion that leaves it is caught.
        mem.write_obj(0xffu8, layout.status(slot))
            .map_err(guest_err)?;
        let generation = if write {
            let g = self.model.generations[block as usize]
                .wrapping_add(1)
                .max(1);
            mem.write_slice(&pattern(block, g, layout.block_size), layout.data(slot))
                .map_err(guest_err)?;
            Some(g)
        } else {
            None
        };
        let head = driver.submit(&[
            DescSpec::read(layout.header(slot), 16),
            DescSpec {
                addr: layout.data(slot),
                len: layout.block_size as u32,
                write: !write,
            },
            DescSpec::write(layout.status(slot), 1),
        ])?;
        self.busy[block as usize] = true;
        self.slot_of_head[usize::from(head)] = slot;
        self.slots[slot] = Some(InFlight {
            block,
            write: generation,
            submitted: Instant::now(),
        });
        Ok(())
    }

    /// Checks a completion (status, length, data); returns the slot it frees.
    fn check(&mut self, driver: &GuestDriver, c: Completion) -> io::Result<usize> {
        let done = Instant::now();
        let layout = self.layout;
        let slot = self
            .slot_of_head
            .get(usize::from(c.head))
            .copied()
            .filter(|&s| s < self.slots.len())
            .ok_or_else(|| failed(format!("completion for unknown chain {}", c.head)))?;
        let req = self.slots[slot]
            .take()
            .ok_or_else(|| failed(format!("slot {slot} completed twice")))?;
        let mem = driver.mem();
        let status: u8 = mem.read_obj(layout.status(slot)).map_err(guest_err)?;
        if status != VIRTIO_BLK_S_OK as u8 {
            return Err(failed(format!(
                "request on block {} failed with status {status}",
                req.block
            )));
        }
        let want_len = match req.write {
            Some(_) => 1,
            None => layout.block_size as u32 + 1,
        };
        if c.len != want_len {
            return Err(failed(format!(
                "used length {} where {want_len} was due",
                c.len
            )));
        }
        match req.write {
            Some(g) => {
                self.model.generations[req.block as usize] = g;
                self.res.writes += 1;
            }
            None => {
                if let Some(expected) = self.model.expected(req.block) {
                    mem.read_slice(&mut self.buf, layout.data(slot))
                        .map_err(guest_err)?;
                    if self.buf != expected {
                        return Err(failed(format!(
                            "block {} read back different data than was written",
                            req.block
                        )));
                    }
                    self.res.verified_reads += 1;
                }
                self.res.reads += 1;
            }
        }
        self.busy[req.block as usize] = false;
        let latency = done.duration_since(req.submitted).as_nanos() as u64;
        self.res.latencies_ns.push(latency);
        self.res.ios += 1;
        Ok(slot)
    }
}

/// Runs `workload` through `driver`; fails on the first request that does not complete with
/// `VIRTIO_BLK_S_OK`, or on a read that does not return what was written. Keeps `iodepth` requests in
/// flight and kicks once per batch of resubmissions, as a block layer does.
pub fn run(
    driver: &mut GuestDriver,
    layout: &GuestLayout,
    model: &mut DiskModel,
    workload: &Workload,
) -> io::Result<WorkloadResult> {
    let depth = workload.iodepth;
    if depth == 0 || depth > layout.slots || model.block_size != layout.block_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "iodepth {depth} with {} slots, block size {} for a model of {}-byte blocks",
                layout.slots, layout.block_size, model.block_size
            ),
        ));
    }
    let blocks = model.blocks() as usize;
    if blocks < 2 * depth {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a disk of {blocks} blocks is too small for iodepth {depth}"),
        ));
    }
    let mut r = Runner {
        layout,
        model,
        workload,
        rng: workload.seed,
        busy: vec![false; blocks],
        slots: vec![None; depth],
        slot_of_head: vec![usize::MAX; usize::from(layout.queue.size)],
        buf: vec![0u8; layout.block_size],
        res: WorkloadResult::default(),
    };
    let kicks_before = driver.kicks();
    let start = Instant::now();
    let mut issued = 0u64;
    let mut in_flight = 0usize;
    for slot in 0..depth {
        if issued < workload.max_ios {
            r.issue(driver, slot)?;
            issued += 1;
            in_flight += 1;
        }
    }
    driver.kick()?;
    let mut freed = Vec::with_capacity(depth);
    while in_flight > 0 {
        let c = driver.wait_used()?;
        freed.push(r.check(driver, c)?);
        while let Some(c) = driver.poll_used()? {
            freed.push(r.check(driver, c)?);
        }
        in_flight -= freed.len();
        let more = start.elapsed() < workload.duration;
        for slot in freed.drain(..) {
            if more && issued < workload.max_ios {
                r.issue(driver, slot)?;
                issued += 1;
                in_flight += 1;
            }
        }
        driver.kick()?;
    }
    let mut res = r.res;
    res.elapsed = start.elapsed();
    res.kicks = driver.kicks() - kicks_before;
    res.latencies_ns.sort_unstable();
    Ok(res)
}
