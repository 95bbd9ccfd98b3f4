//! The `threads` backend: polling worker threads in this process execute the rings
//! with ordinary syscalls, exactly as the lane threads of `fastio.ko` do in the kernel.
//!
//! Each lane has one worker thread (`fastio-thr-<lane>`), which
//! - drains its SQ, reading each SQE once into a private copy and validating it with
//!   [`fastio_uapi::decode`], the same function the kernel module uses;
//! - issues each request without blocking; a socket or pipe that answers `EAGAIN` gets
//!   the request *parked*: armed one-shot on the worker's epoll instance and re-issued
//!   when the file becomes ready (no busy retry, no thread per connection). Later
//!   requests of the same direction on that file queue behind it, so order is kept.
//!   Parked requests are kept per *file* (the registered file reference, not the slot
//!   number), so a slot emptied and refilled meanwhile never mixes two files' queues; a
//!   CLOSE cancels the waits of the file its slot held. The epoll registration is held
//!   together with a reference to its file (so its descriptor number cannot be reused
//!   while registered) and removed as soon as the file has no parked request left;
//! - spins (yielding the CPU to any runnable task) for `idle_ms` after its last piece of
//!   work, then sets `SQ_NEED_WAKEUP`, re-checks the SQ, and sleeps in `epoll_wait` until
//!   `ENTER(SQ_WAKEUP)` (an eventfd) or a parked file becomes ready;
//! - posts completions to its CQ; if userspace overfilled it, completions wait in a
//!   backlog: none is ever dropped. A waiter in `wait` (the `ENTER(GETEVENTS)` of this
//!   backend) sleeps in `ppoll` on an eventfd that workers signal after posting, so a
//!   signal interrupts it (`ErrorKind::Interrupted`), as on the other backends;
//! - on `cancel_all` (proactor shutdown) completes every parked request with
//!   `-ECANCELED`.
//!
//! Regular files are read and written inline by the worker (the kernel module hands
//! uncached ones to its helper threads instead).
//!
//! Differences from the other backends, all due to running on ordinary syscalls:
//! - registered sockets, pipes and other pollable files are switched to `O_NONBLOCK`,
//!   which belongs to the open file description, so the caller's own descriptor and any
//!   descriptor made by `install_fd` become non-blocking too. For the same reason every
//!   accepted socket is non-blocking: ACCEPT ignores `ACCEPT_NONBLOCK` (it is always in
//!   effect);
//! - a RECV with `MSG_WAITALL` may complete short: it returns what one non-blocking
//!   `recv` returned once the socket was readable;
//! - an explicit `MSG_DONTWAIT` in a RECV or SEND completes with `-EAGAIN` instead of
//!   being parked, as everywhere.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastio_uapi::{decode, Cqe, Direction, IoVec, Op, Sqe, MSG_DONTWAIT, OFF_CURRENT};

use super::files::{FileRef, FileTable};
use super::rings::RingSide;
use super::Backend;
use crate::config::Config;
use crate::ring::{CqProducer, Geometry, RingMemory, SqConsumer};

/// Per-lane counters, readable while the workers run.
#[derive(Debug, Default)]
pub(crate) struct LaneStats {
    /// Times the worker went to sleep with NEED_WAKEUP set.
    pub(crate) sleeps: AtomicU64,
    /// Requests parked on readiness.
    pub(crate) parked: AtomicU64,
}

/// State shared by the proactor side and the workers.
struct Shared {
    mem: Arc<RingMemory>,
    files: FileTable,
    max_files: u32,
    stop: AtomicBool,
    idle: Duration,
    /// One eventfd per lane: `ENTER(SQ_WAKEUP)`.
    wake: Vec<OwnedFd>,
    /// Bumped by `cancel_all`: each worker that sees a new value cancels what it parked.
    cancel_epoch: AtomicU32,
    /// `ENTER(GETEVENTS)`: waiters in `wait`; workers signal `cq_event` when non-zero.
    cq_waiters: AtomicU32,
    /// Eventfd the waiter polls; written by workers after posting completions.
    cq_event: OwnedFd,
    stats: Vec<LaneStats>,
}

