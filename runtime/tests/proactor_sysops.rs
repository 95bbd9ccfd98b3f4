//! OPENAT, FSYNC, FALLOCATE, SHUTDOWN, CONNECT and O_DIRECT READ/WRITE through the
//! proactor, on every backend this machine can run (io_uring with and without SQPOLL,
//! threads with one and two lanes, the kernel module where `/dev/fastio` exists: in the
//! VM, `make vm-test`, where the files live on the scratch ext4 disk `FASTIO_SCRATCH`).

mod common;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Flavor;
use fastio::{Completion, Proactor};

fn each_backend(test: &str, f: impl Fn(&Flavor, &mut Proactor)) {
    common::each_proactor(test, f);
}

const T: Option<Duration> = Some(Duration::from_secs(20));

thread_local! {
    /// Completions taken while waiting for another one.
    static STASH: std::cell::RefCell<Vec<Completion>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Waits for the completion of `user_data`; others that arrive first are kept for
/// their own `wait_for`.
fn wait_for(p: &mut Proactor, user_data: u64) -> Completion {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        p.submit().expect("submit");
        let got: Vec<Completion> = p.completions().collect();
        let found = STASH.with(|s| {
            let mut s = s.borrow_mut();
            s.extend(got);
            let i = s.iter().position(|c| c.user_data == user_data)?;
            Some(s.remove(i))
        });
        if let Some(c) = found {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no completion for {user_data} within 20 s"
        );
        p.wait(1, T).expect("wait");
    }
}

