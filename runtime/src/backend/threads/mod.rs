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

mod bufs;
mod sys;
#[cfg(test)]
mod tests;
mod worker;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastio_uapi::{Cqe, Sqe};

use self::sys::{drain_eventfd, epoll_create, epoll_ctl, eventfd, poll_in, signal_eventfd};
use self::worker::{Worker, WAKE_TOKEN};
use super::files::{FileRef, FileTable};
use super::rings::RingSide;
use super::Backend;
use crate::config::Config;
use crate::ring::{Geometry, RingMemory};

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
    /// Provided-buffer groups.
    groups: bufs::Groups,
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
            groups: bufs::Groups::default(),
        });
        let mut backend = ThreadsBackend {
            // SAFETY: `mem` is fresh; this is its only userspace side.
            rings: unsafe { RingSide::new(&mem) },
            shared,
            workers: Vec::with_capacity(nlanes),
        };
        let cpus = super::allowed_cpus();
        for (lane, epfd) in epfds.into_iter().enumerate() {
            let shared = Arc::clone(&backend.shared);
            let cpu = super::pinned_cpu(config.affinity_offset, lane as u32, &cpus);
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

    unsafe fn register_buffers(
        &mut self,
        group: u16,
        bufs: *mut u8,
        buf_size: u32,
        count: u32,
    ) -> io::Result<()> {
        if count == 0 || count > fastio_uapi::MAX_PBUF_ENTRIES || buf_size == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if !self
            .shared
            .groups
            .insert(group, bufs::Group::new(bufs, buf_size, count))
        {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok(())
    }

    fn provide_buffer(&mut self, group: u16, id: u16) {
        if let Some(g) = self.shared.groups.get(group) {
            g.give(id);
        }
    }

    fn unregister_buffers(&mut self, group: u16) -> io::Result<()> {
        if self.shared.groups.remove(group) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOENT))
        }
    }
}
