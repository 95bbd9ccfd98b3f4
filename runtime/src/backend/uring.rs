//! The `uring` backend: the mainline kernel's io_uring, with or without an SQPOLL thread.
//!
//! One ring, one lane. Files live in io_uring's registered-file table (direct
//! descriptors), so slots mean the same as on the other backends: ACCEPT installs
//! straight into the chosen slot, CLOSE empties it, and no file is looked up by number
//! per request. With SQPOLL the kernel thread idles for `default_main_worker_idle_time`
//! ms before it sets `IORING_SQ_NEED_WAKEUP`; the `io-uring` crate's `submit` then wakes
//! it, exactly as our own rings do.
//!
//! A CLOSE takes two SQ entries and posts two CQEs: an `ASYNC_CANCEL` of every request
//! waiting on the file (the fastio ABI completes those with `-ECANCELED`; io_uring's own
//! CLOSE of a direct descriptor would leave them pending), then the close itself. The
//! cancel's CQE is the backend's own and never reaches the proactor, which counts a
//! CLOSE as two CQ entries ([`Backend::close_cost`]); hence `sq_entries` must be at
//! least 2. io_uring posts the CLOSE's CQE before those of the requests it cancelled;
//! the proactor holds the CLOSE's completion back until they have arrived.
//!
//! OPENAT in the current directory is io_uring's OPENAT into the destination slot; in a
//! directory slot it is OPENAT2 with `RESOLVE_IN_ROOT` (what the module's
//! `file_open_root` does) on a descriptor of the directory that `push` installs from the
//! slot (io_uring takes no direct descriptor as a directory) and keeps until the
//! completion. FSYNC (with its range), FALLOCATE, SHUTDOWN and CONNECT are io_uring's
//! own; io_uring copies CONNECT's address when it prepares the request and, for a
//! connect in progress, waits for writability and connects again.
//!
//! ASYNC_CANCEL becomes io_uring's `ASYNC_CANCEL` by `user_data` with `ALL`: the proactor's
//! tokens go to io_uring unchanged, so the target means the same; the result is turned
//! into the ABI's (0 found, `-ENOENT` not found).
//!
//! Known differences from the other backends:
//! - the cancel matches by *file*, not by slot: if one file is registered in two slots
//!   `a` and `b`, a CLOSE of `b` also cancels the requests waiting on slot `a` (the
//!   `threads` and `kmod` backends cancel only those of the closed slot);
//! - an explicit `MSG_DONTWAIT` in a RECV or SEND makes it complete with `-EAGAIN`
//!   instead of waiting for readiness (io_uring's own behaviour, which the ABI adopts);
//!   `MSG_WAITALL` waits for the full length here, while the `threads` backend may
//!   complete such a RECV short (with what one non-blocking `recv` returned).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use fastio_uapi::{decode, Cqe, Op, Sqe, FSYNC_DATASYNC, MSG_NOSIGNAL, OFF_CURRENT};
use io_uring::{opcode, squeue, types, IoUring};

use super::splice::{Next, Sendfiles};
use super::uring_bufs::{cqe_flags, UringBufs};
use super::Backend;
use crate::config::Config;

/// user_data of the backend's own FIXED_FD_INSTALL requests.
const INSTALL_TOKEN: u64 = u64::MAX - 1;
/// user_data of the backend's own cancel requests.
const CANCEL_TOKEN: u64 = u64::MAX - 2;
/// `IORING_ENTER_GETEVENTS` and `IORING_ENTER_EXT_ARG` (the crate keeps its own private).
const ENTER_GETEVENTS: u32 = 1 << 0;
const ENTER_EXT_ARG: u32 = 1 << 3;

