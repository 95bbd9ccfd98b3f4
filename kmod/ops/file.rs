// SPDX-License-Identifier: GPL-2.0

//! File requests: READ, WRITE, and WRITEV on anything that is not a socket.
//!
//! Positions follow read(2)/pread(2): an explicit offset needs `FMODE_PREAD` /
//! `FMODE_PWRITE` (`-ESPIPE` otherwise, e.g. on a pipe); [`OFF_CURRENT`](abi::OFF_CURRENT)
//! uses no position at all on a stream file (`FMODE_STREAM`), and otherwise a private copy
//! of `f_pos` that is written back afterwards — under `f_pos_lock` when the file has
//! `FMODE_ATOMIC_POS`, as `fdget_pos` does. A lane thread only try-locks it (a busy
//! position sends the request to a helper thread); a helper waits for it killably.

use core::ptr::{addr_of_mut, null_mut};

use kernel::{bindings, fs::File, sync::aref::ARef};

use super::iov::{import_iovecs, user_msg, FAST_IOVECS};
use super::Outcome;
use crate::abi;
use crate::sys::{self, neg, FileMode, EPOLLIN, EPOLLOUT, RWF_NOWAIT};

/// Transfer direction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    Read,
    Write,
}

impl Dir {
    fn iter_dir(self) -> u32 {
        match self {
            Dir::Read => bindings::ITER_DEST,
            Dir::Write => bindings::ITER_SOURCE,
        }
    }

    fn events(self) -> u32 {
        match self {
            Dir::Read => EPOLLIN,
            Dir::Write => EPOLLOUT,
        }
    }
}

/// The position one request transfers at; gives back (and unlocks) `f_pos` on drop.
pub(super) struct Position<'a> {
    file: &'a File,
    /// `f_pos` is used (and written back on drop).
    current: bool,
    /// No position at all (`FMODE_STREAM`).
    stream: bool,
    /// We hold `f_pos_lock`.
    locked: bool,
    value: i64,
}

impl<'a> Position<'a> {
    pub(super) fn acquire(
        file: &'a File,
        mode: FileMode,
        dir: Dir,
        off: u64,
        blocking: bool,
    ) -> core::result::Result<Self, Outcome> {
        let mut p = Position {
            file,
            current: false,
            stream: false,
            locked: false,
            value: 0,
        };
        if off != abi::OFF_CURRENT {
            let allowed = match dir {
                Dir::Read => mode.pread(),
                Dir::Write => mode.pwrite(),
            };
            if !allowed {
                return Err(Outcome::Done(neg(bindings::ESPIPE)));
            }
            p.value = i64::try_from(off).map_err(|_| Outcome::Done(neg(bindings::EINVAL)))?;
            return Ok(p);
        }
        if mode.stream() {
            p.stream = true;
            return Ok(p);
        }
        if mode.atomic_pos() {
            let fp = file.as_ptr();
            if blocking {
                // SAFETY: the file is held and has FMODE_ATOMIC_POS, so `f_pos_lock` is
                // its position mutex (not the pipe member of the union).
                if unsafe { sys::fastio_f_pos_lock_killable(fp) } != 0 {
                    return Err(Outcome::Done(neg(bindings::EINTR)));
                }
            // SAFETY: as above.
            } else if !unsafe { sys::fastio_f_pos_trylock(fp) } {
                return Err(Outcome::Offload);
            }
            p.locked = true;
        }
        p.current = true;
        // SAFETY: the file is held; `f_pos` is read like read(2) reads it (under
        // f_pos_lock when the file has one, racily otherwise, as the VFS does).
        p.value = unsafe { core::ptr::read_volatile(addr_of_mut!((*file.as_ptr()).f_pos)) };
        Ok(p)
    }

    /// The `loff_t *` for the VFS call: null for a stream.
    pub(super) fn ptr(&mut self) -> *mut i64 {
        if self.stream {
            null_mut()
        } else {
            &mut self.value
        }
    }
}

impl Drop for Position<'_> {
    fn drop(&mut self) {
        let fp = self.file.as_ptr();
        if self.current {
            // SAFETY: as in `acquire`: written back as read(2) does.
            unsafe { core::ptr::write_volatile(addr_of_mut!((*fp).f_pos), self.value) };
        }
        if self.locked {
            // SAFETY: we hold the lock (taken in `acquire`).
            unsafe { sys::fastio_f_pos_unlock(fp) };
        }
    }
}

/// Whether position `pos` is at or past the end of `file`.
fn at_eof(file: &File, pos: i64) -> bool {
    // SAFETY: an open file always has an inode; i_size is read racily, like
    // i_size_read() does on 64-bit machines: a hint only.
    let size = unsafe { core::ptr::read_volatile(&(*(*file.as_ptr()).f_inode).i_size) };
    pos >= size
}

