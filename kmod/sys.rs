// SPDX-License-Identifier: GPL-2.0

//! The module's few direct kernel calls that the kernel crate does not wrap: the
//! wrappers of `fastio_helpers.c` (static inlines and macros), constants that are macros
//! with casts, and small safe functions over them.

use core::ffi::{c_int, c_long, c_uint, c_ulong};

use kernel::{bindings, fs::File};

#[allow(improper_ctypes)]
extern "C" {
    fn fastio_need_resched() -> bool;
    fn fastio_task_work_to_run() -> bool;
    pub(crate) fn fastio_notify_signal(task: *mut bindings::task_struct);
    pub(crate) fn fastio_get_current_user() -> *mut bindings::user_struct;
    fn fastio_rlimit_memlock() -> c_ulong;
    pub(crate) fn fastio_user_locked_vm(user: *mut bindings::user_struct) -> *mut c_long;
    pub(crate) fn fastio_init_wait_entry(
        wq: *mut bindings::wait_queue_entry,
        f: bindings::wait_queue_func_t,
    );
    pub(crate) fn fastio_wait_entry_del_careful(wq: *mut bindings::wait_queue_entry);
    pub(crate) fn fastio_vfs_poll(
        file: *mut bindings::file,
        pt: *mut bindings::poll_table_struct,
        qproc: bindings::poll_queue_proc,
        events: c_uint,
    ) -> c_uint;
    fn fastio_file_mode(file: *mut bindings::file) -> c_uint;
    fn fastio_file_name(file: *mut bindings::file) -> *const core::ffi::c_char;
    pub(crate) fn fastio_f_pos_trylock(file: *mut bindings::file) -> bool;
    pub(crate) fn fastio_f_pos_lock_killable(file: *mut bindings::file) -> c_int;
    pub(crate) fn fastio_f_pos_unlock(file: *mut bindings::file);
    pub(crate) fn fastio_read_cached(
        file: *mut bindings::file,
        iter: *mut bindings::iov_iter,
        pos: *mut i64,
    ) -> isize;
    fn fastio_poll_now(file: *mut bindings::file) -> c_uint;
    fn fastio_access_ok(addr: c_ulong, len: c_ulong) -> bool;
    fn fastio_task_size_max() -> c_ulong;
    fn fastio_get_user_u32(addr: c_ulong, out: *mut u32) -> c_int;
    fn fastio_get_user_u16(addr: c_ulong, out: *mut u16) -> c_int;
    fn fastio_put_user_u32(addr: c_ulong, value: u32) -> c_int;
    pub(crate) fn fastio_sock_error(sock: *mut bindings::socket) -> c_int;
    /// Exported by the scheduler: whether the current task is alone on its CPU.
    fn single_task_running() -> bool;
    /// Exported by fs/splice.c (`EXPORT_SYMBOL`), what sendfile(2) uses: splices `len`
    /// bytes of `in_` from `*ppos` to `out` through the calling task's internal pipe.
    pub(crate) fn do_splice_direct(
        in_: *mut bindings::file,
        ppos: *mut i64,
        out: *mut bindings::file,
        opos: *mut i64,
        len: usize,
        flags: c_uint,
    ) -> isize;
}

// Constants that are macros with casts in C, so bindgen does not export them.
pub(crate) const RWF_NOWAIT: i32 = 8;
pub(crate) const EPOLLIN: u32 = 0x1;
pub(crate) const EPOLLOUT: u32 = 0x4;
pub(crate) const EPOLLERR: u32 = 0x8;
pub(crate) const EPOLLHUP: u32 = 0x10;
pub(crate) const EPOLLRDHUP: u32 = 0x2000;
pub(crate) const POLLFREE: u32 = 0x4000;

/// `-code` as a CQE result.
pub(crate) const fn neg(code: u32) -> i32 {
    -(code as i32)
}

