//! Provided buffers and multishot requests of the proactor.
//!
//! A [`BufGroup`] is memory the proactor owns: `count` buffers of `size` bytes, every
//! one of them given to the executor at registration. A reception into the group hands
//! one buffer out, as the [`ProvidedBuf`] of its [`Completion`]: its bytes are the
//! caller's until it is dropped (or given to [`Proactor::recycle`]), and the buffer goes
//! back to the executor at the next [`Proactor::submit`]. The executor writes only into
//! buffers it owns, and a handed-out buffer is readable only through its one
//! `ProvidedBuf`, so no data race is possible through this API.
//!
//! A multishot request ([`Proactor::recv_multishot`], [`Proactor::accept_multishot`])
//! posts many completions; each has [`Completion::more`] set while the request stays
//! armed, and the last one has it clear. Armed multishot requests take no CQ budget of
//! their lane (the `uring` and `threads` executors never drop a completion: io_uring's
//! overflow list, the worker's backlog), so the number of armed connections per lane is
//! not bounded by `cq_entries`. A multishot request ends at end of stream (result 0),
//! when the group has no buffer (`-ENOBUFS`: nothing lost, the data waits in the
//! socket; recycle and re-arm), when the accept range has no empty slot (`-ENFILE`), on
//! cancel or CLOSE (`-ECANCELED`), or when the executor found its CQ full: then the last
//! completion still carries its data (a positive result and a buffer); re-arm.

use std::fmt;
use std::io;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use fastio_uapi::{
    Sqe, CQE_BUFFER_SHIFT, CQE_F_BUFFER, MAX_BUF_GROUPS, MAX_PBUF_BYTES, MAX_PBUF_ENTRIES,
    MAX_PBUF_SIZE, OP_ACCEPT, OP_RECV, OP_SEND, SQE_BUFFER_SELECT, SQE_MULTISHOT,
};

use super::types::reject;
use super::{Proactor, RejectReason, Rejected, Slot, SlotState};

/// A registered group of provided buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufGroup(pub(super) u16);

impl BufGroup {
    /// The group id.
    pub fn id(self) -> u16 {
        self.0
    }
}

/// The memory of a group, shared by the proactor and the buffers it handed out.
pub(super) struct GroupMem {
    /// `len = count * size` bytes from a `Box<[u8]>` (zeroed by the allocator, so pages
    /// are touched only when buffers are used); the executor writes into the buffers it
    /// owns. Only ever accessed through raw pointers.
    base: *mut u8,
    len: usize,
    size: u32,
    count: u32,
    /// Ids dropped by their `ProvidedBuf`, given back to the executor at `submit`.
    returned: Mutex<Vec<u16>>,
}

// SAFETY: a buffer is accessed either by the executor (while it owns the id) or through
// the one `ProvidedBuf` of its id (shared reads only); `returned` is a Mutex.
unsafe impl Send for GroupMem {}
// SAFETY: as above: no two parties ever access one buffer at the same time, and a
// `ProvidedBuf` gives only shared access.
unsafe impl Sync for GroupMem {}

impl GroupMem {
    fn new(len: usize, size: u32, count: u32) -> Self {
        let base = Box::into_raw(vec![0u8; len].into_boxed_slice()) as *mut u8;
        GroupMem {
            base,
            len,
            size,
            count,
            returned: Mutex::new(Vec::new()),
        }
    }

    fn base(&self) -> *mut u8 {
        self.base
    }
}

