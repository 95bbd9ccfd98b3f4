// SPDX-License-Identifier: GPL-2.0

//! User buffers as kernel iterators: one buffer (`import_ubuf`) or an iovec array
//! (`import_iovec`), for both families of requests.

use core::ffi::{c_int, c_uint, c_void};

use kernel::bindings;

/// UIO_FASTIOV: iovecs import_iovec copies into the caller's array.
pub(super) const FAST_IOVECS: usize = 8;

/// A zeroed `msghdr` whose iterator covers the user buffer `addr..addr+len`.
pub(super) fn user_msg(
    dir: u32,
    addr: u64,
    len: u32,
) -> core::result::Result<bindings::msghdr, i32> {
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

/// Copies and checks `count` iovecs at `iov` into `fast` or an allocation (returned, to
/// be kfree'd by the caller after the transfer; null when `fast` was used) and sets up
/// `iter` over them.
pub(super) fn import_iovecs(
    iov: u64,
    count: u32,
    fast: &mut [bindings::iovec; FAST_IOVECS],
    iter: &mut bindings::iov_iter,
) -> core::result::Result<*mut bindings::iovec, i32> {
    let mut iovp: *mut bindings::iovec = fast.as_mut_ptr();
    // SAFETY: import_iovec copies and checks `count` (<= UIO_MAXIOV, validated by decode)
    // iovecs from the caller's memory into `fast` (FAST_IOVECS entries, as it is told)
    // or into an allocation it returns in `iovp`; otherwise it sets `iovp` to null.
    let r = unsafe {
        bindings::import_iovec(
            bindings::ITER_SOURCE as c_int,
            iov as usize as *const bindings::iovec,
            count,
            FAST_IOVECS as c_uint,
            &mut iovp,
            iter,
        )
    };
    if r < 0 {
        return Err(r as i32);
    }
    Ok(iovp)
}
