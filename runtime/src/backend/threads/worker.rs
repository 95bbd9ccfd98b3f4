//! A lane's worker thread: drains the SQ, issues each request without blocking, parks
//! what would block on the lane's epoll instance, and posts completions.
//!
//! Regular-file calls (READ/WRITE of files, OPENAT, FSYNC, FALLOCATE) block the worker
//! while they run, as they always have on this backend. A CONNECT in progress waits for
//! writability like a SEND, then completes with the socket's `SO_ERROR`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use fastio_uapi::{
    decode, Cqe, Direction, IoVec, Op, Sqe, FSYNC_DATASYNC, MSG_DONTWAIT, OFF_CURRENT,
};

use self::multishot::{is_selected, Step};
use super::sys::{
    block_sigpipe, connect_result, drain_eventfd, epoll_ctl, file_type, last_errno, pin_to_cpu,
};
use super::Shared;
use crate::backend::files::FileRef;
use crate::ring::{CqProducer, SqConsumer};

mod multishot;

/// Most steps one readiness event gives one multishot request before the others on the
/// worker get their turn (it stays armed; epoll reports the file again).
const MAX_STEPS: u32 = 64;

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
pub(super) const WAKE_TOKEN: u64 = u64::MAX;

/// Whether a request asked not to wait for readiness (`MSG_DONTWAIT` in RECV or SEND).
fn dont_wait(op: &Op) -> bool {
    match *op {
        Op::Recv { flags, .. } | Op::Send { flags, .. } => flags & MSG_DONTWAIT != 0,
        _ => false,
    }
}

/// A CONNECT that is in progress (length 0, which `decode` never lets through): its
/// re-issue reads the socket's error instead of connecting again.
fn connect_in_progress(op: Op) -> Op {
    match op {
        Op::Connect { slot, .. } => Op::Connect {
            slot,
            addr: 0,
            len: 0,
        },
        op => op,
    }
}

pub(super) struct Worker {
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
    /// Multishot ACCEPTs: where the next scan for an empty slot of the range starts.
    accept_hints: HashMap<u64, u32>,
    posted: bool,
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
    pub(super) fn run(shared: Arc<Shared>, lane: u32, epfd: OwnedFd, cpu: Option<usize>) {
        block_sigpipe();
        if let Some(cpu) = cpu {
            pin_to_cpu(cpu);
        }
        // SAFETY: this worker is the only worker side of its lane: `open` starts one
        // worker per lane, and the proactor side holds only the userspace ends.
        let ring = unsafe { shared.mem.lane(lane) };
        let mut worker = Worker {
            lane: lane as usize,
            // SAFETY: as above.
            cq: unsafe { ring.cq_producer() },
            backlog: VecDeque::new(),
            waits: HashMap::new(),
            cancel_seen: shared.cancel_epoch.load(Ordering::Acquire),
            accept_hints: HashMap::new(),
            posted: false,
            epfd,
            shared,
        };
        // SAFETY: as above.
        worker.main_loop(unsafe { ring.sq_consumer() });
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
            Op::AsyncCancel { target } => {
                let r = self.cancel_target(target);
                self.complete(user_data, r)
            }
            Op::OpenAt { dir: None, .. } => {
                let r = self.openat(&op, None);
                self.complete(user_data, r)
            }
            op if is_selected(&op) => self.execute_selected(op, user_data),
            _ => {
                let slot = op.slot().unwrap_or(0);
                let Some(file) = self.shared.files.get(slot) else {
                    return self.complete(user_data, -libc::EBADF);
                };
                if let Op::Connect { .. } = op {
                    // In progress: wait for writability, then read the socket's error.
                    return match self.issue(&op, &file) {
                        r if r == -libc::EINPROGRESS && file.pollable => self.park(
                            file,
                            Parked {
                                op: connect_in_progress(op),
                                user_data,
                            },
                        ),
                        r => self.complete(user_data, r),
                    };
                }
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
                self.install(r, dest)
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
            Op::OpenAt { .. } => self.openat(op, Some(file)),
            // Syncs the whole file: there is no ranged fsync system call, and syncing
            // more than the range asked for is correct.
            Op::Fsync { flags, .. } => res(unsafe {
                if flags & FSYNC_DATASYNC != 0 {
                    libc::fdatasync(fd)
                } else {
                    libc::fsync(fd)
                }
            } as isize),
            Op::Fallocate { mode, off, len, .. } => {
                res(unsafe { libc::fallocate(fd, mode as i32, off as i64, len as i64) } as isize)
            }
            Op::Shutdown { how, .. } => res(unsafe { libc::shutdown(fd, how as i32) } as isize),
            Op::Connect { len: 0, .. } => connect_result(fd),
            Op::Connect { addr, len, .. } => res(unsafe {
                libc::connect(fd, addr as *const libc::sockaddr, len as libc::socklen_t)
            } as isize),
            Op::Sendfile { src, off, len, .. } => self.sendfile(fd, src, off, len),
            Op::Nop | Op::Close { .. } | Op::AsyncCancel { .. } => 0,
            // Issued through `step_selected` only.
            Op::RecvSelect { .. } | Op::AcceptMulti { .. } => -libc::EINVAL,
        }
    }

