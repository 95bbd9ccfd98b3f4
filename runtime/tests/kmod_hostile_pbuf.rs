//! fastio.ko against the ABI 3 SQE flags and buffer-ring ioctls, written raw into the
//! rings (`common/kmod.rs`). The module decodes the flags with the shared `decode`: an
//! unknown bit, BUFFER_SELECT on an opcode without it, MULTISHOT without BUFFER_SELECT on
//! RECV, a group without BUFFER_SELECT, nonzero unused fields, a group out of range, a
//! slot range beyond max_files: `-EINVAL` or `-EBADF`. Buffer-ring registration with a
//! hostile description (entries not a power of two or huge, counts and sizes out of
//! range, sizes whose product is too large, misaligned, null, kernel and wrapping
//! addresses, reserved fields): `-EINVAL`; a group twice: `-EEXIST`; unregistering an
//! unknown group: `-ENOENT`. Well-formed provided-buffer and multishot requests complete
//! with `-EOPNOTSUPP`: the module registers groups but does not receive into them yet
//! (the `uring` and `threads` backends do). Ends by checking the kernel log (no WARNING, BUG, Oops, Rust panic).
//!
//! Runs where /dev/fastio exists, as root (inside the VM); elsewhere prints SKIP.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use fastio::uapi::{
    BufGroupArg, BufRingReg, Sqe, FASTIO_REGISTER_BUF_RING, FASTIO_UNREGISTER_BUF_RING,
    MAX_BUF_GROUPS, OP_ACCEPT, OP_NOP, OP_RECV, OP_SEND, SQE_BUFFER_SELECT, SQE_MULTISHOT,
};

mod common;
#[path = "common/kmod.rs"]
mod kmod;

const LIMIT: Duration = Duration::from_secs(10);

fn call(ctx: &mut kmod::Ctx, sqe: Sqe) -> i32 {
    let what = format!("{sqe:?}");
    ctx.call(0, sqe, LIMIT)
        .unwrap_or_else(|| panic!("no completion for {what}"))
}

