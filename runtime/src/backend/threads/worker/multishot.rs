//! RECV into provided buffers and the multishot requests on a `threads` worker.
//!
//! Such a request is always parked on its file first and issued from
//! [`Worker::on_ready`]: a step receives into one buffer (or accepts one connection)
//! and posts one CQE. A multishot request posts with `CQE_F_MORE` and stays at the head
//! of its file's queue; it ends (a CQE without `CQE_F_MORE`) at end of stream, on an
//! error, when the group has no buffer (`-ENOBUFS`, before anything is received, so no
//! data is lost), when its slot range is full (`-ENFILE`, before accepting), on cancel,
//! or when the CQ has no room for the CQE: that one then goes to the backlog without
//! `CQE_F_MORE`, carrying its data, and the request is over.

use std::sync::Arc;

use fastio_uapi::{Cqe, Op, CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE};

use super::{file_key, last_errno, res, Parked, Worker};
use crate::backend::files::FileRef;

/// What one step of a provided-buffer or multishot request did.
pub(super) enum Step {
    /// Would block: stays parked.
    Blocked,
    /// Posted a CQE with `CQE_F_MORE`: stays at the head of the queue.
    Armed,
    /// Posted its last CQE.
    Ended,
}

/// Whether `fd` is readable now (a listener: a connection waits).
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

/// Whether `op` runs through [`Worker::step_selected`].
pub(super) fn is_selected(op: &Op) -> bool {
    matches!(op, Op::RecvSelect { .. } | Op::AcceptMulti { .. })
}

impl Worker {
    /// Parks a provided-buffer or multishot request on its file and issues it at once
    /// (behind older requests of its direction, which keeps the order).
    pub(super) fn execute_selected(&mut self, op: Op, user_data: u64) {
        let Some(file) = op.slot().and_then(|s| self.shared.files.get(s)) else {
            return self.complete(user_data, -libc::EBADF);
        };
        if !file.pollable {
            return self.complete(user_data, -libc::EINVAL);
        }
        let key = file_key(&file);
        self.park(file, Parked { op, user_data });
        self.on_ready(key);
    }

    /// One step of a provided-buffer or multishot request.
    pub(super) fn step_selected(&mut self, op: &Op, user_data: u64, file: &Arc<FileRef>) -> Step {
        match *op {
            Op::RecvSelect {
                group, multishot, ..
            } => self.step_recv(file, group, multishot, user_data),
            Op::AcceptMulti { first, count, .. } => self.step_accept(file, first, count, user_data),
            _ => {
                self.complete(user_data, -libc::EINVAL);
                Step::Ended
            }
        }
    }

    fn step_recv(&mut self, file: &FileRef, group: u16, multishot: bool, user_data: u64) -> Step {
        let taken = self.shared.groups.get(group).and_then(|g| {
            let (id, addr) = g.take()?;
            Some((g, id, addr))
        });
        let Some((g, id, addr)) = taken else {
            // Nothing received: the data stays in the socket.
            self.complete(user_data, -libc::ENOBUFS);
            return Step::Ended;
        };
        // SAFETY: the buffer is one the executor owns (taken from the group), inside the
        // memory the proactor registered and keeps alive while requests use the group.
        let r = res(unsafe {
            libc::recv(file.raw(), addr.cast(), g.size as usize, libc::MSG_DONTWAIT)
        });
        if r == -libc::EAGAIN {
            g.untake(id);
            return Step::Blocked;
        }
        if r <= 0 {
            g.untake(id);
            self.complete(user_data, r);
            return Step::Ended;
        }
        let flags = CQE_F_BUFFER | (u32::from(id) << CQE_BUFFER_SHIFT);
        self.post_step(user_data, r, flags, multishot)
    }

    fn step_accept(&mut self, file: &FileRef, first: u32, count: u32, user_data: u64) -> Step {
        // Scan from after the slot filled last (as io_uring's allocation hint does), so
        // a full range of n slots costs O(n) per accept only when it is nearly full.
        let start = self
            .accept_hints
            .get(&user_data)
            .copied()
            .unwrap_or(0)
            .min(count - 1);
        let dest = (0..count)
            .map(|i| first + (start + i) % count)
            .find(|&s| self.shared.files.is_empty(s));
        let Some(dest) = dest else {
            // The range is full: that ends the request only when a connection comes.
            if !readable(file.raw()) {
                return Step::Blocked;
            }
            // Nothing accepted: the connection stays in the backlog.
            self.accept_hints.remove(&user_data);
            self.complete(user_data, -libc::ENFILE);
            return Step::Ended;
        };
        // SAFETY: accept4 with no address output.
        let fd = unsafe {
            libc::accept4(
                file.raw(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if fd < 0 && last_errno() == libc::EAGAIN {
            return Step::Blocked;
        }
        let r = self.install(fd, dest);
        if r < 0 {
            self.accept_hints.remove(&user_data);
            self.complete(user_data, r);
            return Step::Ended;
        }
        self.accept_hints
            .insert(user_data, (dest - first + 1) % count);
        match self.post_step(user_data, r, 0, true) {
            Step::Ended => {
                self.accept_hints.remove(&user_data);
                Step::Ended
            }
            s => s,
        }
    }

    /// Posts a step's CQE: with `CQE_F_MORE` when the request goes on and the CQE finds
    /// room in the CQ, else as its last one (to the backlog if need be).
    fn post_step(&mut self, user_data: u64, res: i32, flags: u32, multishot: bool) -> Step {
        if multishot && self.backlog.is_empty() {
            let cqe = Cqe {
                user_data,
                res,
                flags: flags | CQE_F_MORE,
            };
            if self.cq.push(cqe) {
                self.posted = true;
                return Step::Armed;
            }
        }
        self.complete_flags(user_data, res, flags);
        Step::Ended
    }
}