/// io_uring behind the proactor API.
pub(crate) struct UringBackend {
    ring: IoUring,
    /// Whether an SQPOLL thread consumes the SQ (then "not yet submitted" has no meaning).
    sqpoll: bool,
    /// Whether the ring runs with `COOP_TASKRUN | TASKRUN_FLAG` (`reap` then enters the
    /// kernel when the flag says finished work waits to be posted).
    coop: bool,
    max_files: u32,
    /// Completions read while looking for one of our own (install_fd); handed out first.
    stash: Vec<Cqe>,
    /// user_data of the ASYNC_CANCELs in flight, whose results `reap` turns into the
    /// ABI's (io_uring counts the matches with `ALL` and says `-EALREADY` for a target
    /// it found running; the ABI says 0 for both).
    cancels: Vec<u64>,
    /// OPENATs in a directory slot in flight: their user_data, the descriptor of the
    /// directory and the `open_how`, both kept until the completion.
    opens: Vec<(u64, OwnedFd, Box<types::OpenHow>)>,
    /// Provided-buffer rings and the multishot ACCEPT range.
    bufs: UringBufs,
    /// SENDFILEs in flight (SPLICE through a pipe, in steps: see `splice.rs`).
    sendfiles: Sendfiles,
    /// CQEs taken from the ring in one `reap` (kept to reuse its allocation).
    scratch: Vec<Cqe>,
}

