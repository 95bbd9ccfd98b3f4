//! Tests of the `echo_bench` binary: its output format and exit status against a good
//! echo server, and prompt, clear failures against a closed port, a server that never
//! answers, a server that corrupts data and a server that goes away mid-run.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fastio_echo::epoll_server::{self, ServeStats};

/// What one run of the binary produced.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "status {}, {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }

    /// The value of a `Name: N` line of stdout.
    fn count(&self, name: &str) -> u64 {
        let prefix = format!("{name}: ");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{name}: N` line\n{}", self.describe()))
    }
}

/// Runs `echo_bench ARGS`; the process is killed and the test fails if it takes longer
/// than `bound`.
fn echo_bench(args: &[&str], bound: Duration) -> Run {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_echo_bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start echo_bench");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => {
            let out = out.expect("wait for echo_bench");
            Run {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                elapsed: started.elapsed(),
            }
        }
        Err(_) => {
            // SAFETY: kill() takes no pointers; `pid` is our child, not yet reaped
            // (the waiting thread is still blocked on it).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("echo_bench {args:?} did not finish within {bound:?}");
        }
    }
}

/// An in-process epoll echo server on 127.0.0.1:0.
struct Server {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<ServeStats>>>,
}

impl Server {
    fn start() -> Self {
        // The backlog is raised before the server thread runs, so early connects queue.
        let listener = fastio_echo::net::listen("127.0.0.1:0".parse().unwrap()).expect("listen");
        let addr = listener.local_addr().expect("local_addr");
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let handle = thread::spawn(move || epoll_server::serve(listener, &flag));
        Self {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    fn stop(mut self) -> ServeStats {
        self.shutdown.store(true, Ordering::Release);
        let handle = self.handle.take().expect("running");
        let started = Instant::now();
        while !handle.is_finished() {
            assert!(started.elapsed() < Duration::from_secs(1), "server hangs");
            thread::sleep(Duration::from_millis(5));
        }
        handle
            .join()
            .expect("server panicked")
            .expect("server failed")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
    }
}

/// A fake server on 127.0.0.1:0 that runs `conn` on a thread per accepted connection
/// until dropped.
struct FakeServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    fn start(conn: fn(TcpStream, &AtomicBool)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let flag = Arc::clone(&flag);
                        let _ = s.set_nonblocking(false);
                        thread::spawn(move || conn(s, &flag));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, stop }
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Accepts, then neither reads nor writes, holding the connection until stopped.
fn silent(s: TcpStream, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(20));
    }
    drop(s);
}

/// Echoes, but flips every bit of each 1000th byte of the stream.
fn corrupting(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 16 << 10];
    let mut pos = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        for b in &mut buf[..n] {
            if pos % 1000 == 999 {
                *b = !*b;
            }
            pos += 1;
        }
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// `Speed: X request/sec, Y response/sec` with integers X and Y.
fn speed_line(run: &Run) -> (u64, u64) {
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Speed: "))
        .unwrap_or_else(|| panic!("no Speed line\n{}", run.describe()));
    let rest = line.strip_prefix("Speed: ").unwrap();
    let (req, resp) = rest
        .split_once(" request/sec, ")
        .unwrap_or_else(|| panic!("bad Speed line {line:?}"));
    let resp = resp
        .strip_suffix(" response/sec")
        .unwrap_or_else(|| panic!("bad Speed line {line:?}"));
    let parse = |v: &str| {
        v.parse::<u64>()
            .unwrap_or_else(|_| panic!("not an integer: {v:?} in {line:?}"))
    };
    (parse(req), parse(resp))
}

#[test]
fn clean_run_prints_rust_echo_bench_lines() {
    let server = Server::start();
    let run = echo_bench(
        &["-a", &server.address(), "-c", "10", "-t", "2", "-l", "512"],
        Duration::from_secs(15),
    );
    assert!(run.status.success(), "{}", run.describe());
    let (req, resp) = speed_line(&run);
    assert!(req > 0 && resp > 0, "{}", run.describe());
    let (requests, responses) = (run.count("Requests"), run.count("Responses"));
    assert!(responses > 0 && requests >= responses, "{}", run.describe());
    assert!(requests - responses <= 10, "{}", run.describe());
    assert_eq!(run.count("Mismatches"), 0, "{}", run.describe());
    assert_eq!(run.count("Errors"), 0, "{}", run.describe());
    assert!(
        run.stdout.contains("Benchmarking: ")
            && run.stdout.contains("10 clients, running 512 bytes, 2 sec."),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("Latency: p50 "), "{}", run.describe());
    assert!(run.elapsed < Duration::from_secs(6), "{}", run.describe());
    let stats = server.stop();
    assert_eq!(stats.accepted, 10, "{stats}");
}

#[test]
fn pipelined_run_with_progress_lines() {
    let server = Server::start();
    let run = echo_bench(
        &[
            "--address",
            &server.address(),
            "--number",
            "8",
            "--duration",
            "3",
            "--length",
            "100",
            "--depth",
            "4",
        ],
        Duration::from_secs(15),
    );
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(run.count("Mismatches"), 0, "{}", run.describe());
    let (requests, responses) = (run.count("Requests"), run.count("Responses"));
    assert!(responses > 0, "{}", run.describe());
    assert!(requests - responses <= 8 * 4, "{}", run.describe());
    let progress = run
        .stderr
        .lines()
        .filter(|l| l.contains("request/sec"))
        .count();
    assert!(progress >= 2, "expected progress lines\n{}", run.describe());
    server.stop();
}

#[test]
fn quiet_suppresses_progress() {
    let server = Server::start();
    let run = echo_bench(
        &["-a", &server.address(), "-c", "2", "-t", "3", "--quiet"],
        Duration::from_secs(15),
    );
    assert!(run.status.success(), "{}", run.describe());
    assert!(run.stderr.is_empty(), "{}", run.describe());
    server.stop();
}

#[test]
fn closed_port_fails_fast_naming_the_address() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let run = echo_bench(
        &["-a", &address, "-c", "5", "-t", "30"],
        Duration::from_secs(10),
    );
    assert!(!run.status.success(), "{}", run.describe());
    assert!(run.elapsed < Duration::from_secs(5), "{}", run.describe());
    assert!(
        run.stderr.contains(&address) && run.stderr.contains("refused"),
        "{}",
        run.describe()
    );
}

#[test]
fn silent_server_is_reported_as_stalled() {
    let fake = FakeServer::start(silent);
    let run = echo_bench(
        &[
            "-a",
            &fake.address(),
            "-c",
            "3",
            "-t",
            "30",
            "--stall-timeout",
            "2",
            "-q",
        ],
        Duration::from_secs(10),
    );
    assert!(!run.status.success(), "{}", run.describe());
    assert!(
        run.elapsed < Duration::from_secs(2 + 3),
        "must stop at the stall timeout\n{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("stalled") && run.stderr.contains(&fake.address()),
        "{}",
        run.describe()
    );
    assert_eq!(run.count("Responses"), 0, "{}", run.describe());
    assert_eq!(run.count("Errors"), 3, "{}", run.describe());
}

#[test]
fn corrupted_echo_is_a_mismatch() {
    let fake = FakeServer::start(corrupting);
    let run = echo_bench(
        &[
            "-a",
            &fake.address(),
            "-c",
            "2",
            "-t",
            "1",
            "-l",
            "300",
            "-q",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.describe());
    let mismatches = run.count("Mismatches");
    assert!(mismatches > 0, "{}", run.describe());
    // One byte in 1000 is flipped, messages are 300 bytes: about 3 in 10 are damaged.
    let responses = run.count("Responses");
    assert!(mismatches < responses, "{}", run.describe());
    assert!(run.stderr.contains("mismatch"), "{}", run.describe());
}

#[test]
fn server_going_away_mid_run_ends_the_run() {
    let server = Server::start();
    let address = server.address();
    let stopper = thread::spawn(move || {
        thread::sleep(Duration::from_secs(1));
        server.stop()
    });
    let run = echo_bench(
        &["-a", &address, "-c", "20", "-t", "30", "-q"],
        Duration::from_secs(10),
    );
    stopper.join().expect("stopper");
    assert!(!run.status.success(), "{}", run.describe());
    assert!(run.elapsed < Duration::from_secs(4), "{}", run.describe());
    assert_eq!(run.count("Errors"), 20, "{}", run.describe());
    assert!(run.count("Responses") > 0, "{}", run.describe());
    assert!(
        run.stderr.contains("closed the connection") || run.stderr.contains("reset"),
        "{}",
        run.describe()
    );
}

#[test]
fn a_thousand_connections() {
    if let Err(e) = fastio_echo::check::raise_fd_limit(1300) {
        eprintln!("SKIPPED a_thousand_connections: {e}");
        return;
    }
    let server = Server::start();
    let run = echo_bench(
        &["-a", &server.address(), "-c", "1000", "-t", "2", "-q"],
        Duration::from_secs(20),
    );
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(run.count("Mismatches"), 0, "{}", run.describe());
    assert!(run.count("Responses") >= 1000, "{}", run.describe());
    let stats = server.stop();
    assert_eq!(stats.peak_connections, 1000, "{stats}");
}

#[test]
fn bad_arguments_are_rejected() {
    let run = echo_bench(&["-c", "0", "-t", "1"], Duration::from_secs(5));
    assert_eq!(run.status.code(), Some(2), "{}", run.describe());
    assert!(run.stderr.contains("connections"), "{}", run.describe());
    let run = echo_bench(&["-t", "-1"], Duration::from_secs(5));
    assert_eq!(run.status.code(), Some(2), "{}", run.describe());
}
