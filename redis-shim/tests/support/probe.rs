//! Helpers of the tests that run a program (this test binary again, or a small C
//! program) with the shim preloaded and check what its peers receive.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::{common, run_command, shim_path, Flavor, ShimStats, TempDir};

/// This thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Waits in epoll_wait (the shim's flush point) on an empty epoll set.
pub fn pump(ep: i32, ms: i32) {
    let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: `ev` has room for 4 events.
    unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 4, ms) };
}

pub fn raw_write(fd: i32, data: &[u8]) -> isize {
    // SAFETY: `data` is readable for its length.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) }
}

/// A connected pair: (server side, non-blocking; client side, blocking).
pub fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (s, c)
}

/// Most bytes the kernel holds for a peer of a [`small_pair`] that does not read (its
/// send and receive buffers together, with room to spare).
pub const KERNEL_BOUND: usize = 512 << 10;

/// Sets the `SOL_SOCKET` option `opt` of `fd` to `v`.
fn set_int_opt(fd: i32, opt: i32, v: i32) {
    // SAFETY: a c_int option of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt {opt}");
}

/// A blocking socket connected to `addr` with a small, fixed receive buffer (64 KiB
/// asked for before the connection: no autotuning).
pub fn connect_small(addr: std::net::SocketAddr) -> TcpStream {
    // SAFETY: socket has no preconditions; the descriptor is owned by the stream below.
    let c: TcpStream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        std::os::fd::FromRawFd::from_raw_fd(fd)
    };
    set_int_opt(c.as_raw_fd(), libc::SO_RCVBUF, 64 << 10);
    let std::net::SocketAddr::V4(a) = addr else {
        panic!("not an IPv4 address: {addr}")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in of the size passed.
    let r = unsafe {
        libc::connect(
            c.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "connect to {addr}");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c
}

/// A connected pair like [`pair`] whose kernel buffers are small and fixed (64 KiB
/// asked for on each side, set before the connection: no autotuning), so that what the
/// kernel takes for a peer that does not read stays under [`KERNEL_BOUND`].
pub fn small_pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let c = connect_small(l.local_addr().unwrap());
    let (s, _) = l.accept().unwrap();
    set_int_opt(s.as_raw_fd(), libc::SO_SNDBUF, 64 << 10);
    s.set_nonblocking(true).unwrap();
    (s, c)
}

/// Writes all of `data` to `fd` (the shim may take it in parts), pumping in between.
pub fn write_all_pumping(ep: i32, fd: i32, data: &[u8]) {
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
pub fn write_until_eagain(ep: i32, s: &TcpStream, stream: &[u8]) -> usize {
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

/// Fills `s` (a [`small_pair`]'s), whose peer never reads, until more was accepted than
/// the kernel can hold ([`KERNEL_BOUND`]) and a write found the socket's allowance used
/// up: the shim then holds bytes for it, and keeps them, since the peer takes nothing.
/// Returns the bytes accepted.
pub fn fill_stuck(ep: i32, s: &TcpStream, stream: &[u8]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut off = 0;
    loop {
        off += write_until_eagain(ep, s, &stream[off..]);
        if off > KERNEL_BOUND {
            return off;
        }
        assert!(Instant::now() < deadline, "only {off} bytes accepted");
        pump(ep, 1);
    }
}

/// Starts reading `c` on a thread of its own: `Some(len)`: that many bytes; `None`: to
/// EOF.
pub fn reader(mut c: TcpStream, len: Option<usize>) -> thread::JoinHandle<Vec<u8>> {
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
}

/// Checks that a peer got exactly `want`.
pub fn expect_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: {} of {} bytes, or altered",
        got.len(),
        want.len()
    );
}

/// Pumps until every reader has finished; returns what each read.
pub fn join_pumping(ep: i32, readers: Vec<thread::JoinHandle<Vec<u8>>>) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readers.iter().all(|r| r.is_finished()) {
        assert!(Instant::now() < deadline, "reader did not finish");
        pump(ep, 5);
    }
    readers.into_iter().map(|r| r.join().unwrap()).collect()
}

