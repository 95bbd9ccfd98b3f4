//! The shim's state: the proactor, the queued sockets and their slots.
//!
//! One [`Shim`] lives behind a mutex (see `interpose`). A socket's first write registers
//! it into a slot; writes are copied into its [`WriteQueue`], up to the socket's
//! allowance; [`Shim::flush`] issues one request per socket that has bytes waiting and
//! none in flight, and submits; [`Shim::pump`] reaps completions (finishing short sends,
//! recording errors, releasing the slots of closed sockets) and flushes again. Nothing
//! here waits for a peer: a write that finds the allowance used up fails with `EAGAIN`
//! at once, and the event loop's wait (see [`Shim::plan`]) asks for completions only
//! while a request that something waits behind is young.
//!
//! A socket the program closes (an *orphan*) keeps its slot until its queued bytes are
//! sent (see `lifecycle`).

mod lifecycle;
mod plan;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

use fastio::{Config, Proactor, RejectReason, Slot};

use crate::epreg;
use crate::fdtable::{self, Kind};
use crate::queue::{Op, Pool, WriteQueue};
use crate::settings::Settings;
use crate::stats::Stats;

pub use plan::Wake;

/// `user_data` tag of a SEND or WRITEV.
const TAG_SEND: u64 = 1 << 32;
/// `user_data` tag of a CLOSE.
const TAG_CLOSE: u64 = 2 << 32;

/// A registered socket.
struct Conn {
    slot: Slot,
    /// The program's descriptor; `None` once the program closed it (or its write failed).
    fd: Option<i32>,
    /// The socket's identity ([`fdtable::identity`]).
    id: u64,
    queue: WriteQueue,
    /// In the dirty list (has, or may have, a request to issue).
    dirty: bool,
    /// A CLOSE is queued or in flight.
    closing: bool,
    /// A queued write failed, or the orphan was aborted: nothing more is sent.
    failed: bool,
    /// For an orphan with bytes queued: when it is aborted unless a byte goes out first.
    linger_until: Option<Instant>,
    /// When the request in flight was issued.
    issued: Option<Instant>,
    /// The program shut the socket down for writing while bytes were queued: a copy of
    /// its descriptor to carry the `shutdown` out on once they are sent.
    shut: Option<OwnedFd>,
    /// The program shut the socket down for writing: further writes fail with EPIPE.
    write_shut: bool,
    /// `EPOLLOUT` is held back for the program's descriptor ([`epreg`]): its allowance
    /// was used up.
    masked: bool,
}

/// Why a write was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// The descriptor is not a queued socket (any more), or the cap of all sockets is
    /// reached and nothing of this socket is queued: the call goes to the C library.
    NotOurs,
    /// The call fails with this errno.
    Errno(i32),
}

/// What to do with a `shutdown` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Call it now (nothing queued, or only the reading side).
    Now,
    /// The writing side is shut down after the queued bytes; the reading side (for
    /// `SHUT_RDWR`) is the caller's to shut now.
    Deferred,
    /// Fail the call with this errno.
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
    /// Slots with a SEND or WRITEV in flight.
    in_flight: HashSet<u32>,
    /// Slots whose program's descriptor is masked ([`epreg`]).
    masked: Vec<u32>,
    /// Orphans with a linger deadline (checked in [`Shim::pump`]).
    lingering: Vec<u32>,
    /// Bytes queued, all sockets.
    queued: usize,
    /// Of those, the bytes of orphans.
    orphaned: usize,
    pool: Pool,
    stats: Stats,
    /// The clock at the start of the last [`Shim::pump`] (read once per pump).
    now: Instant,
    /// When [`Shim::pump`] next checks every open socket's identity.
    next_sweep: Instant,
}

