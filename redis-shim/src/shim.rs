//! The shim's state: the proactor, the queued sockets and their slots.
//!
//! One [`Shim`] lives behind a mutex (see `interpose`). A socket's first write registers
//! it into a slot; writes are copied into its [`WriteQueue`]; [`Shim::flush`] issues one
//! request per socket that has bytes waiting and none in flight, and submits;
//! [`Shim::pump`] reaps completions (finishing short sends, recording errors, releasing
//! the slots of closed sockets) and flushes again.
//!
//! A socket the program closes (an *orphan*) keeps its slot until its queued bytes are
//! sent. Its bytes do not count against the cap of the open sockets, but against a bound
//! of their own (the same size), and if none of them goes out for the linger time (a
//! peer that does not read), the shim aborts it: the rest is dropped and a CLOSE through
//! the proactor cancels the send waiting on it and releases the slot.

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use fastio::{Completion, Config, Proactor, RejectReason, Slot};

use crate::fdtable::{self, Kind};
use crate::queue::{Op, Pool, WriteQueue};
use crate::settings::Settings;
use crate::stats::Stats;

/// How long a write waits under the cap for its socket to make progress before it
/// fails with `EAGAIN`, as a full socket would.
pub const STALL: Duration = Duration::from_millis(10);

/// How long the exit drain waits without any completion before it gives up.
const EXIT_IDLE: Duration = Duration::from_millis(500);

/// One slice of a wait for completions.
const SLICE: Duration = Duration::from_millis(1);

/// `user_data` tag of a SEND or WRITEV.
const TAG_SEND: u64 = 1 << 32;
/// `user_data` tag of a CLOSE.
const TAG_CLOSE: u64 = 2 << 32;

/// A registered socket.
struct Conn {
    slot: Slot,
    /// The program's descriptor; `None` once the program closed it (or its write failed).
    fd: Option<i32>,
    queue: WriteQueue,
    /// In the dirty list (has, or may have, a request to issue).
    dirty: bool,
    /// A CLOSE is queued or in flight.
    closing: bool,
    /// A queued write failed, or the orphan was aborted: nothing more is sent.
    failed: bool,
    /// For an orphan with bytes queued: when it is aborted unless a byte goes out first.
    linger_until: Option<Instant>,
}

/// Why a write was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The descriptor is not a queued socket (any more): the call goes to the C library.
    NotOurs,
    /// The call fails with this errno.
    Errno(i32),
}

/// What the program's descriptor number maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdEntry {
    None,
    /// Registered in this slot.
    Slot(u32),
    /// A queued write failed with this errno; reported on the next call.
    Failed(i32),
}

/// The shim's state.
pub struct Shim {
    proactor: Proactor,
    settings: Settings,
    conns: HashMap<u32, Conn>,
    fds: Vec<FdEntry>,
    dirty: Vec<u32>,
    closes: Vec<u32>,
    /// Orphans with a linger deadline (checked in [`Shim::pump`] and the waits).
    lingering: Vec<u32>,
    /// Bytes queued, all sockets.
    queued: usize,
    /// Of those, the bytes of orphans.
    orphaned: usize,
    pool: Pool,
    stats: Stats,
}

impl Shim {
    /// Opens the proactor `config` asks for.
    pub fn new(config: &Config, settings: Settings) -> io::Result<Shim> {
        let proactor = Proactor::new(config)?;
        let stats = Stats {
            backend: proactor.backend().to_string(),
            ..Stats::default()
        };
        Ok(Shim {
            proactor,
            settings,
            conns: HashMap::new(),
            fds: Vec::new(),
            dirty: Vec::new(),
            closes: Vec::new(),
            lingering: Vec::new(),
            queued: 0,
            orphaned: 0,
            pool: Pool::default(),
            stats,
        })
    }