/// Whether `r` is one of the kernel's "interrupted, restart" results, which must never
/// reach user space in a CQE.
pub(crate) fn is_restart(r: i32) -> bool {
    matches!(
        r.wrapping_neg() as u32,
        bindings::ERESTARTSYS
            | bindings::ERESTARTNOINTR
            | bindings::ERESTARTNOHAND
            | bindings::ERESTART_RESTARTBLOCK
    )
}

/// Another task wants this CPU: a polling loop must give it away now.
pub(crate) fn others_want_cpu() -> bool {
    // SAFETY: plain queries of the current task's scheduler state.
    unsafe { fastio_need_resched() || !single_task_running() }
}

/// Gives the CPU to whoever wants it (returns at once when nobody does).
pub(crate) fn yield_cpu() {
    // SAFETY: called from a sleepable task context (an ioctl), holding no lock.
    unsafe { bindings::yield_() };
}

/// The current thread must go back to user space (and have its call restarted): a
/// signal is pending, or work was queued on it that only runs on the way out
/// (`task_work`: the release of a file it dropped last, CPU-time timers). In the second
/// case this sets `TIF_NOTIFY_SIGNAL`, so the restart is transparent.
pub(crate) fn must_return() -> bool {
    // SAFETY: looks at the current task's own work list and flags.
    let work = unsafe { fastio_task_work_to_run() };
    work || kernel::current!().signal_pending()
}

/// A signal is pending for the current task (a real one or a notify-signal).
pub(crate) fn signal_pending() -> bool {
    kernel::current!().signal_pending()
}

/// The caller's RLIMIT_MEMLOCK, in bytes.
pub(crate) fn rlimit_memlock() -> u64 {
    // SAFETY: reads the current task's rlimit.
    unsafe { fastio_rlimit_memlock() as u64 }
}

/// The caller may lock memory without limit (`CAP_IPC_LOCK`), as io_uring checks.
pub(crate) fn can_lock_memory() -> bool {
    // SAFETY: a capability check of the current task.
    unsafe { bindings::capable(bindings::CAP_IPC_LOCK as c_int) }
}

/// Whether `file` is an io_uring instance (its anon-inode dentry is "[io_uring]";
/// `io_is_uring_fops` is not exported). An io_uring can hold this module's files as
/// fixed files, so registering it would allow a reference cycle.
pub(crate) fn is_io_uring(file: &File) -> bool {
    // SAFETY: the file is held, so its dentry and the dentry's name stay valid while we
    // read it; the name is NUL-terminated.
    let name = unsafe { core::ffi::CStr::from_ptr(fastio_file_name(file.as_ptr())) };
    name.to_bytes() == b"[io_uring]"
}

/// The poll events `file` reports now (joining no wait queue).
pub(crate) fn poll_now(file: &File) -> u32 {
    // SAFETY: the file is held; a poll without a table only reads its state.
    unsafe { fastio_poll_now(file.as_ptr()) }
}

/// Whether `file` must never enter a slot: a /dev/fastio file (this context or another;
/// `fops` is the device's `file_operations`) would make a reference cycle (file →
/// context → table → file) that nothing breaks, as would an io_uring, which can hold a
/// /dev/fastio file as a fixed file. io_uring refuses its own files the same way.
pub(crate) fn refused_in_slot(file: &File, fops: *const bindings::file_operations) -> bool {
    // SAFETY: the file is held; `f_op` is fixed once a file is open.
    let fastio = unsafe { core::ptr::eq((*file.as_ptr()).f_op, fops) };
    fastio || is_io_uring(file)
}

/// What the module needs to know about an open file's mode.
#[derive(Clone, Copy)]
pub(crate) struct FileMode(u32);

impl FileMode {
    const PREAD: u32 = 1 << 0;
    const PWRITE: u32 = 1 << 1;
    const STREAM: u32 = 1 << 2;
    const ATOMIC_POS: u32 = 1 << 3;
    const NOWAIT: u32 = 1 << 4;
    const REGULAR: u32 = 1 << 5;
    const DIRECT: u32 = 1 << 6;
    const READ: u32 = 1 << 7;
    const WRITE: u32 = 1 << 8;
    const BLOCKDEV: u32 = 1 << 9;

