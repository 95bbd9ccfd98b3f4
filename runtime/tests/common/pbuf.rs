//! A provided-buffer ring for the kernel-module tests that drive the module raw
//! (`kmod_hostile_pbuf`): mapped anonymously so that a test can unmap it, written as a
//! producer would, or as a hostile one; and the SQEs and ioctls that use it.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, Ordering};

use fastio::uapi::{
    buf_ring_size, BufGroupArg, BufRingHeader, BufRingReg, Sqe, FASTIO_REGISTER_BUF_RING,
    FASTIO_UNREGISTER_BUF_RING, OP_ASYNC_CANCEL, OP_RECV, SQE_BUFFER_SELECT, SQE_MULTISHOT,
};

use super::kmod;

/// A buffer ring and its buffers in their own anonymous mappings (so that a test can
/// unmap either), written as a producer would, or as a hostile one.
pub struct TestRing {
    ring: *mut u8,
    ring_len: usize,
    bufs: *mut u8,
    bufs_len: usize,
    entries: u32,
    count: u32,
    size: u32,
    /// The producer's tail.
    pub tail: u32,
}

fn map(len: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p.cast()
}

impl TestRing {
    pub fn new(entries: u32, count: u32, size: u32) -> Self {
        let ring_len = buf_ring_size(entries) as usize;
        let bufs_len = (count * size) as usize;
        TestRing {
            ring: map(ring_len),
            ring_len,
            bufs: map(bufs_len),
            bufs_len,
            entries,
            count,
            size,
            tail: 0,
        }
    }

    pub fn reg(&self, group: u32) -> BufRingReg {
        BufRingReg {
            ring_addr: self.ring as u64,
            bufs_addr: self.bufs as u64,
            entries: self.entries,
            count: self.count,
            buf_size: self.size,
            group,
            resv: [0; 2],
        }
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is the offset of `tail` or `head` in the mapped header.
        unsafe { &*(self.ring.add(off) as *const AtomicU32) }
    }

    /// Publishes `tail` as it is (release).
    pub fn set_tail(&self, tail: u32) {
        self.word(offset_of!(BufRingHeader, tail))
            .store(tail, Ordering::Release);
    }

    /// The head the module published.
    pub fn head(&self) -> u32 {
        self.word(offset_of!(BufRingHeader, head))
            .load(Ordering::Acquire)
    }

    /// Writes `id` (any value) at the producer's tail and publishes it.
    pub fn provide(&mut self, id: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: inside the mapped ring (after the header, below `entries`).
        unsafe {
            (self.ring.add(size_of::<BufRingHeader>()) as *mut u16)
                .add(idx)
                .write_volatile(id)
        };
        self.tail = self.tail.wrapping_add(1);
        self.set_tail(self.tail);
    }

    /// The first `n` bytes of buffer `id`.
    pub fn buf(&self, id: u16, n: usize) -> Vec<u8> {
        assert!(u32::from(id) < self.count && n <= self.size as usize);
        // SAFETY: inside the mapped buffers; the module handed this one out.
        unsafe {
            std::slice::from_raw_parts(self.bufs.add(id as usize * self.size as usize), n).to_vec()
        }
    }

    pub fn unmap_ring(&mut self) {
        // SAFETY: our own mapping, not touched after this.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
        self.ring_len = 0;
    }

    pub fn unmap_bufs(&mut self) {
        // SAFETY: as above.
        unsafe { libc::munmap(self.bufs.cast(), self.bufs_len) };
        self.bufs_len = 0;
    }
}

impl Drop for TestRing {
    fn drop(&mut self) {
        // SAFETY: our own mappings (those not unmapped yet).
        unsafe {
            if self.ring_len > 0 {
                libc::munmap(self.ring.cast(), self.ring_len);
            }
            if self.bufs_len > 0 {
                libc::munmap(self.bufs.cast(), self.bufs_len);
            }
        }
    }
}

pub fn register_ring(ctx: &kmod::Ctx, r: &TestRing, group: u32) -> Result<i32, i32> {
    let mut reg = r.reg(group);
    // SAFETY: the ioctl reads `reg`; the module reaches the described memory only with
    // user copies.
    unsafe { kmod::ioctl(ctx.fd(), FASTIO_REGISTER_BUF_RING, &mut reg) }
}

pub fn unregister_ring(ctx: &kmod::Ctx, group: u32) -> Result<i32, i32> {
    let mut a = BufGroupArg { group, flags: 0 };
    // SAFETY: the ioctl reads `a`.
    unsafe { kmod::ioctl(ctx.fd(), FASTIO_UNREGISTER_BUF_RING, &mut a) }
}

/// RECV with BUFFER_SELECT (and MULTISHOT) on `slot` from `group`.
pub fn select(slot: u32, group: u16, user_data: u64, multishot: bool) -> Sqe {
    Sqe {
        opcode: OP_RECV,
        flags: SQE_BUFFER_SELECT | if multishot { SQE_MULTISHOT } else { 0 },
        buf_group: group,
        slot,
        user_data,
        ..Sqe::ZERO
    }
}

pub fn cancel(target: u64, user_data: u64) -> Sqe {
    Sqe {
        opcode: OP_ASYNC_CANCEL,
        addr: target,
        user_data,
        ..Sqe::ZERO
    }
}