    /// The settings in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn entry(&self, fd: i32) -> FdEntry {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.fds.get(i).copied())
            .unwrap_or(FdEntry::None)
    }

    fn set_entry(&mut self, fd: i32, e: FdEntry) {
        let Ok(i) = usize::try_from(fd) else { return };
        if i >= self.fds.len() {
            self.fds.resize(i + 1, FdEntry::None);
        }
        self.fds[i] = e;
        fdtable::set(
            fd,
            match e {
                FdEntry::None => Kind::Unknown,
                FdEntry::Slot(_) => Kind::Queued,
                FdEntry::Failed(_) => Kind::Failed,
            },
        );
    }

    /// Registers the socket `fd` (its first write). False when the proactor cannot take
    /// it; the descriptor is then left to the C library.
    pub fn register(&mut self, fd: i32) -> bool {
        // SAFETY: the program passed `fd` to a write call just now, so it is open; the
        // borrow lasts only for the registration, which takes its own reference.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        match self.proactor.register(&bfd) {
            Ok(slot) => {
                self.conns.insert(
                    slot.index(),
                    Conn {
                        slot,
                        fd: Some(fd),
                        queue: WriteQueue::default(),
                        dirty: false,
                        closing: false,
                        failed: false,
                        linger_until: None,
                    },
                );
                self.set_entry(fd, FdEntry::Slot(slot.index()));
                self.stats.registered += 1;
                true
            }
            Err(_) => {
                self.stats.register_failed += 1;
                fdtable::set(fd, Kind::Plain);
                false
            }
        }
    }

    /// Takes the error of a failed queued write on `fd`, if one waits to be reported;
    /// the descriptor is then left to the C library (the socket is broken, and the
    /// kernel answers further calls itself).
    pub fn take_error(&mut self, fd: i32) -> Option<i32> {
        match self.entry(fd) {
            FdEntry::Failed(e) => {
                self.set_entry(fd, FdEntry::None);
                fdtable::set(fd, Kind::Plain);
                self.stats.errors_reported += 1;
                Some(e)
            }
            _ => None,
        }
    }

    /// Queues the first bytes of `parts` (`len` in all) for `fd`: returns how many were
    /// accepted (all of them unless the cap is reached). Under the cap the write waits
    /// while its socket makes progress, and fails with `EAGAIN` after [`STALL`] without.
    pub fn write(&mut self, fd: i32, parts: &[&[u8]], len: usize) -> Result<usize, WriteError> {
        let mut deadline: Option<Instant> = None;
        loop {
            let slot = match self.entry(fd) {
                FdEntry::Slot(s) => s,
                FdEntry::Failed(_) => {
                    return Err(WriteError::Errno(
                        self.take_error(fd).unwrap_or(libc::EPIPE),
                    ))
                }
                FdEntry::None => return Err(WriteError::NotOurs),
            };
            if len == 0 {
                return Ok(0);
            }
            // A descriptor mapped to a slot the shim no longer has: an internal failure.
            let Some(conn_queued) = self.conns.get(&slot).map(|c| c.queue.queued()) else {
                return Err(WriteError::Errno(libc::EIO));
            };
            let live = self.queued.saturating_sub(self.orphaned);
            let room = (self.settings.socket_allowance.saturating_sub(conn_queued))
                .min(self.settings.max_queued.saturating_sub(live));
            if room > 0 {
                let n = room.min(len);
                let Some(conn) = self.conns.get_mut(&slot) else {
                    return Err(WriteError::Errno(libc::EIO));
                };
                conn.queue.push(parts, n, &mut self.pool);
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(slot);
                }
                self.queued += n;
                self.stats.writes += 1;
                self.stats.bytes_queued += n as u64;
                self.stats.peak_queued = self.stats.peak_queued.max(self.queued as u64);
                if n < len {
                    self.stats.partial_writes += 1;
                }
                return Ok(n);
            }
            // Backpressure: wait for this socket's queued bytes to go out, as long as they
            // do (another socket's progress makes room only under the global cap, and
            // then the next round takes it).
            let now = Instant::now();
            let until = *deadline.get_or_insert(now + STALL);
            if now >= until {
                self.stats.eagain += 1;
                return Err(WriteError::Errno(libc::EAGAIN));
            }
            self.stats.backpressure_waits += 1;
            self.flush();
            self.wait_completions((until - now).min(SLICE));
            if self.conns.get(&slot).map_or(0, |c| c.queue.queued()) < conn_queued {
                deadline = None;
            }
        }
    }

    /// The program closes `fd` (or replaces it): its queued bytes still go out, then the
    /// slot is released (see the module's notes on orphans).
    pub fn detach(&mut self, fd: i32) {
        if let FdEntry::Slot(s) = self.entry(fd) {
            self.orphan(s);
        }
        self.set_entry(fd, FdEntry::None);
    }

    /// Waits (at most `timeout`) until `fd` has nothing queued: before a call that must
    /// come after the queued bytes (shutdown, a send the shim does not queue).
    pub fn drain_fd(&mut self, fd: i32, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let FdEntry::Slot(s) = self.entry(fd) {
            if self.conns.get(&s).is_none_or(|c| c.queue.is_idle()) {
                return;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            self.flush();
            self.wait_completions(left.min(SLICE * 10));
        }
    }

    /// Whether requests are in flight or waiting to be issued.
    pub fn busy(&self) -> bool {
        self.proactor.in_flight() > 0 || !self.dirty.is_empty() || !self.closes.is_empty()
    }

    /// Issues the waiting requests and submits them (waking sleeping workers only when
    /// they need it: the proactor's submit does that).
    pub fn flush(&mut self) {
        for s in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(&s) else {
                continue;
            };
            conn.dirty = false;
            if conn.failed {
                continue;
            }
            let Some(op) = conn.queue.take_op() else {
                continue;
            };
            let r = match op {
                Op::Send(buf, range) => {
                    self.proactor
                        .send(conn.slot, buf, range, TAG_SEND | s as u64)
                }
                Op::Writev(bufs) => {
                    self.proactor
                        .writev(conn.slot, bufs, None, TAG_SEND | s as u64)
                }
            };
            match r {
                Ok(()) => self.stats.requests += 1,
                Err(rej) => {
                    conn.queue.put_back(rej.buf, rej.bufs);
                    if rej.reason == RejectReason::Busy {
                        conn.dirty = true;
                        self.dirty.push(s);
                    } else {
                        // The proactor refused the slot or the buffers: an internal
                        // failure, reported as an I/O error.
                        self.fail(s, libc::EIO);
                    }
                }
            }
        }
        for s in std::mem::take(&mut self.closes) {
            let Some(conn) = self.conns.get(&s) else {
                continue;
            };
            if let Err(rej) = self.proactor.close(conn.slot, TAG_CLOSE | s as u64) {
                if rej.reason == RejectReason::Busy {
                    self.closes.push(s);
                } else {
                    // Not registered any more: nothing left to close.
                    self.release(s);
                }
            }
        }
        let _ = self.proactor.submit();
    }

    /// Reaps completions, handles them, and flushes what they made ready.
    pub fn pump(&mut self) {
        self.stats.flushes += 1;
        self.expire_lingering();
        self.flush();
        self.proactor.reap();
        if self.handle_completions() {
            self.flush();
        }
    }

    /// Waits up to `timeout` for at least one completion and handles what came; true
    /// when something completed (or a signal interrupted the wait).
    pub fn wait_completions(&mut self, timeout: Duration) -> bool {
        if self.expire_lingering() {
            self.flush();
        }
        let got = match self.proactor.wait(1, Some(timeout)) {
            Ok(n) => n > 0,
            Err(e) => e.kind() == io::ErrorKind::Interrupted,
        };
        if self.handle_completions() {
            self.flush();
        }
        got
    }

    /// Sends what is queued and releases the slots of closed sockets (at exit): waits
    /// while requests complete, up to `timeout`, and gives up after [`EXIT_IDLE`] without
    /// a completion (a peer that does not read).
    pub fn drain_all(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = Instant::now();
        loop {
            self.pump();
            if !self.busy() {
                return;
            }
            let now = Instant::now();
            if now >= deadline || now - last >= EXIT_IDLE {
                return;
            }
            if self.wait_completions((deadline - now).min(SLICE * 10)) {
                last = Instant::now();
            }
        }
    }

    /// The counters, with the current occupancy.
    pub fn stats(&self) -> Stats {
        Stats {
            open_slots: self.conns.len() as u64,
            queued_now: self.queued as u64,
            ..self.stats.clone()
        }
    }

    /// Handles every ready completion; true when there were any.
    fn handle_completions(&mut self) -> bool {
        let done: Vec<Completion> = self.proactor.completions().collect();
        let any = !done.is_empty();
        for c in done {
            let slot = (c.user_data & 0xffff_ffff) as u32;
            match c.user_data & !0xffff_ffff {
                TAG_SEND => self.sent(slot, c),
                TAG_CLOSE => self.release(slot),
                _ => {}
            }
        }
        any
    }

    /// A SEND or WRITEV of `slot` completed.
    fn sent(&mut self, slot: u32, c: Completion) {
        let linger = self.settings.close_linger;
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        let orphan = conn.fd.is_none();
        let res = c.result;
        if conn.failed {
            // An aborted orphan: whatever the request did, the rest is dropped.
            let sent = usize::try_from(res).unwrap_or(0);
            conn.queue.complete(sent, c.buf, c.bufs, &mut self.pool);
            let dropped = conn.queue.clear(None, Vec::new(), &mut self.pool);
            self.unqueue(sent, orphan);
            self.stats.bytes_sent += sent as u64;
            self.discard(dropped);
        } else if res >= 0 || res == -libc::EAGAIN || res == -libc::EINTR {
            let n = usize::try_from(res).unwrap_or(0);
            let asked =
                c.buf.as_ref().map_or(0, Vec::len) + c.bufs.iter().map(Vec::len).sum::<usize>();
            if n > 0 && n < asked {
                self.stats.short_sends += 1;
            }
            conn.queue.complete(n, c.buf, c.bufs, &mut self.pool);
            if orphan && n > 0 && conn.linger_until.is_some() {
                conn.linger_until = Instant::now().checked_add(linger);
            }
            let ready = conn.queue.ready();
            if ready && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(slot);
            }
            self.unqueue(n, orphan);
            self.stats.bytes_sent += n as u64;
            if !ready {
                self.close_if_done(slot);
            }
        } else {
            let dropped = conn.queue.clear(c.buf, c.bufs, &mut self.pool);
            if orphan {
                self.discard(dropped);
            } else {
                self.unqueue(dropped, false);
            }
            // EBADF would tell the program its descriptor is not open: the executor
            // lost the slot's file, an internal failure.
            let errno = if -res == libc::EBADF { libc::EIO } else { -res };
            self.fail(slot, errno);
        }
    }

    /// A queued write of `slot` failed with `errno`: drop what is queued, report the
    /// error on the program's next call, release the slot.
    fn fail(&mut self, slot: u32, errno: i32) {
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        self.stats.send_errors += 1;
        conn.failed = true;
        let dropped = conn.queue.clear(None, Vec::new(), &mut self.pool);
        match conn.fd.take() {
            Some(fd) => {
                self.unqueue(dropped, false);
                self.set_entry(fd, FdEntry::Failed(errno));
            }
            None => self.discard(dropped),
        }
        self.close_if_done(slot);
    }

    /// The program no longer has a descriptor for `slot`'s socket: its bytes move from
    /// the open sockets' count to the orphans'; with bytes queued it lingers, and beyond
    /// the orphans' bound it is aborted at once.
    fn orphan(&mut self, slot: u32) {
        let linger = self.settings.close_linger;
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        if conn.fd.take().is_none() {
            return;
        }
        self.orphaned += conn.queue.queued();
        if !conn.queue.is_idle() {
            // A linger too long to represent never expires.
            conn.linger_until = Instant::now().checked_add(linger);
            if conn.linger_until.is_some() {
                self.lingering.push(slot);
            }
            if self.orphaned > self.settings.max_queued {
                // Completions not reaped yet may have sent this socket's bytes, or
                // other orphans': only what is still queued then counts.
                self.proactor.reap();
                self.handle_completions();
                if self.orphaned > self.settings.max_queued {
                    self.abort(slot);
                    return;
                }
            }
        }
        self.close_if_done(slot);
    }

    /// Aborts the orphans whose linger time passed without progress; true when any was.
    fn expire_lingering(&mut self) -> bool {
        if self.lingering.is_empty() {
            return false;
        }
        let now = Instant::now();
        let conns = &self.conns;
        let mut expired = Vec::new();
        self.lingering.retain(|s| match conns.get(s) {
            Some(c) if !c.closing => match c.linger_until {
                Some(t) if t <= now => {
                    expired.push(*s);
                    false
                }
                Some(_) => true,
                None => false,
            },
            _ => false,
        });
        let any = !expired.is_empty();
        for s in expired {
            self.abort(s);
        }
        any
    }

    /// Gives up on the orphan `slot`: drops the bytes waiting to be issued and queues a
    /// CLOSE, which cancels the request in flight (its bytes are dropped when it
    /// completes) and releases the slot.
    fn abort(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(&slot) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.failed = true;
        conn.closing = true;
        conn.linger_until = None;
        let dropped = conn.queue.discard_waiting(&mut self.pool);
        self.closes.push(slot);
        self.stats.aborted += 1;
        self.discard(dropped);
    }

    /// The CLOSE of `slot` completed (or the slot was gone already): forget it, and drop
    /// anything still queued.
    fn release(&mut self, slot: u32) {
        let Some(mut conn) = self.conns.remove(&slot) else {
            return;
        };
        let rest = conn.queue.clear(None, Vec::new(), &mut self.pool);
        if conn.fd.is_some() {
            self.unqueue(rest, false);
        } else {
            self.discard(rest);
        }
        self.stats.closed += 1;
    }

    /// `n` queued bytes left a queue (sent or dropped); `orphan`: an orphan's.
    fn unqueue(&mut self, n: usize, orphan: bool) {
        self.queued = self.queued.saturating_sub(n);
        if orphan {
            self.orphaned = self.orphaned.saturating_sub(n);
        }
    }

    /// `n` queued bytes of an orphan were dropped.
    fn discard(&mut self, n: usize) {
        self.unqueue(n, true);
        self.stats.discarded_bytes += n as u64;
    }

    /// Queues the CLOSE of `slot` once the program closed it (or it failed) and nothing
    /// of it is in flight.
    fn close_if_done(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(&slot) {
            if conn.fd.is_none() && conn.queue.is_idle() && !conn.closing {
                conn.closing = true;
                self.closes.push(slot);
            }
        }
    }
}
