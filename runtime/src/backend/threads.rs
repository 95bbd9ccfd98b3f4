//! The `threads` backend: polling worker threads in this process execute the rings
//! with ordinary syscalls, exactly as the kernel workers of `fastio.ko` do.
//!
//! Each lane has one worker thread (`fastio-thr-<lane>`), which
//! - drains its SQ, reading each SQE once into a private copy and validating it with
//!   [`fastio_uapi::decode`], the same function the kernel module uses;
//! - issues each request without blocking; a socket or pipe that answers `EAGAIN` gets
//!   the request *parked*: armed one-shot on the worker's epoll instance and re-issued
//!   when the file becomes ready (no busy retry, no thread per connection). Later
//!   requests of the same direction on that slot queue behind it, so order is kept;
//! - spins (yielding the CPU to any runnable task) for `idle_ms` after its last piece of
//!   work, then sets `SQ_NEED_WAKEUP`, re-checks the SQ, and sleeps in `epoll_wait` until
//!   `ENTER(SQ_WAKEUP)` (an eventfd) or a parked file becomes ready;
//! - posts completions to its CQ; if userspace overfilled it, completions wait in a
//!   backlog: none is ever dropped.
//!
//! Regular files are read and written inline by the worker (the kernel module hands
//! uncached ones to a workqueue instead).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastio_uapi::{decode, Cqe, Direction, IoVec, Op, Sqe, OFF_CURRENT};

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
    /// `ENTER(GETEVENTS)`: the waiter sleeps on `cq_cv`; workers notify when it is set.
    cq_waiters: AtomicU32,
    cq_lock: Mutex<()>,
    cq_cv: Condvar,
    stats: Vec<LaneStats>,
}

impl Shared {
    /// Called by a worker after posting completions.
    fn notify_completions(&self) {
        // Pairs with the waiter's SeqCst increment of `cq_waiters` before it re-checks
        // the CQ tails: either we see the waiter or it sees our tail.
        fence(Ordering::SeqCst);
        if self.cq_waiters.load(Ordering::Relaxed) != 0 {
            let _g = self.cq_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cq_cv.notify_all();
        }
    }

