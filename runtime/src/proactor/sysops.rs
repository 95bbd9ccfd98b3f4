//! The requests that open, sync and shape files, connect and shut down sockets, and
//! send files: OPENAT, FSYNC, FALLOCATE, SHUTDOWN, CONNECT, SENDFILE.
//!
//! OPENAT reserves its destination slot like ACCEPT ([`Completion::accepted`] is the new
//! file's slot); its path and CONNECT's address are copied into memory the proactor owns
//! until the completion (handed back in [`Completion::buf`]).
//!
//! [`Completion::accepted`]: super::Completion::accepted
//! [`Completion::buf`]: super::Completion::buf

use std::ffi::CStr;
use std::net::{Shutdown, SocketAddr};

use fastio_uapi::{
    Sqe, FSYNC_DATASYNC, OPENAT_CWD, OP_CONNECT, OP_FALLOCATE, OP_FSYNC, OP_OPENAT, OP_SENDFILE,
    OP_SHUTDOWN, SHUT_RD, SHUT_RDWR, SHUT_WR,
};

use super::types::reject;
use super::{Proactor, RejectReason, Rejected, Slot, SlotState};

/// `addr` as the kernel's socket address bytes (`sockaddr_in` or `sockaddr_in6`).
pub(crate) fn sockaddr_bytes(addr: &SocketAddr) -> Vec<u8> {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in is plain data; all-zero is valid.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            as_bytes(&sa)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            as_bytes(&sa)
        }
    }
}

