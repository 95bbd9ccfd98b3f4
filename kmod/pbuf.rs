// SPDX-License-Identifier: GPL-2.0

//! Provided-buffer groups (ABI 3): the kernel's side of a buffer ring that lives in user
//! memory (`uapi/src/pbuf.rs` is the contract).
//!
//! A group is the validated copy of its registration ([`abi::BufRing`]) and the kernel's
//! own head. The ring and the buffers are reached only with user accesses
//! (`get_user`/`put_user` of the ring's words, which user space changes concurrently, so
//! one load each: a byte-wise `copy_from_user` could read a tail torn; the socket's own
//! copy into a buffer), as any system call of the process would reach them: nothing is
//! pinned, mapped or dereferenced, and memory unmapped after registration is an
//! `-EFAULT` of the request that meets it.
//!
//! Taking a buffer follows io_uring's ring-provided buffers (io_uring/kbuf.c): the tail
//! is read once (then an acquire fence, before the id is read), the id at the kernel's
//! head is read once, and the buffer is *committed* (the head advanced) only once data
//! went into it: a reception that would block leaves the buffer where it was. The
//! group's head lock is held from the peek to the commit, so two requests (on two
//! lanes) never receive into one buffer. Hostile ring contents end the request and
//! never make the module loop: an empty ring is `-ENOBUFS` (nothing received), a tail
//! more than `entries` ahead of the head (jumped ahead, or gone backwards) is
//! `-EINVAL` (nothing consumed), an id outside `0..count` is consumed and `-EINVAL`.
//! Each reception takes one id, and a request makes a bounded number of receptions
//! per round (multishot.rs).
//!
//! A RECV with BUFFER_SELECT counts as a user of its group from the moment it is taken
//! from the SQ (a group that is not registered then ends it with `-ENOBUFS` at once)
//! until its last completion, and UNREGISTER of a group with users is `-EBUSY` (the
//! ABI's rule; io_uring instead lets armed requests run dry with `-ENOBUFS`). The user
//! memory stays the process's either way, and a group's kernel record is reference
//! counted, so nothing can be used after it is freed.
//!
//! Lock order: `Shared::buf_rings` is a leaf (held only to look a group up, count a
//! user, add or remove one). A group's `head` lock is taken without any other lock of the module
//! held, and is held across the user copies of one reception (ring words, the id, the
//! socket's copy into the buffer: socket lock and page faults nest inside it); nothing
//! of the module is taken under it.

use core::mem::offset_of;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use kernel::{
    alloc::flags::GFP_KERNEL_ACCOUNT,
    bindings, new_mutex,
    prelude::*,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::abi::{self, BufRingHeader};
use crate::sys::{self, neg};

/// A registered group.
#[pin_data]
pub(crate) struct Group {
    /// The validated registration (every address range checked).
    pub(crate) ring: abi::BufRing,
    /// Requests that use the group (changed under `Shared::buf_rings` only).
    pub(crate) users: AtomicU32,
    /// The kernel's head: ids before it were consumed. Never read back from user memory.
    #[pin]
    head: Mutex<u32>,
}

/// A buffer at the head of a group's ring, not consumed yet: dropping it leaves the
/// ring as it was; [`Taken::commit`] consumes it.
pub(crate) struct Taken<'a> {
    group: &'a Group,
    head: MutexGuard<'a, u32>,
    /// The buffer id (below the group's `count`).
    pub(crate) id: u16,
    /// User address of the buffer.
    pub(crate) addr: u64,
    /// Its size.
    pub(crate) len: u32,
}

impl Group {
    pub(crate) fn new(ring: abi::BufRing) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Group {
                ring,
                users: AtomicU32::new(0),
                head <- new_mutex!(0),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// The buffer at the head of the ring, or why there is none: `-ENOBUFS` (empty),
    /// `-EINVAL` (a tail that cannot be, or an id out of range: that id is consumed),
    /// `-EFAULT` (the ring is not readable).
    pub(crate) fn peek(&self) -> Result<Taken<'_>, i32> {
        let mut head = self.head.lock();
        let r = &self.ring;
        // `tail` is the first word of the header (ring_addr is checked and aligned).
        // One load: userspace stores it concurrently (a byte-wise copy could see it torn).
        let tail = sys::get_user_u32(r.ring_addr)?;
        // The id is read after the tail (pairs with userspace's release store of it).
        fence(Ordering::Acquire);
        let avail = tail.wrapping_sub(*head);
        if avail == 0 {
            return Err(neg(bindings::ENOBUFS));
        }
        if avail > r.entries {
            // Userspace never has more than `entries` ids in flight.
            return Err(neg(bindings::EINVAL));
        }
        // `entries` is a power of two; the index is below it, and `ids_addr + 2 *
        // entries` is inside the checked ring range: no overflow.
        let idx = *head & (r.entries - 1);
        let id = sys::get_user_u16(r.ids_addr + idx as u64 * 2)?;
        match r.buf_addr(id) {
            Some(addr) => Ok(Taken {
                group: self,
                head,
                id,
                addr,
                len: r.buf_size,
            }),
            None => {
                *head = head.wrapping_add(1);
                self.publish(*head);
                Err(neg(bindings::EINVAL))
            }
        }
    }

    /// Stores the head into the ring's `head` word (informative: never read back; a
    /// fault is ignored, the next request that reads the ring will meet it).
    fn publish(&self, head: u32) {
        let at = self.ring.ring_addr + offset_of!(BufRingHeader, head) as u64;
        let _ = sys::put_user_u32(at, head);
    }
}

impl Taken<'_> {
    /// Consumes the buffer (data went into it).
    pub(crate) fn commit(mut self) -> u16 {
        *self.head = self.head.wrapping_add(1);
        self.group.publish(*self.head);
        self.id
    }
}

/// The groups of a context (kept under `Shared::buf_rings`).
pub(crate) type Groups = KVec<Arc<Group>>;

/// The group `id` of `groups`.
pub(crate) fn find(groups: &Groups, id: u16) -> Option<Arc<Group>> {
    groups.iter().find(|g| g.ring.group == id).cloned()
}
