//! fastio.ko against the ABI 3 SQE flags and buffer-ring ioctls, written raw into the
//! rings (`common/kmod.rs`). The module decodes the flags with the shared `decode`: an
//! unknown bit, BUFFER_SELECT on an opcode without it, MULTISHOT without BUFFER_SELECT on
//! RECV, a group without BUFFER_SELECT, nonzero unused fields, a group out of range, a
//! slot range beyond max_files: `-EINVAL` or `-EBADF`. Buffer-ring registration with a
//! hostile description (entries not a power of two or huge, counts and sizes out of
//! range, sizes whose product is too large, misaligned, null, kernel and wrapping
//! addresses, reserved fields): `-EINVAL`; a group twice: `-EEXIST`; unregistering an
//! unknown group: `-ENOENT`.
//!
//! Then the module's receptions into a group, against hostile ring contents (ids out of
//! range, a tail that jumps far ahead or goes backwards, ring or buffers unmapped after
//! registration), and its multishot requests against everything that must end them
//! (ASYNC_CANCEL, CLOSE of the slot, a CQ without room, a group unregistered while in
//! use, a full accept range, kill -9 of the process), on sockets and on the files RECV
//! refuses (FIFO, eventfd). Each test ends by checking the kernel log (no WARNING, BUG,
//! Oops, Rust panic).
//!
//! Runs where /dev/fastio exists, as root (inside the VM); elsewhere prints SKIP.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use fastio::uapi::{
    BufGroupArg, BufRingReg, Cqe, Sqe, CQE_BUFFER_SHIFT, CQE_F_BUFFER, CQE_F_MORE,
    FASTIO_REGISTER_BUF_RING, FASTIO_UNREGISTER_BUF_RING, MAX_BUF_GROUPS, OP_ACCEPT, OP_NOP,
    OP_RECV, OP_SEND, SQE_BUFFER_SELECT, SQE_MULTISHOT,
};

mod common;
#[path = "common/kmod.rs"]
mod kmod;
#[path = "common/pbuf.rs"]
mod pbuf;

use pbuf::{cancel, register_ring, select, unregister_ring, TestRing};

const LIMIT: Duration = Duration::from_secs(10);

fn call(ctx: &mut kmod::Ctx, sqe: Sqe) -> i32 {
    let what = format!("{sqe:?}");
    ctx.call(0, sqe, LIMIT)
        .unwrap_or_else(|| panic!("no completion for {what}"))
}

#[test]
fn sqe_flags_and_buffer_rings_hostile() {
    let Some((mark, mut ctx)) = start("kmod_hostile_pbuf::sqe_flags") else {
        return;
    };
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
    // Well-formed, on a group that is not registered: -ENOBUFS, nothing received.
    assert_eq!(call(&mut ctx, recv), -libc::ENOBUFS);
    assert_eq!(
        call(
            &mut ctx,
            Sqe {
                flags: SQE_BUFFER_SELECT,
                ..recv
            }
        ),
        -libc::ENOBUFS
    );
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
    // A reception into the unmapped group: its ring cannot be read.
    assert_eq!(
        call(
            &mut ctx,
            Sqe {
                flags: SQE_BUFFER_SELECT,
                buf_group: 2,
                ..recv
            }
        ),
        -libc::EFAULT
    );
    assert_eq!(unregister(1, 1), Err(libc::EINVAL), "flags");
    assert_eq!(unregister(MAX_BUF_GROUPS, 0), Err(libc::EINVAL), "group");
    assert_eq!(unregister(1, 0), Ok(0));
    assert_eq!(unregister(1, 0), Err(libc::ENOENT));
    assert_eq!(unregister(2, 0), Ok(0));
    // Registered again after unregistering.
    assert_eq!(register(good), Ok(0));
    // The connection still works after all of it.
    let mut buf = [0u8; 4];
    (&c).write_all(b"ping").unwrap();
    let r = ctx.call(0, kmod::recv(1, buf.as_mut_ptr(), 4, 3), LIMIT);
    assert_eq!(r, Some(4));
    assert_eq!(&buf, b"ping");
    drop(ring);
    drop(bufs);
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}