impl UringBackend {
    /// Creates the ring. Returns it, whether SQPOLL is on, and a note for the banner.
    pub(crate) fn open(config: &Config) -> io::Result<(Self, bool, String)> {
        if config.sq_entries < 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "backend uring: sq_entries = {} is too small: a CLOSE takes two SQ \
                     entries (cancel + close) on io_uring, so sq_entries must be at least 2",
                    config.sq_entries
                ),
            ));
        }
        let build = |sqpoll: bool, coop: bool| {
            let mut b = IoUring::builder();
            b.setup_cqsize(config.cq_entries);
            if coop {
                // Ready requests finish at the thread's next kernel entry instead of by
                // an interrupt through the signal path (which took a contended siglock:
                // 14% of the serving thread's time at 25 echo connections); `reap`
                // enters when the flag says work waits.
                b.setup_coop_taskrun();
                b.setup_taskrun_flag();
            }
            if sqpoll {
                b.setup_sqpoll(config.idle_ms);
                let cpus = super::allowed_cpus();
                if let Some(cpu) = super::pinned_cpu(config.affinity_offset, 0, &cpus) {
                    // CPU numbers are < CPU_SETSIZE (1024): the cast cannot truncate.
                    b.setup_sqpoll_cpu(cpu as u32);
                }
            }
            b.build(config.sq_entries)
        };
        // Kernels before 5.19 refuse COOP_TASKRUN (EINVAL): run without it then.
        let mut coop = config.uring_coop_taskrun;
        let mut coop_note = "";
        let mut first = build(config.sqpoll, coop);
        if coop
            && first
                .as_ref()
                .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL))
        {
            coop = false;
            coop_note = " (COOP_TASKRUN refused; running without it)";
            first = build(config.sqpoll, false);
        }
        let (ring, sqpoll, mut note) = match first {
            Ok(r) => (r, config.sqpoll, String::new()),
            Err(e) if config.sqpoll => {
                let r = build(false, coop)?;
                (
                    r,
                    false,
                    format!(" (SQPOLL refused: {e}; running without it)"),
                )
            }
            Err(e) => return Err(e),
        };
        note.push_str(if coop {
            " (cooperative task running)"
        } else {
            coop_note
        });
        // io_uring refuses a file table larger than RLIMIT_NOFILE: raise the soft limit
        // to the hard one if that is what it takes.
        if let Err(e) = ring.submitter().register_files_sparse(config.max_files) {
            if e.raw_os_error() != Some(libc::EMFILE) {
                return Err(e);
            }
            let hard = super::raise_nofile_limit(config.max_files as u64)?;
            ring.submitter()
                .register_files_sparse(config.max_files)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "io_uring file table of max_files = {} slots: {e} (RLIMIT_NOFILE \
                             hard limit {hard}; lower max_files or raise the limit)",
                            config.max_files
                        ),
                    )
                })?;
        }
        Ok((
            UringBackend {
                ring,
                sqpoll,
                coop,
                max_files: config.max_files,
                stash: Vec::new(),
                cancels: Vec::new(),
                opens: Vec::new(),
                bufs: UringBufs::default(),
                sendfiles: Sendfiles::default(),
                scratch: Vec::new(),
            },
            sqpoll,
            note,
        ))
    }

    /// Translates a validated request. Requests that fail validation become a NOP
    /// completion carrying the error, through `Err`.
    fn translate(&mut self, sqe: &Sqe) -> Result<squeue::Entry, i32> {
        let op = decode(sqe, self.max_files).map_err(|e| -e.errno())?;
        let fixed = |slot: u32| types::Fixed(slot);
        let entry = match op {
            Op::Nop => opcode::Nop::new().build(),
            Op::Accept { slot, dest, flags } => {
                let dest =
                    types::DestinationSlot::try_from_slot_target(dest).map_err(|_| -libc::EBADF)?;
                opcode::Accept::new(fixed(slot), std::ptr::null_mut(), std::ptr::null_mut())
                    .file_index(Some(dest))
                    // A direct descriptor has no close-on-exec flag (io_uring refuses
                    // SOCK_CLOEXEC with a file index); INSTALL_FD sets it.
                    .flags(flags as i32)
                    .build()
            }
            Op::Recv {
                slot,
                addr,
                len,
                flags,
            } => opcode::Recv::new(fixed(slot), addr as *mut u8, len)
                .flags(flags as i32)
                .build(),
            Op::RecvSelect {
                slot,
                group,
                multishot: true,
            } => opcode::RecvMulti::new(fixed(slot), group).build(),
            Op::RecvSelect { slot, group, .. } => {
                opcode::Recv::new(fixed(slot), std::ptr::null_mut(), 0)
                    .buf_group(group)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            Op::AcceptMulti {
                slot,
                first,
                count,
                flags,
            } => {
                self.bufs
                    .arm_accept(&self.ring, first, count, sqe.user_data)?;
                opcode::AcceptMulti::new(fixed(slot))
                    .allocate_file_index(true)
                    .flags(flags as i32)
                    .build()
            }
            Op::Send {
                slot,
                addr,
                len,
                flags,
            } => opcode::Send::new(fixed(slot), addr as *const u8, len)
                .flags((flags | MSG_NOSIGNAL) as i32)
                .build(),
            Op::Read {
                slot,
                addr,
                len,
                off,
            } => opcode::Read::new(fixed(slot), addr as *mut u8, len)
                .offset(off_arg(off))
                .build(),
            Op::Write {
                slot,
                addr,
                len,
                off,
            } => opcode::Write::new(fixed(slot), addr as *const u8, len)
                .offset(off_arg(off))
                .build(),
            Op::Writev {
                slot,
                iov,
                count,
                off,
            } => opcode::Writev::new(fixed(slot), iov as *const libc::iovec, count)
                .offset(off_arg(off))
                .build(),
            Op::Close { slot } => opcode::Close::new(fixed(slot)).build(),
            // user_data means the same here as in the ABI: the backend passes the
            // proactor's tokens through unchanged (its own tokens are never handed out).
            Op::AsyncCancel { target } => {
                opcode::AsyncCancel2::new(types::CancelBuilder::user_data(target).all()).build()
            }
            Op::OpenAt {
                dir,
                path,
                flags,
                mode,
                dest,
            } => {
                let dest =
                    types::DestinationSlot::try_from_slot_target(dest).map_err(|_| -libc::EBADF)?;
                // A direct descriptor has no close-on-exec flag (io_uring refuses
                // O_CLOEXEC with a file index).
                let flags = flags & !(libc::O_CLOEXEC as u32);
                let path = path as *const libc::c_char;
                match dir {
                    None => opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path)
                        .flags(flags as i32)
                        .mode(mode)
                        .file_index(Some(dest))
                        .build(),
                    Some(dir) => {
                        // io_uring takes no direct descriptor as the directory: a real
                        // descriptor of the slot's file serves until the completion.
                        let fd = self
                            .install_fd(dir)
                            .map_err(|e| -e.raw_os_error().unwrap_or(libc::EBADF))?;
                        let how = Box::new(
                            types::OpenHow::new()
                                .flags(flags as u64)
                                .mode(mode as u64)
                                .resolve(libc::RESOLVE_IN_ROOT),
                        );
                        let entry = opcode::OpenAt2::new(types::Fd(fd.as_raw_fd()), path, &*how)
                            .file_index(Some(dest))
                            .build();
                        self.opens.push((sqe.user_data, fd, how));
                        entry
                    }
                }
            }
            Op::Fsync {
                slot,
                flags,
                off,
                len,
            } => {
                let mut f = types::FsyncFlags::empty();
                if flags & FSYNC_DATASYNC != 0 {
                    f |= types::FsyncFlags::DATASYNC;
                }
                opcode::Fsync::new(fixed(slot))
                    .offset(off)
                    .len(len)
                    .flags(f)
                    .build()
            }
            Op::Fallocate {
                slot,
                mode,
                off,
                len,
            } => opcode::Fallocate::new(fixed(slot), len)
                .offset(off)
                .mode(mode as i32)
                .build(),
            Op::Shutdown { slot, how } => opcode::Shutdown::new(fixed(slot), how as i32).build(),
            Op::Connect { slot, addr, len } => {
                opcode::Connect::new(fixed(slot), addr as *const libc::sockaddr, len).build()
            }
            Op::Sendfile {
                slot,
                src,
                off,
                len,
            } => self
                .sendfiles
                .start(sqe.user_data, slot, src, off, len)
                .map_err(|e| -e.raw_os_error().unwrap_or(libc::ENOMEM))?,
        };
        Ok(entry.user_data(sqe.user_data))
    }

    /// Pushes one entry, submitting to make room if the SQ is full.
    fn push_now(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: our own entries reference no user memory (install, cancel, NOP).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }
}