    fn wake_lane(&self, lane: usize) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
        let r = unsafe { libc::write(self.wake[lane].as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r == 8 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            // A saturated eventfd counter means a wakeup is pending anyway.
            if e.raw_os_error() == Some(libc::EAGAIN) {
                Ok(())
            } else {
                Err(e)
            }
        }
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

impl ThreadsBackend {
    /// Maps the rings and starts one worker per lane.
    pub(crate) fn open(config: &Config) -> io::Result<Self> {
        let geometry = Geometry::new(config.max_ker_worker, config.sq_entries, config.cq_entries)?;
        let mem = RingMemory::anonymous(geometry)?;
        let nlanes = geometry.lanes as usize;
        let shared = Arc::new(Shared {
            mem: Arc::clone(&mem),
            files: FileTable::new(config.max_files),
            max_files: config.max_files,
            stop: AtomicBool::new(false),
            idle: Duration::from_millis(config.idle_ms as u64),
            wake: (0..nlanes).map(|_| eventfd()).collect::<io::Result<_>>()?,
            cq_waiters: AtomicU32::new(0),
            cq_lock: Mutex::new(()),
            cq_cv: Condvar::new(),
            stats: (0..nlanes).map(|_| LaneStats::default()).collect(),
        });
        let mut backend = ThreadsBackend {
            rings: RingSide::new(&mem),
            shared,
            workers: Vec::with_capacity(nlanes),
        };
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        for lane in 0..geometry.lanes {
            let shared = Arc::clone(&backend.shared);
            let cpu = config
                .affinity_offset
                .map(|off| (off as usize + lane as usize) % ncpu);
            let handle = std::thread::Builder::new()
                .name(format!("fastio-thr-{lane}"))
                .spawn(move || Worker::run(shared, lane, cpu))?;
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
        let shared = &*self.shared;
        if self.rings.cq_ready() >= min {
            return Ok(());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        shared.cq_waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = shared.cq_lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.rings.cq_ready() < min {
            match deadline {
                None => guard = shared.cq_cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    guard = shared
                        .cq_cv
                        .wait_timeout(guard, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        drop(guard);
        shared.cq_waiters.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    fn cancel_all(&mut self) -> io::Result<()> {
        // Workers finish what they run and drop parked requests when they stop (Drop),
        // which happens before the proactor frees any buffer.
        Ok(())
    }

    fn lane_asleep(&self, lane: u32) -> Option<bool> {
        self.rings.lane_asleep(lane)
    }
}

// ---------------------------------------------------------------------------------------
// Worker
// ---------------------------------------------------------------------------------------

/// A request waiting for readiness, with the file it keeps open.
struct Parked {
    op: Op,
    user_data: u64,
    file: Arc<FileRef>,
}

/// Requests parked on one slot, per direction, in submission order.
#[derive(Default)]
struct SlotWait {
    read: VecDeque<Parked>,
    write: VecDeque<Parked>,
}

impl SlotWait {
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
    /// The file to poll: the one the oldest request holds.
    fn file(&self) -> Option<&Arc<FileRef>> {
        self.read.front().or(self.write.front()).map(|p| &p.file)
    }
}

/// Marks the eventfd in epoll events.
const WAKE_TOKEN: u64 = u64::MAX;

struct Worker {
    shared: Arc<Shared>,
    lane: usize,
    epfd: OwnedFd,
    cq: CqProducer,
    backlog: VecDeque<Cqe>,
    waits: HashMap<u32, SlotWait>,
    /// slot -> descriptor currently registered in `epfd` for it.
    armed: HashMap<u32, RawFd>,
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
    fn run(shared: Arc<Shared>, lane: u32, cpu: Option<usize>) {
        block_sigpipe();
        if let Some(cpu) = cpu {
            pin_to_cpu(cpu);
        }
        let epfd = match epoll_create() {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("fastio: worker {lane}: epoll_create failed: {e}");
                return;
            }
        };
        let ring = shared.mem.lane(lane);
        let mut worker = Worker {
            lane: lane as usize,
            cq: ring.cq_producer(),
            backlog: VecDeque::new(),
            waits: HashMap::new(),
            armed: HashMap::new(),
            posted: false,
            epfd,
            shared,
        };
        if let Err(e) = worker.epoll_ctl(
            libc::EPOLL_CTL_ADD,
            worker.shared.wake[lane as usize].as_raw_fd(),
            libc::EPOLLIN as u32,
            WAKE_TOKEN,
        ) {
            eprintln!("fastio: worker {lane}: cannot watch its wake eventfd: {e}");
            return;
        }
        worker.main_loop(ring.sq_consumer());
    }

    fn main_loop(&mut self, mut sq: SqConsumer) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut last_work = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            let mut progress = false;
            while let Some(sqe) = sq.pop() {
                self.execute(&sqe);
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
                let mut buf = 0u64;
                // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
                unsafe {
                    libc::read(
                        self.shared.wake[self.lane].as_raw_fd(),
                        (&mut buf as *mut u64).cast(),
                        8,
                    )
                };
            } else {
                self.on_ready(token as u32);
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
                let queued_behind = self
                    .waits
                    .get_mut(&slot)
                    .is_some_and(|w| !w.queue(dir).is_empty());
                if queued_behind {
                    return self.park(
                        slot,
                        Parked {
                            op,
                            user_data,
                            file,
                        },
                    );
                }
                match self.issue(&op, &file) {
                    r if r == -libc::EAGAIN && file.pollable => self.park(
                        slot,
                        Parked {
                            op,
                            user_data,
                            file,
                        },
                    ),
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

    fn park(&mut self, slot: u32, parked: Parked) {
        self.shared.stats[self.lane]
            .parked
            .fetch_add(1, Ordering::Relaxed);
        let dir = parked.op.direction();
        self.waits
            .entry(slot)
            .or_default()
            .queue(dir)
            .push_back(parked);
        self.arm(slot);
    }

    /// (Re-)arms the one-shot epoll registration of `slot` for what its queues need.
    fn arm(&mut self, slot: u32) {
        let Some(wait) = self.waits.get(&slot) else {
            return;
        };
        let Some(file) = wait.file() else { return };
        let (fd, events) = (file.raw(), wait.events());
        let result = match self.armed.get(&slot) {
            Some(&cur) if cur == fd => {
                match self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, events, slot as u64) {
                    // The registration vanished with a closed file: add it afresh.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, events, slot as u64)
                    }
                    r => r,
                }
            }
            other => {
                if let Some(&old) = other {
                    let _ = self.epoll_ctl(libc::EPOLL_CTL_DEL, old, 0, 0);
                }
                match self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, events, slot as u64) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, events, slot as u64)
                    }
                    r => r,
                }
            }
        };
        match result {
            Ok(()) => {
                self.armed.insert(slot, fd);
            }
            Err(e) => {
                // The file cannot be polled after all: fail its waiting requests.
                self.armed.remove(&slot);
                let err = -e.raw_os_error().unwrap_or(libc::EIO);
                if let Some(w) = self.waits.remove(&slot) {
                    for p in w.read.into_iter().chain(w.write) {
                        self.complete(p.user_data, err);
                    }
                }
            }
        }
    }

    /// Re-issues the parked requests of `slot`, oldest first, per direction, until one
    /// would still block.
    fn on_ready(&mut self, slot: u32) {
        let Some(mut wait) = self.waits.remove(&slot) else {
            return;
        };
        for dir in [Direction::In, Direction::Out] {
            while let Some(p) = wait.queue(dir).front() {
                let r = self.issue(&p.op, &p.file);
                if r == -libc::EAGAIN {
                    break;
                }
                let p = wait.queue(dir).pop_front().expect("front exists");
                self.complete(p.user_data, r);
            }
        }
        if !wait.is_empty() {
            self.waits.insert(slot, wait);
            self.arm(slot);
        }
    }

    /// CLOSE: cancels the slot's parked requests, then releases the slot.
    fn close_slot(&mut self, slot: u32) -> i32 {
        if let Some(w) = self.waits.remove(&slot) {
            for p in w.read.into_iter().chain(w.write) {
                self.complete(p.user_data, -libc::ECANCELED);
            }
        }
        if let Some(fd) = self.armed.remove(&slot) {
            let _ = self.epoll_ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
        }
        match self.shared.files.remove(slot) {
            Some(_) => 0,
            None => -libc::EBADF,
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
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: epoll_ctl on our epoll fd with a valid event struct.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
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
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it (cpu < CPU_SETSIZE is
    // guaranteed by the modulo over online CPUs); sched_setaffinity(0) pins this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "fastio: cannot pin worker to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
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
}
