//! fastio.ko against hostile OPENAT, FSYNC, FALLOCATE, SHUTDOWN and CONNECT requests,
//! written raw into the rings (`common/kmod.rs`): nonzero unused fields, bad pointers
//! (`-EFAULT`: 0, kernel addresses, a name or address running into a PROT_NONE page),
//! huge lengths, overflowing ranges, bad and empty slots, slots holding the wrong kind of
//! file, an unterminated path of PATH_MAX bytes, /dev/fastio opened into a slot, a busy
//! destination, and a CONNECT in progress cancelled by ASYNC_CANCEL, CLOSE and SHUTDOWN.
//! Each test ends by checking the kernel log since it began (no WARNING, BUG, Oops,
//! Rust panic).
//!
//! Runs where /dev/fastio exists, as root (inside the VM: `make vm-test`); elsewhere each
//! test prints SKIP and returns.

use std::ffi::CString;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use fastio::uapi::{
    Sqe, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FSYNC_DATASYNC, OPENAT_CWD, OP_CONNECT,
    OP_FALLOCATE, OP_FSYNC, OP_OPENAT, OP_SHUTDOWN, O_CREAT, O_PATH, PATH_MAX, SHUT_RDWR,
};

mod common;
#[path = "common/kmod.rs"]
mod kmod;

use kmod::{Ctx, KmsgMark};

const LIMIT: Duration = Duration::from_secs(10);
const KERNEL_ADDRS: [u64; 3] = [0xffff_8880_0000_0000, 0xffff_ffff_8100_0000, u64::MAX - 7];

fn begin(test: &str, what: &str) -> Option<KmsgMark> {
    let name = format!("kmod_hostile_ops::{test}");
    if !common::have_module(&name) || !common::have_root(&name) {
        return None;
    }
    println!("{name}: {what}");
    Some(kmod::kernel_log_mark(&name))
}

fn tmp_path(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/tmp/fastio-hostile-ops-{}-{name}",
        std::process::id()
    ))
}

/// Two pages, the second PROT_NONE: returns the first page's address.
struct Guarded(*mut libc::c_void);

impl Guarded {
    fn new() -> Guarded {
        // SAFETY: a fresh anonymous mapping, then mprotect of its second page.
        unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(m, libc::MAP_FAILED);
            assert_eq!(
                libc::mprotect(m.cast::<u8>().add(4096).cast(), 4096, libc::PROT_NONE),
                0
            );
            Guarded(m)
        }
    }
    /// The address `n` bytes before the guard, filled with `byte`.
    fn tail(&self, n: usize, byte: u8) -> u64 {
        // SAFETY: inside the first (writable) page.
        unsafe {
            let p = self.0.cast::<u8>().add(4096 - n);
            std::ptr::write_bytes(p, byte, n);
            p as u64
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.0, 8192) };
    }
}

fn openat(dir: u32, path: u64, flags: u32, mode: u64, dest: u32, ud: u64) -> Sqe {
    Sqe {
        opcode: OP_OPENAT,
        slot: dir,
        addr: path,
        op_flags: flags,
        off: mode,
        aux: dest,
        user_data: ud,
        ..Sqe::ZERO
    }
}

fn call(ctx: &mut Ctx, sqe: Sqe) -> i32 {
    let what = format!("{sqe:?}");
    ctx.call(0, sqe, LIMIT)
        .unwrap_or_else(|| panic!("no completion for {what}"))
}