impl Drop for UringBackend {
    /// Drops the registered files synchronously: the ring's own teardown runs in a
    /// kernel worker after close, and a listening socket left in its file table would
    /// keep the port busy for a moment after the process is gone.
    fn drop(&mut self) {
        let _ = self.ring.submitter().unregister_files();
    }
}

impl UringBackend {
    /// Drops what an OPENAT in a directory slot kept for its completion.
    fn forget_open(&mut self, user_data: u64) {
        if let Some(i) = self.opens.iter().position(|o| o.0 == user_data) {
            self.opens.swap_remove(i);
        }
    }
}

/// io_uring's "current position" is offset -1.
fn off_arg(off: u64) -> u64 {
    if off == OFF_CURRENT {
        u64::MAX
    } else {
        off
    }
}

impl Backend for UringBackend {
    fn lanes(&self) -> u32 {
        1
    }

    fn lane_capacity(&self) -> u32 {
        self.ring.params().cq_entries()
    }

    fn register(&mut self, slot: u32, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ring
            .submitter()
            .register_files_update(slot, &[fd.as_raw_fd()])
            .map(drop)
    }

    fn unregister(&mut self, slot: u32) -> io::Result<()> {
        self.ring
            .submitter()
            .register_files_update(slot, &[-1])
            .map(drop)
    }

    fn install_fd(&mut self, slot: u32) -> io::Result<OwnedFd> {
        let entry = opcode::FixedFdInstall::new(types::Fixed(slot), 0)
            .build()
            .user_data(INSTALL_TOKEN);
        self.push_now(&entry)?;
        loop {
            self.ring.submit_and_wait(1)?;
            let mut found = None;
            for c in self.ring.completion() {
                match c.user_data() {
                    INSTALL_TOKEN => found = Some(c.result()),
                    // The backend's own cancel (of a CLOSE): nobody waits for it.
                    CANCEL_TOKEN => {}
                    _ => {
                        let e = cqe(&c);
                        self.bufs.on_cqe(e.user_data, e.flags);
                        self.stash.push(e)
                    }
                }
            }
            match found {
                Some(r) if r >= 0 => {
                    // SAFETY: the kernel just installed this descriptor for us.
                    return Ok(unsafe { OwnedFd::from_raw_fd(r) });
                }
                Some(r) => return Err(io::Error::from_raw_os_error(-r)),
                None => continue,
            }
        }
    }