impl Drop for GroupMem {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` come from `Box::into_raw` of a `[u8]` of that length in
        // `new`; the last reference is going, and the executor no longer uses the group
        // (unregistered, or the memory is leaked instead of dropped).
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}

/// The bytes one reception put into a provided buffer. Dropping it gives the buffer back
/// to its group (at the proactor's next `submit`).
pub struct ProvidedBuf {
    mem: Arc<GroupMem>,
    id: u16,
    len: usize,
}

impl ProvidedBuf {
    /// The buffer id.
    pub fn id(&self) -> u16 {
        self.id
    }
}

impl Deref for ProvidedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `id < count` and `len <= size` (checked when made); the executor
        // handed this id out and does not write it until it is given back, which happens
        // only when `self` is dropped.
        unsafe {
            std::slice::from_raw_parts(
                self.mem
                    .base()
                    .add(self.id as usize * self.mem.size as usize),
                self.len,
            )
        }
    }
}

impl Drop for ProvidedBuf {
    fn drop(&mut self) {
        self.mem
            .returned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.id);
    }
}

impl fmt::Debug for ProvidedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidedBuf")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

/// A registered group as the proactor tracks it.
pub(super) struct GroupState {
    mem: Arc<GroupMem>,
    /// Requests in flight that take buffers from it.
    pub(super) users: u32,
}

impl Proactor {
    /// Registers a group of `count` buffers of `size` bytes each (memory the proactor
    /// allocates and owns) for [`Proactor::recv_multishot`]. `Unsupported` on a backend
    /// without provided buffers.
    pub fn register_buffers(&mut self, count: u32, size: u32) -> io::Result<BufGroup> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if count == 0 || count > MAX_PBUF_ENTRIES {
            return Err(bad("buffer count must be 1..=32768"));
        }
        if size == 0 || size > MAX_PBUF_SIZE {
            return Err(bad("buffer size must be 1..=1 MiB"));
        }
        let bytes = (count as u64)
            .checked_mul(size as u64)
            .filter(|&b| b <= MAX_PBUF_BYTES)
            .ok_or_else(|| bad("count * size above 1 GiB"))?;
        let id = (0..MAX_BUF_GROUPS as u16)
            .find(|g| !self.groups.contains_key(g))
            .ok_or_else(|| bad("every buffer group id is in use"))?;
        let mem = Arc::new(GroupMem::new(bytes as usize, size, count));
        // SAFETY: the memory lives in `mem`, which `groups` keeps until the backend has
        // unregistered the group (or, if requests are still in flight when the proactor
        // is dropped, is leaked); the executor owns every buffer from here on, and a
        // buffer is readable only after a completion handed it out.
        unsafe {
            self.backend.register_buffers(id, mem.base(), size, count)?;
        }
        self.groups.insert(id, GroupState { mem, users: 0 });
        Ok(BufGroup(id))
    }

    /// Unregisters a group: `ResourceBusy` while a request that uses it is in flight.
    /// Buffers still handed out stay readable (their memory lives as long as they do).
    pub fn unregister_buffers(&mut self, group: BufGroup) -> io::Result<()> {
        let Some(g) = self.groups.get(&group.0) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such buffer group",
            ));
        };
        if g.users > 0 {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "requests that use the buffer group are in flight",
            ));
        }
        self.backend.unregister_buffers(group.0)?;
        self.groups.remove(&group.0);
        Ok(())
    }

    /// Gives a buffer back to its group (the same as dropping it).
    pub fn recycle(&mut self, buf: ProvidedBuf) {
        drop(buf);
    }

    /// Gives the executor every buffer dropped since the last call.
    pub(super) fn return_buffers(&mut self) {
        for (&id, g) in &self.groups {
            let ids =
                std::mem::take(&mut *g.mem.returned.lock().unwrap_or_else(|e| e.into_inner()));
            for bid in ids {
                self.backend.provide_buffer(id, bid);
            }
        }
    }

    /// Queues a multishot RECV on `slot` into buffers of `group`: one completion per
    /// reception, each with a [`ProvidedBuf`] and [`Completion::more`] set while it
    /// stays armed. Takes none of the lane's CQ budget.
    pub fn recv_multishot(
        &mut self,
        slot: Slot,
        group: BufGroup,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.recv_select(slot, group, true, user_data)
    }

    /// Queues one RECV into a buffer of `group` (its completion carries the buffer).
    pub fn recv_provided(
        &mut self,
        slot: Slot,
        group: BufGroup,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.recv_select(slot, group, false, user_data)
    }

    fn recv_select(
        &mut self,
        slot: Slot,
        group: BufGroup,
        multishot: bool,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.check_open(slot)
            .map_err(|r| reject(r, None, Vec::new()))?;
        if !self.groups.contains_key(&group.0) {
            return Err(reject(RejectReason::BadRange, None, Vec::new()));
        }
        // Buffers dropped since the last submit go back before the executor needs them.
        self.return_buffers();
        let sqe = Sqe {
            opcode: OP_RECV,
            flags: SQE_BUFFER_SELECT | if multishot { SQE_MULTISHOT } else { 0 },
            buf_group: group.0,
            slot: slot.0,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, None, Vec::new())?;
        if let Some(g) = self.groups.get_mut(&group.0) {
            g.users += 1;
        }
        Ok(())
    }

    /// Queues a SEND of `buf[range]`, a provided buffer a reception handed out; the
    /// completion hands it back in [`Completion::provided`] (drop it to recycle it).
    /// The result may be short; send the rest again.
    pub fn send_provided(
        &mut self,
        slot: Slot,
        buf: ProvidedBuf,
        range: std::ops::Range<usize>,
        user_data: u64,
    ) -> Result<(), (Rejected, ProvidedBuf)> {
        if range.start > range.end || range.end > buf.len() {
            return Err((reject(RejectReason::BadRange, None, Vec::new()), buf));
        }
        if let Err(r) = self.check_open(slot) {
            return Err((reject(r, None, Vec::new()), buf));
        }
        let sqe = Sqe {
            opcode: OP_SEND,
            slot: slot.0,
            addr: buf.as_ptr() as u64 + range.start as u64,
            len: range.len() as u32,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        if let Err(r) = self.queue(lane, sqe, user_data, None, Vec::new()) {
            return Err((r, buf));
        }
        // The buffer is read by the executor until the completion: the proactor keeps
        // it (its memory does not move) and hands it back then.
        if let Some(f) = self.inflight[self.last_token as usize].as_mut() {
            f.pbuf = Some(buf);
        }
        Ok(())
    }

    /// Queues a multishot ACCEPT on `listener`: `slots` free slots are reserved for it
    /// (a contiguous range), and every accepted connection is installed into an empty
    /// slot of that range, reported by a completion whose [`Completion::accepted`] is
    /// its slot. A range slot that is closed goes back to the range while the request is
    /// armed; the rest of the range is freed when it ends (`-ENFILE` when the range is
    /// full). Takes none of the lane's CQ budget. On `uring`, one range at a time per
    /// proactor (a second multishot ACCEPT while one is armed completes with `-EBUSY`).
    pub fn accept_multishot(
        &mut self,
        listener: Slot,
        slots: u32,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.check_open(listener)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let n = slots as usize;
        if n == 0 {
            return Err(reject(RejectReason::BadRange, None, Vec::new()));
        }
        // The lowest run of `n` free slots.
        let mut run = 0;
        let mut first = None;
        for (i, s) in self.slots.iter().enumerate() {
            run = if *s == SlotState::Free { run + 1 } else { 0 };
            if run == n {
                first = Some(i + 1 - n);
                break;
            }
        }
        let first = first.ok_or_else(|| reject(RejectReason::NoSlots, None, Vec::new()))? as u32;
        let range = first..first + slots;
        let sqe = Sqe {
            opcode: OP_ACCEPT,
            flags: SQE_MULTISHOT,
            slot: listener.0,
            aux: first,
            len: slots,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(listener.0);
        self.queue(lane, sqe, user_data, None, Vec::new())?;
        self.free_slots.retain(|s| !range.contains(s));
        for s in range.clone() {
            self.slots[s as usize] = SlotState::Accepting;
        }
        self.accept_ranges.push(range);
        Ok(())
    }

    /// The buffer a completion with CQE `flags` and result `res` carries, taken from the
    /// group the request used.
    pub(super) fn take_provided(&self, group: u16, res: i32, flags: u32) -> Option<ProvidedBuf> {
        if flags & CQE_F_BUFFER == 0 {
            return None;
        }
        let g = self.groups.get(&group)?;
        let id = (flags >> CQE_BUFFER_SHIFT) as u16;
        let len = usize::try_from(res).unwrap_or(0);
        // Never trust the executor to stay inside the buffer.
        if u32::from(id) >= g.mem.count || len > g.mem.size as usize {
            eprintln!("fastio: completion names buffer {id} of {len} bytes: out of range, ignored");
            return None;
        }
        Some(ProvidedBuf {
            mem: Arc::clone(&g.mem),
            id,
            len,
        })
    }

    /// A request that used `group` has ended.
    pub(super) fn group_user_done(&mut self, group: u16) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.users = g.users.saturating_sub(1);
        }
    }

    /// Whether `slot` belongs to the range of an armed multishot ACCEPT.
    pub(super) fn in_accept_range(&self, slot: u32) -> bool {
        self.accept_ranges.iter().any(|r| r.contains(&slot))
    }

    /// A multishot ACCEPT whose range starts at `first` has ended: the range's slots
    /// that hold no connection are freed.
    pub(super) fn accept_range_done(&mut self, first: u32) {
        let Some(i) = self.accept_ranges.iter().position(|r| r.start == first) else {
            return;
        };
        let range = self.accept_ranges.swap_remove(i);
        for s in range {
            if self.slots[s as usize] == SlotState::Accepting {
                self.release_slot(s);
            }
        }
    }

    /// Leaks every group's memory (the executor may still write into it).
    pub(super) fn leak_groups(&mut self) {
        for (_, g) in self.groups.drain() {
            std::mem::forget(g.mem);
        }
    }
}