/// A fresh directory on the scratch disk (VM) or under the temp dir (host).
fn scratch_dir(test: &str, fl: &Flavor) -> PathBuf {
    let root = std::env::var("FASTIO_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let name: String = fl
        .name
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    let dir = root.join(format!("fastio-{test}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// OPENAT in the current directory (absolute path) with O_CREAT, then WRITE, FSYNC,
/// ranged FDATASYNC, FALLOCATE (grow, then punch a hole as a trim), READ back: every
/// byte checked against what the file holds through the file system.
#[test]
fn openat_fsync_fallocate_roundtrip() {
    each_backend("openat_fsync_fallocate", |fl, p| {
        let dir = scratch_dir("openat", fl);
        let path = dir.join("data");
        let flags = libc::O_CREAT | libc::O_RDWR | libc::O_EXCL;
        p.openat(None, &cpath(&path), flags, 0o640, 1)
            .map_err(|r| r.error)
            .unwrap();
        let c = wait_for(p, 1);
        assert!(c.result >= 0, "[{}] openat: {}", fl.name, c.result);
        let slot = c.accepted.expect("new slot");
        assert_eq!(slot.index() as i32, c.result);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o640
        );
        // O_EXCL on an existing file.
        p.openat(None, &cpath(&path), flags, 0o640, 2)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 2).result, -libc::EEXIST, "[{}]", fl.name);
        // A missing file.
        p.openat(None, &cpath(&dir.join("missing")), libc::O_RDONLY, 0, 3)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 3).result, -libc::ENOENT, "[{}]", fl.name);

        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
        p.write(slot, data.clone(), 0..data.len(), Some(0), 4)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(
            wait_for(p, 4).result,
            data.len() as i32,
            "[{}] write",
            fl.name
        );
        p.fsync(slot, false, 5).map_err(|r| r.error).unwrap();
        assert_eq!(wait_for(p, 5).result, 0, "[{}] fsync", fl.name);
        p.fsync_range(slot, true, 4096, 8192, 6)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 6).result, 0, "[{}] fdatasync range", fl.name);
        // Grow to 1 MiB.
        p.fallocate(slot, 0, 0, 1 << 20, 7)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 7).result, 0, "[{}] fallocate", fl.name);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        // Trim 8 KiB at 16 KiB: the size stays, the range reads as zeros.
        let trim = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        p.fallocate(slot, trim as u32, 16384, 8192, 8)
            .map_err(|r| r.error)
            .unwrap();
        let r = wait_for(p, 8).result;
        if r == -libc::EOPNOTSUPP {
            println!(
                "SKIP punch hole [{}]: the file system cannot (EOPNOTSUPP)",
                fl.name
            );
        } else {
            assert_eq!(r, 0, "[{}] punch hole", fl.name);
        }
        let mut expect = data.clone();
        if r == 0 {
            expect[16384..24576].fill(0);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        p.read(slot, vec![0xAA; 65536], 0..65536, Some(0), 9)
            .map_err(|r| r.error)
            .unwrap();
        let c = wait_for(p, 9);
        assert_eq!(c.result, 65536, "[{}] read", fl.name);
        assert!(
            c.buf.unwrap() == expect,
            "[{}] bytes read back differ",
            fl.name
        );
        let mut disk = vec![0u8; 65536];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact(&mut disk)
            .unwrap();
        assert!(disk == expect, "[{}] bytes on disk differ", fl.name);
        // FSYNC and FALLOCATE of a socket: the kernel's answers.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let ls = p.register(&l).unwrap();
        p.fsync(ls, false, 10).map_err(|r| r.error).unwrap();
        assert_eq!(
            wait_for(p, 10).result,
            -libc::EINVAL,
            "[{}] fsync socket",
            fl.name
        );
        p.fallocate(ls, 0, 0, 4096, 11)
            .map_err(|r| r.error)
            .unwrap();
        let r = wait_for(p, 11).result;
        assert!(
            r == -libc::ENODEV || r == -libc::EBADF,
            "[{}] fallocate socket: {r}",
            fl.name
        );
        p.close(ls, 12).map_err(|r| r.error).unwrap();
        wait_for(p, 12);
        p.close(slot, 13).map_err(|r| r.error).unwrap();
        assert_eq!(wait_for(p, 13).result, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

/// OPENAT relative to a directory slot: found inside it, and `..` and absolute paths
/// stay inside it (`RESOLVE_IN_ROOT`, the module's `file_open_root`).
#[test]
fn openat_in_directory_slot_stays_inside() {
    each_backend("openat_in_directory_slot", |fl, p| {
        let top = scratch_dir("openat-dir", fl);
        let inner = top.join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("a"), b"inside").unwrap();
        std::fs::write(top.join("outside"), b"outside").unwrap();
        let d = std::fs::File::open(&inner).unwrap();
        let ds = p.register(&d).unwrap();
        let open = |p: &mut Proactor, name: &str, ud: u64| {
            let c = CString::new(name).unwrap();
            p.openat(Some(ds), &c, libc::O_RDONLY, 0, ud)
                .map_err(|r| r.error)
                .unwrap();
            wait_for(p, ud)
        };
        for (i, name) in ["a", "/a", "../a", "../../a", "/../a"].iter().enumerate() {
            let c = open(p, name, 10 + i as u64);
            assert!(c.result >= 0, "[{}] {name}: {}", fl.name, c.result);
            let s = c.accepted.unwrap();
            p.read(s, vec![0; 16], 0..16, Some(0), 50)
                .map_err(|r| r.error)
                .unwrap();
            let r = wait_for(p, 50);
            assert_eq!(
                &r.buf.unwrap()[..r.result as usize],
                b"inside",
                "[{}] {name}",
                fl.name
            );
            p.close(s, 51).map_err(|r| r.error).unwrap();
            wait_for(p, 51);
        }
        // `../outside` resolves to inner/outside, which does not exist.
        assert_eq!(
            open(p, "../outside", 20).result,
            -libc::ENOENT,
            "[{}]",
            fl.name
        );
        // A directory slot that is a regular file.
        let f = std::fs::File::open(inner.join("a")).unwrap();
        let fs = p.register(&f).unwrap();
        let c = CString::new("x").unwrap();
        p.openat(Some(fs), &c, libc::O_RDONLY, 0, 21)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 21).result, -libc::ENOTDIR, "[{}]", fl.name);
        // O_PATH is refused.
        p.openat(Some(ds), &c, libc::O_PATH, 0, 22)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 22).result, -libc::EINVAL, "[{}]", fl.name);
        for (s, ud) in [(ds, 30), (fs, 31)] {
            p.close(s, ud).map_err(|r| r.error).unwrap();
            wait_for(p, ud);
        }
        std::fs::remove_dir_all(&top).unwrap();
    });
}

