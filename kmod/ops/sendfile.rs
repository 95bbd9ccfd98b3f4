// SPDX-License-Identifier: GPL-2.0

//! SENDFILE: a file's bytes to a socket without entering user space, as sendfile(2).
//!
//! The transfer is `do_splice_direct` (exported by fs/splice.c; what sendfile(2) calls):
//! the source's page-cache pages go through the calling task's internal pipe into the
//! socket. It always runs on a helper thread, never on a lane thread: reading the
//! source may wait for the disk or for a page lock (`filemap_splice_read` has no
//! non-blocking mode), and io_uring's own SPLICE runs in its io-wq workers for the same
//! reason. On a helper every wait in it can end early: page and disk waits are killable,
//! the socket's wait for buffer space (`sk_stream_wait_memory`) is interruptible, and a
//! cancel interrupts the helper like a signal (`TIF_NOTIFY_SIGNAL`): the result is then
//! what was sent so far, or `-ECANCELED`.
//!
//! The lane thread checks the files first (cheap `-EBADF`/`-EINVAL`/`-ENOTSOCK`
//! answers) and looks at the socket: not writable → the request waits for `EPOLLOUT`
//! through pending.rs like a SEND, so no helper sits on a full socket of a connection
//! that does not read; writable → a helper does the transfer. A helper that finds a
//! non-blocking socket full after all (`-EAGAIN` with nothing sent) hands the request
//! back to wait for `EPOLLOUT` (see helper.rs).
//!
//! Checks (as do_sendfile's): the source open for reading (`-EBADF`), a regular file or
//! block device (`-EINVAL`; so never a `/dev/fastio` file, nor a pipe or socket), an
//! explicit offset only where `pread` is allowed (`-ESPIPE`); the destination a socket
//! (`-ENOTSOCK`) open for writing (`-EBADF`). `vfs_splice_read` adds `rw_verify_area`
//! (the LSM hook, mandatory locks). With [`OFF_CURRENT`](abi::OFF_CURRENT) the source's
//! position is used and advanced under `f_pos_lock`, as READ does. A closed peer gives
//! `-EPIPE` and, as sendfile(2) does, a SIGPIPE to the helper thread (the runtime's
//! helpers block every signal, so it is never delivered).

use kernel::{bindings, fs::File, sync::aref::ARef};

use super::file::{Dir, Position};
use super::net::socket_of;
use super::Outcome;
use crate::sys::{self, neg, FileMode, EPOLLERR, EPOLLHUP, EPOLLOUT};

/// The checks of both files; `Err` is the result.
fn check(dst: &File, src: Option<&ARef<File>>) -> core::result::Result<FileMode, i32> {
    if socket_of(dst).is_none() {
        return Err(neg(bindings::ENOTSOCK));
    }
    if !FileMode::of(dst).write() {
        return Err(neg(bindings::EBADF));
    }
    let Some(src) = src else {
        return Err(neg(bindings::EBADF));
    };
    let mode = FileMode::of(src);
    if !mode.read() {
        return Err(neg(bindings::EBADF));
    }
    if !mode.regular() && !mode.blockdev() {
        return Err(neg(bindings::EINVAL));
    }
    Ok(mode)
}

/// One attempt at SENDFILE of `len` bytes of `src` at `off` to the socket `dst`.
pub(super) fn sendfile(
    dst: &ARef<File>,
    src: Option<&ARef<File>>,
    off: u64,
    len: u32,
    blocking: bool,
) -> Outcome {
    let mode = match check(dst, src) {
        Ok(m) => m,
        Err(e) => return Outcome::Done(e),
    };
    let Some(src) = src else {
        return Outcome::Done(neg(bindings::EBADF));
    };
    if !blocking {
        if sys::poll_now(dst) & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
            return Outcome::Wait(EPOLLOUT);
        }
        return Outcome::Offload;
    }
    // OFF_CURRENT: f_pos under its lock (killable); an offset needs FMODE_PREAD.
    let mut pos = match Position::acquire(src, mode, Dir::Read, off, true) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let ppos = pos.ptr();
    if ppos.is_null() {
        // A stream has no position to splice from (never for a regular file).
        return Outcome::Done(neg(bindings::EINVAL));
    }
    // A socket has no position; do_splice_direct wants one anyway.
    let mut opos: i64 = 0;
    // SAFETY: both files are held for the call; `ppos` points into `pos`, which lives
    // across it, `opos` is ours; `len` is at most MAX_RW_LEN (decode clamps it).
    let r = unsafe {
        sys::do_splice_direct(src.as_ptr(), ppos, dst.as_ptr(), &mut opos, len as usize, 0)
    };
    // At most `len` (< i32::MAX) or a negative errno.
    let r = r as i32;
    if r == neg(bindings::EAGAIN) {
        // A non-blocking socket filled up since the lane looked: wait for it again.
        return Outcome::Wait(EPOLLOUT);
    }
    Outcome::Done(r)
}
