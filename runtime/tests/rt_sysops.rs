//! `fastio::rt` over OPENAT, FSYNC, FALLOCATE, CONNECT and SHUTDOWN, on every backend
//! this machine runs (the kernel module inside the VM): files opened, synced, allocated
//! and trimmed through the rings, byte-verified; TCP connected and half-closed through
//! the rings; a connect in progress cancelled by dropping its future. Loopback only;
//! every wait is bounded.

mod common;

use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::Flavor;
use fastio::rt::{self, Runtime, TcpListener, TcpStream};
use fastio::Config;

fn each_runtime(test: &str, f: impl Fn(&Flavor, &Runtime)) {
    let base = Config {
        sq_entries: 64,
        cq_entries: 128,
        max_files: 128,
        idle_ms: 5,
        ..Config::default()
    };
    common::each_flavor(
        test,
        common::flavors(base),
        Runtime::new,
        |rt| rt.backend().sqpoll,
        |fl, rt| f(fl, rt),
    );
}

async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match rt::timeout(Duration::from_secs(30), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within 30 s"),
    }
}

#[test]
fn rt_file_open_sync_allocate_punch() {
    each_runtime("rt_file_ops", |fl, rt| {
        let root = std::env::var("FASTIO_SCRATCH")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| std::env::temp_dir());
        let path = root.join(format!(
            "fastio-rt-sysops-{}-{}",
            std::process::id(),
            fl.name.replace(['+', ' '], "_")
        ));
        rt.block_on(bounded("file ops", async {
            let f = rt::File::create(&path).await.unwrap();
            let data: Vec<u8> = (0..32768u32).map(|i| (i % 253) as u8).collect();
            let (r, _) = f.write_all_at(data.clone(), 0).await;
            r.unwrap();
            f.sync_data().await.unwrap();
            f.sync_all().await.unwrap();
            f.allocate(0, 1 << 20).await.unwrap();
            assert_eq!(f.metadata().unwrap().len(), 1 << 20, "[{}]", fl.name);
            let mut expect = data.clone();
            match f.punch_hole(4096, 8192).await {
                Ok(()) => expect[4096..12288].fill(0),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    println!("SKIP punch_hole [{}]: not supported here", fl.name)
                }
                Err(e) => panic!("[{}] punch_hole: {e}", fl.name),
            }
            assert_eq!(f.metadata().unwrap().len(), 1 << 20);
            f.close().await.unwrap();
            // Opened again read-only through OPENAT: the bytes are there.
            let g = rt::File::open(&path).await.unwrap();
            let (r, buf) = g.read_at(Vec::with_capacity(32768), 0).await;
            assert_eq!(r.unwrap(), 32768);
            assert!(buf == expect, "[{}] bytes differ", fl.name);
            // Writing to a read-only file: the kernel's EBADF.
            let (r, _) = g.write_at(vec![1u8; 8], 0).await;
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBADF));
            g.close().await.unwrap();
            let e = rt::File::open(path.with_extension("missing"))
                .await
                .err()
                .unwrap();
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "[{}]", fl.name);
        }));
        std::fs::remove_file(&path).unwrap();
    });
}

#[test]
fn rt_tcp_connect_and_shutdown() {
    each_runtime("rt_connect_shutdown", |fl, rt| {
        rt.block_on(bounded("connect/shutdown", async {
            let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr().unwrap();
            // Echo until end of stream, then close.
            let server = rt::spawn(async move {
                let s = l.accept().await.unwrap();
                loop {
                    let (r, buf) = s.read(Vec::with_capacity(4096)).await;
                    if r.unwrap() == 0 {
                        break;
                    }
                    let (r, _) = s.write_all(buf).await;
                    r.unwrap();
                }
                s.close().await.unwrap();
            });
            let c = TcpStream::connect(addr).await.unwrap();
            let msg: Vec<u8> = (0..50_000u32).map(|i| (i % 249) as u8).collect();
            let (r, _) = c.write_all(msg.clone()).await;
            r.unwrap();
            c.shutdown(Shutdown::Write).await.unwrap();
            let mut got = Vec::new();
            loop {
                let (r, buf) = c.read(Vec::with_capacity(8192)).await;
                if r.unwrap() == 0 {
                    break;
                }
                got.extend_from_slice(&buf);
            }
            assert!(
                got == msg,
                "[{}] echo differs ({} bytes)",
                fl.name,
                got.len()
            );
            server.await.unwrap();
            c.close().await.unwrap();

            let closed: SocketAddr = {
                let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                t.local_addr().unwrap()
            };
            let e = TcpStream::connect(closed).await.err().unwrap();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "[{}]",
                fl.name
            );
        }));
    });
}