fn tcp_socket() -> OwnedFd {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// SHUTDOWN(WR) sends a FIN (the peer reads end of stream, then can still send);
/// SHUTDOWN of a file is `-ENOTSOCK`.
#[test]
fn shutdown_write_sends_fin() {
    each_backend("shutdown_write", |fl, p| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let ss = p.register(&s).unwrap();
        p.shutdown_socket(ss, Shutdown::Write, 1)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 1).result, 0, "[{}]", fl.name);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(c.read(&mut b).unwrap(), 0, "[{}] FIN expected", fl.name);
        c.write_all(b"back").unwrap();
        p.recv(ss, vec![0; 8], 0..8, 2)
            .map_err(|r| r.error)
            .unwrap();
        let r = wait_for(p, 2);
        assert_eq!(
            &r.buf.unwrap()[..r.result as usize],
            b"back",
            "[{}]",
            fl.name
        );
        let f = tempfile_in_tmp();
        let fs = p.register(&f).unwrap();
        p.shutdown_socket(fs, Shutdown::Both, 3)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 3).result, -libc::ENOTSOCK, "[{}]", fl.name);
        for (slot, ud) in [(ss, 4), (fs, 5)] {
            p.close(slot, ud).map_err(|r| r.error).unwrap();
            wait_for(p, ud);
        }
    });
}

fn tempfile_in_tmp() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("fastio-sysops-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

/// CONNECT: to a listener (0, then data flows both ways), to a closed port
/// (`-ECONNREFUSED`), on a connected socket (`-EISCONN`), on a file (`-ENOTSOCK`).
#[test]
fn connect_roundtrip_and_errors() {
    each_backend("connect_roundtrip", |fl, p| {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = tcp_socket();
        let s = p.register(&sock).unwrap();
        p.connect(s, l.local_addr().unwrap(), 1)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 1).result, 0, "[{}] connect", fl.name);
        let (mut peer, from) = l.accept().unwrap();
        assert_eq!(from.ip(), l.local_addr().unwrap().ip());
        p.send(s, b"hello".to_vec(), 0..5, 2)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 2).result, 5);
        let mut b = [0u8; 5];
        peer.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        // A second CONNECT: io_uring says -EISCONN; the module and the threads backend
        // finished the first one the SO_ERROR way (poll, then the socket's error), after
        // which Linux's connect(2) itself returns 0 for the same address (the socket's
        // state is only updated by a connect call): both mean "connected".
        p.connect(s, l.local_addr().unwrap(), 3)
            .map_err(|r| r.error)
            .unwrap();
        let r = wait_for(p, 3).result;
        assert!(
            r == -libc::EISCONN || r == 0,
            "[{}] second connect: {r}",
            fl.name
        );

        let closed: SocketAddr = {
            let t = TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap()
        };
        let sock2 = tcp_socket();
        let s2 = p.register(&sock2).unwrap();
        p.connect(s2, closed, 4).map_err(|r| r.error).unwrap();
        assert_eq!(wait_for(p, 4).result, -libc::ECONNREFUSED, "[{}]", fl.name);

        let f = tempfile_in_tmp();
        let fs = p.register(&f).unwrap();
        p.connect(fs, closed, 5).map_err(|r| r.error).unwrap();
        assert_eq!(wait_for(p, 5).result, -libc::ENOTSOCK, "[{}]", fl.name);
        for (slot, ud) in [(s, 6), (s2, 7), (fs, 8)] {
            p.close(slot, ud).map_err(|r| r.error).unwrap();
            wait_for(p, ud);
        }
    });
}

/// A listener whose accept queue is full drops further SYNs: a connect to it stays in
/// progress (the kernel retries the SYN for seconds).
fn full_listener() -> (OwnedFd, SocketAddr, TcpStream) {
    let fd = tcp_socket();
    // SAFETY: plain bind/listen/getsockname on our socket with valid arguments.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                len
            ),
            0
        );
        assert_eq!(libc::listen(fd.as_raw_fd(), 0), 0);
        let mut l = len;
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut l,
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], u16::from_be(sa.sin_port)));
        // Fills the accept queue (backlog 0 holds one).
        let first = TcpStream::connect(addr).unwrap();
        (fd, addr, first)
    }
}

