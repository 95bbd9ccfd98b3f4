//! Queueing requests: the typed operations, the raw escape hatch, and the CQ budget
//! every one of them goes through.

use std::ops::Range;

use fastio_uapi::{
    IoVec, Sqe, ACCEPT_NONBLOCK, OFF_CURRENT, OP_ACCEPT, OP_ASYNC_CANCEL, OP_CLOSE, OP_READ,
    OP_RECV, OP_SEND, OP_SENDFILE, OP_WRITE, OP_WRITEV, SQE_BUFFER_SELECT, SQE_MULTISHOT,
};

use super::types::reject;
use super::{
    counts_on_slot, Completion, InFlight, Origin, Proactor, RejectReason, Rejected, Slot, SlotState,
};

impl Proactor {
    // --------------------------------------------------------------------------------
    // Requests
    // --------------------------------------------------------------------------------

    /// Queues a NOP (lanes taken in turn).
    pub fn nop(&mut self, user_data: u64) -> Result<(), Rejected> {
        let lane = self.next_nop_lane;
        self.next_nop_lane = (lane + 1) % self.lanes;
        self.queue(lane, Sqe::ZERO, user_data, None, Vec::new())
    }

    /// Queues an ACCEPT on the listening socket `listener`. The completion's
    /// [`Completion::accepted`] is the new connection's slot.
    pub fn accept(&mut self, listener: Slot, user_data: u64) -> Result<(), Rejected> {
        self.accept_with(listener, false, user_data)
    }

