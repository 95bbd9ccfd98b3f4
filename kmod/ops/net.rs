// SPDX-License-Identifier: GPL-2.0

//! Socket requests: ACCEPT, RECV, SEND, and WRITEV on a socket.
//!
//! ACCEPT uses `kernel_accept`, the only exported accept: the new socket is created by
//! `sock_create_lite` as a *kernel* socket, so LSMs see it labelled as one and
//! `security_socket_accept` (not exported) is not consulted; `accept4(2)` by the process
//! itself would do both. On a system without an LSM policy on accept this changes
//! nothing; with one (SELinux, AppArmor, Smack) fastio's ACCEPT bypasses that check.

use core::ffi::{c_int, c_uint, c_void};
use core::ptr::{null_mut, NonNull};

use kernel::{bindings, fs::File, sync::aref::ARef, sync::Mutex};

use super::Outcome;
use crate::abi;
use crate::files::FileTable;
use crate::sys::{neg, EPOLLIN, EPOLLOUT, EPOLLRDHUP};

/// UIO_FASTIOV: iovecs import_iovec copies into the caller's array.
pub(super) const FAST_IOVECS: usize = 8;

pub(super) fn socket_of(file: &File) -> Option<*mut bindings::socket> {
    // SAFETY: sock_from_file only reads the file's operations and private data.
    let s = unsafe { bindings::sock_from_file(file.as_ptr()) };
    (!s.is_null()).then_some(s)
}

/// A zeroed `msghdr` whose iterator covers the user buffer `addr..addr+len`.
pub(super) fn user_msg(dir: u32, addr: u64, len: u32) -> core::result::Result<bindings::msghdr, i32> {
    // SAFETY: msghdr is plain C data for which all-zero is the empty value.
    let mut msg: bindings::msghdr = unsafe { core::mem::zeroed() };
    // SAFETY: import_ubuf only checks the range with access_ok and fills the iterator;
    // the copy happens later, in the calling thread's (the owner's) address space.
    let r = unsafe {
        bindings::import_ubuf(
            dir as c_int,
            addr as usize as *mut c_void,
            len as usize,
            &mut msg.msg_iter,
        )
    };
    if r < 0 {
        return Err(r);
    }
    Ok(msg)
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
    let Some(sock) = socket_of(file) else {
        return Outcome::Done(neg(bindings::ENOTSOCK));
    };
    let mut msg = match user_msg(bindings::ITER_DEST, addr, len) {
        Ok(m) => m,
        Err(e) => return Outcome::Done(e),
    };
    // SAFETY: `sock` belongs to `file`, which we hold; `msg` is initialised.
    let r = unsafe { bindings::sock_recvmsg(sock, &mut msg, (flags | abi::MSG_DONTWAIT) as c_int) };
    would_block(r, flags, EPOLLIN | EPOLLRDHUP)
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
    let mut new: *mut bindings::socket = null_mut();
    // SAFETY: `sock` belongs to `file`, which we hold; `new` receives a new socket.
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
    let iovp = match super::file::import_iovecs(iov, count, &mut fast, &mut msg.msg_iter) {
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