    fn push(&mut self, _lane: u32, sqe: &Sqe) -> bool {
        let entry = match self.translate(sqe) {
            Ok(e) => e,
            // Invalid requests complete with their errno, like the other backends.
            Err(errno) => {
                self.stash.push(Cqe {
                    user_data: sqe.user_data,
                    res: errno,
                    flags: 0,
                });
                return true;
            }
        };
        let mut sq = self.ring.submission();
        if let Some(slot) = close_slot(sqe) {
            // io_uring's CLOSE of a direct descriptor leaves requests that wait on the
            // file pending; the fastio ABI completes them with -ECANCELED first.
            if sq.capacity() - sq.len() < 2 {
                return false;
            }
            let cancel =
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fixed(slot)).all())
                    .build()
                    .user_data(CANCEL_TOKEN);
            // SAFETY: a cancel request references no user memory.
            if unsafe { sq.push(&cancel) }.is_err() {
                return false;
            }
        }
        // SAFETY: the proactor keeps every buffer and iovec array the entry points to
        // alive and unmoved until the completion for this user_data has been reaped.
        let pushed = unsafe { sq.push(&entry) }.is_ok();
        drop(sq);
        if pushed && sqe.opcode == fastio_uapi::OP_ASYNC_CANCEL {
            self.cancels.push(sqe.user_data);
            // A SENDFILE between two steps must not start the next one.
            self.sendfiles.cancel(sqe.addr);
        }
        if pushed {
            if let Some(slot) = close_slot(sqe) {
                self.sendfiles.close_slot(slot);
            }
        } else {
            // Refused for now: an OPENAT's directory descriptor is not needed after all,
            // nor a SENDFILE's pipe; a multishot ACCEPT is not armed.
            self.forget_open(sqe.user_data);
            self.sendfiles.abort(sqe.user_data);
            self.bufs.accept_done(sqe.user_data);
        }
        pushed
    }

    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            // EBUSY/EAGAIN: the kernel has no room to take more right now; the entries
            // stay in the SQ and go with the next submit.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn has_unsubmitted(&mut self) -> bool {
        // With SQPOLL the kernel thread takes entries on its own time.
        !self.sqpoll && !self.ring.submission().is_empty()
    }

    fn close_cost(&self) -> u32 {
        2
    }

    fn reap(&mut self, f: &mut dyn FnMut(Cqe)) -> usize {
        if self.coop && self.ring.submission().taskrun() {
            // Requests became ready and wait for this thread to finish them (it is
            // not interrupted for that): a GETEVENTS enter without a minimum runs them.
            // SAFETY: a plain GETEVENTS enter without argument; no SQE is submitted.
            let _ = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, 0, ENTER_GETEVENTS, None)
            };
        }
        let mut cqes = std::mem::take(&mut self.scratch);
        cqes.append(&mut self.stash);
        // The stash holds the backend's own answers; the provided-buffer bookkeeping
        // follows the kernel's CQEs only.
        let stashed = cqes.len();
        cqes.extend(
            self.ring
                .completion()
                .filter(|c| c.user_data() != CANCEL_TOKEN)
                .map(|c| cqe(&c)),
        );
        let mut n = 0;
        let mut steps = 0;
        for (i, mut e) in cqes.drain(..).enumerate() {
            if i >= stashed {
                self.bufs.on_cqe(e.user_data, e.flags);
            }
            self.forget_open(e.user_data);
            if !self.cancels.is_empty() {
                if let Some(i) = self.cancels.iter().position(|&u| u == e.user_data) {
                    self.cancels.swap_remove(i);
                    e.res = cancel_result(e.res);
                }
            }
            match self.sendfiles.on_cqe(e.user_data, e.res) {
                Some(Next::Push(entry)) => {
                    // The next step of a SENDFILE: the CQE was the backend's own.
                    if self.push_now(&entry).is_err() {
                        // Cannot happen with a ring that still exists; end the request.
                        if let Some(Next::Done(r)) =
                            self.sendfiles.on_cqe(e.user_data, -libc::ECANCELED)
                        {
                            e.res = r;
                            f(e);
                            n += 1;
                        }
                        continue;
                    }
                    steps += 1;
                    continue;
                }
                Some(Next::Done(r)) => e.res = r,
                None => {}
            }
            f(e);
            n += 1;
        }
        self.scratch = cqes;
        if steps > 0 {
            // Hand the new steps to the kernel now: the proactor only submits what it
            // queued itself.
            let _ = self.ring.submit();
        }
        n
    }

    fn wait(&mut self, min: u32, timeout: Option<Duration>) -> io::Result<()> {
        if self.stash.len() >= min as usize {
            return Ok(());
        }
        let want = min as usize - self.stash.len();
        let idle_sqpoll = self.sqpoll && self.ring.submission().is_empty();
        let r = match timeout {
            // With SQPOLL and nothing to submit, the crate's submit_and_wait and
            // submit_with_args still pass SQ_WAKEUP whenever the SQ thread sleeps, so
            // every wait (the echo server's 100 ms shutdown check) woke it for one
            // sq_thread_idle of spinning. Wait for completions alone instead.
            None if idle_sqpoll => {
                // SAFETY: a plain GETEVENTS enter without argument; no SQE is submitted.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        0,
                        want as u32,
                        ENTER_GETEVENTS,
                        None,
                    )
                }
            }
            None => self.ring.submit_and_wait(want),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                if idle_sqpoll {
                    // SAFETY: EXT_ARG with the crate's SubmitArgs, which is the kernel's
                    // io_uring_getevents_arg (the crate's own submit_with_args passes it
                    // the same way); `ts` outlives the call. No SQE is submitted.
                    unsafe {
                        self.ring.submitter().enter(
                            0,
                            want as u32,
                            ENTER_GETEVENTS | ENTER_EXT_ARG,
                            Some(&args),
                        )
                    }
                } else {
                    self.ring.submitter().submit_with_args(want, &args)
                }
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn cancel_all(&mut self) -> io::Result<bool> {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(CANCEL_TOKEN);
        self.push_now(&entry)?;
        self.ring.submit().map(|_| true)
    }

    fn lane_asleep(&self, _lane: u32) -> Option<bool> {
        None
    }

    unsafe fn register_buffers(
        &mut self,
        group: u16,
        bufs: *mut u8,
        buf_size: u32,
        count: u32,
    ) -> io::Result<()> {
        // SAFETY: forwarded from our caller.
        unsafe { self.bufs.register(&self.ring, group, bufs, buf_size, count) }
    }

    fn provide_buffer(&mut self, group: u16, id: u16) {
        self.bufs.provide(group, id)
    }

    fn unregister_buffers(&mut self, group: u16) -> io::Result<()> {
        self.bufs.unregister(&self.ring, group)
    }
}

/// The ABI's result of an ASYNC_CANCEL from io_uring's: with `ALL` io_uring answers the
/// number of requests it cancelled, and `-EALREADY` for a target it found already
/// running (which then completes with its own result): the ABI says 0 for both.
fn cancel_result(res: i32) -> i32 {
    if res >= 0 || res == -libc::EALREADY {
        0
    } else {
        res
    }
}

/// The slot of a well-formed CLOSE request.
fn close_slot(sqe: &Sqe) -> Option<u32> {
    (sqe.opcode == fastio_uapi::OP_CLOSE).then_some(sqe.slot)
}

fn cqe(c: &io_uring::cqueue::Entry) -> Cqe {
    Cqe {
        user_data: c.user_data(),
        res: c.result(),
        flags: cqe_flags(c.flags()),
    }
}

#[cfg(test)]
#[path = "uring_tests.rs"]
mod tests;