/// A started context of one lane (8 slots, 16 CQ entries) and a kernel log mark; None
/// (SKIP printed) without the module or root.
fn start(name: &str) -> Option<(kmod::KmsgMark, kmod::Ctx)> {
    if !common::have_module(name) || !common::have_root(name) {
        return None;
    }
    let mark = kmod::kernel_log_mark(name);
    Some((mark, kmod::Ctx::started(kmod::params(1, 8, 16))))
}

/// Waits for the next CQE of `user_data`.
fn next(ctx: &mut kmod::Ctx, user_data: u64) -> Cqe {
    ctx.wait_for(user_data, LIMIT)
        .unwrap_or_else(|| panic!("no completion for {user_data}"))
}

fn buffer_id(c: &Cqe) -> u16 {
    assert_ne!(c.flags & CQE_F_BUFFER, 0, "{c:?} carries no buffer");
    (c.flags >> CQE_BUFFER_SHIFT) as u16
}

/// A connected pair: (client, server), the server registered in `slot`.
fn pair(ctx: &kmod::Ctx, l: &TcpListener, slot: u32) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    ctx.register(s.as_raw_fd(), slot).unwrap();
    (c, s)
}

/// What a plain, blocking read of the client's peer finds (the data that stayed in the
/// socket).
fn left_in_socket(s: &TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.set_read_timeout(Some(LIMIT)).unwrap();
    (&*s).read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn hostile_ring_contents() {
    let Some((mark, mut ctx)) = start("kmod_hostile_pbuf::ring_contents") else {
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut c, s) = pair(&ctx, &l, 1);
    let mut r = TestRing::new(8, 8, 64);
    assert_eq!(register_ring(&ctx, &r, 1), Ok(0));
    // Empty ring: -ENOBUFS, and the data stays in the socket.
    c.write_all(b"ping").unwrap();
    assert_eq!(call(&mut ctx, select(1, 1, 1, false)), -libc::ENOBUFS);
    r.provide(3);
    let got = next_after(&mut ctx, select(1, 1, 2, false));
    assert_eq!((got.res, buffer_id(&got)), (4, 3));
    assert_eq!(got.flags & CQE_F_MORE, 0);
    assert_eq!(r.buf(3, 4), b"ping");
    assert_eq!(r.head(), 1, "the module publishes its head");
    // Ids out of range are consumed and end the request with -EINVAL; nothing is
    // received into them.
    c.write_all(b"x").unwrap();
    for (k, bad) in [8u16, 0xffff].into_iter().enumerate() {
        r.provide(bad);
        assert_eq!(
            call(&mut ctx, select(1, 1, 10 + k as u64, false)),
            -libc::EINVAL
        );
        assert_eq!(r.head(), 2 + k as u32, "id {bad} consumed");
    }
    r.provide(0);
    let got = next_after(&mut ctx, select(1, 1, 3, false));
    assert_eq!((got.res, buffer_id(&got)), (1, 0));
    assert_eq!(r.buf(0, 1), b"x");
    let head = r.head();
    assert_eq!(head, 4);
    // A tail far ahead of the head, or behind it: -EINVAL, nothing consumed, nothing
    // received, and no loop over the "available" ids.
    c.write_all(b"kept").unwrap();
    for tail in [
        head + 9,
        head + 1_000_000,
        head.wrapping_sub(1),
        head.wrapping_add(0x8000_0000),
    ] {
        r.set_tail(tail);
        assert_eq!(
            call(&mut ctx, select(1, 1, 4, false)),
            -libc::EINVAL,
            "{tail}"
        );
        assert_eq!(r.head(), head, "tail {tail}: nothing consumed");
    }
    // The same in a multishot request: it ends at once with -EINVAL.
    r.set_tail(head.wrapping_sub(5));
    assert_eq!(call(&mut ctx, select(1, 1, 5, true)), -libc::EINVAL);
    r.set_tail(head);
    assert_eq!(call(&mut ctx, select(1, 1, 6, false)), -libc::ENOBUFS);
    r.tail = head;
    // Buffers unmapped after registration: the reception faults, nothing is lost.
    r.provide(5);
    r.unmap_bufs();
    assert_eq!(call(&mut ctx, select(1, 1, 7, true)), -libc::EFAULT);
    assert_eq!(r.head(), head, "a buffer that took no data is not consumed");
    // The ring itself unmapped: -EFAULT too.
    r.unmap_ring();
    assert_eq!(call(&mut ctx, select(1, 1, 8, false)), -libc::EFAULT);
    assert_eq!(left_in_socket(&s, 4), b"kept");
    // The group can go (no request uses it).
    assert_eq!(unregister_ring(&ctx, 1), Ok(0));
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}

/// Submits `sqe` and waits for its CQE.
fn next_after(ctx: &mut kmod::Ctx, sqe: Sqe) -> Cqe {
    ctx.submit(0, sqe);
    next(ctx, sqe.user_data)
}

#[test]
fn multishot_recv_ends_as_the_abi_says() {
    let name = "kmod_hostile_pbuf::multishot_recv";
    if !common::have_module(name) || !common::have_root(name) {
        return;
    }
    let mark = kmod::kernel_log_mark(name);
    // 16 CQ entries: the CQ-full case below fills them.
    let mut ctx = kmod::Ctx::started(kmod::params(1, 8, 16));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut c, s) = pair(&ctx, &l, 1);
    let mut r = TestRing::new(64, 64, 16);
    assert_eq!(register_ring(&ctx, &r, 1), Ok(0));
    for id in 0..4 {
        r.provide(id);
    }
    // Armed: each reception posts BUFFER | MORE.
    ctx.submit(0, select(1, 1, 50, true));
    for (k, msg) in [b"one", b"two"].into_iter().enumerate() {
        c.write_all(msg).unwrap();
        let got = next(&mut ctx, 50);
        assert_eq!(got.res, 3, "{got:?}");
        assert_ne!(got.flags & CQE_F_MORE, 0, "{got:?}");
        assert_eq!(r.buf(buffer_id(&got), 3), msg, "message {k}");
    }
    // A group in use cannot go.
    assert_eq!(unregister_ring(&ctx, 1), Err(libc::EBUSY));
    // ASYNC_CANCEL ends it: -ECANCELED without MORE.
    assert_eq!(call(&mut ctx, cancel(50, 51)), 0);
    let got = next(&mut ctx, 50);
    assert_eq!((got.res, got.flags), (-libc::ECANCELED, 0));
    // Out of buffers (2 left): the third reception ends it with -ENOBUFS, and the data
    // waits in the socket.
    ctx.submit(0, select(1, 1, 52, true));
    for msg in [b"aaa", b"bbb"] {
        c.write_all(msg).unwrap();
        let got = next(&mut ctx, 52);
        assert_ne!(got.flags & CQE_F_MORE, 0, "{got:?}");
    }
    c.write_all(b"ccc").unwrap();
    let got = next(&mut ctx, 52);
    assert_eq!((got.res, got.flags), (-libc::ENOBUFS, 0));
    assert_eq!(left_in_socket(&s, 3), b"ccc");
    // A CQ without room: 40 buffers of 16 bytes, 16 CQ entries, nobody reaps while
    // 640 bytes arrive. 16 CQEs with MORE, then one last CQE that keeps its data.
    for id in 4..44 {
        r.provide(id);
    }
    let data: Vec<u8> = (0..640u32).map(|i| (i * 7 + i / 16) as u8).collect();
    c.write_all(&data).unwrap();
    let tail0 = ctx.cq_tail(0);
    ctx.submit(0, select(1, 1, 53, true));
    // Not reaped until the CQ is full: the request must then end by itself.
    common::wait_until("a full CQ", LIMIT, || {
        ctx.cq_tail(0).wrapping_sub(tail0) >= 16
    });
    let mut got = Vec::new();
    let mut cqes: Vec<Cqe> = Vec::new();
    while cqes.last().is_none_or(|c| c.flags & CQE_F_MORE != 0) {
        let cqe = next(&mut ctx, 53);
        assert!(cqe.res > 0, "{cqe:?}");
        got.extend(r.buf(buffer_id(&cqe), cqe.res as usize));
        cqes.push(cqe);
    }
    assert_eq!(
        cqes.len(),
        17,
        "16 CQEs with MORE fill the CQ, the 17th ends the request with its data"
    );
    assert!(cqes[..16].iter().all(|c| c.flags & CQE_F_MORE != 0));
    // Nothing lost, in order: what was received, then what stayed in the socket.
    got.extend(left_in_socket(&s, data.len() - got.len()));
    assert_eq!(got, data);
    // Unregistered after the request ended.
    assert_eq!(unregister_ring(&ctx, 1), Ok(0));
    // A group that went: -ENOBUFS at once.
    assert_eq!(call(&mut ctx, select(1, 1, 54, true)), -libc::ENOBUFS);
    // CLOSE of the slot ends an armed request with -ECANCELED.
    assert_eq!(register_ring(&ctx, &r, 2), Ok(0));
    ctx.submit(0, select(1, 2, 55, true));
    assert_eq!(call(&mut ctx, kmod::close(1, 56)), 0);
    let got = next(&mut ctx, 55);
    assert_eq!((got.res, got.flags), (-libc::ECANCELED, 0));
    // End of stream: 0 without MORE.
    let (c2, _s2) = pair(&ctx, &l, 2);
    ctx.submit(0, select(2, 2, 57, true));
    c2.shutdown(Shutdown::Write).unwrap();
    let got = next(&mut ctx, 57);
    assert_eq!((got.res, got.flags), (0, 0));
    // SHUTDOWN with a request armed: -ECANCELED.
    let (_c3, _s3) = pair(&ctx, &l, 3);
    let parked = ctx.stats().parked;
    ctx.submit(0, select(3, 2, 58, true));
    assert!(ctx.wait_stats(LIMIT, |s| s.parked > parked));
    ctx.shutdown_and_join();
    let last: Vec<Cqe> = ctx
        .reap_all()
        .into_iter()
        .filter(|c| c.user_data == 58)
        .collect();
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!((last[0].res, last[0].flags), (-libc::ECANCELED, 0));
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn multishot_accept_fills_the_range_then_enfile() {
    let Some((mark, mut ctx)) = start("kmod_hostile_pbuf::multishot_accept") else {
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    ctx.register(l.as_raw_fd(), 0).unwrap();
    // Slot 5 is busy: the range 4..7 has two empty slots, 4 and 6.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    ctx.register(other.as_raw_fd(), 5).unwrap();
    let accept = Sqe {
        opcode: OP_ACCEPT,
        flags: SQE_MULTISHOT,
        slot: 0,
        aux: 4,
        len: 3,
        user_data: 60,
        ..Sqe::ZERO
    };
    ctx.submit(0, accept);
    let mut slots = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        let got = next(&mut ctx, 60);
        assert_ne!(got.flags & CQE_F_MORE, 0, "{got:?}");
        slots.push(got.res);
    }
    slots.sort();
    assert_eq!(slots, vec![4, 6]);
    // The range is full: the next connection ends the request (it stays in the
    // listener's backlog: a plain accept takes it).
    clients.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
    let got = next(&mut ctx, 60);
    assert_eq!((got.res, got.flags), (-libc::ENFILE, 0));
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_ok(), "the connection waited in the backlog");
    // The accepted sockets are the clients' peers.
    clients[0].write_all(b"h").unwrap();
    clients[1].write_all(b"h").unwrap();
    let mut b = [0u8; 1];
    for (k, &slot) in slots.iter().enumerate() {
        let r = ctx.call(
            0,
            kmod::recv(slot as u32, b.as_mut_ptr(), 1, 70 + k as u64),
            LIMIT,
        );
        assert_eq!(r, Some(1));
    }
    // ASYNC_CANCEL ends an armed multishot ACCEPT.
    assert_eq!(call(&mut ctx, kmod::close(4, 61)), 0);
    ctx.submit(
        0,
        Sqe {
            user_data: 62,
            ..accept
        },
    );
    assert_eq!(call(&mut ctx, cancel(62, 63)), 0);
    let got = next(&mut ctx, 62);
    assert_eq!((got.res, got.flags), (-libc::ECANCELED, 0));
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn multishot_recv_on_files_that_are_not_sockets() {
    let Some((mark, mut ctx)) = start("kmod_hostile_pbuf::not_sockets") else {
        return;
    };
    let mut r = TestRing::new(8, 8, 64);
    assert_eq!(register_ring(&ctx, &r, 1), Ok(0));
    r.provide(0);
    let (rd, mut wr) = kmod::pipe();
    wr.write_all(b"fifo").unwrap();
    // SAFETY: eventfd returns a new descriptor that we own.
    let efd = unsafe { libc::eventfd(1, libc::EFD_CLOEXEC) };
    assert!(efd >= 0);
    ctx.register(rd.as_raw_fd(), 1).unwrap();
    ctx.register(efd, 2).unwrap();
    let mut b = [0u8; 8];
    for slot in [1, 2] {
        // What RECV says, the provided-buffer forms say too; nothing is consumed.
        let plain = ctx.call(0, kmod::recv(slot, b.as_mut_ptr(), 8, 80), LIMIT);
        assert_eq!(plain, Some(-libc::ENOTSOCK));
        for multishot in [false, true] {
            let res = call(&mut ctx, select(slot, 1, 81, multishot));
            assert_eq!(res, -libc::ENOTSOCK, "slot {slot} multishot {multishot}");
        }
    }
    assert_eq!(r.head(), 0, "no buffer taken");
    let mut got = [0u8; 4];
    (&rd).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"fifo");
    // SAFETY: our descriptor.
    unsafe { libc::close(efd) };
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn killed_with_multishot_requests_armed() {
    let name = "kmod_hostile_pbuf::killed";
    if !common::have_module(name) || !common::have_root(name) {
        return;
    }
    let mark = kmod::kernel_log_mark(name);
    let refcnt0 = kmod::module_refcnt();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut child = kmod::fork_reporting(move |io| {
        let mut ctx = kmod::Ctx::started(kmod::params(2, 8, 16));
        let mut r = TestRing::new(8, 8, 64);
        register_ring(&ctx, &r, 1).unwrap();
        for id in 0..8 {
            r.provide(id);
        }
        let lc = TcpListener::bind("127.0.0.1:0").unwrap();
        ctx.register(lc.as_raw_fd(), 0).unwrap();
        let c = TcpStream::connect(addr).unwrap();
        ctx.register(c.as_raw_fd(), 1).unwrap();
        ctx.submit(0, select(1, 1, 1, true));
        ctx.submit(
            1,
            Sqe {
                opcode: OP_ACCEPT,
                flags: SQE_MULTISHOT,
                aux: 2,
                len: 4,
                user_data: 2,
                ..Sqe::ZERO
            },
        );
        // Both armed (nothing completes), then the parent kills us.
        let armed = ctx.wait_stats(LIMIT, |s| s.parked >= 2);
        let early = ctx.reap_all().len();
        io.say(&format!("ready {armed} {early}"));
        io.wait_go();
        std::mem::forget((ctx, r, lc, c));
        0
    });
    let line = child.line(LIMIT).expect("the child got going");
    assert_eq!(line, "ready true 0", "both armed, nothing completed");
    let (_peer, _) = l.accept().unwrap();
    let pid = child.pid;
    kmod::kill(pid, libc::SIGKILL);
    assert!(child.wait(LIMIT).is_some(), "the child was reaped");
    common::wait_until("the killed child's lane threads gone", LIMIT, || {
        common::workers_of(pid as u32).is_empty()
    });
    if let Some(r0) = refcnt0 {
        common::wait_until("the module reference count back", LIMIT, || {
            kmod::module_refcnt() == Some(r0)
        });
    }
    // A new context works (and the module unloads after the run: guest-kmod-tests.sh).
    kmod::Ctx::new(kmod::params(1, 8, 16)).expect("SETUP afterwards");
    kmod::assert_kernel_log_clean_since(&mark);
}
