// SPDX-License-Identifier: GPL-2.0

//! Requests that always block, so only helper threads run them: OPENAT, FSYNC,
//! FALLOCATE.
//!
//! OPENAT copies the path once (`strncpy_from_user`, at most `PATH_MAX` bytes with its
//! NUL: a longer name is `-ENAMETOOLONG`) and opens it as the calling thread, a thread
//! of the owning process (its mm, fs root and cwd, credentials): `filp_open` for a path
//! in the current directory, `file_open_root` for one in a directory slot. The latter
//! makes the directory the root of the lookup (`..` and absolute paths stay inside it,
//! as `openat2(RESOLVE_IN_ROOT)`); the other backends use exactly that to match. The
//! destination slot is reserved first, as for ACCEPT. `O_LARGEFILE` is added as
//! open(2) does on 64-bit. `O_PATH` never gets here (`decode` refuses it).

use core::ffi::c_int;
use core::ptr::NonNull;

use kernel::{
    alloc::flags::GFP_KERNEL,
    bindings,
    ffi::{c_char, c_long},
    fs::File,
    prelude::*,
    sync::aref::ARef,
};

use super::Outcome;
use crate::abi;
use crate::shared::Shared;
use crate::sys::{self, neg};

/// OPENAT of the path at `path` into the empty slot `dest`, relative to `dir` (or to
/// the current directory).
pub(super) fn openat(
    shared: &Shared,
    dir: Option<&ARef<File>>,
    path: u64,
    flags: u32,
    mode: u32,
    dest: u32,
) -> Outcome {
    if let Err(e) = shared.files.lock().reserve(dest) {
        return Outcome::Done(e);
    }
    match open(shared, dir, path, flags, mode) {
        Ok(file) => {
            shared.files.lock().fill(dest, Some(file));
            Outcome::Done(dest as i32)
        }
        Err(e) => {
            shared.files.lock().fill(dest, None);
            Outcome::Done(e)
        }
    }
}

fn open(
    shared: &Shared,
    dir: Option<&ARef<File>>,
    path: u64,
    flags: u32,
    mode: u32,
) -> core::result::Result<ARef<File>, i32> {
    let max = abi::PATH_MAX as usize;
    let mut name =
        KVec::<u8>::from_elem(0u8, max, GFP_KERNEL).map_err(|_| neg(bindings::ENOMEM))?;
    // SAFETY: `name` has room for `max` bytes; the source is a user address, which
    // strncpy_from_user checks (-EFAULT).
    let n = unsafe {
        bindings::strncpy_from_user(
            name.as_mut_ptr().cast::<c_char>(),
            path as usize as *const c_char,
            max as c_long,
        )
    };
    if n < 0 {
        return Err(n as i32);
    }
    if n as usize >= max {
        // No NUL within PATH_MAX bytes.
        return Err(neg(bindings::ENAMETOOLONG));
    }
    // `name[n]` is 0 (the buffer was zeroed and strncpy stopped at the NUL).
    let cname = name.as_ptr().cast::<c_char>();
    let oflags = (flags | bindings::O_LARGEFILE) as c_int;
    let umode = mode as bindings::umode_t;
    let f = match dir {
        // SAFETY: the directory file is held, so its `f_path` (the union's only view
        // that is not a const alias of itself) is valid for the call; `cname` is
        // NUL-terminated kernel memory.
        Some(d) => unsafe {
            let root = &raw const (*d.as_ptr()).__bindgen_anon_1.f_path;
            bindings::file_open_root(root, cname, oflags, umode)
        },
        // SAFETY: `cname` is NUL-terminated kernel memory; the lookup starts at the
        // calling thread's (the process's) current directory.
        None => unsafe { bindings::filp_open(cname, oflags, umode) },
    };
    let addr = f as isize;
    if f.is_null() {
        return Err(neg(bindings::ENOMEM));
    }
    if (-(bindings::MAX_ERRNO as isize)..0).contains(&addr) {
        return Err(addr as i32);
    }
    // SAFETY: the open returned a valid file with one reference, which the ARef adopts
    // (`File` is a transparent wrapper of `struct file`).
    let file = unsafe { ARef::from_raw(NonNull::new_unchecked(f.cast::<File>())) };
    if sys::refused_in_slot(&file, shared.fops) {
        // Dropped here: the release runs on the way back to user space (task work).
        return Err(neg(bindings::EBADF));
    }
    Ok(file)
}

/// FSYNC: `vfs_fsync_range` of `off..off + len` (`len` 0: to the end).
pub(super) fn fsync(file: &ARef<File>, flags: u32, off: u64, len: u32) -> Outcome {
    // `decode` keeps off + len within i64; checked again, never trusted.
    let Ok(start) = i64::try_from(off) else {
        return Outcome::Done(neg(bindings::EINVAL));
    };
    let end = if len == 0 {
        i64::MAX
    } else {
        match start.checked_add(len as i64 - 1) {
            Some(e) => e,
            None => return Outcome::Done(neg(bindings::EINVAL)),
        }
    };
    let datasync = (flags & abi::FSYNC_DATASYNC != 0) as c_int;
    // SAFETY: the file is held.
    let r = unsafe { bindings::vfs_fsync_range(file.as_ptr(), start, end, datasync) };
    Outcome::Done(r)
}

/// FALLOCATE: `vfs_fallocate(mode, off, len)`.
pub(super) fn fallocate(file: &ARef<File>, mode: u32, off: u64, len: u64) -> Outcome {
    // `decode` checked these; again here, without overflow, never trusted.
    let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else {
        return Outcome::Done(neg(bindings::EINVAL));
    };
    if len <= 0 || off.checked_add(len).is_none() {
        return Outcome::Done(neg(bindings::EINVAL));
    }
    // SAFETY: the file is held; the mode's combination is checked by vfs_fallocate.
    let r = unsafe { bindings::vfs_fallocate(file.as_ptr(), mode as c_int, off, len) };
    Outcome::Done(r)
}