/// Writes 1 to the eventfd `fd` (a saturated counter means a wakeup is pending anyway).
fn signal_eventfd(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
    let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if r == 8 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Resets the non-blocking eventfd `fd` (nothing to do if it is not signalled).
fn drain_eventfd(fd: &OwnedFd) {
    let mut buf = 0u64;
    // SAFETY: reading 8 bytes into a valid u64 from our own non-blocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
}

impl Shared {
    /// Called by a worker after posting completions.
    fn notify_completions(&self) {
        // Pairs with the waiter's SeqCst increment of `cq_waiters` and fence before it
        // re-checks the CQ tails: either we see the waiter or it sees our tail.
        fence(Ordering::SeqCst);
        if self.cq_waiters.load(Ordering::Relaxed) != 0 {
            // Cannot fail on a valid eventfd; a lost signal would only delay the waiter
            // until its timeout, so there is nothing better to do than ignore it.
            let _ = signal_eventfd(&self.cq_event);
        }
    }

    fn wake_lane(&self, lane: usize) -> io::Result<()> {
        signal_eventfd(&self.wake[lane])
    }
}

/// The proactor side of the `threads` backend.
pub(crate) struct ThreadsBackend {
    shared: Arc<Shared>,
    rings: RingSide,
    workers: Vec<JoinHandle<()>>,
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A lane's epoll instance with its wake eventfd registered.
fn lane_epoll(lane: usize, wake: &OwnedFd) -> io::Result<OwnedFd> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("backend threads: worker {lane}: {what}: {e}"),
        )
    };
    let epfd = epoll_create().map_err(|e| ctx("epoll_create failed", e))?;
    epoll_ctl(
        &epfd,
        libc::EPOLL_CTL_ADD,
        wake.as_raw_fd(),
        libc::EPOLLIN as u32,
        WAKE_TOKEN,
    )
    .map_err(|e| ctx("cannot watch its wake eventfd", e))?;
    Ok(epfd)
}

impl ThreadsBackend {
    /// Maps the rings and starts one worker per lane. Everything a worker needs that can
    /// fail (its epoll instance, the registration of its wake eventfd) is made here, so
    /// that a failure fails the open instead of leaving a dead lane.
    pub(crate) fn open(config: &Config) -> io::Result<Self> {
        let geometry = Geometry::new(config.max_ker_worker, config.sq_entries, config.cq_entries)?;
        let mem = RingMemory::anonymous(geometry)?;
        let nlanes = geometry.lanes as usize;
        let wake: Vec<OwnedFd> = (0..nlanes).map(|_| eventfd()).collect::<io::Result<_>>()?;
        let epfds: Vec<OwnedFd> = wake
            .iter()
            .enumerate()
            .map(|(lane, w)| lane_epoll(lane, w))
            .collect::<io::Result<_>>()?;
        let shared = Arc::new(Shared {
            mem: Arc::clone(&mem),
            files: FileTable::new(config.max_files),
            max_files: config.max_files,
            stop: AtomicBool::new(false),
            idle: Duration::from_millis(config.idle_ms as u64),
            wake,
            cancel_epoch: AtomicU32::new(0),
            cq_waiters: AtomicU32::new(0),
            cq_event: eventfd()?,
            stats: (0..nlanes).map(|_| LaneStats::default()).collect(),
        });
        let mut backend = ThreadsBackend {
            rings: RingSide::new(&mem),
            shared,
            workers: Vec::with_capacity(nlanes),
        };
        let ncpu = super::available_cpus();
        for (lane, epfd) in epfds.into_iter().enumerate() {
            let shared = Arc::clone(&backend.shared);
            let cpu = super::pinned_cpu(config.affinity_offset, lane as u32, ncpu);
            let handle = std::thread::Builder::new()
                .name(format!("fastio-thr-{lane}"))
                .spawn(move || Worker::run(shared, lane as u32, epfd, cpu))?;
            backend.workers.push(handle);
        }
        Ok(backend)
    }

    /// Per-lane counters.
    #[cfg(test)]
    pub(crate) fn stats(&self, lane: usize) -> &LaneStats {
        &self.shared.stats[lane]
    }
}

