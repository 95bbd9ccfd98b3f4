// SPDX-License-Identifier: GPL-2.0

//! Socket requests: ACCEPT, RECV, SEND, WRITEV on a socket, SHUTDOWN, CONNECT.
//!
//! CONNECT copies the address once into kernel memory and connects without blocking
//! (`kernel_connect` with `O_NONBLOCK`). `-EINPROGRESS` waits for `EPOLLOUT` through
//! the readiness machinery (pending.rs), as "in progress" (see `ops::waiting`): the
//! re-issue then polls the socket and completes with its error, `sock_error` (what
//! `SO_ERROR` reads): 0 once connected; a socket hung up without an error is
//! `-ECONNABORTED`, as `connect(2)` says. While it waits it is cancelled like a RECV
//! (ASYNC_CANCEL, CLOSE, SHUTDOWN).
//!
//! ACCEPT uses `kernel_accept`, the only exported accept: the new socket is created by
//! `sock_create_lite` as a *kernel* socket, so LSMs see it labelled as one and
//! `security_socket_accept` (not exported) is not consulted; `accept4(2)` by the process
//! itself would do both. On a system without an LSM policy on accept this changes
//! nothing; with one (SELinux, AppArmor, Smack) fastio's ACCEPT bypasses that check.

use core::ffi::{c_int, c_uint};
use core::ptr::{null_mut, NonNull};

use kernel::{
    bindings,
    fs::File,
    sync::aref::ARef,
    sync::Mutex,
    uaccess::{UserPtr, UserSlice},
};

use super::iov::{import_iovecs, user_msg, FAST_IOVECS};
use super::Outcome;
use crate::abi;
use crate::files::FileTable;
use crate::sys::{self, neg, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP};

pub(super) fn socket_of(file: &File) -> Option<*mut bindings::socket> {
    // SAFETY: sock_from_file only reads the file's operations and private data.
    let s = unsafe { bindings::sock_from_file(file.as_ptr()) };
    (!s.is_null()).then_some(s)
}

/// `-EAGAIN` from a socket call: wait for readiness, unless the request itself asked for
/// `MSG_DONTWAIT` (then `-EAGAIN` is its answer).
pub(super) fn would_block(r: c_int, flags: u32, events: u32) -> Outcome {
    if r == neg(bindings::EAGAIN) && flags & abi::MSG_DONTWAIT == 0 {
        Outcome::Wait(events)
    } else {
        Outcome::Done(r)
    }
}

pub(super) fn recv(file: &ARef<File>, addr: u64, len: u32, flags: u32) -> Outcome {
    recv_msg(file, addr, len, flags, false).0
}

/// [`recv`] without flags, also saying whether the socket may hold more: false only
/// when the protocol reported nothing left after this reception (TCP's `msg_inq`, as
/// io_uring's multishot receive reads it); true when it did not say (other sockets).
pub(super) fn recv_inq(file: &ARef<File>, addr: u64, len: u32) -> (Outcome, bool) {
    recv_msg(file, addr, len, 0, true)
}

/// One non-blocking reception; with `inq`, asks the protocol what is left after it
/// (the second value: false only when it said nothing is).
fn recv_msg(file: &ARef<File>, addr: u64, len: u32, flags: u32, inq: bool) -> (Outcome, bool) {
    let Some(sock) = socket_of(file) else {
        return (Outcome::Done(neg(bindings::ENOTSOCK)), true);
    };
    let mut msg = match user_msg(bindings::ITER_DEST, addr, len) {
        Ok(m) => m,
        Err(e) => return (Outcome::Done(e), true),
    };
    if inq {
        msg.set_msg_get_inq(true);
        msg.msg_inq = -1;
    }
    // SAFETY: `sock` belongs to `file`, which we hold; `msg` is initialised.
    let r = unsafe { bindings::sock_recvmsg(sock, &mut msg, (flags | abi::MSG_DONTWAIT) as c_int) };
    let more = !inq || msg.msg_inq != 0;
    (would_block(r, flags, EPOLLIN | EPOLLRDHUP), more)
}

