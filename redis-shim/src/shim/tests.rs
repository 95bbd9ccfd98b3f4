//! The shim's queue and registration against real sockets and a real executor.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use fastio::BackendKind;

use super::*;

/// A socket registered twice (a signal handler's write registered it between the
/// thread's check and its own registration) keeps one slot, so its bytes leave from
/// one queue in order.
#[test]
fn a_socket_registered_twice_keeps_its_slot() {
    let config = Config {
        backend: BackendKind::Threads,
        ..Config::default()
    };
    let mut shim = Shim::new(&config, Settings::default()).expect("threads backend");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let fd = s.as_raw_fd();
    assert!(shim.register(fd));
    assert_eq!(shim.write(fd, &[b"first "], 6), Ok(6));
    assert!(shim.register(fd), "second registration");
    assert_eq!(shim.write(fd, &[b"second"], 6), Ok(6));
    let st = shim.stats();
    assert_eq!((st.registered, st.open_slots), (1, 1), "{st:?}");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    peer.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    while got.len() < 12 {
        shim.pump();
        let n = peer.read(&mut buf).expect("bytes within 10 s");
        assert!(n > 0, "end of stream after {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"first second");
    shim.detach(fd);
}

/// Writes `buf` to `fd` with the raw system call (the test binary's own `write` and
/// `send` are the shim's interposed ones).
fn raw_write(fd: i32, buf: &[u8]) -> isize {
    // SAFETY: `buf` is readable for its length.
    unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) as isize }
}

/// A SEND that waits for room in the socket goes out while the thread sleeps outside
/// the shim (Redis in its epoll_wait), with io_uring's cooperative task running (the
/// default): the kernel skips the interrupt of a thread running in user space, but
/// still wakes a sleeping one to finish the request.
#[test]
fn a_send_waiting_for_room_goes_out_while_the_thread_sleeps_elsewhere() {
    let config = Config {
        backend: BackendKind::Uring,
        sqpoll: false,
        uring_coop_taskrun: true,
        ..Config::default()
    };
    let mut shim = match Shim::new(&config, Settings::default()) {
        Ok(s) => s,
        Err(e) => {
            println!("SKIP a_send_waiting_for_room_goes_out: io_uring unavailable ({e})");
            return;
        }
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let fd = s.as_raw_fd();
    // Fill the socket: the shim's SEND must then wait for room.
    let chunk = [1u8; 64 * 1024];
    let mut prefill = 0usize;
    loop {
        let n = raw_write(fd, &chunk);
        if n <= 0 {
            break;
        }
        prefill += n as usize;
    }
    assert!(shim.register(fd));
    const QUEUED: usize = 256 * 1024;
    assert_eq!(shim.write(fd, &[&[2u8; QUEUED]], QUEUED), Ok(QUEUED));
    shim.pump();
    assert!(shim.busy(), "the SEND waits for room");
    // The reader drains the peer and says over a pipe whether every byte came; this
    // thread sleeps in read(2) on the pipe meanwhile.
    let mut pipe = [0i32; 2];
    // SAFETY: `pipe` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let want = prefill + QUEUED;
    let reader = std::thread::spawn(move || {
        peer.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        while got < want && std::time::Instant::now() < deadline {
            match peer.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("peer read: {e}"),
            }
        }
        assert_eq!(raw_write(pipe[1], &[u8::from(got == want)]), 1);
        got
    });
    let mut done = [0u8; 1];
    // SAFETY: reading one byte into `done` from the pipe made above.
    let n = unsafe { libc::syscall(libc::SYS_read, pipe[0], done.as_mut_ptr(), 1) };
    let got = reader.join().unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        done[0], 1,
        "only {got} of {want} bytes reached the peer while the thread slept"
    );
    // SAFETY: closing the pipe made above.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    shim.detach(fd);
}
