//! End-to-end tests of the epoll echo server ([`fastio_echo::epoll_server`] and the
//! `epoll_echo_server` binary), through the shared checks of [`fastio_echo::check`].
//! Real sockets on 127.0.0.1 with ephemeral ports; every test is bounded in time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fastio_echo::check;
use fastio_echo::epoll_server::{self, ServeStats, ServerConfig};

/// Bound of one check call.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// An epoll server on 127.0.0.1:0, on its own thread.
struct Server {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<ServeStats>>>,
}

impl Server {
    fn start() -> Self {
        Self::start_with(ServerConfig::default())
    }

    fn start_with(cfg: ServerConfig) -> Self {
        // The backlog is raised before the server thread runs, so early connects queue.
        let listener = fastio_echo::net::listen("127.0.0.1:0".parse().unwrap()).expect("listen");
        let addr = listener.local_addr().expect("local_addr");
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let handle = thread::Builder::new()
            .name("epoll-server".into())
            .spawn(move || epoll_server::serve_with(listener, &flag, &cfg))
            .expect("spawn server thread");
        Self {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Stops the server (it must return within 1 s) and returns its statistics.
    fn stop(mut self) -> ServeStats {
        self.shutdown.store(true, Ordering::Release);
        let handle = self.handle.take().expect("server running");
        let started = Instant::now();
        while !handle.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "server did not return within 1 s of the shutdown request"
            );
            thread::sleep(Duration::from_millis(5));
        }
        handle
            .join()
            .expect("server thread panicked")
            .expect("server failed")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // On a failing test: stop the server thread without waiting on it.
        self.shutdown.store(true, Ordering::Release);
    }
}

fn ok<T>(what: &str, r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn roundtrips(conns: usize) {
    let server = Server::start();
    for (len, rounds) in [(1, 5), (512, 5), (64 << 10, 3), (1 << 20, 2)] {
        let started = Instant::now();
        ok(
            &format!("{conns} connections x {len} bytes x {rounds} rounds"),
            check::echo_roundtrip(server.addr, conns, len, rounds, CHECK_TIMEOUT),
        );
        eprintln!(
            "{conns} connections x {len} bytes x {rounds} rounds: {:?}",
            started.elapsed()
        );
    }
    let stats = server.stop();
    assert_eq!(stats.accepted, 4 * conns as u64, "{stats}");
    assert_eq!(stats.conn_errors, 0, "{stats}");
    assert_eq!(stats.bytes_in, stats.bytes_out, "{stats}");
    let per_conn: u64 = 5 + 5 * 512 + 3 * (64 << 10) + 2 * (1 << 20);
    assert_eq!(stats.bytes_in, conns as u64 * per_conn, "{stats}");
}

#[test]
fn one_connection_all_payload_sizes() {
    roundtrips(1);
}

#[test]
fn two_hundred_connections_all_payload_sizes() {
    roundtrips(200);
}

#[test]
fn disconnects_mid_stream_do_not_hurt_the_server() {
    let server = Server::start();
    ok(
        "disconnect_mid_stream",
        check::disconnect_mid_stream(server.addr, CHECK_TIMEOUT),
    );
    let stats = server.stop();
    assert!(stats.accepted >= 7, "{stats}");
}

#[test]
fn never_reading_client_is_bounded_and_others_are_served() {
    let cfg = ServerConfig::default();
    let bound = cfg.max_pending + cfg.read_chunk;
    let server = Server::start_with(cfg);
    let reader = ok(
        "never_reader",
        check::never_reader(server.addr, CHECK_TIMEOUT),
    );
    assert!(
        reader.send_blocked(),
        "the never-reading client was never blocked after sending {} bytes: the server \
         keeps reading from a client that does not read",
        reader.bytes_sent()
    );
    let second = ok(
        "second never_reader",
        check::never_reader(server.addr, CHECK_TIMEOUT),
    );
    ok(
        "echo while two clients never read",
        check::echo_roundtrip(server.addr, 10, 256 << 10, 3, CHECK_TIMEOUT),
    );
    drop(reader);
    drop(second);
    ok(
        "echo after the never-reading clients left",
        check::echo_roundtrip(server.addr, 2, 4096, 2, CHECK_TIMEOUT),
    );
    let stats = server.stop();
    assert!(stats.read_pauses >= 2, "{stats}");
    assert!(
        stats.peak_pending <= bound,
        "pending bytes of one connection reached {} > bound {bound}: {stats}",
        stats.peak_pending
    );
}

#[test]
fn a_thousand_concurrent_connections() {
    const N: usize = 1000;
    // Client and server descriptors live in this one process.
    if let Err(e) = check::raise_fd_limit(2 * N as u64 + 256) {
        eprintln!("SKIPPED a_thousand_concurrent_connections: {e}");
        return;
    }
    let server = Server::start();
    ok(
        "1000 idle connections",
        check::hold_idle(server.addr, N, Duration::from_millis(200), CHECK_TIMEOUT),
    );
    ok(
        "1000 concurrent connections x 3 rounds",
        check::echo_roundtrip(server.addr, N, 512, 3, CHECK_TIMEOUT),
    );
    let stats = server.stop();
    assert!(stats.peak_connections >= N, "{stats}");
    assert_eq!(stats.conn_errors, 0, "{stats}");
}

/// A client that half-closes gets its whole echo before the server closes.
#[test]
fn half_close_gets_the_full_echo() {
    const TOTAL: usize = 3 << 20;
    let server = Server::start();
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || -> io::Result<()> {
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        w.write_all(&data)?;
        w.shutdown(Shutdown::Write)
    });
    let mut echoed = Vec::with_capacity(TOTAL);
    s.read_to_end(&mut echoed)
        .expect("read the echo until the server closes");
    writer.join().unwrap().expect("writer");
    assert_eq!(echoed.len(), TOTAL, "echo length");
    let bad = echoed
        .iter()
        .enumerate()
        .position(|(i, &b)| b != (i % 251) as u8);
    assert_eq!(bad, None, "first differing echoed byte");
    let stats = server.stop();
    assert_eq!(stats.conn_errors, 0, "{stats}");
}

