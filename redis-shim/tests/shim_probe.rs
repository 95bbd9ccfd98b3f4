//! The shim in a program that is not Redis: this test binary runs itself again with the
//! shim preloaded (the `probe_child` role) on every backend available here, and checks
//! the semantics one by one with raw libc calls: a write larger than the kernel would
//! take returns in full; a failed queued write is reported on the next call with its
//! errno, SIGPIPE raised exactly as the kernel would; a socket that stops draining gets
//! EAGAIN under the cap and every accepted byte arrives in order; bytes queued before
//! `close` still arrive, then EOF.

mod support;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::{common, flavors, pattern, reset, shim_path, ShimStats, TempDir};

const ROLE: &str = "FASTIO_SHIM_PROBE";

static SIGPIPES: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigpipe(_: libc::c_int) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Waits in epoll_wait (the shim's flush point) on an empty epoll set.
fn pump(ep: i32, ms: i32) {
    let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: `ev` has room for 4 events.
    unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 4, ms) };
}

fn raw_write(fd: i32, data: &[u8]) -> isize {
    // SAFETY: `data` is readable for its length.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

/// A connected pair: (server side, non-blocking; client side, blocking).
fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (s, c)
}

/// Writes all of `data` (the shim may take it in parts), pumping in between.
fn write_all_pumping(ep: i32, s: &TcpStream, data: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut off = 0;
    while off < data.len() {
        assert!(Instant::now() < deadline, "write did not finish");
        let r = raw_write(s.as_raw_fd(), &data[off..]);
        if r > 0 {
            off += r as usize;
        } else {
            assert_eq!(errno(), libc::EAGAIN);
        }
        pump(ep, 1);
    }
}

/// Reads `len` bytes (or to EOF when `to_eof`) on a thread while this one pumps.
fn read_all_while_pumping(ep: i32, mut c: TcpStream, len: usize, to_eof: bool) -> Vec<u8> {
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        if to_eof {
            c.read_to_end(&mut got).unwrap();
        } else {
            got.resize(len, 0);
            c.read_exact(&mut got).unwrap();
        }
        got
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "reader did not finish");
        pump(ep, 5);
    }
    reader.join().unwrap()
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

    // 1. A write the kernel could not take at once (wmem is at most 4 MiB) is queued
    //    whole: it is one socket's share of the 32 MiB cap.
    let (s, c) = pair(&l);
    let big = pattern(8 << 20, 1);
    assert_eq!(
        raw_write(s.as_raw_fd(), &big),
        big.len() as isize,
        "write not queued whole"
    );
    let got = read_all_while_pumping(ep, c.try_clone().unwrap(), big.len(), false);
    assert!(got == big, "8 MiB arrived altered");

    // 2. The peer resets: the queued write fails; the next write reports it.
    // (The first write's completion may not be reaped yet: the shim may take part.)
    let more = pattern(4 << 20, 2);
    write_all_pumping(ep, &s, &more);
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

    // 3. A peer that stops reading: EAGAIN under the cap (8 MiB per socket),
    //    then every accepted byte arrives, in order.
    let (s, c) = pair(&l);
    let stream = pattern(64 << 20, 3);
    let mut off = 0;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(10), "no EAGAIN");
        let end = (off + (1 << 20)).min(stream.len());
        let r = raw_write(s.as_raw_fd(), &stream[off..end]);
        if r < 0 {
            assert_eq!(errno(), libc::EAGAIN);
            break;
        }
        off += r as usize;
        pump(ep, 0);
    }
    assert!(
        (8 << 20..60 << 20).contains(&off),
        "accepted {off} bytes before EAGAIN"
    );
    let got = read_all_while_pumping(ep, c, off, false);
    assert!(
        got == stream[..off],
        "bytes accepted before EAGAIN arrived altered"
    );
    drop(s);

    // 4. Bytes queued before close still arrive, then EOF.
    let (s, c) = pair(&l);
    let last = pattern(3 << 20, 4);
    write_all_pumping(ep, &s, &last);
    drop(s);
    let got = read_all_while_pumping(ep, c, 0, true);
    assert!(
        got == last,
        "bytes queued before close: {} of {}",
        got.len(),
        last.len()
    );
    // SAFETY: closing the epoll descriptor made above.
    unsafe { libc::close(ep) };
    println!("probe ok");
}

#[test]
fn semantics_of_queued_writes_in_a_plain_program() {
    for f in flavors("semantics_of_queued_writes_in_a_plain_program") {
        let dir = TempDir::new("probe");
        let conf = dir.path().join("fastio.conf");
        std::fs::write(&conf, f.conf_text()).unwrap();
        let stats = dir.path().join("stats");
        let mut cmd = common::rerun("probe_child", ROLE, "1");
        cmd.env("LD_PRELOAD", shim_path())
            .env("FASTIO_CONF", &conf)
            .env("FASTIO_SHIM_STATS", &stats)
            .env("FASTIO_SHIM_MAX_QUEUED", "32M");
        let out = support::run_command(cmd, Duration::from_secs(120));
        assert!(
            out.status.success() && out.text().contains("probe ok"),
            "[{}] probe failed:\n{}\n{}",
            f.name,
            out.text(),
            out.stderr
        );
        let st = ShimStats::read(&stats);
        println!("[{}] {:?}", f.name, st.0);
        assert!(st.get("errors_reported") >= 1, "[{}] {st:?}", f.name);
        assert!(st.get("eagain") >= 1, "[{}] {st:?}", f.name);
        assert!(st.get("peak_queued") <= 32 << 20, "[{}] {st:?}", f.name);
        st.assert_carried(f.name, (8 << 20) + (3 << 20) + (8 << 20));
    }
}
