//! fastio.ko against hostile SENDFILE requests, written raw into the rings
//! (`common/kmod.rs`): nonzero unused fields, length 0 and `u32::MAX`, offsets near and
//! past `i64::MAX`, bad and empty slots (destination and source), and slots holding the
//! wrong kind of file: a directory, a write-only file, a pipe and a socket as the
//! source, a regular file as the destination; `/dev/fastio` never gets into a slot. Ends
//! by checking the kernel log since it began (no WARNING, BUG, Oops, Rust panic).
//!
//! Runs where /dev/fastio exists, as root (inside the VM: `make vm-test`); elsewhere it
//! prints SKIP and returns.

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use fastio::uapi::{Sqe, OFF_CURRENT, OP_SENDFILE};

mod common;
#[path = "common/kmod.rs"]
mod kmod;

use kmod::Ctx;

const LIMIT: Duration = Duration::from_secs(20);

fn call(ctx: &mut Ctx, sqe: Sqe) -> i32 {
    let what = format!("{sqe:?}");
    ctx.call(0, sqe, LIMIT)
        .unwrap_or_else(|| panic!("no completion for {what}"))
}

#[test]
fn sendfile_hostile() {
    let name = "kmod_hostile_sendfile::sendfile";
    if !common::have_module(name) || !common::have_root(name) {
        return;
    }
    println!("{name}: unused fields, lengths, offsets, slots, file kinds");
    let mark = kmod::kernel_log_mark(name);
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));

    // Slot 0: a socket whose peer reads everything (counted at the end).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (sock, _) = l.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        peer.read_to_end(&mut all).unwrap();
        all
    });
    ctx.register(sock.as_raw_fd(), 0).unwrap();
    // Slot 1: a 64 KiB regular file; slot 6: the same, write-only; slot 7 read-write.
    let path = std::env::temp_dir().join(format!("fastio-hostile-sf-{}", std::process::id()));
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let ro = File::open(&path).unwrap();
    let wo = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    ctx.register(ro.as_raw_fd(), 1).unwrap();
    ctx.register(wo.as_raw_fd(), 6).unwrap();
    ctx.register(rw.as_raw_fd(), 7).unwrap();
    // Slot 2: a directory; slot 3: a pipe's read end.
    let dir = File::open("/tmp").unwrap();
    ctx.register(dir.as_raw_fd(), 2).unwrap();
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    ctx.register(fds[0], 3).unwrap();
    // /dev/fastio never enters a slot, so it can never be a source.
    let dev = kmod::open_device();
    assert_eq!(ctx.register(dev.as_raw_fd(), 4), Err(libc::EBADF));

    let sf = Sqe {
        opcode: OP_SENDFILE,
        slot: 0,
        aux: 1,
        off: 0,
        len: 100,
        user_data: 1,
        ..Sqe::ZERO
    };
    let mut sent = 0usize;
    assert_eq!(call(&mut ctx, sf), 100);
    sent += 100;
    // Unused fields, length 0, ranges past i64::MAX.
    for bad in [
        Sqe { addr: 1, ..sf },
        Sqe { op_flags: 1, ..sf },
        Sqe {
            op_flags: u32::MAX,
            ..sf
        },
        Sqe { resv0: 1, ..sf },
        Sqe { resv: [0, 1], ..sf },
        Sqe { buf_group: 1, ..sf },
        Sqe { len: 0, ..sf },
        Sqe {
            off: i64::MAX as u64 - 5,
            len: 10,
            ..sf
        },
        Sqe {
            off: i64::MAX as u64 + 1,
            ..sf
        },
        Sqe {
            off: OFF_CURRENT - 1,
            ..sf
        },
        Sqe {
            off: i64::MAX as u64,
            len: u32::MAX,
            ..sf
        },
    ] {
        assert_eq!(call(&mut ctx, bad), -libc::EINVAL, "{bad:?}");
    }
    // Bad and empty slots, either side.
    for (slot, aux) in [
        (99, 1),
        (0, 99),
        (0, u32::MAX),
        (u32::MAX, 1),
        (5, 1),
        (0, 5),
    ] {
        let s = Sqe { slot, aux, ..sf };
        assert_eq!(call(&mut ctx, s), -libc::EBADF, "{s:?}");
    }
    // Wrong kinds: a directory, a pipe, a socket as the source; a write-only source; a
    // regular file as the destination.
    for (slot, aux, want) in [
        (0, 2, -libc::EINVAL),
        (0, 3, -libc::EINVAL),
        (0, 0, -libc::EINVAL),
        (0, 6, -libc::EBADF),
        (7, 1, -libc::ENOTSOCK),
        (2, 1, -libc::ENOTSOCK),
    ] {
        let s = Sqe { slot, aux, ..sf };
        assert_eq!(call(&mut ctx, s), want, "{s:?}");
    }
    // A range that ends exactly at i64::MAX: valid, past the end of the file.
    let edge = Sqe {
        off: i64::MAX as u64 - 10,
        len: 10,
        ..sf
    };
    assert_eq!(call(&mut ctx, edge), 0);
    // u32::MAX is clamped to MAX_RW_LEN: the rest of the file, short at its end.
    let huge = Sqe {
        off: 100,
        len: u32::MAX,
        ..sf
    };
    assert_eq!(call(&mut ctx, huge), 65536 - 100);
    sent += 65536 - 100;
    // The file position: read-write slot 7 as the source, from 0, advancing.
    let cur = Sqe {
        aux: 7,
        off: OFF_CURRENT,
        len: 1000,
        ..sf
    };
    assert_eq!(call(&mut ctx, cur), 1000);
    assert_eq!(call(&mut ctx, cur), 1000);
    sent += 2000;
    let mut rw = rw;
    assert_eq!(
        std::io::Seek::stream_position(&mut rw).unwrap(),
        2000,
        "the position advanced by what was sent"
    );

    drop(ctx);
    drop(sock);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), sent);
    assert_eq!(&got[..100], &data[..100]);
    assert_eq!(&got[100..65536], &data[100..]);
    assert_eq!(&got[65536..67536], &data[..2000]);
    // SAFETY: our pipe's two ends.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    kmod::assert_kernel_log_clean_since(&mark);
}