/// A listener (backlog 0) whose accept queue is full: a connect to it stays in progress.
fn full_listener() -> (OwnedFd, SocketAddr, std::net::TcpStream) {
    // SAFETY: socket/bind/listen/getsockname with valid arguments on our socket.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
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
        let addr = SocketAddr::from(([127, 0, 0, 1], u16::from_be(sa.sin_port)));
        let first = std::net::TcpStream::connect(addr).unwrap();
        (fd, addr, first)
    }
}

/// Dropping a connect in progress (a timeout) cancels it; the runtime keeps working.
#[test]
fn rt_connect_in_progress_cancelled_on_drop() {
    each_runtime("rt_connect_cancel", |fl, rt| {
        let (_l, addr, _first) = full_listener();
        rt.block_on(bounded("connect cancel", async {
            let r = rt::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await;
            assert!(
                r.is_err(),
                "[{}] the connect should still be in progress",
                fl.name
            );
            // The runtime is fine afterwards: a real connection works.
            let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let a = l.local_addr().unwrap();
            let accept = rt::spawn(async move { l.accept().await.map(drop) });
            TcpStream::connect(a).await.unwrap();
            accept.await.unwrap().unwrap();
        }));
    });
}

/// `TcpStream::sendfile_all` / `sendfile`: a file of a few MiB (on the scratch disk in
/// the VM, uncached), a range in the middle and the file position, to a peer that
/// compares every byte.
#[test]
fn rt_sendfile_byte_verified() {
    each_runtime("rt_sendfile", |fl, rt| {
        let in_vm = std::env::var("FASTIO_SCRATCH").ok();
        let root = in_vm
            .clone()
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let path = root.join(format!(
            "fastio-rt-sendfile-{}-{}",
            std::process::id(),
            fl.name.replace(['+', ' '], "_")
        ));
        let size: usize = if in_vm.is_some() { 2 << 20 } else { 6 << 20 };
        let data: Vec<u8> = (0..size as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        if in_vm.is_some() {
            common::drop_caches();
        }
        let (mid, mid_len) = (777_777usize, 333_333usize);
        let want: Vec<u8> = [&data[..], &data[mid..mid + mid_len], &data[..5000]].concat();
        let peer = rt.block_on(bounded("sendfile", async {
            let l = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr = l.local_addr().unwrap();
            let n = want.len();
            let peer = std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut got = Vec::with_capacity(n);
                std::io::Read::read_to_end(&mut c, &mut got).unwrap();
                got
            });
            let s = l.accept().await.unwrap();
            let f = rt::File::open(&path).await.unwrap();
            assert_eq!(
                s.sendfile_all(&f, 0, size as u64).await.unwrap(),
                size as u64
            );
            let sent = s.sendfile_all(&f, mid as u64, mid_len as u64).await;
            assert_eq!(sent.unwrap(), mid_len as u64);
            // The file position (0: nothing used it yet), twice.
            let mut cur = 0;
            while cur < 5000 {
                let r = s.sendfile(&f, None, 5000 - cur as u32).await.unwrap();
                assert!(r > 0, "[{}] end of file at {cur}", fl.name);
                cur += r;
            }
            // Past the end: 0; length 0: refused before the rings.
            assert_eq!(s.sendfile(&f, Some(size as u64), 10).await.unwrap(), 0);
            assert!(s.sendfile(&f, Some(0), 0).await.is_err());
            s.close().await.unwrap();
            peer
        }));
        let got = peer.join().unwrap();
        assert_eq!(got.len(), want.len(), "[{}]", fl.name);
        assert!(got == want, "[{}] bytes differ", fl.name);
        let _ = std::fs::remove_file(&path);
    });
}