#[test]
fn openat_hostile() {
    let Some(mark) = begin(
        "openat",
        "OPENAT: unused fields, bad pointers, PATH_MAX, slots, /dev/fastio, busy dest",
    ) else {
        return;
    };
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));
    let file = tmp_path("open");
    std::fs::write(&file, b"0123456789").unwrap();
    let name = CString::new(file.to_str().unwrap()).unwrap();
    let p = name.as_ptr() as u64;
    // The good case first: opens into slot 1, readable.
    assert_eq!(call(&mut ctx, openat(OPENAT_CWD, p, 0, 0, 1, 1)), 1);
    let mut buf = [0u8; 16];
    let r = ctx.call(0, kmod::read(1, buf.as_mut_ptr(), 16, 0, 2), LIMIT);
    assert_eq!(r, Some(10));
    assert_eq!(&buf[..10], b"0123456789");
    // Busy destination: -EBUSY before anything is opened (no file is created).
    let created = tmp_path("never-created");
    let cname = CString::new(created.to_str().unwrap()).unwrap();
    let c = openat(
        OPENAT_CWD,
        cname.as_ptr() as u64,
        O_CREAT | 0o2,
        0o600,
        1,
        3,
    );
    assert_eq!(call(&mut ctx, c), -libc::EBUSY);
    assert!(!created.exists(), "a refused OPENAT created its file");
    // Unused fields and bad flags: -EINVAL.
    let base = openat(OPENAT_CWD, p, 0, 0, 2, 4);
    for bad in [
        Sqe { len: 1, ..base },
        Sqe { off: 0o600, ..base },
        Sqe {
            op_flags: O_PATH,
            ..base
        },
        Sqe {
            op_flags: 1 << 31,
            ..base
        },
        Sqe {
            op_flags: O_CREAT,
            off: 0o10000,
            ..base
        },
        Sqe { resv0: 1, ..base },
        Sqe { flags: 1, ..base },
    ] {
        assert_eq!(call(&mut ctx, bad), -libc::EINVAL, "{bad:?}");
    }
    // Bad pointers: -EFAULT.
    let g = Guarded::new();
    for addr in [
        0,
        KERNEL_ADDRS[0],
        KERNEL_ADDRS[1],
        KERNEL_ADDRS[2],
        g.tail(8, b'a'),
    ] {
        assert_eq!(
            call(&mut ctx, Sqe { addr, ..base }),
            -libc::EFAULT,
            "{addr:#x}"
        );
    }
    // An unterminated name of PATH_MAX bytes (and a longer one): -ENAMETOOLONG.
    for n in [PATH_MAX as usize, PATH_MAX as usize + 100] {
        let long = vec![b'a'; n];
        let r = call(
            &mut ctx,
            Sqe {
                addr: long.as_ptr() as u64,
                ..base
            },
        );
        assert_eq!(r, -libc::ENAMETOOLONG, "{n} bytes");
    }
    // Slots: destination and directory out of range, empty directory, a regular file
    // as the directory.
    assert_eq!(call(&mut ctx, Sqe { aux: 8, ..base }), -libc::EBADF);
    assert_eq!(
        call(
            &mut ctx,
            Sqe {
                aux: u32::MAX - 1,
                ..base
            }
        ),
        -libc::EBADF
    );
    let rel = CString::new("x").unwrap();
    let in_dir = Sqe {
        addr: rel.as_ptr() as u64,
        ..base
    };
    assert_eq!(call(&mut ctx, Sqe { slot: 8, ..in_dir }), -libc::EBADF);
    assert_eq!(call(&mut ctx, Sqe { slot: 5, ..in_dir }), -libc::EBADF);
    assert_eq!(call(&mut ctx, Sqe { slot: 1, ..in_dir }), -libc::ENOTDIR);
    // /dev/fastio (and through a directory slot) is refused; the slot stays empty.
    let dev = CString::new(fastio::backend::DEVICE_PATH).unwrap();
    let d = Sqe {
        addr: dev.as_ptr() as u64,
        op_flags: 0o2,
        ..base
    };
    assert_eq!(call(&mut ctx, d), -libc::EBADF);
    let devdir = File::open("/dev").unwrap();
    ctx.register(devdir.as_raw_fd(), 3).unwrap();
    let fastio_name = CString::new("fastio").unwrap();
    let d2 = Sqe {
        slot: 3,
        addr: fastio_name.as_ptr() as u64,
        op_flags: 0o2,
        ..base
    };
    assert_eq!(call(&mut ctx, d2), -libc::EBADF);
    assert_eq!(call(&mut ctx, base), 2, "slot 2 is free after the refusals");
    drop(ctx);
    std::fs::remove_file(&file).unwrap();
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn fsync_fallocate_hostile() {
    let Some(mark) = begin(
        "fsync_fallocate",
        "FSYNC/FALLOCATE: unused fields, overflowing ranges, slots of the wrong kind",
    ) else {
        return;
    };
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));
    let path = tmp_path("sync");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    ctx.register(f.as_raw_fd(), 0).unwrap();
    let ro = File::open(&path).unwrap();
    ctx.register(ro.as_raw_fd(), 1).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    ctx.register(l.as_raw_fd(), 2).unwrap();

    let fsync = Sqe {
        opcode: OP_FSYNC,
        user_data: 1,
        ..Sqe::ZERO
    };
    assert_eq!(call(&mut ctx, fsync), 0);
    let ranged = Sqe {
        op_flags: FSYNC_DATASYNC,
        off: 4096,
        len: 4096,
        ..fsync
    };
    assert_eq!(call(&mut ctx, ranged), 0);
    for bad in [
        Sqe { addr: 1, ..fsync },
        Sqe { aux: 1, ..fsync },
        Sqe {
            op_flags: 2,
            ..fsync
        },
        Sqe {
            off: u64::MAX,
            ..fsync
        },
        Sqe {
            off: i64::MAX as u64,
            len: u32::MAX,
            ..fsync
        },
    ] {
        assert_eq!(call(&mut ctx, bad), -libc::EINVAL, "{bad:?}");
    }
    assert_eq!(call(&mut ctx, Sqe { slot: 5, ..fsync }), -libc::EBADF);
    assert_eq!(call(&mut ctx, Sqe { slot: 8, ..fsync }), -libc::EBADF);
    assert_eq!(
        call(&mut ctx, Sqe { slot: 2, ..fsync }),
        -libc::EINVAL,
        "socket"
    );

    let fall = Sqe {
        opcode: OP_FALLOCATE,
        addr: 1 << 20,
        user_data: 2,
        ..Sqe::ZERO
    };
    assert_eq!(call(&mut ctx, fall), 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    let trim = Sqe {
        op_flags: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        off: 4096,
        addr: 4096,
        ..fall
    };
    let r = call(&mut ctx, trim);
    assert!(r == 0 || r == -libc::EOPNOTSUPP, "trim: {r}");
    for bad in [
        Sqe { addr: 0, ..fall },
        Sqe { len: 1, ..fall },
        Sqe { aux: 1, ..fall },
        Sqe {
            op_flags: 0x04,
            ..fall
        },
        Sqe {
            op_flags: 0x80,
            ..fall
        },
        Sqe {
            off: u64::MAX,
            addr: 1,
            ..fall
        },
        Sqe {
            off: 1,
            addr: u64::MAX,
            ..fall
        },
        Sqe {
            off: i64::MAX as u64,
            addr: 1,
            ..fall
        },
        Sqe {
            off: 1 << 63,
            addr: 4096,
            ..fall
        },
    ] {
        assert_eq!(call(&mut ctx, bad), -libc::EINVAL, "{bad:?}");
    }
    // A mode combination the file system refuses (PUNCH_HOLE without KEEP_SIZE).
    let r = call(
        &mut ctx,
        Sqe {
            op_flags: FALLOC_FL_PUNCH_HOLE,
            ..fall
        },
    );
    assert!(r == -libc::EINVAL || r == -libc::EOPNOTSUPP, "{r}");
    assert_eq!(
        call(&mut ctx, Sqe { slot: 1, ..fall }),
        -libc::EBADF,
        "read-only"
    );
    assert_eq!(
        call(&mut ctx, Sqe { slot: 2, ..fall }),
        -libc::ENODEV,
        "socket"
    );
    assert_eq!(call(&mut ctx, Sqe { slot: 6, ..fall }), -libc::EBADF);
    drop(ctx);
    std::fs::remove_file(&path).unwrap();
    kmod::assert_kernel_log_clean_since(&mark);
}

