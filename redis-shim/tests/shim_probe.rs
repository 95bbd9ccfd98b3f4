//! The shim in a program that is not Redis: this test binary runs itself again with the
//! shim preloaded (the `probe_child` role) on every backend available here, and checks
//! the semantics one by one with raw libc calls: a write larger than the socket's
//! allowance takes exactly the allowance; a failed queued write is reported on the next
//! call with its errno, SIGPIPE raised exactly as the kernel would; a socket that stops
//! draining gets EAGAIN once its allowance is used up and every accepted byte arrives in
//! order; bytes queued before `close` still arrive, then EOF, also when `accept` reuses
//! the closed number at once or `dup2` replaces it (a failed `dup2` changes nothing); an
//! error is reported through `read`. Another role checks that sockets closed while their
//! peers never read are aborted after the linger time without blocking the writes of
//! open sockets.

mod support;

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::flavors;
use support::probe::*;
use support::{pattern, reset};

const ROLE: &str = "FASTIO_SHIM_PROBE";
const LINGER_ROLE: &str = "FASTIO_SHIM_LINGER_PROBE";

/// The socket allowance the children run with (`FASTIO_SHIM_SOCKET_ALLOWANCE`).
const ALLOWANCE: usize = 1 << 20;

static SIGPIPES: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

