// SPDX-License-Identifier: GPL-2.0

//! One lane's view of the ring memory, which user space maps and may scribble on at any
//! time. Only the atomic words (head, tail, flags) are ever referenced, entries are
//! copied with volatile reads and writes, and every index is masked: nothing read from
//! this memory is trusted.

use core::ptr::addr_of;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi::{self, Cqe, RingHeader, Sqe};

/// Raw pointers to one lane's rings inside the context's ring memory.
pub(crate) struct RingView {
    sq: *mut RingHeader,
    sqes: *const Sqe,
    cq: *mut RingHeader,
    cqes: *mut Cqe,
    pub(crate) sq_entries: u32,
    pub(crate) cq_entries: u32,
}

// SAFETY: the pointers lead into ring memory owned by the `Shared` that every holder of
// a `RingView` also holds; shared words are accessed only atomically, entries by volatile
// copies, and each CQE slot is written under its lane's CQ lock only.
unsafe impl Send for RingView {}
// SAFETY: as above.
unsafe impl Sync for RingView {}

impl RingView {
    /// # Safety
    ///
    /// The pointers must lead to a lane laid out as `abi::lane_layout(sq_entries,
    /// cq_entries)` describes (power-of-two sizes), valid for as long as the view is used.
    pub(crate) unsafe fn new(
        sq: *mut u8,
        sqes: *mut u8,
        cq: *mut u8,
        cqes: *mut u8,
        sq_entries: u32,
        cq_entries: u32,
    ) -> Self {
        RingView {
            sq: sq.cast(),
            sqes: sqes.cast(),
            cq: cq.cast(),
            cqes: cqes.cast(),
            sq_entries,
            cq_entries,
        }
    }

    fn word(&self, hdr: *mut RingHeader, which: Word) -> &AtomicU32 {
        // SAFETY: `hdr` is one of our headers, valid (see `new`) for as long as the view,
        // which the returned reference cannot outlive; only the atomic word is
        // referenced, never the header (whose `info` is not atomic).
        unsafe {
            match which {
                Word::Head => &*addr_of!((*hdr).head.value),
                Word::Tail => &*addr_of!((*hdr).tail.value),
                Word::Flags => &*addr_of!((*hdr).flags.value),
            }
        }
    }

    pub(crate) fn sq_tail(&self) -> u32 {
        self.word(self.sq, Word::Tail).load(Ordering::Acquire)
    }

    pub(crate) fn set_sq_head(&self, head: u32) {
        self.word(self.sq, Word::Head).store(head, Ordering::Release);
    }

    /// The SQ flags word (NEED_WAKEUP).
    pub(crate) fn sq_flags(&self) -> &AtomicU32 {
        self.word(self.sq, Word::Flags)
    }

    /// Reads the SQE at index `idx` (masked) into a private copy.
    pub(crate) fn sqe(&self, idx: u32) -> Sqe {
        // SAFETY: the index is masked into the SQE array (`sq_entries` is a power of
        // two); the volatile copy is taken once and only the copy is looked at.
        unsafe {
            self.sqes
                .add((idx & (self.sq_entries - 1)) as usize)
                .read_volatile()
        }
    }

    /// Writes the CQE at index `idx` (masked). The caller holds the lane's CQ lock.
    pub(crate) fn write_cqe(&self, idx: u32, cqe: Cqe) {
        // SAFETY: masked index into the CQE array; user space may read it concurrently,
        // which is harmless for plain data.
        unsafe {
            self.cqes
                .add((idx & (self.cq_entries - 1)) as usize)
                .write_volatile(cqe)
        };
    }

    pub(crate) fn set_cq_tail(&self, tail: u32) {
        self.word(self.cq, Word::Tail).store(tail, Ordering::Release);
    }

    pub(crate) fn cq_tail(&self) -> u32 {
        self.word(self.cq, Word::Tail).load(Ordering::Acquire)
    }

    /// Free CQ entries given our own copy of the tail, whatever the (untrusted) head says.
    pub(crate) fn cq_free(&self, tail: u32) -> u32 {
        let head = self.word(self.cq, Word::Head).load(Ordering::Acquire);
        self.cq_entries.saturating_sub(tail.wrapping_sub(head))
    }

    /// Completions waiting for user space, clamped to the CQ size.
    pub(crate) fn cq_ready(&self) -> u32 {
        let tail = self.cq_tail();
        let head = self.word(self.cq, Word::Head).load(Ordering::Acquire);
        tail.wrapping_sub(head).min(self.cq_entries)
    }

    /// Writes the informative ring descriptions (before user space can map the memory).
    pub(crate) fn init_info(&self, lane: u32) {
        for (hdr, entries) in [(self.sq, self.sq_entries), (self.cq, self.cq_entries)] {
            let info = abi::RingInfo {
                entries,
                mask: entries - 1,
                lane,
                resv: 0,
            };
            // SAFETY: the header lies in fresh ring memory nobody else sees yet.
            unsafe { core::ptr::addr_of_mut!((*hdr).info).write(info) };
        }
    }
}

enum Word {
    Head,
    Tail,
    Flags,
}
