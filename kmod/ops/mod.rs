// SPDX-License-Identifier: GPL-2.0

//! Executing one request, as the calling thread (a lane or helper thread of the owning
//! process: its address space, credentials, limits and cgroups apply as to any system
//! call it makes).
//!
//! [`issue`] makes one attempt. On a lane thread (`blocking == false`) it never sleeps:
//! sockets and pipes use `MSG_DONTWAIT`/`RWF_NOWAIT`, regular files copy only cached
//! pages, and the answer says what to do when the request cannot finish now: wait for
//! readiness ([`Outcome::Wait`]) or hand it to a helper thread ([`Outcome::Offload`],
//! [`Outcome::Partial`]). On a helper thread (`blocking == true`) it does the blocking
//! call; every such wait in the kernel is interruptible or killable.

mod file;
mod fs;
mod iov;
mod net;
mod sendfile;

pub(crate) use net::accept_range;

use kernel::{bindings, fs::File, sync::aref::ARef};

use crate::abi::{self, Op};
use crate::shared::Shared;
use crate::sys::neg;

/// What one attempt came to.
pub(crate) enum Outcome {
    /// Finished: the CQE result.
    Done(i32),
    /// Would block on a pollable file: wait for these poll events.
    Wait(u32),
    /// Needs a blocking call (uncached file data, a file without non-blocking mode, a
    /// busy file position, an open, a sync, an allocation): hand it to a helper thread.
    Offload,
    /// A regular file transferred this many bytes (fewer than asked, not at end of file)
    /// without blocking: a helper thread transfers the rest.
    Partial(u32),
}

/// Issues `op` once. `file` is the file of the request's slot; only an OPENAT in the
/// current directory has none.
///
/// OPENAT, FSYNC and FALLOCATE always block (path lookup, disk I/O, journal): a lane
/// thread hands them to a helper at once; so does SENDFILE once its socket is writable.
pub(crate) fn issue(
    shared: &Shared,
    op: &Op,
    file: Option<&ARef<File>>,
    blocking: bool,
) -> Outcome {
    if let Op::OpenAt {
        path,
        flags,
        mode,
        dest,
        ..
    } = *op
    {
        if !blocking {
            return Outcome::Offload;
        }
        return fs::openat(shared, file, path, flags, mode, dest);
    }
    let Some(file) = file else {
        return Outcome::Done(neg(bindings::EBADF));
    };
    match *op {
        Op::Accept { dest, flags, .. } => net::accept(&shared.files, file, dest, flags),
        Op::Recv {
            addr, len, flags, ..
        } => net::recv(file, addr, len, flags),
        Op::Send {
            addr, len, flags, ..
        } => net::send(file, addr, len, flags),
        Op::Read { addr, len, off, .. } => {
            file::rw(file, file::Dir::Read, addr, len, off, blocking)
        }
        Op::Write { addr, len, off, .. } => {
            file::rw(file, file::Dir::Write, addr, len, off, blocking)
        }
        Op::Writev {
            iov, count, off, ..
        } => match net::socket_of(file) {
            Some(sock) => net::writev(sock, iov, count),
            None => file::writev(file, iov, count, off, blocking),
        },
        Op::Fsync { .. } | Op::Fallocate { .. } if !blocking => Outcome::Offload,
        Op::Fsync {
            flags, off, len, ..
        } => fs::fsync(file, flags, off, len),
        Op::Fallocate { mode, off, len, .. } => fs::fallocate(file, mode, off, len),
        Op::Shutdown { how, .. } => net::shutdown(file, how),
        Op::Connect { addr, len, .. } => net::connect(file, addr, len),
        // The source is the file in its slot when the attempt runs.
        Op::Sendfile { src, off, len, .. } => {
            let src = shared.file(src);
            sendfile::sendfile(file, src.as_ref(), off, len, blocking)
        }
        Op::Nop | Op::Close { .. } | Op::AsyncCancel { .. } | Op::OpenAt { .. } => Outcome::Done(0),
        // Run by the lane (multishot.rs), never here (they are never offloaded).
        Op::RecvSelect { .. } | Op::AcceptMulti { .. } => Outcome::Done(neg(bindings::EINVAL)),
    }
}

/// Whether `op` is run by multishot.rs (a RECV into provided buffers, a multishot
/// ACCEPT).
pub(crate) fn is_selected(op: &Op) -> bool {
    matches!(op, Op::RecvSelect { .. } | Op::AcceptMulti { .. })
}

/// Whether `op` posts many completions (and holds no CQ reservation while it runs).
pub(crate) fn is_multishot(op: &Op) -> bool {
    matches!(
        op,
        Op::RecvSelect {
            multishot: true,
            ..
        } | Op::AcceptMulti { .. }
    )
}

/// Whether `file` is a socket (RECV on anything else is `-ENOTSOCK`).
pub(crate) fn is_socket(file: &File) -> bool {
    net::socket_of(file).is_some()
}

/// One non-blocking reception of up to `len` bytes into the user buffer at `addr`, and
/// whether the socket may hold more after it (false: the protocol said it is empty).
pub(crate) fn recv_into(file: &ARef<File>, addr: u64, len: u32) -> (Outcome, bool) {
    net::recv_inq(file, addr, len)
}

/// The form in which `op` waits for readiness after an attempt said [`Outcome::Wait`]:
/// a CONNECT that is in progress waits as "in progress" (length 0, which `decode` never
/// lets through), so its re-issue reads the socket's error instead of connecting again.
pub(crate) fn waiting(op: Op) -> Op {
    match op {
        Op::Connect { slot, .. } => Op::Connect {
            slot,
            addr: 0,
            len: 0,
        },
        op => op,
    }
}

/// `op` with its first `n` bytes done (READ and WRITE; other requests are returned
/// unchanged). `n` is below the request's length.
pub(crate) fn advance(mut op: Op, n: u32) -> Op {
    if let Op::Read { addr, len, off, .. } | Op::Write { addr, len, off, .. } = &mut op {
        *addr = addr.wrapping_add(n as u64);
        *len = len.saturating_sub(n);
        if *off != abi::OFF_CURRENT {
            *off = off.wrapping_add(n as u64);
        }
    }
    op
}

/// A result with `progress` bytes done before it (by an earlier attempt) added: what was
/// transferred counts, also when the rest failed or was cancelled.
pub(crate) fn add_progress(progress: u32, res: i32) -> i32 {
    match progress {
        0 => res,
        p if res >= 0 => (p as i32).saturating_add(res),
        p => p as i32,
    }
}