    /// ACCEPT whose new socket is non-blocking once installed as a descriptor.
    ///
    /// `nonblock` is honoured by the `kmod` and `uring` backends. On the `threads`
    /// backend every accepted socket is non-blocking whatever `nonblock` says: its
    /// worker threads must never block, and `O_NONBLOCK` belongs to the open file
    /// description, which a descriptor made by [`Proactor::install_fd`] shares (see
    /// [`Proactor::register`]).
    pub fn accept_with(
        &mut self,
        listener: Slot,
        nonblock: bool,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.check_open(listener)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let lane = self.lane_of(listener.0);
        if !self.has_room(lane, 1, Origin::Api) {
            return Err(reject(RejectReason::Busy, None, Vec::new()));
        }
        let dest = self
            .alloc_slot()
            .ok_or_else(|| reject(RejectReason::NoSlots, None, Vec::new()))?;
        self.slots[dest as usize] = SlotState::Accepting;
        let sqe = Sqe {
            opcode: OP_ACCEPT,
            slot: listener.0,
            aux: dest,
            op_flags: if nonblock { ACCEPT_NONBLOCK } else { 0 },
            ..Sqe::ZERO
        };
        let r = self.queue(lane, sqe, user_data, None, Vec::new());
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                self.release_slot(dest);
                Err(e)
            }
        }
    }

    /// Queues a RECV into `buf[range]`.
    pub fn recv(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_RECV, slot, buf, range, 0, user_data)
    }

    /// Queues a SEND of `buf[range]`. The result may be short; send the rest again.
    pub fn send(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_SEND, slot, buf, range, 0, user_data)
    }

    /// Queues a READ into `buf[range]` at `offset` (`None`: the file position).
    pub fn read(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        offset: Option<u64>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_READ, slot, buf, range, off(offset), user_data)
    }

    /// Queues a WRITE of `buf[range]` at `offset` (`None`: the file position).
    pub fn write(
        &mut self,
        slot: Slot,
        buf: Vec<u8>,
        range: Range<usize>,
        offset: Option<u64>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        self.buf_op(OP_WRITE, slot, buf, range, off(offset), user_data)
    }

    /// Queues a WRITEV of every buffer in `bufs` (1 to 1024 of them) at `offset`.
    pub fn writev(
        &mut self,
        slot: Slot,
        bufs: Vec<Vec<u8>>,
        offset: Option<u64>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        if bufs.is_empty() || bufs.len() > fastio_uapi::MAX_IOVECS as usize {
            return Err(reject(RejectReason::BadRange, None, bufs));
        }
        if let Err(r) = self.check_open(slot) {
            return Err(reject(r, None, bufs));
        }
        let iovecs: Vec<IoVec> = bufs
            .iter()
            .map(|b| IoVec {
                base: b.as_ptr() as u64,
                len: b.len() as u64,
            })
            .collect();
        let sqe = Sqe {
            opcode: OP_WRITEV,
            slot: slot.0,
            addr: iovecs.as_ptr() as u64,
            len: iovecs.len() as u32,
            off: off(offset),
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue_full(lane, sqe, user_data, None, bufs, iovecs, Origin::Api)
    }

    /// Queues a CLOSE: the slot is released after every request queued before it on the
    /// slot; requests still waiting for readiness complete with `-ECANCELED`. The
    /// CLOSE's completion comes after the completions of every other request on the slot,
    /// and the slot is free for reuse from then on. The slot can no longer be used in
    /// requests once this returns Ok.
    pub fn close(&mut self, slot: Slot, user_data: u64) -> Result<(), Rejected> {
        self.check_open(slot)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let sqe = Sqe {
            opcode: OP_CLOSE,
            slot: slot.0,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, None, Vec::new())?;
        self.slots[slot.0 as usize] = SlotState::Closing;
        Ok(())
    }

    /// Queues an ASYNC_CANCEL of the in-flight request queued with user_data `target`
    /// (if several carry it, one of them: give requests distinct user_data to cancel
    /// them one by one). Its completion (`user_data`) says 0 when the target was found
    /// waiting: the target then completes with `-ECANCELED`, or with its own result if
    /// its transfer had already happened. It says `-ENOENT` when no such request is in
    /// flight or the executor had already finished it (its completion comes anyway).
    /// Either way the target's buffer comes back in its own completion, never earlier.
    ///
    /// A target unknown to the proactor completes the cancel with `-ENOENT` at once,
    /// without a request. The cancel goes to its target's lane and costs one CQ entry.
    pub fn cancel(&mut self, target: u64, user_data: u64) -> Result<(), Rejected> {
        let found = self.inflight.iter().enumerate().find_map(|(token, f)| {
            let f = f.as_ref()?;
            let own = f.opcode == OP_ASYNC_CANCEL || f.origin == Origin::Shutdown;
            (f.user_data == target && !own).then_some((token as u64, f.lane))
        });
        let Some((token, lane)) = found else {
            self.ready.push_back(Completion {
                user_data,
                result: -libc::ENOENT,
                buf: None,
                bufs: Vec::new(),
                accepted: None,
                provided: None,
                more: false,
                flags: 0,
            });
            return Ok(());
        };
        let sqe = Sqe {
            opcode: OP_ASYNC_CANCEL,
            addr: token,
            ..Sqe::ZERO
        };
        self.queue(lane, sqe, user_data, None, Vec::new())?;
        // The target's token stays reserved until this cancel has completed.
        self.pin(self.last_token, token as u32);
        Ok(())
    }

    /// Queues a request built by hand.
    ///
    /// # Safety
    ///
    /// Every address in `sqe` (`addr`, and for WRITEV the iovec array and every buffer
    /// it names) must stay valid, and not be accessed in a conflicting way, until the
    /// completion with this `user_data` has been returned by [`Proactor::completions`].
    /// The proactor does not track slots used this way: an ACCEPT's `aux` or a CLOSE's
    /// slot bypasses its slot bookkeeping (the completion is handed back as is, with no
    /// [`Completion::accepted`]), and raw requests do not keep a slot from being
    /// reused, so use raw requests only on slots you manage consistently.
    pub unsafe fn submit_raw(&mut self, lane: u32, sqe: Sqe) -> Result<(), Rejected> {
        if lane >= self.lanes {
            return Err(reject(RejectReason::BadRange, None, Vec::new()));
        }
        let ud = sqe.user_data;
        self.queue_full(lane, sqe, ud, None, Vec::new(), Vec::new(), Origin::Raw)
    }

    /// Queues a RECV, SEND, READ or WRITE of `len` bytes at `addr`, with the slot
    /// bookkeeping of the typed requests (the slot must be open; it is not reused until
    /// this request has completed) but no buffer held by the proactor: the caller owns
    /// the memory. For the async runtime, whose buffers are any [`crate::rt::IoBuf`].
    ///
    /// # Safety
    ///
    /// `addr..addr + len` must stay valid (and, for RECV and READ, writable and not
    /// otherwise accessed) until the completion with this `user_data` has been taken
    /// from the proactor.
    pub(crate) unsafe fn queue_at(
        &mut self,
        opcode: u8,
        slot: Slot,
        addr: u64,
        len: u32,
        offset: Option<u64>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        debug_assert!(matches!(opcode, OP_RECV | OP_SEND | OP_READ | OP_WRITE));
        if let Err(r) = self.check_open(slot) {
            return Err(reject(r, None, Vec::new()));
        }
        let sqe = Sqe {
            opcode,
            slot: slot.0,
            addr,
            len,
            // Sockets have no offset (the field must be 0).
            off: if matches!(opcode, OP_READ | OP_WRITE) {
                off(offset)
            } else {
                0
            },
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, None, Vec::new())
    }

    fn buf_op(
        &mut self,
        opcode: u8,
        slot: Slot,
        mut buf: Vec<u8>,
        range: Range<usize>,
        offset: u64,
        user_data: u64,
    ) -> Result<(), Rejected> {
        if range.start > range.end || range.end > buf.len() {
            return Err(reject(RejectReason::BadRange, Some(buf), Vec::new()));
        }
        if let Err(r) = self.check_open(slot) {
            return Err(reject(r, Some(buf), Vec::new()));
        }
        let len = u32::try_from(range.len()).unwrap_or(u32::MAX);
        // The heap block of a Vec does not move when the Vec is moved into the in-flight
        // table below. The executor writes through the address of a RECV or READ, so
        // that one must come from `as_mut_ptr`.
        let base = match opcode {
            OP_RECV | OP_READ => buf.as_mut_ptr() as u64,
            _ => buf.as_ptr() as u64,
        };
        let sqe = Sqe {
            opcode,
            slot: slot.0,
            addr: base + range.start as u64,
            len,
            off: offset,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, Some(buf), Vec::new())
    }

    pub(super) fn lane_of(&self, slot: u32) -> u32 {
        slot % self.lanes
    }

    /// CQ entries a request may make its lane's executor post that the proactor must
    /// budget for: a multishot request none (the executors keep what finds the CQ full).
    fn cost(&self, sqe: &Sqe) -> u32 {
        if sqe.flags & SQE_MULTISHOT != 0 {
            0
        } else if sqe.opcode == OP_CLOSE {
            self.backend.close_cost()
        } else {
            1
        }
    }

    /// Whether `lane` has CQ room for a request of `cost` entries. The proactor's own
    /// shutdown requests may use the entries reserved for the runtime.
    fn has_room(&self, lane: u32, cost: u32, origin: Origin) -> bool {
        let limit = match origin {
            Origin::Shutdown => self.backend.lane_capacity(),
            // A request costing more than the limit still fits on an otherwise idle lane.
            _ => self.lane_limit.max(cost),
        };
        self.lane_inflight[lane as usize] + cost <= limit
    }

    pub(super) fn queue(
        &mut self,
        lane: u32,
        sqe: Sqe,
        user_data: u64,
        buf: Option<Vec<u8>>,
        bufs: Vec<Vec<u8>>,
    ) -> Result<(), Rejected> {
        self.queue_full(lane, sqe, user_data, buf, bufs, Vec::new(), Origin::Api)
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_full(
        &mut self,
        lane: u32,
        mut sqe: Sqe,
        user_data: u64,
        buf: Option<Vec<u8>>,
        bufs: Vec<Vec<u8>>,
        iovecs: Vec<IoVec>,
        origin: Origin,
    ) -> Result<(), Rejected> {
        let opcode = sqe.opcode;
        let cost = self.cost(&sqe);
        if !self.has_room(lane, cost, origin) {
            return Err(reject(RejectReason::Busy, buf, bufs));
        }
        let token = match self.free_tokens.pop() {
            Some(t) => t,
            None => {
                self.inflight.push(None);
                (self.inflight.len() - 1) as u32
            }
        };
        sqe.user_data = token as u64;
        self.last_token = token;
        if !self.backend.push(lane, &sqe) {
            self.free_tokens.push(token);
            return Err(reject(RejectReason::Busy, buf, bufs));
        }
        let tracked = origin == Origin::Api;
        self.inflight[token as usize] = Some(InFlight {
            user_data,
            lane,
            opcode,
            origin,
            slot: sqe.slot,
            dest: sqe.aux,
            tracked,
            cost,
            buf,
            bufs,
            iovecs,
            group: (tracked && sqe.flags & SQE_BUFFER_SELECT != 0).then_some(sqe.buf_group),
            multishot: sqe.flags & SQE_MULTISHOT != 0,
            pbuf: None,
        });
        if tracked && counts_on_slot(opcode) {
            // OPENAT in the current directory names no slot (OPENAT_CWD).
            if let Some(n) = self.slot_inflight.get_mut(sqe.slot as usize) {
                *n += 1;
            }
            // SENDFILE also keeps its source slot from being reused.
            if opcode == OP_SENDFILE {
                if let Some(n) = self.slot_inflight.get_mut(sqe.aux as usize) {
                    *n += 1;
                }
            }
        }
        self.lane_inflight[lane as usize] += cost;
        self.pending += 1;
        self.staged = true;
        Ok(())
    }

    /// Shutdown: queues a CLOSE of `slot` (which cancels what waits on it on every
    /// backend); false when its lane has no room yet.
    pub(super) fn queue_shutdown_close(&mut self, slot: u32) -> bool {
        let sqe = Sqe {
            opcode: OP_CLOSE,
            slot,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(slot);
        let r = self.queue_full(
            lane,
            sqe,
            u64::MAX,
            None,
            Vec::new(),
            Vec::new(),
            Origin::Shutdown,
        );
        r.is_ok()
    }
}

pub(super) fn off(offset: Option<u64>) -> u64 {
    offset.unwrap_or(OFF_CURRENT)
}
