//! fastio.ko against the ABI 3 SQE flags and buffer-ring ioctls, written raw into the
//! rings (`common/kmod.rs`). The module decodes the flags with the shared `decode`: an
//! unknown bit, BUFFER_SELECT on an opcode without it, MULTISHOT without BUFFER_SELECT on
//! RECV, a group without BUFFER_SELECT, nonzero unused fields, a group out of range, a
//! slot range beyond max_files: `-EINVAL` or `-EBADF`. Well-formed provided-buffer and
//! multishot requests complete with `-EOPNOTSUPP`, and the buffer-ring ioctls are refused,
//! because the module does not implement provided buffers yet (the `uring` and `threads`
//! backends do). Ends by checking the kernel log (no WARNING, BUG, Oops, Rust panic).
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
    // The buffer-ring ioctls are refused, whatever the description says.
    let mut ring = vec![0u64; 64];
    let mut bufs = vec![0u8; 8 * 64];
    let mut reg = BufRingReg {
        ring_addr: ring.as_mut_ptr() as u64,
        bufs_addr: bufs.as_mut_ptr() as u64,
        entries: 8,
        count: 8,
        buf_size: 64,
        group: 1,
        resv: [0; 2],
    };
    // SAFETY: the ioctl reads `reg` (valid) and, if it existed, would only copy from the
    // user memory described, which lives across the call.
    let r = unsafe { kmod::ioctl(ctx.fd(), FASTIO_REGISTER_BUF_RING, &mut reg) };
    assert!(
        matches!(r, Err(e) if e == libc::ENOTTY || e == libc::EINVAL),
        "{r:?}"
    );
    let mut arg = BufGroupArg { group: 1, flags: 0 };
    // SAFETY: as above.
    let r = unsafe { kmod::ioctl(ctx.fd(), FASTIO_UNREGISTER_BUF_RING, &mut arg) };
    assert!(
        matches!(r, Err(e) if e == libc::ENOTTY || e == libc::EINVAL),
        "{r:?}"
    );
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