    pub(crate) fn of(file: &File) -> Self {
        // SAFETY: the file is held; its mode bits and inode type are fixed once open.
        FileMode(unsafe { fastio_file_mode(file.as_ptr()) })
    }

    /// Reads at an explicit offset are allowed (`FMODE_PREAD`).
    pub(crate) fn pread(self) -> bool {
        self.0 & Self::PREAD != 0
    }

    /// Writes at an explicit offset are allowed (`FMODE_PWRITE`).
    pub(crate) fn pwrite(self) -> bool {
        self.0 & Self::PWRITE != 0
    }

    /// No position at all (`FMODE_STREAM`: pipes, sockets, many devices).
    pub(crate) fn stream(self) -> bool {
        self.0 & Self::STREAM != 0
    }

    /// The position is protected by `f_pos_lock` (`FMODE_ATOMIC_POS`).
    pub(crate) fn atomic_pos(self) -> bool {
        self.0 & Self::ATOMIC_POS != 0
    }

    /// Non-blocking I/O is supported (`FMODE_NOWAIT`).
    pub(crate) fn nowait(self) -> bool {
        self.0 & Self::NOWAIT != 0
    }

    /// A regular file (page cache; no readiness to wait for).
    pub(crate) fn regular(self) -> bool {
        self.0 & Self::REGULAR != 0
    }

    /// Open for reading (`FMODE_READ`).
    pub(crate) fn read(self) -> bool {
        self.0 & Self::READ != 0
    }

    /// Open for writing (`FMODE_WRITE`).
    pub(crate) fn write(self) -> bool {
        self.0 & Self::WRITE != 0
    }

    /// A block device.
    pub(crate) fn blockdev(self) -> bool {
        self.0 & Self::BLOCKDEV != 0
    }

    /// Opened with `O_DIRECT`: I/O goes to the device (a synchronous direct transfer
    /// waits for it even with `RWF_NOWAIT`).
    pub(crate) fn direct(self) -> bool {
        self.0 & Self::DIRECT != 0
    }
}

/// Whether `addr..addr + len` may be a user range (`access_ok`: below the end of the
/// user address space, without wrapping). Says nothing about whether it is mapped.
pub(crate) fn user_range_ok(addr: u64, len: u64) -> bool {
    // SAFETY: access_ok only compares numbers.
    unsafe { fastio_access_ok(addr as c_ulong, len as c_ulong) }
}

/// The end of the largest user address space (`TASK_SIZE_MAX`).
pub(crate) fn user_end() -> u64 {
    // SAFETY: returns a constant.
    unsafe { fastio_task_size_max() as u64 }
}

/// Reads the aligned `u32` of user memory at `addr` with one load (`get_user`: never
/// torn by a concurrent store of user space); `-EFAULT` when it cannot be read.
pub(crate) fn get_user_u32(addr: u64) -> Result<u32, i32> {
    let mut v = 0u32;
    // SAFETY: get_user checks the address (access_ok) and handles faults; `v` is ours.
    match unsafe { fastio_get_user_u32(addr as c_ulong, &mut v) } {
        0 => Ok(v),
        e => Err(e),
    }
}

/// [`get_user_u32`] of an aligned `u16`.
pub(crate) fn get_user_u16(addr: u64) -> Result<u16, i32> {
    let mut v = 0u16;
    // SAFETY: as for get_user_u32.
    match unsafe { fastio_get_user_u16(addr as c_ulong, &mut v) } {
        0 => Ok(v),
        e => Err(e),
    }
}

/// Stores `value` into the aligned `u32` of user memory at `addr` with one store
/// (`put_user`); `-EFAULT` when it cannot be written.
pub(crate) fn put_user_u32(addr: u64, value: u32) -> Result<(), i32> {
    // SAFETY: put_user checks the address (access_ok) and handles faults.
    match unsafe { fastio_put_user_u32(addr as c_ulong, value) } {
        0 => Ok(()),
        e => Err(e),
    }
}
