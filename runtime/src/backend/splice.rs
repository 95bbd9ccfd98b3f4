//! SENDFILE on the `uring` backend: io_uring's SPLICE through a pipe, in steps.
//!
//! io_uring has no sendfile; its SPLICE needs a pipe at one end. A SENDFILE becomes:
//! 1. SPLICE from the source slot (fixed file, at the offset or the file position) into
//!    the write end of a pipe, at most the pipe's size (1 MiB when the system allows it);
//! 2. SPLICE from the read end into the destination slot, of exactly what step 1 put in
//!    the pipe, again until the pipe is empty (a non-blocking socket may take part);
//!    a non-blocking socket that is full (`-EAGAIN`) gets a POLL_ADD for `POLLOUT` first.
//!
//! Each step is submitted when the previous one's CQE is reaped (not linked: step 2's
//! length is step 1's result, and a short step 1 would break a link), all with the
//! request's own `user_data`, so that io_uring's ASYNC_CANCEL by `user_data` finds
//! whichever step is in flight. The proactor sees one CQE: the bytes sent, which may be
//! short (end of file, the pipe's size), or the error when nothing was sent.
//!
//! A pipe is reused when its transfer ended with the pipe empty; otherwise (an error
//! in step 2) it is closed with what it holds. With [`OFF_CURRENT`], io_uring advances
//! the source's position by what step 1 read: if step 2 then fails (the peer is gone,
//! a cancel), the position is ahead of what was sent by at most one pipe's worth.
//!
//! Cancellation: an ASYNC_CANCEL of the request, or a CLOSE of its destination slot,
//! marks it; a step that completes after that ends the request (bytes sent so far, or
//! `-ECANCELED`) instead of starting the next one. io_uring checks the kinds itself
//! (a directory is `-EINVAL`); unlike the other backends it also accepts a source that
//! is not a regular file and a destination that is not a socket, as `splice(2)` does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use fastio_uapi::OFF_CURRENT;
use io_uring::{opcode, squeue, types};

/// Pipe size asked for (the default `/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: i32 = 1 << 20;

/// A pipe: read end, write end, capacity in bytes.
struct Pipe {
    rd: OwnedFd,
    wr: OwnedFd,
    size: u32,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both are fresh descriptors nobody else owns.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer steps; the default (64 KiB) serves when refused.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        // SAFETY: as above.
        let size = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if size <= 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe {
            rd,
            wr,
            size: size as u32,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Step 1 in flight.
    Fill,
    /// Step 2 in flight: `in_pipe` bytes were read, `sent` of them sent.
    Drain { in_pipe: u32, sent: u32 },
    /// A POLL_ADD for `POLLOUT` in flight, then step 2 again.
    Poll { in_pipe: u32, sent: u32 },
}

struct Transfer {
    user_data: u64,
    dst: u32,
    pipe: Pipe,
    stage: Stage,
    cancelled: bool,
}

/// What to do with a CQE that belongs to a SENDFILE.
pub(crate) enum Next {
    /// Submit this entry (the next step); the CQE is the backend's own.
    Push(squeue::Entry),
    /// The request is done: hand the proactor this result.
    Done(i32),
}

/// The SENDFILEs in flight and the spare pipes.
#[derive(Default)]
pub(crate) struct Sendfiles {
    active: Vec<Transfer>,
    spare: Vec<Pipe>,
}

impl Sendfiles {
    /// Step 1 of a new SENDFILE.
    pub(crate) fn start(
        &mut self,
        user_data: u64,
        dst: u32,
        src: u32,
        off: u64,
        len: u32,
    ) -> io::Result<squeue::Entry> {
        let pipe = match self.spare.pop() {
            Some(p) => p,
            None => Pipe::new()?,
        };
        let chunk = len.min(pipe.size);
        let off_in = if off == OFF_CURRENT { -1 } else { off as i64 };
        let entry = opcode::Splice::new(
            types::Fixed(src),
            off_in,
            types::Fd(pipe.wr.as_raw_fd()),
            -1,
            chunk,
        )
        .build()
        .user_data(user_data);
        self.active.push(Transfer {
            user_data,
            dst,
            pipe,
            stage: Stage::Fill,
            cancelled: false,
        });
        Ok(entry)
    }

