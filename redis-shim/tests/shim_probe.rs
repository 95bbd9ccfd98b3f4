//! The shim in a program that is not Redis: this test binary runs itself again with the
//! shim preloaded (the `probe_child` role) on every backend available here, and checks
//! the semantics one by one with raw libc calls: a write larger than the kernel would
//! take returns in full; a failed queued write is reported on the next call with its
//! errno, SIGPIPE raised exactly as the kernel would; a socket that stops draining gets
//! EAGAIN under the cap and every accepted byte arrives in order; bytes queued before
//! `close` still arrive, then EOF, also when `accept` reuses the closed number at once or
//! `dup2` replaces it; an error is reported through `read`. Another role checks that
//! sockets closed while their peers never read are aborted after the linger time without
//! blocking the writes of open sockets; and that `exit` from a signal handler that
//! interrupts a thread inside the shim does not hang.

mod support;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::{common, flavors, pattern, reset, shim_path, Flavor, ShimStats, TempDir};

const ROLE: &str = "FASTIO_SHIM_PROBE";
const LINGER_ROLE: &str = "FASTIO_SHIM_LINGER_PROBE";
const EXIT_ROLE: &str = "FASTIO_SHIM_EXIT_PROBE";

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

/// Writes all of `data` to `fd` (the shim may take it in parts), pumping in between.
fn write_all_pumping(ep: i32, fd: i32, data: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut off = 0;
    while off < data.len() {
        assert!(Instant::now() < deadline, "write did not finish");
        let r = raw_write(fd, &data[off..]);
        if r > 0 {
            off += r as usize;
        } else {
            assert_eq!(errno(), libc::EAGAIN);
        }
        pump(ep, 1);
    }
}

/// Writes `stream` to `s` in 1 MiB pieces, pumping in between, until a write fails
/// with EAGAIN (a peer that does not read); returns how many bytes were accepted.
fn write_until_eagain(ep: i32, s: &TcpStream, stream: &[u8]) -> usize {
    let mut off = 0;
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(10), "no EAGAIN");
        assert!(off < stream.len(), "{off} bytes accepted without EAGAIN");
        let end = (off + (1 << 20)).min(stream.len());
        let r = raw_write(s.as_raw_fd(), &stream[off..end]);
        if r < 0 {
            assert_eq!(errno(), libc::EAGAIN);
            return off;
        }
        off += r as usize;
        pump(ep, 0);
    }
}

/// Fills `s`, whose peer never reads, until the kernel's buffers and the shim's share
/// of the cap are full: writes until EAGAIN, then again after a pause (an executor slow
/// to run also gives EAGAIN), until a round takes nothing; returns the bytes accepted.
fn fill_stuck(ep: i32, s: &TcpStream, stream: &[u8]) -> usize {
    let mut off = 0;
    loop {
        let n = write_until_eagain(ep, s, &stream[off..]);
        if n == 0 {
            return off;
        }
        off += n;
        pump(ep, 50);
    }
}