/// Shutdown is prompt even with connections open and one client blocked.
#[test]
fn shutdown_is_prompt_with_open_connections() {
    let server = Server::start();
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    let reader = ok(
        "never_reader",
        check::never_reader(server.addr, CHECK_TIMEOUT),
    );
    thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let stats = server.stop();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(stats.accepted, 51, "{stats}");
    assert_eq!(stats.closed, 51, "{stats}");
    // The server closed them: the clients see end of stream.
    let mut c = &idle[0];
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).expect("read after shutdown"), 0);
    drop(reader);
}

/// Reads the child's stdout lines on a thread, so that waiting for one is bounded.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills the child on drop (if the test fails before it exits).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_bounded(child: &mut Child, bound: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            started.elapsed() < bound,
            "process did not exit within {bound:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn binary_serves_and_stops_cleanly_on_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_epoll_echo_server"))
        .arg("0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start epoll_echo_server");
    let mut child = Reaper(child);
    let lines = stdout_lines(&mut child.0);
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("no `listening on` line within 10 s");
    let port: u16 = first
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the port from {first:?}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    ok(
        "echo through the binary",
        check::echo_roundtrip(addr, 20, 64 << 10, 2, CHECK_TIMEOUT),
    );
    // SAFETY: kill() takes no pointers; the pid is our own child, still running.
    let rc = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    let status = wait_bounded(&mut child.0, Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
    let summary = lines
        .recv_timeout(Duration::from_secs(2))
        .expect("no summary line");
    assert!(
        summary.contains("shut down") && summary.contains("accepted 20"),
        "summary: {summary}"
    );
}

#[test]
fn binary_reports_a_port_in_use() {
    let holder = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = holder.local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_epoll_echo_server"))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start epoll_echo_server");
    let mut child = Reaper(child);
    let status = wait_bounded(&mut child.0, Duration::from_secs(5));
    assert!(!status.success(), "must fail when the port is in use");
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("already in use") && err.contains(&port.to_string()),
        "stderr: {err}"
    );
}