impl Shim {
    /// Opens the proactor `config` asks for.
    pub fn new(config: &Config, settings: Settings) -> io::Result<Shim> {
        let proactor = Proactor::new(config)?;
        let stats = Stats {
            backend: proactor.backend().to_string(),
            ..Stats::default()
        };
        let now = Instant::now();
        Ok(Shim {
            proactor,
            settings,
            conns: HashMap::new(),
            fds: Vec::new(),
            dirty: Vec::new(),
            closes: Vec::new(),
            in_flight: HashSet::new(),
            masked: Vec::new(),
            lingering: Vec::new(),
            queued: 0,
            orphaned: 0,
            pool: Pool::default(),
            stats,
            now,
            next_sweep: now + plan::SWEEP_EVERY,
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

    fn set_entry(&mut self, fd: i32, e: FdEntry, id: u64) {
        let Ok(i) = usize::try_from(fd) else { return };
        if i >= self.fds.len() {
            self.fds.resize(i + 1, FdEntry::None);
        }
        self.fds[i] = e;
        match e {
            FdEntry::None => fdtable::set(fd, Kind::Unknown),
            FdEntry::Slot(s) => fdtable::set_socket(fd, Kind::Queued, s, id),
            FdEntry::Failed(_) => fdtable::set_socket(fd, Kind::Failed, 0, id),
        }
    }

    /// Registers the socket `fd` (its first write). False when the proactor cannot take
    /// it; the descriptor is then left to the C library. Whatever the number mapped to
    /// before is forgotten first (a socket closed where the shim did not see it).
    ///
    /// A socket already registered keeps its slot: a signal handler's write can register
    /// it between the thread's own check and its registration, and a second slot would
    /// send the socket's bytes from two queues, out of order.
    pub fn register(&mut self, fd: i32) -> bool {
        let Some(id) = fdtable::identity(fd) else {
            self.detach(fd);
            fdtable::set(fd, Kind::Plain);
            return false;
        };
        if let FdEntry::Slot(s) = self.entry(fd) {
            if self
                .conns
                .get(&s)
                .is_some_and(|c| c.id == id && c.fd == Some(fd))
            {
                return true;
            }
        }
        self.detach(fd);
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
                        id,
                        queue: WriteQueue::default(),
                        dirty: false,
                        closing: false,
                        failed: false,
                        linger_until: None,
                        issued: None,
                        shut: None,
                        write_shut: false,
                        masked: false,
                    },
                );
                self.set_entry(fd, FdEntry::Slot(slot.index()), id);
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
                self.set_entry(fd, FdEntry::None, 0);
                fdtable::set(fd, Kind::Plain);
                self.stats.errors_reported += 1;
                Some(e)
            }
            _ => None,
        }
    }

    /// Queues the first bytes of `parts` (`len` in all) for `fd`: returns how many were
    /// accepted: all of them, or what is left of the socket's allowance (and of the cap
    /// of all sockets); `EAGAIN` when nothing is left. Never waits.
    pub fn write(&mut self, fd: i32, parts: &[&[u8]], len: usize) -> Result<usize, WriteError> {
        let slot = match self.entry(fd) {
            FdEntry::Slot(s) => s,
            FdEntry::Failed(_) => {
                return Err(WriteError::Errno(
                    self.take_error(fd).unwrap_or(libc::EPIPE),
                ))
            }
            FdEntry::None => return Err(WriteError::NotOurs),
        };
        let live = self.queued.saturating_sub(self.orphaned);
        let global = self.settings.max_queued.saturating_sub(live);
        let allowance = self.settings.socket_allowance;
        // A descriptor mapped to a slot the shim no longer has: an internal failure.
        let Some(conn) = self.conns.get_mut(&slot) else {
            return Err(WriteError::Errno(libc::EIO));
        };
        if conn.write_shut {
            return Err(WriteError::Errno(libc::EPIPE));
        }
        if len == 0 {
            return Ok(0);
        }
        if global == 0 && conn.queue.is_idle() {
            // Nothing of this socket waits: the kernel may take the bytes in order.
            self.stats.passthrough += 1;
            return Err(WriteError::NotOurs);
        }
        let n = len
            .min(allowance.saturating_sub(conn.queue.queued()))
            .min(global);
        if n < len && !conn.masked {
            // The program will wait for EPOLLOUT: not before there is room here.
            conn.masked = true;
            self.masked.push(slot);
            epreg::mask(fd);
        }
        if n == 0 {
            self.stats.eagain += 1;
            return Err(WriteError::Errno(libc::EAGAIN));
        }
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
        Ok(n)
    }

    /// Queues the bytes a signal handler wrote to the socket `id` in `slot` while its
    /// thread was inside the shim: after everything queued before, whatever the
    /// allowance, unless the socket is gone or failed (then they are dropped).
    pub fn deferred_write(&mut self, slot: u32, id: u64, data: &[u8]) {
        let Some(conn) = self
            .conns
            .get_mut(&slot)
            .filter(|c| c.id == id && !c.failed && !c.write_shut)
        else {
            self.stats.deferred_dropped += 1;
            return;
        };
        conn.queue.push(&[data], data.len(), &mut self.pool);
        if conn.fd.is_none() {
            self.orphaned += data.len();
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(slot);
        }
        self.queued += data.len();
        self.stats.deferred += 1;
        self.stats.bytes_queued += data.len() as u64;
        self.stats.peak_queued = self.stats.peak_queued.max(self.queued as u64);
    }

    /// The program closes `fd` (or replaces it): its queued bytes still go out, then the
    /// slot is released (see `lifecycle` on orphans).
    pub fn detach(&mut self, fd: i32) {
        if let FdEntry::Slot(s) = self.entry(fd) {
            self.orphan(s);
        }
        self.set_entry(fd, FdEntry::None, 0);
    }

    /// `fd` no longer names the socket (or failed socket) it maps to: forget the
    /// mapping, as [`Shim::detach`] does, and count it.
    pub fn forget_stale(&mut self, fd: i32) {
        if self.entry(fd) != FdEntry::None {
            self.stats.stale += 1;
        }
        self.detach(fd);
    }

    /// Before a call on `fd` that must come after its queued bytes but is not queued (a
    /// send with flags the shim does not queue): true when nothing of `fd` is queued,
    /// after one round of completions.
    pub fn quiesce(&mut self, fd: i32) -> bool {
        let idle = |s: &Shim| match s.entry(fd) {
            FdEntry::Slot(slot) => s.conns.get(&slot).is_none_or(|c| c.queue.is_idle()),
            _ => true,
        };
        if idle(self) {
            return true;
        }
        self.pump();
        idle(self)
    }

    /// `shutdown(fd, how)` on a queued socket: shutting down the writing side must come
    /// after the queued bytes, so with bytes queued it is carried out once they are sent
    /// (on a copy of the descriptor), and writes fail with EPIPE from now on.
    pub fn shutdown(&mut self, fd: i32, how: i32) -> Shutdown {
        let FdEntry::Slot(slot) = self.entry(fd) else {
            return Shutdown::Now;
        };
        if how == libc::SHUT_RD || self.quiesce(fd) {
            return Shutdown::Now;
        }
        let Some(conn) = self.conns.get_mut(&slot) else {
            return Shutdown::Now;
        };
        if conn.shut.is_none() {
            // SAFETY: F_DUPFD_CLOEXEC on the program's open descriptor; the copy is ours.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            if copy < 0 {
                return Shutdown::Errno(io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            // SAFETY: `copy` is a new descriptor nobody else owns.
            conn.shut = Some(unsafe { OwnedFd::from_raw_fd(copy) });
        }
        conn.write_shut = true;
        Shutdown::Deferred
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
                Ok(()) => {
                    conn.issued = Some(self.now);
                    self.in_flight.insert(s);
                    self.stats.requests += 1;
                }
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

    /// Reaps completions, handles them, and flushes what they made ready; once a second
    /// also checks that every open socket's number still names it.
    pub fn pump(&mut self) {
        self.now = Instant::now();
        self.stats.flushes += 1;
        self.sweep();
        self.expire_lingering();
        self.flush();
        self.proactor.reap();
        if self.handle_completions() {
            self.flush();
        }
        self.unmask_ready();
    }

    /// Puts back the program's `EPOLLOUT` for the sockets that have half their
    /// allowance free again (or are no longer the program's).
    fn unmask_ready(&mut self) {
        let half = self.settings.socket_allowance / 2;
        let conns = &mut self.conns;
        self.masked.retain(|s| {
            let Some(c) = conns.get_mut(s) else {
                return false;
            };
            if c.fd.is_some() && c.queue.queued() > half {
                return true;
            }
            c.masked = false;
            if let Some(fd) = c.fd {
                epreg::unmask(fd, true);
            }
            false
        });
    }

    /// The counters, with the current occupancy.
    pub fn stats(&self) -> Stats {
        Stats {
            open_slots: self.conns.len() as u64,
            queued_now: self.queued as u64,
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests;
