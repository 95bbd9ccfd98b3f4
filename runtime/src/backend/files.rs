//! The in-process file table of the `threads` backend: slot -> file reference.
//!
//! Each slot holds its own duplicate of the registered descriptor (the counterpart of
//! the kernel module's `struct file` reference), shared through an `Arc` so that a
//! request that is waiting for readiness keeps its file open even if the slot is
//! emptied meanwhile.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// A registered file.
#[derive(Debug)]
pub(crate) struct FileRef {
    fd: OwnedFd,
    /// Sockets, pipes, FIFOs, ttys: `EAGAIN` means "wait for readiness". Regular files and
    /// block devices never get parked.
    pub(crate) pollable: bool,
}

impl FileRef {
    /// Duplicates `fd` (close-on-exec). Non-regular files are switched to non-blocking
    /// mode, which the open file description shares with the caller's descriptor: a
    /// worker thread must never block in accept(2) or read(2).
    pub(crate) fn dup(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let fd = fd.try_clone_to_owned()?;
        Self::adopt(fd)
    }

    /// Takes ownership of `fd` (e.g. a freshly accepted socket).
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Self> {
        let raw = fd.as_raw_fd();
        // SAFETY: fstat on a descriptor we own, into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let fmt = st.st_mode & libc::S_IFMT;
        let pollable = fmt != libc::S_IFREG && fmt != libc::S_IFBLK && fmt != libc::S_IFDIR;
        if pollable {
            // SAFETY: fcntl on a descriptor we own.
            let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
            // SAFETY: as above.
            if flags < 0
                || (flags & libc::O_NONBLOCK == 0
                    && unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0)
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(FileRef { fd, pollable })
    }

    /// The descriptor number (valid while `self` lives).
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A new descriptor for the same file.
    pub(crate) fn duplicate(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

/// Slot -> file, one lock per slot (slots of different connections never contend).
pub(crate) struct FileTable {
    slots: Box<[Mutex<Option<Arc<FileRef>>>]>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a slot lock cannot leave the Option half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FileTable {
    /// A table of `n` empty slots.
    pub(crate) fn new(n: u32) -> Self {
        FileTable {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self, slot: u32) -> io::Result<&Mutex<Option<Arc<FileRef>>>> {
        self.slots
            .get(slot as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// The file in `slot`, if any.
    pub(crate) fn get(&self, slot: u32) -> Option<Arc<FileRef>> {
        self.slot(slot).ok().and_then(|m| lock(m).clone())
    }

    /// Whether `slot` exists and holds no file.
    pub(crate) fn is_empty(&self, slot: u32) -> bool {
        self.slot(slot).is_ok_and(|m| lock(m).is_none())
    }

    /// Fills the empty `slot`; `EBUSY` if it is occupied, `EBADF` if out of range.
    pub(crate) fn insert(&self, slot: u32, file: FileRef) -> io::Result<()> {
        let mut s = lock(self.slot(slot)?);
        if s.is_some() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        *s = Some(Arc::new(file));
        Ok(())
    }

    /// Empties `slot`, returning what it held.
    pub(crate) fn remove(&self, slot: u32) -> Option<Arc<FileRef>> {
        self.slot(slot).ok().and_then(|m| lock(m).take())
    }
}