    /// The SQ refused step 1 of `user_data`: forget it (its pipe is still empty).
    pub(crate) fn abort(&mut self, user_data: u64) {
        if let Some(i) = self.find(user_data) {
            let t = self.active.swap_remove(i);
            self.spare.push(t.pipe);
        }
    }

    /// ASYNC_CANCEL of `user_data`: the step in flight is cancelled by io_uring; if it
    /// completes anyway, no further step starts. Returns whether it is a SENDFILE.
    pub(crate) fn cancel(&mut self, user_data: u64) -> bool {
        match self.find(user_data) {
            Some(i) => {
                self.active[i].cancelled = true;
                true
            }
            None => false,
        }
    }

    /// CLOSE of `slot`: the SENDFILEs to it end after their current step.
    pub(crate) fn close_slot(&mut self, slot: u32) {
        for t in self.active.iter_mut().filter(|t| t.dst == slot) {
            t.cancelled = true;
        }
    }

    fn find(&self, user_data: u64) -> Option<usize> {
        self.active.iter().position(|t| t.user_data == user_data)
    }

    /// The CQE `res` of `user_data`, if that is a SENDFILE: the next step, or its end.
    pub(crate) fn on_cqe(&mut self, user_data: u64, res: i32) -> Option<Next> {
        let i = self.find(user_data)?;
        let t = &mut self.active[i];
        let (in_pipe, sent) = match t.stage {
            Stage::Fill if res <= 0 => {
                // End of file or an error: nothing was put in the pipe.
                return Some(self.end(i, res));
            }
            Stage::Fill => (res as u32, 0),
            Stage::Drain { in_pipe, sent } if res > 0 => (in_pipe, sent.saturating_add(res as u32)),
            Stage::Drain { in_pipe, sent } if res == -libc::EAGAIN && !t.cancelled => {
                // A full non-blocking socket: wait until it is writable.
                t.stage = Stage::Poll { in_pipe, sent };
                let entry = opcode::PollAdd::new(types::Fixed(t.dst), libc::POLLOUT as u32)
                    .build()
                    .user_data(user_data);
                return Some(Next::Push(entry));
            }
            // The poll's event mask: writable (or an error, which step 2 then reports).
            Stage::Poll { in_pipe, sent } if res > 0 => (in_pipe, sent),
            Stage::Drain { sent, .. } | Stage::Poll { sent, .. } => {
                // A cancelled step may say -EINTR (io_uring interrupts its worker).
                let r = match sent {
                    0 if t.cancelled => -libc::ECANCELED,
                    0 => res,
                    s => s as i32,
                };
                return Some(self.end(i, r));
            }
        };
        t.stage = Stage::Drain { in_pipe, sent };
        if t.cancelled {
            let r = if sent > 0 {
                sent as i32
            } else {
                -libc::ECANCELED
            };
            return Some(self.end(i, r));
        }
        if sent >= in_pipe {
            return Some(self.end(i, sent as i32));
        }
        let entry = opcode::Splice::new(
            types::Fd(t.pipe.rd.as_raw_fd()),
            -1,
            types::Fixed(t.dst),
            -1,
            in_pipe - sent,
        )
        .build()
        .user_data(user_data);
        Some(Next::Push(entry))
    }

    /// Ends transfer `i` with `res`; its pipe is kept if it is empty.
    fn end(&mut self, i: usize, res: i32) -> Next {
        let t = self.active.swap_remove(i);
        // Empty: nothing was read, or all of it was sent.
        let empty = match t.stage {
            Stage::Fill => true,
            Stage::Drain { in_pipe, .. } | Stage::Poll { in_pipe, .. } => {
                u32::try_from(res).is_ok_and(|r| r == in_pipe)
            }
        };
        if empty {
            self.spare.push(t.pipe);
        }
        Next::Done(res)
    }
}