    /// SENDFILE: `sendfile(2)` from the file in slot `src` to the socket `fd`, which is
    /// non-blocking (`-EAGAIN`: the request waits for writability like a SEND). Reading
    /// an uncached source blocks the worker, as READ of a regular file does here. The
    /// kinds are checked as the kernel module checks them: a socket destination
    /// (`-ENOTSOCK`), a regular file or block device as the source (`-EINVAL`).
    fn sendfile(&self, fd: RawFd, src: u32, off: u64, len: u32) -> i32 {
        let Some(src) = self.shared.files.get(src) else {
            return -libc::EBADF;
        };
        match (file_type(fd), file_type(src.raw())) {
            (Err(e), _) | (_, Err(e)) => return e,
            (Ok(d), _) if d != libc::S_IFSOCK => return -libc::ENOTSOCK,
            (_, Ok(s)) if s != libc::S_IFREG && s != libc::S_IFBLK => return -libc::EINVAL,
            _ => {}
        }
        // The socket's O_NONBLOCK (set at registration) belongs to its open file
        // description, which the application may have changed since: sendfile(2) has no
        // MSG_DONTWAIT, so make sure it cannot block the worker.
        // SAFETY: fcntl on a descriptor the caller holds.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0
            || (fl & libc::O_NONBLOCK == 0
                && unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0)
        {
            return -last_errno();
        }
        let mut pos = off as libc::off_t;
        let ppos = if off == OFF_CURRENT {
            std::ptr::null_mut()
        } else {
            &mut pos as *mut libc::off_t
        };
        // SAFETY: both descriptors are held by file references alive across the call;
        // `ppos` is null or points to `pos`.
        res(unsafe { libc::sendfile(fd, src.raw(), ppos, len as usize) })
    }

    /// OPENAT (blocking: the threads backend's workers do blocking file calls): in the
    /// current directory with `openat`, in a directory slot with `openat2` and
    /// `RESOLVE_IN_ROOT` (what the kernel module's `file_open_root` does). The
    /// destination must be empty before anything is opened.
    fn openat(&self, op: &Op, dir: Option<&FileRef>) -> i32 {
        let Op::OpenAt {
            path,
            flags,
            mode,
            dest,
            ..
        } = *op
        else {
            return -libc::EINVAL;
        };
        if self.shared.files.get(dest).is_some() {
            return -libc::EBUSY;
        }
        let flags = flags as i32 | libc::O_CLOEXEC;
        let path = path as *const libc::c_char;
        // SAFETY: the path is user memory the submitter keeps valid until the
        // completion (the kernel reports EFAULT for a bad address); `how` lives across
        // the call.
        let r = unsafe {
            match dir {
                None => libc::openat(libc::AT_FDCWD, path, flags, mode),
                Some(d) => {
                    let mut how: libc::open_how = std::mem::zeroed();
                    how.flags = flags as u64;
                    how.mode = mode as u64;
                    how.resolve = libc::RESOLVE_IN_ROOT;
                    libc::syscall(
                        libc::SYS_openat2,
                        d.raw(),
                        path,
                        &how as *const libc::open_how,
                        std::mem::size_of::<libc::open_how>(),
                    ) as i32
                }
            }
        };
        self.install(r, dest)
    }