/// One VFS read or write of `iter` at `pos`.
///
/// # Safety
///
/// `iter` must describe memory of the calling process (user memory) or be otherwise
/// valid for the transfer; `pos` must be null (stream) or valid.
unsafe fn vfs_rw(
    file: &File,
    dir: Dir,
    iter: *mut bindings::iov_iter,
    pos: *mut i64,
    regular: bool,
    blocking: bool,
) -> i32 {
    let rwf = if blocking { 0 } else { RWF_NOWAIT };
    // SAFETY: forwarded to the caller; the file is held.
    let r = unsafe {
        match dir {
            // Only what is cached: never readahead I/O from a polling thread.
            Dir::Read if regular && !blocking && !pos.is_null() => {
                sys::fastio_read_cached(file.as_ptr(), iter, pos)
            }
            Dir::Read => bindings::vfs_iter_read(file.as_ptr(), iter, pos, rwf),
            Dir::Write => bindings::vfs_iter_write(file.as_ptr(), iter, pos, rwf),
        }
    };
    r as i32
}

/// What a non-blocking attempt's result means.
fn nonblocking_outcome(r: i32, regular: bool, dir: Dir) -> Option<Outcome> {
    if r == neg(bindings::EAGAIN) || r == neg(bindings::EOPNOTSUPP) {
        return Some(if regular || r == neg(bindings::EOPNOTSUPP) {
            Outcome::Offload
        } else {
            Outcome::Wait(dir.events())
        });
    }
    None
}

/// READ or WRITE of `len` bytes at `addr`.
pub(super) fn rw(
    file: &ARef<File>,
    dir: Dir,
    addr: u64,
    len: u32,
    off: u64,
    blocking: bool,
) -> Outcome {
    let mode = FileMode::of(file);
    let regular = mode.regular();
    if !blocking && (!mode.nowait() || (regular && mode.direct())) {
        // FIFOs, ttys, tmpfs, 9p...: no non-blocking mode; only a helper may wait on them.
        // O_DIRECT: a direct transfer of a synchronous request waits for the device, so
        // never on a lane thread (the helper gets the file system's own answer, also
        // its alignment check).
        return Outcome::Offload;
    }
    let mut pos = match Position::acquire(file, mode, dir, off, blocking) {
        Ok(p) => p,
        Err(o) => return o,
    };
    let mut done: u32 = 0;
    loop {
        // `done` < `len`, and `addr..addr + len` passes access_ok or fails here.
        let mut msg = match user_msg(dir.iter_dir(), addr.wrapping_add(done as u64), len - done) {
            Ok(m) => m,
            Err(e) => return Outcome::Done(if done > 0 { done as i32 } else { e }),
        };
        let p = pos.ptr();
        // SAFETY: the iterator describes the calling process's memory; `p` is null for a
        // stream or points to `pos.value`.
        let r = unsafe { vfs_rw(file, dir, &mut msg.msg_iter, p, regular, blocking) };
        if !blocking {
            if let Some(o) = nonblocking_outcome(r, regular, dir) {
                return o;
            }
            // A short transfer of a regular file that is not at its end: part of the
            // range is not in the page cache (or the write would block); a helper does
            // the rest (a READ of a regular file is short only at EOF).
            let short = r > 0 && (r as u32) < len;
            let eof = dir == Dir::Read && at_eof(file, pos.value);
            if regular && short && !eof {
                return Outcome::Partial(r as u32);
            }
            return Outcome::Done(r);
        }
        if r < 0 {
            return Outcome::Done(if done > 0 { done as i32 } else { r });
        }
        done = done.saturating_add(r as u32);
        // Regular files: finish short transfers; end of file or a stream stops here.
        if r == 0 || done >= len || !regular {
            return Outcome::Done(done as i32);
        }
    }
}

/// WRITEV on a file that is not a socket.
pub(super) fn writev(file: &ARef<File>, iov: u64, count: u32, off: u64, blocking: bool) -> Outcome {
    let mode = FileMode::of(file);
    let regular = mode.regular();
    if !blocking && (!mode.nowait() || (regular && mode.direct())) {
        return Outcome::Offload;
    }
    let mut pos = match Position::acquire(file, mode, Dir::Write, off, blocking) {
        Ok(p) => p,
        Err(o) => return o,
    };
    // SAFETY: iovec and iov_iter are plain C data; all-zero is valid and empty.
    let mut fast: [bindings::iovec; FAST_IOVECS] = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let mut iter: bindings::iov_iter = unsafe { core::mem::zeroed() };
    let iovp = match import_iovecs(iov, count, &mut fast, &mut iter) {
        Ok(p) => p,
        Err(e) => return Outcome::Done(e),
    };
    let p = pos.ptr();
    // SAFETY: the iterator was imported from the caller's iovecs and points into `fast`
    // or `iovp`, both alive here; `p` is null or points to `pos.value`.
    let r = unsafe { vfs_rw(file, Dir::Write, &mut iter, p, regular, blocking) };
    // SAFETY: `iovp` is null or an allocation of import_iovec (never `fast`).
    unsafe { bindings::kfree(iovp.cast()) };
    if !blocking {
        if let Some(o) = nonblocking_outcome(r, regular, Dir::Write) {
            return o;
        }
    }
    Outcome::Done(r)
}