/// A CONNECT in progress is cancelled by ASYNC_CANCEL and by CLOSE of its slot
/// (`-ECANCELED`), like a RECV waiting for data.
#[test]
fn connect_in_progress_is_cancellable() {
    each_backend("connect_cancel", |fl, p| {
        let (_l, addr, _first) = full_listener();
        let sock = tcp_socket();
        let s = p.register(&sock).unwrap();
        p.connect(s, addr, 1).map_err(|r| r.error).unwrap();
        p.submit().unwrap();
        // Still in progress after a moment (the SYN was dropped): nothing completed.
        assert_eq!(
            p.wait(1, Some(Duration::from_millis(300))).unwrap(),
            0,
            "[{}]",
            fl.name
        );
        p.cancel(1, 2).map_err(|r| r.error).unwrap();
        assert_eq!(wait_for(p, 2).result, 0, "[{}] cancel found it", fl.name);
        let r = wait_for(p, 1).result;
        assert_eq!(r, -libc::ECANCELED, "[{}]", fl.name);
        let sock2 = tcp_socket();
        let s2 = p.register(&sock2).unwrap();
        p.connect(s2, addr, 3).map_err(|r| r.error).unwrap();
        p.submit().unwrap();
        assert_eq!(
            p.wait(1, Some(Duration::from_millis(300))).unwrap(),
            0,
            "[{}]",
            fl.name
        );
        p.close(s2, 4).map_err(|r| r.error).unwrap();
        assert_eq!(
            wait_for(p, 3).result,
            -libc::ECANCELED,
            "[{}] close",
            fl.name
        );
        assert_eq!(wait_for(p, 4).result, 0);
        p.close(s, 5).map_err(|r| r.error).unwrap();
        wait_for(p, 5);
    });
}

/// `len` bytes of a fresh buffer whose range `a..a + len` starts on a 4 KiB boundary
/// (plus `skew`); returns the buffer and the range.
fn aligned(len: usize, skew: usize, fill: u8) -> (Vec<u8>, std::ops::Range<usize>) {
    let v = vec![fill; len + 8192];
    let a = (4096 - (v.as_ptr() as usize % 4096)) % 4096 + skew;
    (v, a..a + len)
}

/// What `pread`/`pwrite` on `fd` answer for the same transfer: bytes or `-errno`.
fn syscall_rw(fd: i32, write: bool, len: usize, skew: usize, off: i64) -> i32 {
    let (mut v, r) = aligned(len, skew, 0x5A);
    // SAFETY: the range lies inside `v`.
    let n = unsafe {
        let p = v.as_mut_ptr().add(r.start).cast::<libc::c_void>();
        if write {
            libc::pwrite(fd, p, len, off)
        } else {
            libc::pread(fd, p, len, off)
        }
    };
    if n < 0 {
        -std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        n as i32
    }
}

/// Opens `path` with `flags | O_DIRECT` through the proactor; `None` (SKIP printed)
/// when the file system refuses O_DIRECT.
fn open_direct(p: &mut Proactor, fl: &Flavor, path: &Path, flags: i32) -> Option<fastio::Slot> {
    p.openat(None, &cpath(path), flags | libc::O_DIRECT, 0, 100)
        .map_err(|r| r.error)
        .unwrap();
    let c = wait_for(p, 100);
    if c.result == -libc::EINVAL {
        println!(
            "SKIP o_direct [{}]: the file system of {} has no O_DIRECT (EINVAL at open)",
            fl.name,
            path.display()
        );
        return None;
    }
    assert!(
        c.result >= 0,
        "[{}] open O_DIRECT {}: {}",
        fl.name,
        path.display(),
        c.result
    );
    c.accepted
}