impl Drop for ThreadsBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for lane in 0..self.workers.len() {
            let _ = self.shared.wake_lane(lane);
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Backend for ThreadsBackend {
    fn lanes(&self) -> u32 {
        self.rings.lanes()
    }

    fn lane_capacity(&self) -> u32 {
        self.rings.lane_capacity()
    }

    fn register(&mut self, slot: u32, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.shared.files.insert(slot, FileRef::dup(fd)?)
    }

    fn unregister(&mut self, slot: u32) -> io::Result<()> {
        self.shared
            .files
            .remove(slot)
            .map(drop)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn install_fd(&mut self, slot: u32) -> io::Result<OwnedFd> {
        self.shared
            .files
            .get(slot)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?
            .duplicate()
    }

    fn push(&mut self, lane: u32, sqe: &Sqe) -> bool {
        self.rings.push(lane, sqe)
    }

    fn submit(&mut self) -> io::Result<()> {
        for lane in self.rings.publish().iter() {
            self.shared.wake_lane(lane)?;
        }
        Ok(())
    }

    fn reap(&mut self, f: &mut dyn FnMut(Cqe)) -> usize {
        self.rings.reap(f)
    }

    fn wait(&mut self, min: u32, timeout: Option<Duration>) -> io::Result<()> {
        if self.rings.cq_ready() >= min {
            return Ok(());
        }
        let shared = &*self.shared;
        let deadline = timeout.map(|t| Instant::now() + t);
        shared.cq_waiters.fetch_add(1, Ordering::SeqCst);
        // Pairs with the workers' fence in `notify_completions`.
        fence(Ordering::SeqCst);
        let result = loop {
            // Reset first, then look: a completion posted after the look signals anew.
            drain_eventfd(&shared.cq_event);
            if self.rings.cq_ready() >= min {
                break Ok(());
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break Ok(()),
                },
            };
            if let Err(e) = poll_in(&shared.cq_event, left) {
                // EINTR is ErrorKind::Interrupted.
                break Err(e);
            }
        };
        shared.cq_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn cancel_all(&mut self) -> io::Result<bool> {
        // Requests submitted before this are visible to a worker that sees the new epoch
        // (release/acquire on the epoch), so it cancels them too if they get parked.
        self.shared.cancel_epoch.fetch_add(1, Ordering::SeqCst);
        for lane in 0..self.workers.len() {
            self.shared.wake_lane(lane)?;
        }
        Ok(true)
    }

    fn lane_asleep(&self, lane: u32) -> Option<bool> {
        self.rings.lane_asleep(lane)
    }
}

/// Sleeps until `fd` is readable, `timeout` passes (Ok either way) or a signal arrives
/// (`Interrupted`).
fn poll_in(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: one valid pollfd; the timespec (if any) lives across the call; no sigmask.
    let r = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Worker
// ---------------------------------------------------------------------------------------

/// A request waiting for readiness.
struct Parked {
    op: Op,
    user_data: u64,
}

/// The requests parked on one file, per direction, in submission order, and the file's
/// epoll registration.
struct FileWait {
    /// The file: its reference keeps the descriptor number registered in epoll ours
    /// until the registration is deleted.
    file: Arc<FileRef>,
    read: VecDeque<Parked>,
    write: VecDeque<Parked>,
    /// Whether `file` is registered in the worker's epoll instance.
    registered: bool,
}

impl FileWait {
    fn new(file: Arc<FileRef>) -> Self {
        FileWait {
            file,
            read: VecDeque::new(),
            write: VecDeque::new(),
            registered: false,
        }
    }
    fn queue(&mut self, dir: Direction) -> &mut VecDeque<Parked> {
        match dir {
            Direction::Out => &mut self.write,
            _ => &mut self.read,
        }
    }
    fn is_empty(&self) -> bool {
        self.read.is_empty() && self.write.is_empty()
    }
    fn events(&self) -> u32 {
        let mut ev = libc::EPOLLONESHOT as u32;
        if !self.read.is_empty() {
            ev |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if !self.write.is_empty() {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }
}

/// The identity of a registered file: the address of its `FileRef`, unique while any
/// reference to it lives. Used as the key of the wait table and as the epoll token
/// (never [`WAKE_TOKEN`]: the address of a live allocation is not `u64::MAX`).
fn file_key(file: &Arc<FileRef>) -> u64 {
    Arc::as_ptr(file) as usize as u64
}

/// Marks the eventfd in epoll events.
const WAKE_TOKEN: u64 = u64::MAX;

/// Whether a request asked not to wait for readiness (`MSG_DONTWAIT` in RECV or SEND).
fn dont_wait(op: &Op) -> bool {
    match *op {
        Op::Recv { flags, .. } | Op::Send { flags, .. } => flags & MSG_DONTWAIT != 0,
        _ => false,
    }
}

struct Worker {
    shared: Arc<Shared>,
    lane: usize,
    // Declared (so dropped) before `waits`: closing the epoll instance removes every
    // registration before the files behind them are released.
    epfd: OwnedFd,
    cq: CqProducer,
    backlog: VecDeque<Cqe>,
    /// File identity ([`file_key`]) -> what waits on that file.
    waits: HashMap<u64, FileWait>,
    /// The last `cancel_epoch` acted on.
    cancel_seen: u32,
    posted: bool,
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Converts a syscall's return value to a CQE result.
fn res(r: isize) -> i32 {
    if r < 0 {
        -last_errno()
    } else {
        r as i32
    }
}

impl Worker {
    fn run(shared: Arc<Shared>, lane: u32, epfd: OwnedFd, cpu: Option<usize>) {
        block_sigpipe();
        if let Some(cpu) = cpu {
            pin_to_cpu(cpu);
        }
        let ring = shared.mem.lane(lane);
        let mut worker = Worker {
            lane: lane as usize,
            cq: ring.cq_producer(),
            backlog: VecDeque::new(),
            waits: HashMap::new(),
            cancel_seen: shared.cancel_epoch.load(Ordering::Acquire),
            posted: false,
            epfd,
            shared,
        };
        worker.main_loop(ring.sq_consumer());
    }

    fn main_loop(&mut self, mut sq: SqConsumer) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut last_work = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let mut progress = false;
            // Read before draining the SQ: every request submitted before a `cancel_all`
            // that we see here is popped below, so it is cancelled too if it parks.
            let epoch = self.shared.cancel_epoch.load(Ordering::Acquire);
            while let Some(sqe) = sq.pop() {
                self.execute(&sqe);
                progress = true;
            }
            if epoch != self.cancel_seen {
                self.cancel_seen = epoch;
                self.cancel_parked();
                progress = true;
            }
            if !self.waits.is_empty() && self.poll_events(&mut events, 0) > 0 {
                progress = true;
            }
            if !self.backlog.is_empty() {
                self.flush_backlog();
            }
            if self.posted {
                self.posted = false;
                self.shared.notify_completions();
            }
            if progress {
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < self.shared.idle {
                // Give the CPU to any runnable task (on a 2-core box it is often the
                // very thread we serve), then look again.
                std::thread::yield_now();
                continue;
            }
            if !sq.prepare_sleep() {
                continue;
            }
            self.shared.stats[self.lane]
                .sleeps
                .fetch_add(1, Ordering::Relaxed);
            // With a backlog, poll the CQ every millisecond until userspace makes room.
            let timeout = if self.backlog.is_empty() { -1 } else { 1 };
            self.poll_events(&mut events, timeout);
            sq.finish_sleep();
            last_work = Instant::now();
        }
    }

    /// Waits up to `timeout_ms` for readiness or a wakeup and handles it. Returns the
    /// number of parked-file events handled.
    fn poll_events(&mut self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        // SAFETY: events is a valid writable array of its length.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n <= 0 {
            return 0;
        }
        let mut handled = 0;
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == WAKE_TOKEN {
                drain_eventfd(&self.shared.wake[self.lane]);
            } else {
                self.on_ready(token);
                handled += 1;
            }
        }
        handled
    }

    fn execute(&mut self, sqe: &Sqe) {
        let user_data = sqe.user_data;
        let op = match decode(sqe, self.shared.max_files) {
            Ok(op) => op,
            Err(e) => return self.complete(user_data, -e.errno()),
        };
        match op {
            Op::Nop => self.complete(user_data, 0),
            Op::Close { slot } => {
                let r = self.close_slot(slot);
                self.complete(user_data, r)
            }
            _ => {
                let slot = op.slot().unwrap_or(0);
                let Some(file) = self.shared.files.get(slot) else {
                    return self.complete(user_data, -libc::EBADF);
                };
                let dir = op.direction();
                let dont_wait = dont_wait(&op);
                let queued_behind = self
                    .waits
                    .get_mut(&file_key(&file))
                    .is_some_and(|w| !w.queue(dir).is_empty());
                if queued_behind {
                    // Older requests of this direction wait for readiness, so this one
                    // would block too; issuing it now would reorder the stream.
                    if dont_wait {
                        return self.complete(user_data, -libc::EAGAIN);
                    }
                    return self.park(file, Parked { op, user_data });
                }
                match self.issue(&op, &file) {
                    r if r == -libc::EAGAIN && file.pollable && !dont_wait => {
                        self.park(file, Parked { op, user_data })
                    }
                    r => self.complete(user_data, r),
                }
            }
        }
    }
    /// Issues `op` once, without blocking.
    fn issue(&self, op: &Op, file: &FileRef) -> i32 {
        let fd = file.raw();
        // SAFETY (all calls below): the buffers and iovecs are user memory that the
        // submitter promised (through the proactor's ownership rules or an unsafe raw
        // submission) to keep valid until the completion; the kernel checks the access
        // and reports EFAULT for bad addresses.
        match *op {
            Op::Accept { dest, .. } => {
                let r = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    )
                };
                if r < 0 {
                    return -last_errno();
                }
                // SAFETY: r is a fresh descriptor nobody else owns.
                let new = unsafe { OwnedFd::from_raw_fd(r) };
                match FileRef::adopt(new).and_then(|f| self.shared.files.insert(dest, f)) {
                    Ok(()) => dest as i32,
                    Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                }
            }
            Op::Recv {
                addr, len, flags, ..
            } => res(unsafe {
                libc::recv(
                    fd,
                    addr as *mut libc::c_void,
                    len as usize,
                    flags as i32 | libc::MSG_DONTWAIT,
                )
            }),
            Op::Send {
                addr, len, flags, ..
            } => res(unsafe {
                libc::send(
                    fd,
                    addr as *const libc::c_void,
                    len as usize,
                    flags as i32 | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            }),
            Op::Read { addr, len, off, .. } => res(unsafe {
                if off == OFF_CURRENT {
                    libc::read(fd, addr as *mut libc::c_void, len as usize)
                } else {
                    libc::pread(fd, addr as *mut libc::c_void, len as usize, off as i64)
                }
            }),
            Op::Write { addr, len, off, .. } => res(unsafe {
                if off == OFF_CURRENT {
                    libc::write(fd, addr as *const libc::c_void, len as usize)
                } else {
                    libc::pwrite(fd, addr as *const libc::c_void, len as usize, off as i64)
                }
            }),
            Op::Writev {
                iov, count, off, ..
            } => {
                let iov = iov as *const libc::iovec;
                const _: () =
                    assert!(std::mem::size_of::<IoVec>() == std::mem::size_of::<libc::iovec>());
                res(unsafe {
                    if off == OFF_CURRENT {
                        libc::writev(fd, iov, count as i32)
                    } else {
                        libc::pwritev(fd, iov, count as i32, off as i64)
                    }
                })
            }
            Op::Nop | Op::Close { .. } => 0,
        }
    }

    fn park(&mut self, file: Arc<FileRef>, parked: Parked) {
        self.shared.stats[self.lane]
            .parked
            .fetch_add(1, Ordering::Relaxed);
        let dir = parked.op.direction();
        let key = file_key(&file);
        self.waits
            .entry(key)
            .or_insert_with(|| FileWait::new(file))
            .queue(dir)
            .push_back(parked);
        self.arm(key);
    }

    /// (Re-)arms the one-shot epoll registration of the file `key` for what its queues
    /// need.
    fn arm(&mut self, key: u64) {
        let Some(wait) = self.waits.get(&key) else {
            return;
        };
        let (fd, events) = (wait.file.raw(), wait.events());
        // The wait holds the file, so `fd` is that file's descriptor for as long as it is
        // registered: a registration is only ever for the file that holds it.
        let result = if wait.registered {
            match self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, events, key) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, events, key)
                }
                r => r,
            }
        } else {
            match self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, events, key) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, events, key)
                }
                r => r,
            }
        };
        match result {
            Ok(()) => {
                if let Some(w) = self.waits.get_mut(&key) {
                    w.registered = true;
                }
            }
            Err(e) => {
                // The file cannot be polled after all: fail its waiting requests.
                let err = -e.raw_os_error().unwrap_or(libc::EIO);
                if let Some(w) = self.waits.remove(&key) {
                    self.finish_wait(w, err);
                }
            }
        }
    }

    /// Re-issues the parked requests of the file `key`, oldest first, per direction,
    /// until one would still block.
    fn on_ready(&mut self, key: u64) {
        let Some(mut wait) = self.waits.remove(&key) else {
            return;
        };
        let file = Arc::clone(&wait.file);
        for dir in [Direction::In, Direction::Out] {
            while let Some(p) = wait.queue(dir).front() {
                let r = self.issue(&p.op, &file);
                if r == -libc::EAGAIN {
                    break;
                }
                let p = wait.queue(dir).pop_front().expect("front exists");
                self.complete(p.user_data, r);
            }
        }
        if wait.is_empty() {
            // Nothing waits on the file any more: drop its registration (before the
            // wait's file reference, maybe the last one, goes).
            self.unregister_wait(&wait);
        } else {
            self.waits.insert(key, wait);
            self.arm(key);
        }
    }

    /// Deletes the epoll registration of `wait`'s file, if any. Must run before the
    /// wait's file reference is dropped.
    fn unregister_wait(&self, wait: &FileWait) {
        if wait.registered {
            let _ = self.epoll_ctl(libc::EPOLL_CTL_DEL, wait.file.raw(), 0, 0);
        }
    }

    /// Completes every request parked in `wait` with `res` and releases the wait
    /// (registration first, then its file reference).
    fn finish_wait(&mut self, wait: FileWait, res: i32) {
        self.unregister_wait(&wait);
        let FileWait {
            file, read, write, ..
        } = wait;
        for p in read.into_iter().chain(write) {
            self.complete(p.user_data, res);
        }
        drop(file);
    }

    /// CLOSE: cancels the requests parked on the file in `slot`, then releases the slot.
    fn close_slot(&mut self, slot: u32) -> i32 {
        let Some(file) = self.shared.files.remove(slot) else {
            return -libc::EBADF;
        };
        if let Some(w) = self.waits.remove(&file_key(&file)) {
            self.finish_wait(w, -libc::ECANCELED);
        }
        drop(file);
        0
    }

    /// `cancel_all`: completes every parked request with `-ECANCELED`.
    fn cancel_parked(&mut self) {
        for (_, w) in std::mem::take(&mut self.waits) {
            self.finish_wait(w, -libc::ECANCELED);
        }
    }

    fn complete(&mut self, user_data: u64, res: i32) {
        let cqe = Cqe {
            user_data,
            res,
            flags: 0,
        };
        if !self.backlog.is_empty() || !self.cq.push(cqe) {
            self.backlog.push_back(cqe);
        }
        self.posted = true;
    }

    fn flush_backlog(&mut self) {
        while let Some(&cqe) = self.backlog.front() {
            if !self.cq.push(cqe) {
                break;
            }
            self.backlog.pop_front();
            self.posted = true;
        }
    }

    fn epoll_ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        epoll_ctl(&self.epfd, op, fd, events, token)
    }
}