pub(super) fn send(file: &ARef<File>, addr: u64, len: u32, flags: u32) -> Outcome {
    let Some(sock) = socket_of(file) else {
        return Outcome::Done(neg(bindings::ENOTSOCK));
    };
    let mut msg = match user_msg(bindings::ITER_SOURCE, addr, len) {
        Ok(m) => m,
        Err(e) => return Outcome::Done(e),
    };
    msg.msg_flags = (flags | abi::MSG_DONTWAIT | abi::MSG_NOSIGNAL) as c_uint;
    // SAFETY: as for RECV.
    let r = unsafe { bindings::sock_sendmsg(sock, &mut msg) };
    would_block(r, flags, EPOLLOUT)
}

/// Accepts into `dest`, which is reserved first: a busy or invalid destination is
/// refused before a connection is taken off the listener, so none is ever dropped.
pub(super) fn accept(
    files: &Mutex<FileTable>,
    file: &ARef<File>,
    dest: u32,
    flags: u32,
) -> Outcome {
    let Some(sock) = socket_of(file) else {
        return Outcome::Done(neg(bindings::ENOTSOCK));
    };
    if let Err(e) = files.lock().reserve(dest) {
        return Outcome::Done(e);
    }
    accept_reserved(files, sock, dest, flags)
}

/// Multishot ACCEPT's one step: accepts into an empty slot of `first..first + count`
/// (the first empty one from `first + start` on, wrapping), reserved before the
/// connection is taken. A full range is `-ENFILE` once a connection waits (it stays in
/// the backlog), and a wait for one before.
pub(crate) fn accept_range(
    files: &Mutex<FileTable>,
    file: &ARef<File>,
    first: u32,
    count: u32,
    start: u32,
    flags: u32,
) -> Outcome {
    let Some(sock) = socket_of(file) else {
        return Outcome::Done(neg(bindings::ENOTSOCK));
    };
    let Some(dest) = files.lock().reserve_free(first, count, start) else {
        return if sys::poll_now(file) & EPOLLIN != 0 {
            Outcome::Done(neg(bindings::ENFILE))
        } else {
            Outcome::Wait(EPOLLIN)
        };
    };
    accept_reserved(files, sock, dest, flags)
}

/// Accepts into `dest`, which the caller reserved.
fn accept_reserved(
    files: &Mutex<FileTable>,
    sock: *mut bindings::socket,
    dest: u32,
    flags: u32,
) -> Outcome {
    let mut new: *mut bindings::socket = null_mut();
    // SAFETY: `sock` belongs to a file the caller holds; `new` receives a new socket.
    let r = unsafe { bindings::kernel_accept(sock, &mut new, bindings::O_NONBLOCK as c_int) };
    if r < 0 {
        files.lock().fill(dest, None);
        return if r == neg(bindings::EAGAIN) {
            Outcome::Wait(EPOLLIN)
        } else {
            Outcome::Done(r)
        };
    }
    let fflags = if flags & abi::ACCEPT_NONBLOCK != 0 {
        bindings::O_NONBLOCK
    } else {
        0
    };
    // SAFETY: `new` is the accepted socket; sock_alloc_file takes it over (and releases
    // it itself on failure).
    let f = unsafe { bindings::sock_alloc_file(new, fflags as c_int, core::ptr::null()) };
    let addr = f as isize;
    if (-(bindings::MAX_ERRNO as isize)..0).contains(&addr) || f.is_null() {
        files.lock().fill(dest, None);
        return Outcome::Done(if f.is_null() {
            neg(bindings::ENOMEM)
        } else {
            addr as i32
        });
    }
    // SAFETY: sock_alloc_file returned a valid file with one reference, which the ARef
    // adopts (`File` is a transparent wrapper of `struct file`).
    let nf = unsafe { ARef::from_raw(NonNull::new_unchecked(f.cast::<File>())) };
    files.lock().fill(dest, Some(nf));
    Outcome::Done(dest as i32)
}

