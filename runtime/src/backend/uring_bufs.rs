//! Provided buffers and multishot requests on the `uring` backend: io_uring's own
//! buffer rings (`IORING_REGISTER_PBUF_RING`, entries of address, length and id) behind
//! the backend API, and the file-allocation range a multishot ACCEPT installs into.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use fastio_uapi::{CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE};
use io_uring::{types::BufRingEntry, IoUring};

/// One registered io_uring buffer ring (its entries live in an anonymous mapping, as
/// io_uring wants them page-aligned).
pub(super) struct UringBufRing {
    ring: NonNull<BufRingEntry>,
    map_len: usize,
    mask: u16,
    /// The next tail to publish (userspace's own copy).
    tail: u16,
    bufs: *mut u8,
    buf_size: u32,
    count: u32,
}

impl UringBufRing {
    /// Maps a ring of `count.next_power_of_two()` entries and fills it with every id.
    ///
    /// # Safety
    ///
    /// As [`super::Backend::register_buffers`].
    unsafe fn new(bufs: *mut u8, buf_size: u32, count: u32) -> io::Result<Self> {
        if count == 0 || count > 32768 || buf_size == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let entries = count.next_power_of_two();
        let map_len = entries as usize * std::mem::size_of::<BufRingEntry>();
        let mut r = UringBufRing {
            ring: super::anon_map(map_len)?.cast(),
            map_len,
            mask: (entries - 1) as u16,
            tail: 0,
            bufs,
            buf_size,
            count,
        };
        for id in 0..count {
            r.write(id as u16);
        }
        r.publish();
        Ok(r)
    }

    /// Writes the entry of buffer `id` at the local tail (not yet published).
    fn write(&mut self, id: u16) {
        if u32::from(id) >= self.count {
            return;
        }
        let idx = (self.tail & self.mask) as usize;
        // SAFETY: `idx` is inside the mapping of `mask + 1` entries; the kernel reads
        // entries only between its head and the published tail, and this one is past
        // the tail. The address is inside the buffers (`id < count`).
        unsafe {
            let e = &mut *self.ring.as_ptr().add(idx);
            e.set_addr(self.bufs.add(id as usize * self.buf_size as usize) as u64);
            e.set_len(self.buf_size);
            e.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the local tail (release: the entries before it are visible first).
    fn publish(&self) {
        // SAFETY: the tail field lies in the first entry of the live mapping, u16
        // aligned; the kernel reads it with an acquire load.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for UringBufRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unregistered from the ring before we are dropped.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.map_len) };
    }
}

/// The buffer groups and the file-allocation range of one ring.
#[derive(Default)]
pub(super) struct UringBufs {
    groups: HashMap<u16, UringBufRing>,
    /// The file-allocation range registered for multishot ACCEPTs (first, count).
    alloc_range: Option<(u32, u32)>,
    /// user_data of the multishot ACCEPTs armed (the range cannot change under them).
    accepts: Vec<u64>,
}

// SAFETY: the raw pointers are the ring mapping (ours) and the caller's buffer memory,
// whose rules `register_buffers` states; the backend is used by one thread at a time.
unsafe impl Send for UringBufs {}

impl UringBufs {
    /// # Safety
    ///
    /// As [`super::Backend::register_buffers`].
    pub(super) unsafe fn register(
        &mut self,
        ring: &IoUring,
        group: u16,
        bufs: *mut u8,
        buf_size: u32,
        count: u32,
    ) -> io::Result<()> {
        if self.groups.contains_key(&group) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        // SAFETY: forwarded from our caller.
        let r = unsafe { UringBufRing::new(bufs, buf_size, count)? };
        let entries = u16::try_from(u32::from(r.mask) + 1).expect("at most 32768 entries");
        // SAFETY: the ring mapping lives in `groups` until unregister_buf_ring.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                r.ring.as_ptr() as u64,
                entries,
                group,
                0,
            )?
        };
        self.groups.insert(group, r);
        Ok(())
    }

    pub(super) fn provide(&mut self, group: u16, id: u16) {
        if let Some(r) = self.groups.get_mut(&group) {
            r.write(id);
            r.publish();
        }
    }

    pub(super) fn unregister(&mut self, ring: &IoUring, group: u16) -> io::Result<()> {
        if !self.groups.contains_key(&group) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        ring.submitter().unregister_buf_ring(group)?;
        self.groups.remove(&group);
        Ok(())
    }

    /// Makes `first..first + count` the range a multishot ACCEPT (`user_data`) installs
    /// into: `-EBUSY` while another multishot ACCEPT is armed with another range.
    pub(super) fn arm_accept(
        &mut self,
        ring: &IoUring,
        first: u32,
        count: u32,
        user_data: u64,
    ) -> Result<(), i32> {
        if self.alloc_range != Some((first, count)) {
            if !self.accepts.is_empty() {
                return Err(-libc::EBUSY);
            }
            let range: [u32; 4] = [first, count, 0, 0];
            // SAFETY: IORING_REGISTER_FILE_ALLOC_RANGE (25) takes a struct
            // io_uring_file_index_range { u32 off; u32 len; u64 resv } by address.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    ring.as_raw_fd(),
                    25,
                    range.as_ptr(),
                    0,
                )
            };
            if r < 0 {
                return Err(-io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EINVAL));
            }
            self.alloc_range = Some((first, count));
        }
        self.accepts.push(user_data);
        Ok(())
    }

    /// A multishot ACCEPT's request was not queued after all, or has ended.
    pub(super) fn accept_done(&mut self, user_data: u64) {
        if let Some(i) = self.accepts.iter().position(|&u| u == user_data) {
            self.accepts.swap_remove(i);
        }
    }

    /// Sees a CQE go by: a multishot ACCEPT's last one ends it.
    pub(super) fn on_cqe(&mut self, user_data: u64, flags: u32) {
        if flags & CQE_F_MORE == 0 && !self.accepts.is_empty() {
            self.accept_done(user_data);
        }
    }
}

/// The ABI's CQE flags from io_uring's (the same bits for BUFFER and MORE; the buffer
/// id in the upper 16 bits only with BUFFER; io_uring's other flags dropped).
pub(super) fn cqe_flags(f: u32) -> u32 {
    let more = f & CQE_F_MORE;
    if f & CQE_F_BUFFER != 0 {
        (f & (0xFFFF << CQE_BUFFER_SHIFT)) | CQE_F_BUFFER | more
    } else {
        more
    }
}