/// The role run with the shim preloaded (returns at once in an ordinary test run).
#[test]
fn probe_child() {
    if std::env::var(ROLE).is_err() {
        return;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(maps.contains("libfastio_redis_shim"), "shim not loaded");
    // SAFETY: installing a handler that only bumps an atomic counter.
    unsafe { libc::signal(libc::SIGPIPE, on_sigpipe as *const () as libc::sighandler_t) };
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();

    // 1. A write larger than the socket's allowance (1 MiB here) takes exactly the
    //    allowance (a short write), so the rest stays with the program; written in
    //    pieces, every byte arrives in order.
    let (s, c) = pair(&l);
    let big = pattern(8 << 20, 1);
    assert_eq!(
        raw_write(s.as_raw_fd(), &big),
        ALLOWANCE as isize,
        "first write"
    );
    let r = reader(c.try_clone().unwrap(), Some(big.len()));
    write_all_pumping(ep, s.as_raw_fd(), &big[ALLOWANCE..]);
    let got = join_pumping(ep, vec![r]).pop().unwrap();
    expect_bytes(&got, &big, "8 MiB written in pieces");

    // 2. The peer resets: the queued write fails; the next write reports it.
    // (The first write's completion may not be reaped yet: the shim may take part.)
    let more = pattern(4 << 20, 2);
    write_all_pumping(ep, s.as_raw_fd(), &more);
    pump(ep, 20);
    reset(c);
    let mut first = 0;
    for _ in 0..500 {
        pump(ep, 10);
        if raw_write(s.as_raw_fd(), b"x") < 0 {
            first = errno();
            break;
        }
    }
    assert!(
        first == libc::ECONNRESET || first == libc::EPIPE,
        "expected ECONNRESET or EPIPE, got errno {first}"
    );
    let expect_pipes = u32::from(first == libc::EPIPE);
    assert_eq!(
        SIGPIPES.load(Ordering::SeqCst),
        expect_pipes,
        "SIGPIPE after errno {first}"
    );
    // From then on the kernel answers: EPIPE with SIGPIPE, none with MSG_NOSIGNAL.
    assert_eq!(raw_write(s.as_raw_fd(), b"y"), -1);
    assert_eq!(errno(), libc::EPIPE);
    assert_eq!(SIGPIPES.load(Ordering::SeqCst), expect_pipes + 1);
    // SAFETY: a one-byte buffer.
    let r = unsafe { libc::send(s.as_raw_fd(), b"z".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    assert_eq!((r, errno()), (-1, libc::EPIPE));
    assert_eq!(SIGPIPES.load(Ordering::SeqCst), expect_pipes + 1);
    drop(s);

    // 3. A peer that stops reading: EAGAIN once the allowance is used up, then every
    //    accepted byte arrives, in order.
    let (s, c) = small_pair(&l);
    let stream = pattern(64 << 20, 3);
    let off = fill_stuck(ep, &s, &stream);
    assert!(
        (KERNEL_BOUND..KERNEL_BOUND + ALLOWANCE).contains(&off),
        "accepted {off} bytes before EAGAIN"
    );
    let got = read_all_while_pumping(ep, c, off, false);
    expect_bytes(&got, &stream[..off], "bytes accepted before EAGAIN");
    drop(s);

    // 4. Bytes queued before close (the last write's) still arrive, then EOF.
    let (s, c) = pair(&l);
    let last = pattern(3 << 20, 4);
    let r = reader(c, None);
    write_all_pumping(ep, s.as_raw_fd(), &last);
    drop(s);
    let got = join_pumping(ep, vec![r]).pop().unwrap();
    expect_bytes(&got, &last, "bytes queued before close");

    // 5. Close with bytes queued (the peer does not read yet), and `accept` hands the
    //    number out again at once: the new socket's bytes do not mix with the old one's;
    //    each peer gets its own.
    let (s, c) = small_pair(&l);
    // The next client connects first, so that its own socket does not take the number.
    let c2 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let old = pattern(32 << 20, 5);
    let off = fill_stuck(ep, &s, &old);
    let num = s.into_raw_fd();
    // SAFETY: closing the descriptor taken out of `s`.
    unsafe { libc::close(num) };
    let (s, _) = l.accept().unwrap();
    assert_eq!(s.as_raw_fd(), num, "accept did not reuse the closed number");
    s.set_nonblocking(true).unwrap();
    let new = pattern(2 << 20, 6);
    let readers = vec![reader(c, None), reader(c2, None)];
    write_all_pumping(ep, s.as_raw_fd(), &new);
    drop(s);
    let got = join_pumping(ep, readers);
    expect_bytes(&got[0], &old[..off], "closed socket");
    expect_bytes(&got[1], &new, "reused number");

    // 6. dup2 over a queued descriptor: a failed dup2 changes nothing (later writes
    //    follow the queued bytes); a successful one closes the old socket, whose queued
    //    bytes still arrive, and the number then writes to the new socket.
    let (s1, c1) = small_pair(&l);
    let (s2, c2) = pair(&l);
    let old = pattern(32 << 20, 7);
    let off = fill_stuck(ep, &s1, &old);
    let fd1 = s1.into_raw_fd();
    // SAFETY: -1 is never open: the call fails without touching `fd1`.
    assert_eq!(unsafe { libc::dup2(-1, fd1) }, -1);
    assert_eq!(errno(), libc::EBADF);
    // Written after the failed dup2, the tail must follow the queued bytes.
    let tail = pattern(1 << 20, 9);
    let readers = vec![reader(c1, None), reader(c2, None)];
    write_all_pumping(ep, fd1, &tail);
    // SAFETY: both descriptors are open; `fd1` then names the second socket.
    assert_eq!(unsafe { libc::dup2(s2.as_raw_fd(), fd1) }, fd1);
    let new = pattern(1 << 20, 8);
    write_all_pumping(ep, fd1, &new);
    // SAFETY: closing the duplicate made by dup2.
    unsafe { libc::close(fd1) };
    drop(s2);
    let got = join_pumping(ep, readers);
    let mut want = old[..off].to_vec();
    want.extend_from_slice(&tail);
    expect_bytes(&got[0], &want, "replaced socket");
    expect_bytes(&got[1], &new, "dup2 target");

    // 7. A queued write fails after the peer reset: `read` reports it (without
    //    SIGPIPE). The kernel alone would answer EOF: the failed send took its error.
    let (s, c) = pair(&l);
    reset(c);
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1, "no reset seen");
    let pipes = SIGPIPES.load(Ordering::SeqCst);
    assert_eq!(raw_write(s.as_raw_fd(), b"lost"), 4, "write not queued");
    for _ in 0..20 {
        pump(ep, 10);
    }
    let mut buf = [0u8; 16];
    // SAFETY: `buf` is writable for its length.
    let r = unsafe { libc::read(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let e = errno();
    assert!(
        r == -1 && (e == libc::ECONNRESET || e == libc::EPIPE),
        "read after a failed queued write: {r}, errno {e}"
    );
    assert_eq!(SIGPIPES.load(Ordering::SeqCst), pipes, "SIGPIPE from read");
    drop(s);

    // SAFETY: closing the epoll descriptor made above.
    unsafe { libc::close(ep) };
    println!("probe ok");
}

#[test]
fn semantics_of_queued_writes_in_a_plain_program() {
    for f in flavors("semantics_of_queued_writes_in_a_plain_program") {
        let env = [
            ("FASTIO_SHIM_MAX_QUEUED", "32M"),
            ("FASTIO_SHIM_SOCKET_ALLOWANCE", "1M"),
        ];
        let st = run_child(&f, "probe_child", ROLE, &env, "probe");
        // Step 2 reports through write, step 7 through read.
        assert!(st.get("errors_reported") >= 2, "[{}] {st:?}", f.name);
        assert!(st.get("eagain") >= 1, "[{}] {st:?}", f.name);
        assert!(st.get("peak_queued") <= 32 << 20, "[{}] {st:?}", f.name);
        st.assert_carried(f.name, (15 << 20) + 3 * KERNEL_BOUND as u64);
        assert_eq!(st.get("aborted"), 0, "[{}] {st:?}", f.name);
    }
}

/// Sockets closed by the program while their peers never read (each holding its
/// allowance, a quarter of the cap): their bytes do not hold back an open socket's write, and
/// after the linger time without progress the shim aborts them, so each peer reads what
/// the kernel had taken, a strict prefix of what was written, then EOF.
#[test]
fn linger_child() {
    let Some((ep, l)) = child_setup(LINGER_ROLE) else {
        return;
    };
    let stream = pattern(32 << 20, 9);
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let (s, c) = small_pair(&l);
        let off = fill_stuck(ep, &s, &stream);
        drop(s);
        stuck.push((c, off));
    }
    // The closed sockets hold the whole cap; an open socket's write is taken at once.
    let (s, c) = pair(&l);
    let data = pattern(1 << 20, 10);
    write_whole_and_receive(ep, &s, c, &data, "a write next to closed sockets");
    pump(ep, 20);
    drop(s);
    // Past the linger time (300 ms) the closed sockets are aborted.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        pump(ep, 10);
    }
    let offs: Vec<usize> = stuck.iter().map(|&(_, off)| off).collect();
    let got = read_while_pumping(ep, stuck.into_iter().map(|(c, _)| (c, None)).collect());
    for (g, off) in got.iter().zip(offs) {
        assert!(g.len() < off, "all {off} bytes arrived: not aborted");
        assert!(
            g[..] == stream[..g.len()],
            "a closed socket's bytes altered"
        );
    }
    // SAFETY: closing the epoll descriptor made above.
    unsafe { libc::close(ep) };
    println!("linger ok");
}

#[test]
fn closed_sockets_whose_peers_never_read_are_aborted_after_the_linger() {
    for f in flavors("closed_sockets_whose_peers_never_read_are_aborted_after_the_linger") {
        let env = [
            ("FASTIO_SHIM_MAX_QUEUED", "4M"),
            ("FASTIO_SHIM_SOCKET_ALLOWANCE", "1M"),
            ("FASTIO_SHIM_CLOSE_LINGER_MS", "300"),
        ];
        let st = run_child(&f, "linger_child", LINGER_ROLE, &env, "linger");
        // (A fifth only if the open socket was closed before the completion of its
        // last send was seen: it is then over the bound of closed sockets.)
        assert!((4..=5).contains(&st.get("aborted")), "[{}] {st:?}", f.name);
        // Each held most of its allowance (1 MiB) when it was closed (its kernel buffers
        // are small), and sent nothing after.
        assert!(st.get("discarded_bytes") > 2 << 20, "[{}] {st:?}", f.name);
        assert!(st.get("eagain") >= 4, "[{}] {st:?}", f.name);
        assert_eq!(st.get("queued_now"), 0, "[{}] {st:?}", f.name);
        assert_eq!(st.get("open_slots"), 0, "[{}] {st:?}", f.name);
        assert_eq!(
            st.get("closed"),
            st.get("registered"),
            "[{}] {st:?}",
            f.name
        );
    }
}