/// WRITEV on a socket (a `sendmsg` with the imported iovecs).
pub(super) fn writev(sock: *mut bindings::socket, iov: u64, count: u32) -> Outcome {
    // SAFETY: iovec is plain C data; all-zero is valid.
    let mut fast: [bindings::iovec; FAST_IOVECS] = unsafe { core::mem::zeroed() };
    // SAFETY: msghdr is plain C data; all-zero is empty.
    let mut msg: bindings::msghdr = unsafe { core::mem::zeroed() };
    let iovp = match import_iovecs(iov, count, &mut fast, &mut msg.msg_iter) {
        Ok(p) => p,
        Err(e) => return Outcome::Done(e),
    };
    msg.msg_flags = (abi::MSG_DONTWAIT | abi::MSG_NOSIGNAL) as c_uint;
    // SAFETY: `sock` belongs to a file the caller holds; `msg` carries the imported
    // iterator, which points into `fast` or `iovp`, both alive here.
    let r = unsafe { bindings::sock_sendmsg(sock, &mut msg) };
    // SAFETY: import_iovec left `iovp` null or pointing to an array it allocated (never
    // to `fast`); kfree(NULL) is a no-op.
    unsafe { bindings::kfree(iovp.cast()) };
    would_block(r, 0, EPOLLOUT)
}

/// SHUTDOWN (`how` is SHUT_RD, SHUT_WR or SHUT_RDWR: checked by `decode`).
pub(super) fn shutdown(file: &ARef<File>, how: u32) -> Outcome {
    let Some(sock) = socket_of(file) else {
        return Outcome::Done(neg(bindings::ENOTSOCK));
    };
    let how = match how {
        abi::SHUT_RD => bindings::sock_shutdown_cmd_SHUT_RD,
        abi::SHUT_WR => bindings::sock_shutdown_cmd_SHUT_WR,
        abi::SHUT_RDWR => bindings::sock_shutdown_cmd_SHUT_RDWR,
        _ => return Outcome::Done(neg(bindings::EINVAL)),
    };
    // SAFETY: `sock` belongs to `file`, which we hold.
    Outcome::Done(unsafe { bindings::kernel_sock_shutdown(sock, how) })
}

/// CONNECT to the `len`-byte address at `addr`; `len` 0: a connect in progress.
pub(super) fn connect(file: &ARef<File>, addr: u64, len: u32) -> Outcome {
    let Some(sock) = socket_of(file) else {
        return Outcome::Done(neg(bindings::ENOTSOCK));
    };
    if len == 0 {
        return connect_result(file, sock);
    }
    // SAFETY: sockaddr_storage is plain C data; all-zero is valid.
    let mut sa: bindings::__kernel_sockaddr_storage = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of_val(&sa);
    let n = len as usize;
    if n > size {
        return Outcome::Done(neg(bindings::EINVAL));
    }
    // SAFETY: `sa` is `size` bytes of plain data, and `n <= size`.
    let bytes = unsafe { core::slice::from_raw_parts_mut((&raw mut sa).cast::<u8>(), n) };
    let user = UserSlice::new(UserPtr::from_addr(addr as usize), n);
    if user.reader().read_slice(bytes).is_err() {
        return Outcome::Done(neg(bindings::EFAULT));
    }
    // SAFETY: `sock` belongs to `file`, which we hold; `sa` holds `n` bytes of address.
    let r = unsafe {
        bindings::kernel_connect(
            sock,
            (&raw mut sa).cast::<bindings::sockaddr_unsized>(),
            n as c_int,
            bindings::O_NONBLOCK as c_int,
        )
    };
    if r == neg(bindings::EINPROGRESS) {
        return Outcome::Wait(EPOLLOUT);
    }
    Outcome::Done(r)
}

/// The end of a connect in progress: still waiting, or the socket's error.
fn connect_result(file: &File, sock: *mut bindings::socket) -> Outcome {
    let mask = sys::poll_now(file);
    if mask & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
        return Outcome::Wait(EPOLLOUT);
    }
    // SAFETY: `sock` belongs to `file`, which the caller holds.
    let err = unsafe { sys::fastio_sock_error(sock) };
    if err != 0 {
        Outcome::Done(err)
    } else if mask & EPOLLHUP != 0 {
        Outcome::Done(neg(bindings::ECONNABORTED))
    } else {
        Outcome::Done(0)
    }
}