#[test]
fn sqe_flags_and_buffer_rings_hostile() {
    let name = "kmod_hostile_pbuf::sqe_flags";
    if !common::have_module(name) || !common::have_root(name) {
        return;
    }
    let mark = kmod::kernel_log_mark(name);
    let mut ctx = kmod::Ctx::started(kmod::params(1, 8, 16));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    ctx.register(l.as_raw_fd(), 0).unwrap();
    ctx.register(s.as_raw_fd(), 1).unwrap();
    let recv = Sqe {
        opcode: OP_RECV,
        flags: SQE_BUFFER_SELECT | SQE_MULTISHOT,
        buf_group: 1,
        slot: 1,
        user_data: 1,
        ..Sqe::ZERO
    };
    let accept = Sqe {
        opcode: OP_ACCEPT,
        flags: SQE_MULTISHOT,
        slot: 0,
        aux: 4,
        len: 4,
        user_data: 2,
        ..Sqe::ZERO
    };
    for bad in [
        Sqe {
            flags: 1 << 2,
            ..recv
        },
        Sqe {
            flags: 0x80,
            ..recv
        },
        Sqe {
            flags: SQE_MULTISHOT,
            ..recv
        },
        Sqe { addr: 8, ..recv },
        Sqe { len: 8, ..recv },
        Sqe { off: 8, ..recv },
        Sqe { aux: 1, ..recv },
        Sqe {
            op_flags: 0x100,
            ..recv
        },
        Sqe { resv0: 1, ..recv },
        Sqe {
            buf_group: MAX_BUF_GROUPS as u16,
            ..recv
        },
        Sqe {
            opcode: OP_SEND,
            ..recv
        },
        Sqe {
            opcode: OP_NOP,
            slot: 0,
            ..recv
        },
        Sqe {
            opcode: OP_RECV,
            buf_group: 1,
            slot: 1,
            user_data: 1,
            ..Sqe::ZERO
        },
        Sqe {
            flags: SQE_MULTISHOT | SQE_BUFFER_SELECT,
            ..accept
        },
        Sqe { len: 0, ..accept },
        Sqe { addr: 1, ..accept },
        Sqe {
            buf_group: 1,
            ..accept
        },
    ] {
        assert_eq!(call(&mut ctx, bad), -libc::EINVAL, "{bad:?}");
    }
    // Slot ranges beyond the 8 slots, including ones whose end overflows.
    for (aux, len) in [(6, 3), (8, 1), (u32::MAX, 2), (1, u32::MAX)] {
        let bad = Sqe { aux, len, ..accept };
        assert_eq!(call(&mut ctx, bad), -libc::EBADF, "{bad:?}");
    }
    assert_eq!(call(&mut ctx, Sqe { slot: 8, ..recv }), -libc::EBADF);
    // Well-formed: not implemented by the module yet.
    assert_eq!(call(&mut ctx, recv), -libc::EOPNOTSUPP);
    assert_eq!(
        call(
            &mut ctx,
            Sqe {
                flags: SQE_BUFFER_SELECT,
                ..recv
            }
        ),
        -libc::EOPNOTSUPP
    );
    assert_eq!(call(&mut ctx, accept), -libc::EOPNOTSUPP);
    // Registration of a buffer ring: the module validates and keeps the description.
    // The ring must be cache-line aligned.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Line([u8; 64]);
    let mut ring = vec![Line([0; 64]); 4];
    let mut bufs = vec![0u8; 8 * 64];
    let good = BufRingReg {
        ring_addr: ring.as_mut_ptr() as u64,
        bufs_addr: bufs.as_mut_ptr() as u64,
        entries: 8,
        count: 8,
        buf_size: 64,
        group: 1,
        resv: [0; 2],
    };
    let fd = ctx.fd();
    let register = |mut reg: BufRingReg| {
        // SAFETY: the ioctl reads `reg`; the module touches the described memory only
        // through user copies (and not at all at registration).
        unsafe { kmod::ioctl(fd, FASTIO_REGISTER_BUF_RING, &mut reg) }
    };
    let unregister = |group: u32, flags: u32| {
        let mut a = BufGroupArg { group, flags };
        // SAFETY: the ioctl reads `a`.
        unsafe { kmod::ioctl(fd, FASTIO_UNREGISTER_BUF_RING, &mut a) }
    };
    let kernel = [
        0xffff_8880_0000_0000u64,
        0xffff_ffff_8100_0000,
        u64::MAX - 63,
    ];
    let mut hostile = vec![
        BufRingReg { entries: 0, ..good },
        BufRingReg { entries: 6, ..good },
        BufRingReg {
            entries: 65536,
            count: 1,
            ..good
        },
        BufRingReg {
            entries: u32::MAX,
            ..good
        },
        BufRingReg { count: 0, ..good },
        BufRingReg { count: 9, ..good },
        BufRingReg {
            buf_size: 0,
            ..good
        },
        BufRingReg {
            buf_size: (1 << 20) + 1,
            ..good
        },
        BufRingReg {
            entries: 32768,
            count: 32768,
            buf_size: 1 << 20,
            ..good
        },
        BufRingReg {
            group: MAX_BUF_GROUPS,
            ..good
        },
        BufRingReg {
            resv: [1, 0],
            ..good
        },
        BufRingReg {
            ring_addr: 0,
            ..good
        },
        BufRingReg {
            ring_addr: good.ring_addr + 8,
            ..good
        },
        BufRingReg {
            bufs_addr: 0,
            ..good
        },
        BufRingReg {
            bufs_addr: u64::MAX - 4095,
            ..good
        },
    ];
    for k in kernel {
        hostile.push(BufRingReg {
            ring_addr: k & !63,
            ..good
        });
        hostile.push(BufRingReg {
            bufs_addr: k,
            ..good
        });
    }
    for bad in hostile {
        assert_eq!(register(bad), Err(libc::EINVAL), "{bad:?}");
    }
    assert_eq!(
        unregister(1, 0),
        Err(libc::ENOENT),
        "nothing registered yet"
    );
    assert_eq!(register(good), Ok(0));
    assert_eq!(register(good), Err(libc::EEXIST), "the same group twice");
    // An unmapped (but user) range is accepted: nothing is touched at registration,
    // every use would be a user copy (-EFAULT).
    let unmapped = BufRingReg {
        ring_addr: 0x10_0000_0000,
        bufs_addr: 0x20_0000_0000,
        group: 2,
        ..good
    };
    assert_eq!(register(unmapped), Ok(0));
    // Requests on a registered group: still not implemented.
    assert_eq!(call(&mut ctx, recv), -libc::EOPNOTSUPP);
    assert_eq!(unregister(1, 1), Err(libc::EINVAL), "flags");
    assert_eq!(unregister(MAX_BUF_GROUPS, 0), Err(libc::EINVAL), "group");
    assert_eq!(unregister(1, 0), Ok(0));
    assert_eq!(unregister(1, 0), Err(libc::ENOENT));
    assert_eq!(unregister(2, 0), Ok(0));
    // Registered again after unregistering.
    assert_eq!(register(good), Ok(0));
    // The connection still works after all of it.
    let mut buf = [0u8; 4];
    use std::io::Write;
    (&c).write_all(b"ping").unwrap();
    let r = ctx.call(0, kmod::recv(1, buf.as_mut_ptr(), 4, 3), LIMIT);
    assert_eq!(r, Some(4));
    assert_eq!(&buf, b"ping");
    drop(ring);
    drop(bufs);
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}
