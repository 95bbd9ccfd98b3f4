//! Provided-buffer groups on the `kmod` backend: the buffer ring of `uapi/src/pbuf.rs`
//! ([`BufRingHeader`] then `entries` u16 ids) in an anonymous mapping of this process,
//! registered with `FASTIO_REGISTER_BUF_RING`. Userspace is the producer: it writes an
//! id at its tail and publishes the tail with a release store; the module keeps its own
//! head and reaches the ring only with user copies.

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use fastio_uapi::{buf_ring_size, BufRingHeader, MAX_PBUF_ENTRIES};

/// One group's ring (the buffers are the caller's memory).
pub(super) struct KmodBufRing {
    map: NonNull<u8>,
    map_len: usize,
    entries: u32,
    count: u32,
    /// The next tail to publish (userspace's own copy).
    tail: u32,
}

impl KmodBufRing {
    /// Maps a ring of `count.next_power_of_two()` entries holding every id once.
    pub(super) fn new(count: u32) -> io::Result<Self> {
        if count == 0 || count > MAX_PBUF_ENTRIES {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let entries = count.next_power_of_two();
        let map_len = buf_ring_size(entries) as usize;
        let mut r = KmodBufRing {
            // Page aligned, so cache-line aligned as the ABI wants.
            map: crate::backend::anon_map(map_len)?,
            map_len,
            entries,
            count,
            tail: 0,
        };
        for id in 0..count {
            r.write(id as u16);
        }
        r.publish();
        Ok(r)
    }

    /// User address of the ring.
    pub(super) fn addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    /// Ring entries.
    pub(super) fn entries(&self) -> u32 {
        self.entries
    }

    /// Writes `id` at the local tail (not yet published); ids out of range are ignored.
    fn write(&mut self, id: u16) {
        if u32::from(id) >= self.count {
            return;
        }
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: the ids start after the header and `idx < entries`, inside the
        // mapping of `buf_ring_size(entries)` bytes; u16 aligned (the header is 128
        // bytes). The module reads ids only between its head and the published tail,
        // and this one is past the tail.
        unsafe {
            self.map
                .as_ptr()
                .add(size_of::<BufRingHeader>())
                .cast::<u16>()
                .add(idx)
                .write_volatile(id)
        };
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the local tail (release: the ids before it are visible first).
    fn publish(&self) {
        // SAFETY: `tail` is the first word of the header at the start of the live,
        // page-aligned mapping; the module reads it with a user copy then an acquire
        // fence.
        let tail: &AtomicU32 =
            unsafe { &(*(self.map.as_ptr() as *const BufRingHeader)).tail.value };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for KmodBufRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the group is unregistered, or the context (and every
        // thread that could read it) is gone, before the ring is dropped.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// The groups of one context.
#[derive(Default)]
pub(super) struct KmodBufs {
    pub(super) groups: HashMap<u16, KmodBufRing>,
}

// SAFETY: the pointers are this backend's own ring mappings; the backend is used by one
// thread at a time.
unsafe impl Send for KmodBufs {}

impl KmodBufs {
    /// Gives `id` of `group` back to the module.
    pub(super) fn provide(&mut self, group: u16, id: u16) {
        if let Some(r) = self.groups.get_mut(&group) {
            r.write(id);
            r.publish();
        }
    }
}