fn as_bytes<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: `T` is a plain C struct without padding bytes that matter (they are
    // zeroed); we read exactly its size.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

impl Proactor {
    /// Queues an OPENAT of `path` with `O_*` `flags` and `mode` (for a created file),
    /// relative to the directory in slot `dir` (resolved inside it: `..` and absolute
    /// paths do not leave it, as `openat2(RESOLVE_IN_ROOT)`), or to the current
    /// directory with `None`. The completion's [`Completion::accepted`] is the new
    /// file's slot. `O_PATH` is refused (`-EINVAL`); `O_CLOEXEC` has no effect (a slot
    /// is no descriptor; [`Proactor::install_fd`] makes close-on-exec ones).
    ///
    /// [`Completion::accepted`]: super::Completion::accepted
    pub fn openat(
        &mut self,
        dir: Option<Slot>,
        path: &CStr,
        flags: i32,
        mode: u32,
        user_data: u64,
    ) -> Result<(), Rejected> {
        if let Some(d) = dir {
            self.check_open(d)
                .map_err(|r| reject(r, None, Vec::new()))?;
        }
        let dest = self
            .alloc_slot()
            .ok_or_else(|| reject(RejectReason::NoSlots, None, Vec::new()))?;
        let path = path.to_bytes_with_nul().to_vec();
        let sqe = Sqe {
            opcode: OP_OPENAT,
            slot: dir.map_or(OPENAT_CWD, |d| d.0),
            addr: path.as_ptr() as u64,
            op_flags: flags as u32,
            off: mode as u64,
            aux: dest,
            ..Sqe::ZERO
        };
        let lane = self.lane_of(dir.map_or(dest, |d| d.0));
        self.slots[dest as usize] = SlotState::Accepting;
        // The path's heap block does not move when the Vec moves into the in-flight table.
        match self.queue(lane, sqe, user_data, Some(path), Vec::new()) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.release_slot(dest);
                Err(e)
            }
        }
    }

    /// Queues an FSYNC of the whole file in `slot` (`fdatasync` with `datasync`).
    pub fn fsync(&mut self, slot: Slot, datasync: bool, user_data: u64) -> Result<(), Rejected> {
        self.fsync_range(slot, datasync, 0, 0, user_data)
    }

    /// Queues an FSYNC of `len` bytes from `offset` (`len` 0: to the end). The `threads`
    /// backend syncs the whole file (there is no ranged fsync system call).
    pub fn fsync_range(
        &mut self,
        slot: Slot,
        datasync: bool,
        offset: u64,
        len: u32,
        user_data: u64,
    ) -> Result<(), Rejected> {
        let sqe = Sqe {
            opcode: OP_FSYNC,
            op_flags: if datasync { FSYNC_DATASYNC } else { 0 },
            off: offset,
            len,
            ..Sqe::ZERO
        };
        self.slot_request(slot, sqe, None, user_data)
    }

    /// Queues a FALLOCATE of `len` bytes at `offset` with `FALLOC_FL_*` `mode`
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`: a trim).
    pub fn fallocate(
        &mut self,
        slot: Slot,
        mode: u32,
        offset: u64,
        len: u64,
        user_data: u64,
    ) -> Result<(), Rejected> {
        let sqe = Sqe {
            opcode: OP_FALLOCATE,
            op_flags: mode,
            off: offset,
            addr: len,
            ..Sqe::ZERO
        };
        self.slot_request(slot, sqe, None, user_data)
    }

    /// Queues a SHUTDOWN of the socket in `slot`.
    pub fn shutdown_socket(
        &mut self,
        slot: Slot,
        how: Shutdown,
        user_data: u64,
    ) -> Result<(), Rejected> {
        let how = match how {
            Shutdown::Read => SHUT_RD,
            Shutdown::Write => SHUT_WR,
            Shutdown::Both => SHUT_RDWR,
        };
        let sqe = Sqe {
            opcode: OP_SHUTDOWN,
            op_flags: how,
            ..Sqe::ZERO
        };
        self.slot_request(slot, sqe, None, user_data)
    }

    /// Queues a CONNECT of the socket in `slot` to `addr`. It completes with 0 once
    /// connected (a connect in progress waits for it), or the error; cancellable like a
    /// RECV while it waits.
    pub fn connect(
        &mut self,
        slot: Slot,
        addr: SocketAddr,
        user_data: u64,
    ) -> Result<(), Rejected> {
        let sa = sockaddr_bytes(&addr);
        let sqe = Sqe {
            opcode: OP_CONNECT,
            addr: sa.as_ptr() as u64,
            len: sa.len() as u32,
            ..Sqe::ZERO
        };
        self.slot_request(slot, sqe, Some(sa), user_data)
    }

    /// Queues a SENDFILE of up to `len` bytes of the file in `src` (a regular file or
    /// block device), from `offset` (`None`: its file position, which advances by what
    /// was sent), to the socket in `dst`: the bytes never enter user space. The result
    /// may be short (end of file, a backend's chunk size), like `sendfile(2)`: send the
    /// rest again; 0 means end of file. It waits for `dst` to become writable like a
    /// SEND and is cancelled the same way. Both slots stay in use until the completion.
    /// `len` 0 is refused ([`RejectReason::BadRange`]).
    pub fn sendfile(
        &mut self,
        dst: Slot,
        src: Slot,
        offset: Option<u64>,
        len: u32,
        user_data: u64,
    ) -> Result<(), Rejected> {
        if len == 0 {
            return Err(reject(RejectReason::BadRange, None, Vec::new()));
        }
        self.check_open(src)
            .map_err(|r| reject(r, None, Vec::new()))?;
        let sqe = Sqe {
            opcode: OP_SENDFILE,
            aux: src.0,
            off: super::requests::off(offset),
            len,
            ..Sqe::ZERO
        };
        self.slot_request(dst, sqe, None, user_data)
    }

    /// Queues `sqe` on the open `slot`, owning `buf` until the completion.
    fn slot_request(
        &mut self,
        slot: Slot,
        mut sqe: Sqe,
        buf: Option<Vec<u8>>,
        user_data: u64,
    ) -> Result<(), Rejected> {
        if let Err(r) = self.check_open(slot) {
            return Err(reject(r, buf, Vec::new()));
        }
        sqe.slot = slot.0;
        let lane = self.lane_of(slot.0);
        self.queue(lane, sqe, user_data, buf, Vec::new())
    }
}