#[test]
fn shutdown_hostile() {
    let Some(mark) = begin("shutdown", "SHUTDOWN: how, unused fields, non-sockets") else {
        return;
    };
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    ctx.register(c.as_raw_fd(), 0).unwrap();
    let f = File::open("/proc/self/status").unwrap();
    ctx.register(f.as_raw_fd(), 1).unwrap();
    let sh = Sqe {
        opcode: OP_SHUTDOWN,
        op_flags: SHUT_RDWR,
        user_data: 1,
        ..Sqe::ZERO
    };
    for bad in [
        Sqe { op_flags: 3, ..sh },
        Sqe {
            op_flags: u32::MAX,
            ..sh
        },
        Sqe { addr: 1, ..sh },
        Sqe { len: 1, ..sh },
        Sqe { off: 1, ..sh },
        Sqe { aux: 1, ..sh },
    ] {
        assert_eq!(call(&mut ctx, bad), -libc::EINVAL, "{bad:?}");
    }
    assert_eq!(call(&mut ctx, Sqe { slot: 1, ..sh }), -libc::ENOTSOCK);
    assert_eq!(call(&mut ctx, Sqe { slot: 2, ..sh }), -libc::EBADF);
    assert_eq!(call(&mut ctx, Sqe { slot: 9, ..sh }), -libc::EBADF);
    assert_eq!(call(&mut ctx, sh), 0);
    // The listener itself (not connected): the kernel's answer.
    ctx.register(l.as_raw_fd(), 3).unwrap();
    let r = call(&mut ctx, Sqe { slot: 3, ..sh });
    assert!(r == 0 || r == -libc::ENOTCONN, "{r}");
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}

fn tcp_socket() -> OwnedFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    // SAFETY: plain data.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    sa
}