    /// The result of a call that returned a new descriptor `r` (or -1 with errno):
    /// the descriptor is put into the slot `dest`, whose number is the result.
    fn install(&self, r: libc::c_int, dest: u32) -> i32 {
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
        let mut steps = 0;
        for dir in [Direction::In, Direction::Out] {
            while let Some(p) = wait.queue(dir).front() {
                if is_selected(&p.op) {
                    let (op, user_data) = (p.op, p.user_data);
                    if steps == MAX_STEPS {
                        break;
                    }
                    steps += 1;
                    match self.step_selected(&op, user_data, &file) {
                        Step::Blocked => break,
                        Step::Armed => continue,
                        Step::Ended => {
                            wait.queue(dir).pop_front();
                            continue;
                        }
                    }
                }
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
        // A SENDFILE waiting for its socket also goes when its source slot is closed.
        self.cancel_parked_where(|p| matches!(p.op, Op::Sendfile { src, .. } if src == slot));
        0
    }

    /// Completes every parked request `pred` selects with `-ECANCELED` (in submission
    /// order per file and direction); returns whether there was one.
    fn cancel_parked_where(&mut self, pred: impl Fn(&Parked) -> bool) -> bool {
        let keys: Vec<u64> = self
            .waits
            .iter()
            .filter(|(_, w)| w.read.iter().chain(&w.write).any(&pred))
            .map(|(&k, _)| k)
            .collect();
        for &key in &keys {
            let Some(mut wait) = self.waits.remove(&key) else {
                continue;
            };
            for dir in [Direction::In, Direction::Out] {
                let q = wait.queue(dir);
                let (gone, kept): (VecDeque<Parked>, VecDeque<Parked>) =
                    std::mem::take(q).into_iter().partition(&pred);
                *q = kept;
                for p in gone {
                    self.complete(p.user_data, -libc::ECANCELED);
                }
            }
            if wait.is_empty() {
                self.unregister_wait(&wait);
            } else {
                // Still waited on: re-arm for what the queues now need.
                self.waits.insert(key, wait);
                self.arm(key);
            }
        }
        !keys.is_empty()
    }

    /// ASYNC_CANCEL: completes every request parked on this lane with `user_data ==
    /// target` with `-ECANCELED` (before the cancel's own completion); 0 if there was
    /// one, `-ENOENT` if not. A request that is not parked has already completed: this
    /// worker executes its lane's requests one at a time, in order, and the proactor
    /// queues a cancel on its target's lane.
    fn cancel_target(&mut self, target: u64) -> i32 {
        if self.cancel_parked_where(|p| p.user_data == target) {
            0
        } else {
            -libc::ENOENT
        }
    }

    /// `cancel_all`: completes every parked request with `-ECANCELED`.
    fn cancel_parked(&mut self) {
        for (_, w) in std::mem::take(&mut self.waits) {
            self.finish_wait(w, -libc::ECANCELED);
        }
    }

    fn complete(&mut self, user_data: u64, res: i32) {
        self.complete_flags(user_data, res, 0)
    }

    fn complete_flags(&mut self, user_data: u64, res: i32, flags: u32) {
        let cqe = Cqe {
            user_data,
            res,
            flags,
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
