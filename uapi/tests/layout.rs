//! Runtime checks of the ABI layout (the compile-time asserts in `abi.rs` guard the same
//! facts; these tests make them visible in the test report and check derived values).

use core::mem::{align_of, offset_of, size_of};
use fastio_uapi::*;

#[test]
fn entry_sizes() {
    assert_eq!(size_of::<Sqe>(), 64);
    assert_eq!(size_of::<Cqe>(), 16);
    assert_eq!(size_of::<RingHeader>(), 256);
    assert_eq!(size_of::<SetupParams>(), 128);
    assert_eq!(size_of::<EnterArgs>(), 24);
    assert_eq!(size_of::<FilesUpdate>(), 24);
    assert_eq!(size_of::<SlotArg>(), 8);
}

#[test]
fn header_fields_on_own_cache_lines() {
    assert_eq!(align_of::<RingHeader>(), CACHE_LINE);
    let offs = [
        offset_of!(RingHeader, head),
        offset_of!(RingHeader, tail),
        offset_of!(RingHeader, flags),
        offset_of!(RingHeader, info),
    ];
    for (i, off) in offs.iter().enumerate() {
        assert_eq!(*off, i * CACHE_LINE);
    }
}

#[test]
fn lane_layout_is_aligned_and_tight() {
    for sq in [1u32, 2, 64, 256, 4096, MAX_ENTRIES] {
        for cq in [1u32, 8, 512, MAX_ENTRIES] {
            let l = lane_layout(sq, cq);
            assert_eq!(l.sq_off, 0);
            assert_eq!(l.sqes_off as usize, size_of::<RingHeader>());
            assert!(l.cq_off as u64 >= l.sqes_off as u64 + sq as u64 * 64);
            assert_eq!(l.cq_off as usize % CACHE_LINE, 0);
            assert_eq!(l.cqes_off, l.cq_off + 256);
            let end = l.cqes_off as u64 + cq as u64 * 16;
            assert!(l.lane_size >= end && l.lane_size - end < PAGE_SIZE as u64);
            assert_eq!(l.lane_size % PAGE_SIZE as u64, 0);
        }
    }
}

#[test]
fn valid_entries_rules() {
    assert!(!valid_entries(0));
    assert!(valid_entries(1));
    assert!(!valid_entries(3));
    assert!(valid_entries(MAX_ENTRIES));
    assert!(!valid_entries(MAX_ENTRIES * 2));
}

/// The numbers must equal what C's `_IOWR`/`_IOW` give for the same sizes.
#[test]
fn ioctl_numbers_follow_ioc_encoding() {
    fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | (0xFA << 8) | nr
    }
    assert_eq!(FASTIO_SETUP, ioc(3, 1, size_of::<SetupParams>()));
    assert_eq!(FASTIO_ENTER, ioc(1, 2, size_of::<EnterArgs>()));
    assert_eq!(FASTIO_REGISTER_FILES, ioc(1, 3, size_of::<FilesUpdate>()));
    assert_eq!(FASTIO_UNREGISTER_FILE, ioc(1, 4, size_of::<SlotArg>()));
    assert_eq!(FASTIO_INSTALL_FD, ioc(1, 5, size_of::<SlotArg>()));
    let all = [
        FASTIO_SETUP,
        FASTIO_ENTER,
        FASTIO_REGISTER_FILES,
        FASTIO_UNREGISTER_FILE,
        FASTIO_INSTALL_FD,
    ];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn opcodes_are_dense_and_flags_match_linux() {
    let ops = [
        OP_NOP,
        OP_ACCEPT,
        OP_RECV,
        OP_SEND,
        OP_READ,
        OP_WRITE,
        OP_WRITEV,
        OP_CLOSE,
        OP_ASYNC_CANCEL,
        OP_OPENAT,
        OP_FSYNC,
        OP_FALLOCATE,
        OP_SHUTDOWN,
        OP_CONNECT,
        OP_SENDFILE,
    ];
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(*op as usize, i);
    }
    assert_eq!(OP_LAST as usize, ops.len());
    // The MSG_* values are Linux's own; the kernel passes them through unchanged.
    assert_eq!(MSG_PEEK as i32, libc::MSG_PEEK);
    assert_eq!(MSG_DONTWAIT as i32, libc::MSG_DONTWAIT);
    assert_eq!(MSG_WAITALL as i32, libc::MSG_WAITALL);
    assert_eq!(MSG_NOSIGNAL as i32, libc::MSG_NOSIGNAL);
    assert_eq!(ACCEPT_NONBLOCK as i32, libc::SOCK_NONBLOCK);
    assert_eq!(INSTALL_CLOEXEC as i32, libc::O_CLOEXEC);
    // OPENAT, FALLOCATE and SHUTDOWN pass Linux's own values through too.
    assert_eq!(O_CREAT as i32, libc::O_CREAT);
    assert_eq!(O_PATH as i32, libc::O_PATH);
    assert_eq!((O_TMPFILE_BIT | 0o200000) as i32, libc::O_TMPFILE);
    assert_eq!(PATH_MAX as i32, libc::PATH_MAX);
    let valid = libc::O_ACCMODE
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_NOCTTY
        | libc::O_TRUNC
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_DSYNC
        | libc::O_DIRECT
        // The kernel's O_LARGEFILE (the C library defines it as 0 on 64-bit).
        | if cfg!(target_arch = "aarch64") { 0o400000 } else { 0o100000 }
        | libc::O_DIRECTORY
        | libc::O_NOFOLLOW
        | libc::O_NOATIME
        | libc::O_CLOEXEC
        | libc::O_SYNC
        | libc::O_TMPFILE;
    assert_eq!(OPEN_FLAGS as i32, valid);
    assert_eq!(FALLOC_FL_KEEP_SIZE as i32, libc::FALLOC_FL_KEEP_SIZE);
    assert_eq!(FALLOC_FL_PUNCH_HOLE as i32, libc::FALLOC_FL_PUNCH_HOLE);
    assert_eq!(FALLOC_FL_ZERO_RANGE as i32, libc::FALLOC_FL_ZERO_RANGE);
    assert_eq!(
        FALLOC_FL_COLLAPSE_RANGE as i32,
        libc::FALLOC_FL_COLLAPSE_RANGE
    );
    assert_eq!(FALLOC_FL_INSERT_RANGE as i32, libc::FALLOC_FL_INSERT_RANGE);
    assert_eq!(
        FALLOC_FL_UNSHARE_RANGE as i32,
        libc::FALLOC_FL_UNSHARE_RANGE
    );
    assert_eq!(
        (SHUT_RD as i32, SHUT_WR as i32, SHUT_RDWR as i32),
        (libc::SHUT_RD, libc::SHUT_WR, libc::SHUT_RDWR)
    );
    assert_eq!(
        MAX_SOCKADDR_LEN as usize,
        std::mem::size_of::<libc::sockaddr_storage>()
    );
}