/// A listener (backlog 0) whose accept queue is full: SYNs to it are dropped, so a
/// connect to it stays in progress.
fn full_listener() -> (OwnedFd, u16, TcpStream) {
    let fd = tcp_socket();
    let mut sa = sockaddr(0);
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: bind/listen/getsockname with valid arguments on our socket.
    unsafe {
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                len
            ),
            0
        );
        assert_eq!(libc::listen(fd.as_raw_fd(), 0), 0);
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        );
    }
    let port = u16::from_be(sa.sin_port);
    let first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    (fd, port, first)
}

#[test]
fn connect_hostile() {
    let Some(mark) = begin(
        "connect",
        "CONNECT: lengths, bad pointers, non-sockets; in progress cancelled by \
         ASYNC_CANCEL, CLOSE and SHUTDOWN",
    ) else {
        return;
    };
    let mut ctx = Ctx::started(kmod::params(1, 8, 16));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sa = sockaddr(l.local_addr().unwrap().port());
    let sa_len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let s0 = tcp_socket();
    ctx.register(s0.as_raw_fd(), 0).unwrap();
    let f = File::open("/proc/self/status").unwrap();
    ctx.register(f.as_raw_fd(), 1).unwrap();
    let conn = Sqe {
        opcode: OP_CONNECT,
        addr: &sa as *const libc::sockaddr_in as u64,
        len: sa_len,
        user_data: 1,
        ..Sqe::ZERO
    };
    for bad in [
        Sqe { len: 0, ..conn },
        Sqe { len: 1, ..conn },
        Sqe { len: 129, ..conn },
        Sqe {
            len: u32::MAX,
            ..conn
        },
        Sqe { off: 1, ..conn },
        Sqe {
            op_flags: 1,
            ..conn
        },
        Sqe { aux: 1, ..conn },
    ] {
        assert_eq!(call(&mut ctx, bad), -libc::EINVAL, "{bad:?}");
    }
    let g = Guarded::new();
    for addr in [
        0,
        KERNEL_ADDRS[0],
        KERNEL_ADDRS[1],
        KERNEL_ADDRS[2],
        g.tail(8, 2),
    ] {
        assert_eq!(
            call(&mut ctx, Sqe { addr, ..conn }),
            -libc::EFAULT,
            "{addr:#x}"
        );
    }
    assert_eq!(call(&mut ctx, Sqe { slot: 1, ..conn }), -libc::ENOTSOCK);
    assert_eq!(call(&mut ctx, Sqe { slot: 2, ..conn }), -libc::EBADF);
    assert_eq!(call(&mut ctx, Sqe { slot: 8, ..conn }), -libc::EBADF);
    // A family the socket does not speak: the kernel's own check.
    let mut bad_family = sa;
    bad_family.sin_family = libc::AF_INET6 as u16;
    let r = call(
        &mut ctx,
        Sqe {
            addr: &bad_family as *const libc::sockaddr_in as u64,
            ..conn
        },
    );
    assert!(r == -libc::EAFNOSUPPORT || r == -libc::EINVAL, "{r}");
    assert_eq!(call(&mut ctx, conn), 0, "a real connect after all that");
    let _peer = l.accept().unwrap();

    // In progress, then cancelled three ways.
    let (_full, port, _first) = full_listener();
    let target = sockaddr(port);
    let pending = |slot: u32, ud: u64| Sqe {
        slot,
        addr: &target as *const libc::sockaddr_in as u64,
        user_data: ud,
        ..conn
    };
    let socks: Vec<OwnedFd> = (0..3).map(|_| tcp_socket()).collect();
    for (i, s) in socks.iter().enumerate() {
        ctx.register(s.as_raw_fd(), 2 + i as u32).unwrap();
        ctx.submit(0, pending(2 + i as u32, 10 + i as u64));
    }
    assert!(
        ctx.wait(1, Duration::from_millis(300)).is_empty(),
        "connects stay in progress"
    );
    let cancel = Sqe {
        opcode: fastio::uapi::OP_ASYNC_CANCEL,
        addr: 10,
        user_data: 20,
        ..Sqe::ZERO
    };
    assert_eq!(call(&mut ctx, cancel), 0);
    assert_eq!(
        ctx.wait_for(10, LIMIT).map(|c| c.res),
        Some(-libc::ECANCELED)
    );
    assert_eq!(call(&mut ctx, kmod::close(3, 21)), 0);
    assert_eq!(
        ctx.wait_for(11, LIMIT).map(|c| c.res),
        Some(-libc::ECANCELED)
    );
    // The third one waits until SHUTDOWN of the context cancels it.
    kmod::shutdown(ctx.fd()).unwrap();
    assert_eq!(
        ctx.wait_for(12, LIMIT).map(|c| c.res),
        Some(-libc::ECANCELED)
    );
    ctx.shutdown_and_join();
    drop(ctx);
    kmod::assert_kernel_log_clean_since(&mark);
}
