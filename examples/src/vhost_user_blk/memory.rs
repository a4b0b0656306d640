//! Guest memory from a vhost-user memory table: the front end's regions mapped into this process, and
//! the translation of the front end's own addresses (in which it sends vring addresses) to guest
//! physical addresses.
//!
//! Everything in a table is untrusted. A region is mapped only if it is non-empty, its guest range and
//! its front-end range do not overflow or overlap another region's, its fd is a regular file (a memfd,
//! a /dev/shm or hugetlbfs file) that holds the whole mapped range, and its offset is page-aligned.
//! The last check matters most: touching a mapping past the end of its file raises `SIGBUS`, which
//! would kill the daemon on a guest address the front end chose.
//!
//! One risk stays, as in every vhost-user backend (QEMU's own included): a front end that shrinks the
//! file after sending it makes the daemon's accesses past the new end fault. A memfd sealed against
//! shrinking (`F_SEAL_SHRINK`, QEMU's `memory-backend-memfd` default) cannot be shrunk; for unsealed
//! regions [`GuestMemoryTable::unsealed_regions`] says how many there are, and the daemon logs it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

use crate::virtio_blk::GuestMemory;

/// Most regions in one table (vhost-user's `VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MAX_REGIONS: usize = 8;

/// One region of a memory table, as the front end describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest physical address of the region's first byte.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the front end has the region mapped in its own address space.
    pub user_addr: u64,
    /// Offset of the region in its file.
    pub mmap_offset: u64,
}

/// A front end's memory, mapped: guest memory for the device, plus the front-end-address ranges.
#[derive(Debug)]
pub struct GuestMemoryTable {
    mem: Arc<GuestMemory>,
    /// The regions by front-end address, for [`translate`](Self::translate).
    regions: Vec<RegionSpec>,
    unsealed: usize,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("memory table: {what}"))
}

impl GuestMemoryTable {
    /// Maps `specs`, whose files are `files` (one each, in order). Fails with `InvalidInput`, mapping
    /// nothing, when the table breaks any rule in the module docs.
    pub fn map(specs: &[RegionSpec], files: Vec<File>) -> io::Result<Self> {
        if specs.is_empty() || specs.len() > MAX_REGIONS {
            return Err(invalid(format!(
                "{} regions (1 to {MAX_REGIONS} allowed)",
                specs.len()
            )));
        }
        if files.len() != specs.len() {
            return Err(invalid(format!(
                "{} regions but {} fds",
                specs.len(),
                files.len()
            )));
        }
        for (i, r) in specs.iter().enumerate() {
            check_region(i, r)?;
        }
        check_disjoint(specs, |r| r.guest_phys_addr, "guest")?;
        check_disjoint(specs, |r| r.user_addr, "front-end")?;

        let mut unsealed = 0;
        let mut mapped = Vec::with_capacity(specs.len());
        for (i, (r, file)) in specs.iter().zip(files).enumerate() {
            check_file(i, r, &file)?;
            if !shrink_sealed(&file) {
                unsealed += 1;
            }
            let size =
                usize::try_from(r.size).map_err(|_| invalid(format!("region {i}: too big")))?;
            let region = MmapRegion::<()>::from_file(FileOffset::new(file, r.mmap_offset), size)
                .map_err(|e| invalid(format!("region {i}: mapping it: {e}")))?;
            let region = GuestRegionMmap::new(region, GuestAddress(r.guest_phys_addr))
                .ok_or_else(|| invalid(format!("region {i}: guest range overflows")))?;
            mapped.push(region);
        }
        mapped.sort_by_key(vm_memory::GuestMemoryRegion::start_addr);
        let mem = GuestMemory::from_regions(mapped).map_err(|e| invalid(e.to_string()))?;
        Ok(GuestMemoryTable {
            mem: Arc::new(mem),
            regions: specs.to_vec(),
            unsealed,
        })
    }

    /// The mapped memory (shared with the devices; it stays mapped until the last holder is gone).
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// How many regions' files can still be shrunk by the front end (see the module docs).
    pub fn unsealed_regions(&self) -> usize {
        self.unsealed
    }

    /// The guest physical address of front-end address `user_addr`, if a region holds `len` bytes
    /// from there. Vring addresses arrive in front-end addresses.
    pub fn translate(&self, user_addr: u64, len: u64) -> Option<GuestAddress> {
        self.regions.iter().find_map(|r| {
            let off = user_addr.checked_sub(r.user_addr)?;
            (off < r.size && len <= r.size - off).then(|| GuestAddress(r.guest_phys_addr + off))
        })
    }
}

fn check_region(i: usize, r: &RegionSpec) -> io::Result<()> {
    if r.size == 0 {
        return Err(invalid(format!("region {i} is empty")));
    }
    for (name, start) in [
        ("guest", r.guest_phys_addr),
        ("front-end", r.user_addr),
        ("file", r.mmap_offset),
    ] {
        if start.checked_add(r.size).is_none() {
            return Err(invalid(format!("region {i}: its {name} range overflows")));
        }
    }
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    if r.mmap_offset % page != 0 {
        return Err(invalid(format!(
            "region {i}: file offset {:#x} is not page-aligned",
            r.mmap_offset
        )));
    }
    Ok(())
}