/// READ/WRITE at an offset on an O_DIRECT file: aligned transfers are byte-verified; a
/// misaligned buffer, offset or length gets exactly the file system's own answer (the
/// same `pread`/`pwrite` on a descriptor of the same file: ext4 of Linux 7.3 falls back
/// to buffered I/O, a block device says `-EINVAL`), a completion, never a kernel warning.
/// On the scratch disk's block device (VM) the misaligned READ must be `-EINVAL`.
#[test]
fn o_direct_alignment_is_the_file_systems() {
    each_backend("o_direct", |fl, p| {
        let dir = scratch_dir("odirect", fl);
        let path = dir.join("d");
        std::fs::write(&path, vec![0u8; 16384]).unwrap();
        let Some(slot) = open_direct(p, fl, &path, libc::O_RDWR) else {
            return;
        };
        let raw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let (mut buf, r) = aligned(4096, 0, 0);
        for (i, b) in buf[r.clone()].iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        let expect = buf[r.clone()].to_vec();
        p.write(slot, buf, r, Some(4096), 1)
            .map_err(|r| r.error)
            .unwrap();
        assert_eq!(wait_for(p, 1).result, 4096, "[{}] aligned write", fl.name);
        let (buf, r) = aligned(4096, 0, 0xEE);
        p.read(slot, buf, r.clone(), Some(4096), 2)
            .map_err(|r| r.error)
            .unwrap();
        let c = wait_for(p, 2);
        assert_eq!(c.result, 4096, "[{}] aligned read", fl.name);
        assert!(
            c.buf.unwrap()[r] == expect[..],
            "[{}] bytes differ",
            fl.name
        );
        // Misaligned buffer, offset, length; READ and WRITE.
        let mut ud = 10;
        for write in [false, true] {
            for (len, skew, off) in [(4096, 1, 0), (4096, 0, 1), (100, 0, 0), (4096, 512, 8192)] {
                let (buf, r) = aligned(len, skew, 0x5A);
                if write {
                    p.write(slot, buf, r, Some(off), ud)
                } else {
                    p.read(slot, buf, r, Some(off), ud)
                }
                .map_err(|r| r.error)
                .unwrap();
                let got = wait_for(p, ud).result;
                let want = syscall_rw(raw.as_raw_fd(), write, len, skew, off as i64);
                println!(
                    "o_direct [{}] {} len {len} buffer +{skew} offset {off}: {got} \
                     (the file system says {want})",
                    fl.name,
                    if write { "WRITE" } else { "READ" },
                );
                assert_eq!(got, want, "[{}] not the file system's answer", fl.name);
                ud += 1;
            }
        }
        p.close(slot, 3).map_err(|r| r.error).unwrap();
        wait_for(p, 3);
        std::fs::remove_dir_all(&dir).unwrap();
        block_device_direct(p, fl);
    });
}

/// The scratch disk's block device (VM only): a misaligned O_DIRECT READ is `-EINVAL`.
fn block_device_direct(p: &mut Proactor, fl: &Flavor) {
    let Ok(scratch) = std::env::var("FASTIO_SCRATCH") else {
        println!(
            "SKIP o_direct block device [{}]: FASTIO_SCRATCH unset (no scratch disk here; \
             the VM run has one)",
            fl.name
        );
        return;
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let dev = mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 1 && f[1] == scratch)
        .map(|f| PathBuf::from(f[0]))
        .expect("the scratch disk is mounted");
    let Some(slot) = open_direct(p, fl, &dev, libc::O_RDONLY) else {
        return;
    };
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&dev)
        .unwrap();
    let (buf, r) = aligned(4096, 1, 0);
    p.read(slot, buf, r, Some(0), 200)
        .map_err(|r| r.error)
        .unwrap();
    assert_eq!(
        wait_for(p, 200).result,
        -libc::EINVAL,
        "[{}] {}",
        fl.name,
        dev.display()
    );
    assert_eq!(
        syscall_rw(raw.as_raw_fd(), false, 4096, 1, 0),
        -libc::EINVAL
    );
    let (buf, r) = aligned(4096, 0, 0);
    p.read(slot, buf, r.clone(), Some(4096), 201)
        .map_err(|r| r.error)
        .unwrap();
    let c = wait_for(p, 201);
    assert_eq!(c.result, 4096, "[{}] aligned block read", fl.name);
    let mut want = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&dev).unwrap(), &mut want, 4096)
        .unwrap();
    assert!(
        c.buf.unwrap()[r] == want[..],
        "[{}] block bytes differ",
        fl.name
    );
    println!(
        "o_direct [{}] {}: misaligned READ -EINVAL, aligned READ verified",
        fl.name,
        dev.display()
    );
    p.close(slot, 202).map_err(|r| r.error).unwrap();
    wait_for(p, 202);
}