fn epoll_ctl(epfd: &OwnedFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: epoll_ctl on an epoll fd we own with a valid event struct.
    if unsafe { libc::epoll_ctl(epfd.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and then owned.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A write to a closed pipe or socket must give EPIPE, not kill the process.
fn block_sigpipe() {
    // SAFETY: manipulating this thread's own signal mask with a properly initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn pin_to_cpu(cpu: usize) {
    if let Err(e) = super::pin_current_thread(cpu) {
        eprintln!("fastio: cannot pin worker to CPU {cpu}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendKind;
    use std::os::fd::AsFd;

    /// Bypassing the proactor's in-flight limit, 10x the CQ size of NOPs is pushed while
    /// nobody reaps: the worker holds what does not fit in a backlog and every
    /// completion arrives exactly once.
    #[test]
    fn overfilled_cq_drops_nothing() {
        let cfg = Config {
            backend: BackendKind::Threads,
            sq_entries: 16,
            cq_entries: 16,
            idle_ms: 1,
            ..Config::default()
        };
        let mut b = ThreadsBackend::open(&cfg).unwrap();
        let total = 160u64;
        let mut seen = vec![0u32; total as usize];
        let mut pushed = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.contains(&0) {
            assert!(Instant::now() < deadline, "completions lost");
            while pushed < total {
                let sqe = Sqe {
                    user_data: pushed,
                    ..Sqe::ZERO
                };
                if !b.push(0, &sqe) {
                    break;
                }
                pushed += 1;
            }
            b.submit().unwrap();
            // Let the worker overfill: wait for a full CQ before reaping.
            b.wait(16, Some(Duration::from_millis(50))).unwrap();
            b.reap(&mut |c| seen[c.user_data as usize] += 1);
        }
        assert!(seen.iter().all(|&n| n == 1), "a completion came twice");
        assert!(b.stats(0).sleeps.load(Ordering::Relaxed) > 0 || pushed == total);
    }

    /// A RECV that would block is parked on epoll (not retried in a loop) and completes
    /// once data arrives.
    #[test]
    fn would_block_parks_on_readiness() {
        use std::io::Write;
        let cfg = Config {
            backend: BackendKind::Threads,
            idle_ms: 1,
            ..Config::default()
        };
        let mut b = ThreadsBackend::open(&cfg).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        b.register(3, s.as_fd()).unwrap();
        let mut buf = [0u8; 4];
        let sqe = Sqe {
            opcode: fastio_uapi::OP_RECV,
            slot: 3,
            addr: buf.as_mut_ptr() as u64,
            len: 4,
            user_data: 9,
            ..Sqe::ZERO
        };
        assert!(b.push(0, &sqe));
        b.submit().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(b.stats(0).parked.load(Ordering::Relaxed), 1, "parked once");
        assert_eq!(b.reap(&mut |_| panic!("nothing to complete yet")), 0);
        c.write_all(b"ping").unwrap();
        b.wait(1, Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![];
        b.reap(&mut |c| got.push((c.user_data, c.res)));
        assert_eq!(got, vec![(9, 4)]);
        assert_eq!(&buf, b"ping");
        assert_eq!(
            b.stats(0).parked.load(Ordering::Relaxed),
            1,
            "no busy retry"
        );
    }

    fn tcp_pair() -> (
        std::net::TcpListener,
        std::net::TcpStream,
        std::net::TcpStream,
    ) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (l, c, s)
    }

    fn recv_sqe(slot: u32, buf: &mut [u8], user_data: u64) -> Sqe {
        Sqe {
            opcode: fastio_uapi::OP_RECV,
            slot,
            addr: buf.as_mut_ptr() as u64,
            len: buf.len() as u32,
            user_data,
            ..Sqe::ZERO
        }
    }

    /// Waits until lane 0 has parked `n` requests in all.
    fn wait_parked(b: &ThreadsBackend, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.stats(0).parked.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "request {n} never parked");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits (up to 2 s) for the completion of `user_data`; other completions go to
    /// `seen`.
    fn completion(b: &mut ThreadsBackend, user_data: u64, seen: &mut Vec<Cqe>) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(i) = seen.iter().position(|c| c.user_data == user_data) {
                return Some(seen.remove(i).res);
            }
            if Instant::now() >= deadline {
                return None;
            }
            b.wait(1, Some(Duration::from_millis(50))).unwrap();
            b.reap(&mut |c| seen.push(c));
        }
    }

    fn threads_config() -> Config {
        Config {
            backend: BackendKind::Threads,
            idle_ms: 1,
            ..Config::default()
        }
    }

    /// A slot emptied while a RECV waits on its file and then filled with another file:
    /// the new file's RECV does not queue behind the old file's (waits are per file).
    #[test]
    fn reused_slot_does_not_queue_behind_the_old_file() {
        use std::io::Write;
        let mut b = ThreadsBackend::open(&threads_config()).unwrap();
        let (_la, mut ca, sa) = tcp_pair();
        let (_lb, mut cb, sb) = tcp_pair();
        let (mut bufa, mut bufb) = ([0u8; 8], [0u8; 8]);
        b.register(3, sa.as_fd()).unwrap();
        assert!(b.push(0, &recv_sqe(3, &mut bufa, 1)));
        b.submit().unwrap();
        wait_parked(&b, 1);
        b.unregister(3).unwrap();
        b.register(3, sb.as_fd()).unwrap();
        assert!(b.push(0, &recv_sqe(3, &mut bufb, 2)));
        b.submit().unwrap();
        cb.write_all(b"bb").unwrap();
        let mut seen = vec![];
        assert_eq!(completion(&mut b, 2, &mut seen), Some(2), "stuck behind A");
        ca.write_all(b"aaa").unwrap();
        assert_eq!(completion(&mut b, 1, &mut seen), Some(3));
        assert_eq!((&bufa[..3], &bufb[..2]), (&b"aaa"[..], &b"bb"[..]));
    }

    /// An epoll registration left behind for a slot must never be deleted on behalf of
    /// that slot once its descriptor number belongs to another file: here slot 3's old
    /// descriptor number is reused by slot 5's file, then slot 3 parks a request on a
    /// new file, and slot 5's parked RECV must still be woken.
    #[test]
    fn stale_registration_never_deletes_another_files() {
        use std::io::Write;
        let mut b = ThreadsBackend::open(&threads_config()).unwrap();
        let mut seen = vec![];
        let (_la, mut ca, sa) = tcp_pair();
        let (_lb, mut cb, sb) = tcp_pair();
        let (_lc, mut cc, sc) = tcp_pair();
        let mut bufs = [[0u8; 8]; 3];
        let [bufa, bufb, bufc] = &mut bufs;
        // Descriptor numbers far above what the other (concurrent) tests use, so that
        // A's number is reliably free for C once A is gone.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a valid struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        let high = (lim.rlim_cur.min(1 << 20) as i32 - 48).max(64);
        let dup_at_least = |fd: BorrowedFd<'_>, min: i32| {
            // SAFETY: F_DUPFD_CLOEXEC of a live descriptor; the result is checked and owned.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
            assert!(r >= 0, "{}", io::Error::last_os_error());
            // SAFETY: r is a fresh descriptor nobody else owns.
            FileRef::adopt(unsafe { OwnedFd::from_raw_fd(r) }).unwrap()
        };
        b.shared
            .files
            .insert(3, dup_at_least(sa.as_fd(), high))
            .unwrap();
        let fd_a = b.shared.files.get(3).unwrap().raw();
        assert!(b.push(0, &recv_sqe(3, bufa, 1)));
        b.submit().unwrap();
        wait_parked(&b, 1);
        ca.write_all(b"a").unwrap();
        assert_eq!(completion(&mut b, 1, &mut seen), Some(1));
        b.unregister(3).unwrap();
        // Slot 5 gets file C under A's old descriptor number.
        b.shared
            .files
            .insert(5, dup_at_least(sc.as_fd(), fd_a))
            .unwrap();
        assert_eq!(
            b.shared.files.get(5).unwrap().raw(),
            fd_a,
            "number not reused"
        );
        assert!(b.push(0, &recv_sqe(5, bufc, 2)));
        b.submit().unwrap();
        wait_parked(&b, 2);
        b.register(3, sb.as_fd()).unwrap();
        assert!(b.push(0, &recv_sqe(3, bufb, 3)));
        b.submit().unwrap();
        wait_parked(&b, 3);
        cc.write_all(b"cc").unwrap();
        assert_eq!(
            completion(&mut b, 2, &mut seen),
            Some(2),
            "slot 5's registration was deleted"
        );
        cb.write_all(b"bbb").unwrap();
        assert_eq!(completion(&mut b, 3, &mut seen), Some(3));
    }

    /// `cancel_all` completes parked requests with -ECANCELED at once.
    #[test]
    fn cancel_all_completes_parked_requests() {
        let mut b = ThreadsBackend::open(&threads_config()).unwrap();
        let (_l, _c, s) = tcp_pair();
        let mut buf = [0u8; 8];
        b.register(1, s.as_fd()).unwrap();
        assert!(b.push(0, &recv_sqe(1, &mut buf, 4)));
        b.submit().unwrap();
        wait_parked(&b, 1);
        assert!(b.cancel_all().unwrap());
        let mut seen = vec![];
        assert_eq!(completion(&mut b, 4, &mut seen), Some(-libc::ECANCELED));
    }

    /// A RECV or SEND with an explicit MSG_DONTWAIT is never parked.
    #[test]
    fn msg_dontwait_is_not_parked() {
        let mut b = ThreadsBackend::open(&threads_config()).unwrap();
        let (_l, _c, s) = tcp_pair();
        let mut buf = [0u8; 8];
        b.register(1, s.as_fd()).unwrap();
        let mut sqe = recv_sqe(1, &mut buf, 5);
        sqe.op_flags = fastio_uapi::MSG_DONTWAIT;
        assert!(b.push(0, &sqe));
        b.submit().unwrap();
        let mut seen = vec![];
        assert_eq!(completion(&mut b, 5, &mut seen), Some(-libc::EAGAIN));
        assert_eq!(b.stats(0).parked.load(Ordering::SeqCst), 0);
    }

    const EPOLL_CHILD: &str = "FASTIO_TEST_EPOLL_CHILD";

    /// When a lane cannot get its epoll instance, `open` fails (instead of succeeding
    /// with a worker that died at startup). Runs in a child process whose descriptor
    /// limit leaves room for the eventfds and a single epoll instance.
    #[test]
    fn open_fails_when_a_lane_cannot_get_its_epoll() {
        const NAME: &str = "backend::threads::tests::open_fails_when_a_lane_cannot_get_its_epoll";
        if std::env::var_os(EPOLL_CHILD).is_some() {
            let lanes = 4u64;
            let open: std::collections::HashSet<u64> = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            // Free descriptor numbers below the limit: the wake eventfds and one epoll.
            let mut free = 0;
            let mut limit = 0u64;
            while free < lanes + 1 {
                // The directory's own descriptor is in `open` but closed again by now.
                if !open.contains(&limit)
                    || std::fs::metadata(format!("/proc/self/fd/{limit}")).is_err()
                {
                    free += 1;
                }
                limit += 1;
            }
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit with a valid struct, in this child process only.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
            let cfg = Config {
                max_ker_worker: lanes as u32,
                ..threads_config()
            };
            let e = ThreadsBackend::open(&cfg)
                .err()
                .expect("open succeeded with a lane that has no epoll instance");
            assert!(e.to_string().contains("epoll"), "{e}");
            println!("CHILD-OK: {e}");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(EPOLL_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