fn check_disjoint(
    specs: &[RegionSpec],
    start: impl Fn(&RegionSpec) -> u64,
    what: &str,
) -> io::Result<()> {
    let mut ranges: Vec<(u64, u64)> = specs
        .iter()
        .map(|r| (start(r), start(r) + r.size))
        .collect();
    ranges.sort_unstable();
    match ranges.windows(2).find(|w| w[0].1 > w[1].0) {
        Some(w) => Err(invalid(format!(
            "{what} ranges {:#x}..{:#x} and {:#x}..{:#x} overlap",
            w[0].0, w[0].1, w[1].0, w[1].1
        ))),
        None => Ok(()),
    }
}

fn check_file(i: usize, r: &RegionSpec, file: &File) -> io::Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| invalid(format!("region {i}: its fd: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(invalid(format!(
            "region {i}: its fd is not a regular file (memfd, shm or hugetlbfs)"
        )));
    }
    if r.mmap_offset + r.size > meta.len() {
        return Err(invalid(format!(
            "region {i}: {} bytes at file offset {:#x}, but the file holds {} bytes",
            r.size,
            r.mmap_offset,
            meta.len()
        )));
    }
    Ok(())
}

/// Whether `file` is a memfd sealed against shrinking.
fn shrink_sealed(file: &File) -> bool {
    // SAFETY: fcntl(F_GET_SEALS) on a descriptor we own takes and returns ints; for a file that is not
    // a memfd it fails with EINVAL.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    fn memfd(len: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        f
    }

    fn spec(gpa: u64, size: u64, user: u64) -> RegionSpec {
        RegionSpec {
            guest_phys_addr: gpa,
            size,
            user_addr: user,
            mmap_offset: 0,
        }
    }

    #[test]
    fn maps_regions_and_translates_front_end_addresses() {
        let specs = [
            spec(0, 1 << 16, 0x7000_0000),
            spec(1 << 20, 1 << 16, 0x9000_0000),
        ];
        let table = GuestMemoryTable::map(&specs, vec![memfd(1 << 16), memfd(1 << 16)]).unwrap();
        assert_eq!(table.translate(0x7000_0010, 16), Some(GuestAddress(0x10)));
        assert_eq!(
            table.translate(0x9000_0100, 16),
            Some(GuestAddress((1 << 20) + 0x100))
        );
        assert_eq!(
            table.translate(0x7000_fff8, 16),
            None,
            "crosses the region's end"
        );
        assert_eq!(
            table.translate(0x8000_0000, 1),
            None,
            "outside every region"
        );
        let mem = table.memory();
        mem.write_obj(0xabcdu16, GuestAddress((1 << 20) + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress((1 << 20) + 8)).unwrap(),
            0xabcd
        );
        assert!(
            mem.get_slice(GuestAddress(1 << 16), 1).is_err(),
            "a hole between regions"
        );
        assert_eq!(table.unsealed_regions(), 2, "temp files carry no seals");
    }

    #[test]
    fn refuses_bad_tables() {
        let cases: Vec<(Vec<RegionSpec>, Vec<u64>, &str)> = vec![
            (vec![], vec![], "0 regions"),
            (vec![spec(0, 0, 0)], vec![4096], "empty"),
            (vec![spec(0, 8192, 0)], vec![4096], "file holds 4096"),
            (
                vec![spec(u64::MAX - 10, 4096, 0)],
                vec![4096],
                "guest range overflows",
            ),
            (
                vec![spec(0, 8192, 0), spec(4096, 4096, 1 << 20)],
                vec![8192, 4096],
                "guest ranges",
            ),
            (
                vec![spec(0, 4096, 0), spec(1 << 20, 4096, 0)],
                vec![4096, 4096],
                "front-end ranges",
            ),
            (vec![spec(0, 1 << 40, 0)], vec![4096], "file holds"),
            (
                vec![RegionSpec {
                    mmap_offset: 12,
                    ..spec(0, 4096, 0)
                }],
                vec![8192],
                "not page-aligned",
            ),
            (
                (0..9).map(|i| spec(i << 20, 4096, i << 20)).collect(),
                vec![4096; 9],
                "9 regions",
            ),
        ];
        for (specs, lens, want) in cases {
            let files = lens.into_iter().map(memfd).collect();
            let err = GuestMemoryTable::map(&specs, files).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{specs:?}");
            assert!(err.to_string().contains(want), "{specs:?}: {err}");
        }
        let err = GuestMemoryTable::map(&[spec(0, 4096, 0)], vec![]).unwrap_err();
        assert!(err.to_string().contains("1 regions but 0 fds"), "{err}");
        let dev_null = File::open("/dev/null").unwrap();
        let err = GuestMemoryTable::map(&[spec(0, 4096, 0)], vec![dev_null]).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_sealed_memfd_counts_as_sealed() {
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: `fd` was just created and nobody else owns it.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(4096).unwrap();
        // SAFETY: fcntl on our own fd with an int argument.
        let ret = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(ret, 0);
        let table = GuestMemoryTable::map(&[spec(0, 4096, 0)], vec![file]).unwrap();
        assert_eq!(table.unsealed_regions(), 0);
    }
}