/// Reads each stream (`Some(len)`: that many bytes; `None`: to EOF) on a thread of its
/// own while this one pumps.
fn read_while_pumping(ep: i32, streams: Vec<(TcpStream, Option<usize>)>) -> Vec<Vec<u8>> {
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(mut c, len)| {
            thread::spawn(move || {
                let mut got = Vec::new();
                match len {
                    None => {
                        c.read_to_end(&mut got).unwrap();
                    }
                    Some(n) => {
                        got.resize(n, 0);
                        c.read_exact(&mut got).unwrap();
                    }
                }
                got
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readers.iter().all(|r| r.is_finished()) {
        assert!(Instant::now() < deadline, "reader did not finish");
        pump(ep, 5);
    }
    readers.into_iter().map(|r| r.join().unwrap()).collect()
}

/// Writes `data` to `s` in one call, which the shim must take whole, and checks that
/// the peer `c` receives it.
fn write_whole_and_receive(ep: i32, s: &TcpStream, c: TcpStream, data: &[u8], what: &str) {
    assert_eq!(
        raw_write(s.as_raw_fd(), data),
        data.len() as isize,
        "{what}: not queued whole"
    );
    let got = read_all_while_pumping(ep, c, data.len(), false);
    assert!(got == data, "{what}: arrived altered");
}

/// Reads each peer to EOF while pumping, and checks it got exactly its bytes.
fn expect_to_eof(ep: i32, peers: Vec<(TcpStream, &[u8], &str)>) {
    let (streams, expected): (Vec<_>, Vec<_>) = peers
        .into_iter()
        .map(|(c, b, what)| ((c, None), (b, what)))
        .unzip();
    for (got, (want, what)) in read_while_pumping(ep, streams).iter().zip(expected) {
        assert!(
            got[..] == want[..],
            "{what}: {} of {} bytes, or altered",
            got.len(),
            want.len()
        );
    }
}

/// Reads `len` bytes (or to EOF when `to_eof`) on a thread while this one pumps.
fn read_all_while_pumping(ep: i32, c: TcpStream, len: usize, to_eof: bool) -> Vec<u8> {
    let mut got = read_while_pumping(ep, vec![(c, (!to_eof).then_some(len))]);
    got.pop().unwrap()
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
    write_whole_and_receive(ep, &s, c.try_clone().unwrap(), &big, "8 MiB write");

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

    // 3. A peer that stops reading: EAGAIN under the cap (8 MiB per socket),
    //    then every accepted byte arrives, in order.
    let (s, c) = pair(&l);
    let stream = pattern(64 << 20, 3);
    let off = write_until_eagain(ep, &s, &stream);
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
    write_all_pumping(ep, s.as_raw_fd(), &last);
    drop(s);
    let got = read_all_while_pumping(ep, c, 0, true);
    assert!(
        got == last,
        "bytes queued before close: {} of {}",
        got.len(),
        last.len()
    );

    // 5. Close with bytes queued, and `accept` hands the number out again at once: the
    //    new socket's bytes do not mix with the old one's; each peer gets its own.
    let (s, c) = pair(&l);
    // The next client connects first, so that its own socket does not take the number.
    let c2 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c2.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let old = pattern(6 << 20, 5);
    assert_eq!(raw_write(s.as_raw_fd(), &old), old.len() as isize);
    pump(ep, 0);
    let num = s.into_raw_fd();
    // SAFETY: closing the descriptor taken out of `s`.
    unsafe { libc::close(num) };
    let (s, _) = l.accept().unwrap();
    assert_eq!(s.as_raw_fd(), num, "accept did not reuse the closed number");
    s.set_nonblocking(true).unwrap();
    let new = pattern(2 << 20, 6);
    write_all_pumping(ep, s.as_raw_fd(), &new);
    drop(s);
    expect_to_eof(
        ep,
        vec![(c, &old, "closed socket"), (c2, &new, "reused number")],
    );

    // 6. dup2 over a queued descriptor: a failed dup2 changes nothing (later writes
    //    follow the queued bytes); a successful one closes the old socket, whose queued
    //    bytes still arrive, and the number then writes to the new socket.
    let (s1, c1) = pair(&l);
    let (s2, c2) = pair(&l);
    let old = pattern(6 << 20, 7);
    let (head, tail) = old.split_at(4 << 20);
    assert_eq!(raw_write(s1.as_raw_fd(), head), head.len() as isize);
    let fd1 = s1.into_raw_fd();
    // SAFETY: -1 is never open: the call fails without touching `fd1`.
    assert_eq!(unsafe { libc::dup2(-1, fd1) }, -1);
    assert_eq!(errno(), libc::EBADF);
    write_all_pumping(ep, fd1, tail);
    // SAFETY: both descriptors are open; `fd1` then names the second socket.
    assert_eq!(unsafe { libc::dup2(s2.as_raw_fd(), fd1) }, fd1);
    let new = pattern(1 << 20, 8);
    write_all_pumping(ep, fd1, &new);
    // SAFETY: closing the duplicate made by dup2.
    unsafe { libc::close(fd1) };
    drop(s2);
    expect_to_eof(
        ep,
        vec![(c1, &old, "replaced socket"), (c2, &new, "dup2 target")],
    );

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

/// Runs the test `child` of this binary with the shim preloaded on flavor `f` and
/// `role` set, with `env`; checks that it printed `"{ok} ok"`; returns the shim's
/// counters at its exit.
fn run_child(f: &Flavor, child: &str, role: &str, env: &[(&str, &str)], ok: &str) -> ShimStats {
    let dir = TempDir::new(ok);
    let conf = dir.path().join("fastio.conf");
    std::fs::write(&conf, f.conf_text()).unwrap();
    let stats = dir.path().join("stats");
    let mut cmd = common::rerun(child, role, "1");
    cmd.env("LD_PRELOAD", shim_path())
        .env("FASTIO_CONF", &conf)
        .env("FASTIO_SHIM_STATS", &stats)
        .envs(env.iter().copied());
    let out = support::run_command(cmd, Duration::from_secs(120));
    assert!(
        out.status.success() && out.text().contains(&format!("{ok} ok")),
        "[{}] {child} failed:\n{}\n{}",
        f.name,
        out.text(),
        out.stderr
    );
    let st = ShimStats::read(&stats);
    println!("[{}] {:?}", f.name, st.0);
    st
}

#[test]
fn semantics_of_queued_writes_in_a_plain_program() {
    for f in flavors("semantics_of_queued_writes_in_a_plain_program") {
        let env = [("FASTIO_SHIM_MAX_QUEUED", "32M")];
        let st = run_child(&f, "probe_child", ROLE, &env, "probe");
        // Step 2 reports through write, step 7 through read.
        assert!(st.get("errors_reported") >= 2, "[{}] {st:?}", f.name);
        assert!(st.get("eagain") >= 1, "[{}] {st:?}", f.name);
        assert!(st.get("peak_queued") <= 32 << 20, "[{}] {st:?}", f.name);
        st.assert_carried(f.name, (8 << 20) + (3 << 20) + (8 << 20) + (15 << 20));
        assert_eq!(st.get("aborted"), 0, "[{}] {st:?}", f.name);
    }
}

/// In a child run with `role` set: an epoll descriptor to pump with and a listener.
/// None in an ordinary test run.
fn child_setup(role: &str) -> Option<(i32, TcpListener)> {
    std::env::var(role).ok()?;
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    Some((ep, TcpListener::bind("127.0.0.1:0").unwrap()))
}

/// Sockets closed by the program while their peers never read (each holding its share
/// of the cap, a quarter): their bytes do not hold back an open socket's write, and
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
        let (s, c) = pair(&l);
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
            ("FASTIO_SHIM_CLOSE_LINGER_MS", "300"),
        ];
        let st = run_child(&f, "linger_child", LINGER_ROLE, &env, "linger");
        // (A fifth only if the open socket was closed before the completion of its
        // last send was seen: it is then over the bound of closed sockets.)
        assert!((4..=5).contains(&st.get("aborted")), "[{}] {st:?}", f.name);
        // Each held its share of the cap (1 MiB) when it was closed, and sent next to
        // nothing after.
        assert!(st.get("discarded_bytes") > 3 << 20, "[{}] {st:?}", f.name);
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

/// Exit status of the `exit_child` role.
const EXIT_CODE: i32 = 3;

extern "C" fn exit_on_alarm(_: libc::c_int) {
    // SAFETY: exiting the process from the handler, as Redis's shutdown handler does.
    unsafe { libc::exit(EXIT_CODE) };
}

/// A signal handler calls `exit` while the thread waits inside the shim (writes to a
/// socket whose peer never reads wait 10 ms under the cap): the exit handler must not
/// wait for the lock its own thread holds.
#[test]
fn exit_child() {
    let Some((ep, l)) = child_setup(EXIT_ROLE) else {
        return;
    };
    let (s, _c) = pair(&l);
    let stream = pattern(32 << 20, 11);
    write_until_eagain(ep, &s, &stream);
    // SAFETY: installing a handler that exits the process.
    unsafe {
        libc::signal(
            libc::SIGALRM,
            exit_on_alarm as *const () as libc::sighandler_t,
        )
    };
    // The signal goes to this thread (a process-directed one may land on another).
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(3));
        // SAFETY: `me` is this thread, which never returns from the loop below.
        unsafe { libc::pthread_kill(me, libc::SIGALRM) };
    });
    // Each write spends 10 ms inside the shim before EAGAIN: the alarm lands there.
    loop {
        raw_write(s.as_raw_fd(), &stream[..1 << 20]);
    }
}

#[test]
fn exit_from_a_signal_handler_inside_the_shim_does_not_hang() {
    for f in flavors("exit_from_a_signal_handler_inside_the_shim_does_not_hang") {
        let dir = TempDir::new("exit");
        let conf = dir.path().join("fastio.conf");
        std::fs::write(&conf, f.conf_text()).unwrap();
        let mut cmd = common::rerun("exit_child", EXIT_ROLE, "1");
        cmd.env("LD_PRELOAD", shim_path())
            .env("FASTIO_CONF", &conf)
            .env("FASTIO_SHIM_MAX_QUEUED", "4M");
        // run_command panics if the child hangs.
        let out = support::run_command(cmd, Duration::from_secs(30));
        assert_eq!(
            out.status.code(),
            Some(EXIT_CODE),
            "[{}] {}\n{}",
            f.name,
            out.text(),
            out.stderr
        );
    }
}