/// Reads each stream (`Some(len)`: that many bytes; `None`: to EOF) on a thread of its
/// own while this one pumps.
pub fn read_while_pumping(ep: i32, streams: Vec<(TcpStream, Option<usize>)>) -> Vec<Vec<u8>> {
    let readers = streams.into_iter().map(|(c, len)| reader(c, len)).collect();
    join_pumping(ep, readers)
}

/// Writes `data` to `s` in one call, which the shim must take whole, and checks that
/// the peer `c` receives it.
pub fn write_whole_and_receive(ep: i32, s: &TcpStream, c: TcpStream, data: &[u8], what: &str) {
    assert_eq!(
        raw_write(s.as_raw_fd(), data),
        data.len() as isize,
        "{what}: not queued whole"
    );
    let got = read_all_while_pumping(ep, c, data.len(), false);
    assert!(got == data, "{what}: arrived altered");
}

/// Reads `len` bytes (or to EOF when `to_eof`) on a thread while this one pumps.
pub fn read_all_while_pumping(ep: i32, c: TcpStream, len: usize, to_eof: bool) -> Vec<u8> {
    let mut got = read_while_pumping(ep, vec![(c, (!to_eof).then_some(len))]);
    got.pop().unwrap()
}

/// Runs the test `child` of this binary with the shim preloaded on flavor `f` and
/// `role` set, with `env`; checks that it printed `"{ok} ok"`; returns the shim's
/// counters at its exit.
pub fn run_child(f: &Flavor, child: &str, role: &str, env: &[(&str, &str)], ok: &str) -> ShimStats {
    let dir = TempDir::new(ok);
    let conf = dir.path().join("fastio.conf");
    std::fs::write(&conf, f.conf_text()).unwrap();
    let stats = dir.path().join("stats");
    let mut cmd = common::rerun(child, role, "1");
    cmd.env("LD_PRELOAD", shim_path())
        .env("FASTIO_CONF", &conf)
        .env("FASTIO_SHIM_STATS", &stats)
        .envs(env.iter().copied());
    let out = run_command(cmd, Duration::from_secs(120));
    assert!(
        out.status.success() && out.text().contains(&format!("{ok} ok")),
        "[{}] {child} failed:\n{}\n{}\nshim stats: {}",
        f.name,
        out.text(),
        out.stderr,
        std::fs::read_to_string(&stats).unwrap_or_else(|e| format!("none ({e})"))
    );
    let st = ShimStats::read(&stats);
    println!("[{}] {:?}", f.name, st.0);
    st
}

/// In a child run with `role` set: an epoll descriptor to pump with and a listener.
/// None in an ordinary test run.
pub fn child_setup(role: &str) -> Option<(i32, TcpListener)> {
    std::env::var(role).ok()?;
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    Some((ep, TcpListener::bind("127.0.0.1:0").unwrap()))
}

/// Compiles the C program `src` with the system's `cc` into `dir/name`. None (and a
/// SKIP line for `test`) when there is no C compiler.
pub fn compile_c(test: &str, dir: &Path, name: &str, src: &str) -> Option<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&c, src).expect("write C source");
    let out = match Command::new("cc")
        .args(["-O1", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&c)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            println!("SKIP {test}: no C compiler (cc: {e})");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "cc {name}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

/// Runs `prog args` with the shim preloaded on flavor `f` (config and counters in
/// `dir`), plus `env`; returns what it printed and the shim's counters (if it wrote
/// them).
pub fn run_preloaded(
    f: &Flavor,
    dir: &Path,
    prog: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (super::Output, Option<ShimStats>) {
    let conf = dir.join("fastio.conf");
    std::fs::write(&conf, f.conf_text()).unwrap();
    let stats = dir.join("stats");
    let _ = std::fs::remove_file(&stats);
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env("LD_PRELOAD", shim_path())
        .env("FASTIO_CONF", &conf)
        .env("FASTIO_SHIM_STATS", &stats)
        .envs(env.iter().copied());
    let out = run_command(cmd, Duration::from_secs(60));
    let st = stats.exists().then(|| ShimStats::read(&stats));
    (out, st)
}
