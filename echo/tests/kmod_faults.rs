//! Fault tests of the kernel module with the real echo server: `proactor_echo_server`
//! on the kmod backend runs in a child process, 200 client connections load it with
//! verified echoes, and the child is killed with SIGKILL in the middle of the load. Its
//! kernel workers (`fastio-<childpid>-<lane>`) must be gone within a few seconds, the
//! client connections must see the server side closed (the context dropped its file
//! references), and a fresh server process on kmod must work. (`make vm-test` checks
//! afterwards that the module unloads and that the kernel log is clean.)
//!
//! Runs where /dev/fastio exists (inside the VM: `make vm-test`); elsewhere it prints
//! SKIP and returns.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fastio_echo::check;

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

const SERVER: &str = env!("CARGO_BIN_EXE_proactor_echo_server");
const LANES: u32 = 2;
const CONNS: usize = 200;
const LOAD_THREADS: usize = 8;
const MESSAGE: usize = 16 * 1024;
const LOAD_TIME: Duration = Duration::from_secs(1);

/// A port that was free a moment ago (bound to port 0, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A `proactor_echo_server PORT --backend kmod` child process.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the server on a free port and waits until it listens and its kernel
    /// workers exist. Its stderr is forwarded to ours, prefixed.
    fn start(tag: &'static str) -> ServerProcess {
        // Another process may take the port between our probe and the server's bind:
        // try a few ports.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(SERVER)
                .args([
                    &port.to_string(),
                    "--backend",
                    "kmod",
                    "--workers",
                    &LANES.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SERVER}: {e}"));
            let (tx, rx) = mpsc::channel();
            let err = BufReader::new(child.stderr.take().unwrap());
            thread::spawn(move || {
                for line in err.lines().map_while(Result::ok) {
                    println!("[{tag} server] {line}");
                    if line.contains("listening on") {
                        let _ = tx.send(());
                    }
                }
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(()) => {
                    let pid = child.id();
                    common::wait_until(
                        "the server's kernel workers to appear",
                        Duration::from_secs(30),
                        || common::workers_of(pid).len() == LANES as usize,
                    );
                    return ServerProcess {
                        child,
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    };
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().unwrap();
                    last = format!("port {port}: server did not listen ({status})");
                }
            }
        }
        panic!("cannot start the echo server: {last}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Content of message `round` of connection `id`.
fn message(id: usize, round: u64, out: &mut [u8]) {
    let mut x = ((id as u64) << 32 | round).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

/// Echo load on `conns` (connection ids from `first`): every round sends one message
/// on each connection, then reads each echo back and verifies it, until `stop`.
/// An error before `killed` is set fails the test; after it, it ends the load.
/// Returns the messages verified.
fn load(
    mut conns: Vec<TcpStream>,
    first: usize,
    stop: &AtomicBool,
    killed: &AtomicBool,
    echoed: &AtomicU64,
) -> Result<u64, String> {
    let mut out = vec![0u8; MESSAGE];
    let mut want = vec![0u8; MESSAGE];
    let mut got = vec![0u8; MESSAGE];
    let mut done = 0u64;
    let mut round = 0u64;
    let fail = |what: String, done: u64| -> Result<u64, String> {
        if killed.load(Ordering::SeqCst) {
            Ok(done)
        } else {
            Err(what)
        }
    };
    while !stop.load(Ordering::SeqCst) {
        for (k, s) in conns.iter_mut().enumerate() {
            message(first + k, round, &mut out);
            if let Err(e) = s.write_all(&out) {
                return fail(
                    format!("conn {}: send in round {round}: {e}", first + k),
                    done,
                );
            }
        }
        for (k, s) in conns.iter_mut().enumerate() {
            let id = first + k;
            if let Err(e) = s.read_exact(&mut got) {
                return fail(
                    format!("conn {id}: reading the echo of round {round}: {e}"),
                    done,
                );
            }
            message(id, round, &mut want);
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                // Wrong bytes are wrong even after the kill.
                return Err(format!(
                    "conn {id} round {round}: echoed byte {i} of {MESSAGE} differs: \
                     expected {:#04x}, got {:#04x}",
                    want[i], got[i]
                ));
            }
            done += 1;
            echoed.fetch_add(1, Ordering::Relaxed);
        }
        round += 1;
    }
    Ok(done)
}

#[test]
fn sigkill_during_echo_load_frees_the_context() {
    let test = "sigkill_during_echo_load_frees_the_context";
    if !common::have_module(test) {
        return;
    }
    check::raise_fd_limit(CONNS as u64 + 200).expect("raising RLIMIT_NOFILE");
    let mut server = ServerProcess::start("killed");
    let pid = server.pid();
    println!(
        "server pid {pid} on {}, workers {:?}",
        server.addr,
        common::workers_of(pid)
    );

    // Open all connections first, then keep them all busy.
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let s = TcpStream::connect_timeout(&server.addr, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("connection {} of {CONNS}: {e}", i + 1));
        s.set_nodelay(true).unwrap();
        // Bounded: a server that stopped answering fails the load instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        conns.push(s);
    }
    let watchers: Vec<TcpStream> = conns.iter().map(|s| s.try_clone().unwrap()).collect();

    let stop = AtomicBool::new(false);
    let killed = AtomicBool::new(false);
    let echoed = AtomicU64::new(0);
    let per = CONNS / LOAD_THREADS;
    let results: Vec<Result<u64, String>> = thread::scope(|s| {
        let mut handles = vec![];
        let mut rest = conns;
        for t in 0..LOAD_THREADS {
            let mine: Vec<TcpStream> = rest.drain(..per.min(rest.len())).collect();
            let (stop, killed, echoed) = (&stop, &killed, &echoed);
            handles.push(s.spawn(move || load(mine, t * per, stop, killed, echoed)));
        }
        // Kill once the load really flows (every connection echoed twice, on average) and
        // at least LOAD_TIME has passed: a loaded host or a debug kernel is slower, and a
        // fixed time would measure the machine, not the module.
        let t0 = Instant::now();
        while (t0.elapsed() < LOAD_TIME || echoed.load(Ordering::Relaxed) < 2 * CONNS as u64)
            && t0.elapsed() < Duration::from_secs(60)
        {
            thread::sleep(Duration::from_millis(10));
        }
        let before = echoed.load(Ordering::Relaxed);
        killed.store(true, Ordering::SeqCst);
        server.child.kill().expect("SIGKILL the server");
        println!(
            "SIGKILL after {:?} of load: {before} messages echoed so far",
            t0.elapsed()
        );
        let status = server.child.wait().unwrap();
        println!("server exited: {status}");
        stop.store(true, Ordering::SeqCst);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a load thread panicked".into()))
            })
            .collect()
    });
    let total: u64 = results
        .iter()
        .map(|r| match r {
            Ok(n) => *n,
            Err(e) => panic!("echo load before the kill: {e}"),
        })
        .sum();
    assert!(
        total >= CONNS as u64,
        "the load echoed only {total} messages before the kill: the server was not serving"
    );

    let took = common::wait_until(
        "the killed server's kernel workers to go away",
        Duration::from_secs(10),
        || common::workers_of(pid).is_empty(),
    );
    println!("kernel workers of {pid} gone {took:.2?} after the server was reaped");

    // The context released the accepted sockets: every client sees its connection end
    // (end of stream or reset; echoes still in flight may come first).
    let t0 = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    for (id, mut s) in watchers.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "conn {id}: still open 10 s after the server was killed"
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break, // reset
            }
        }
    }
    println!(
        "all {CONNS} client connections closed by the kernel {:.2?} after the workers went",
        t0.elapsed()
    );

    // A fresh server on the module works.
    let fresh = ServerProcess::start("fresh");
    check::echo_roundtrip(fresh.addr, 4, 64 * 1024, 2, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("a fresh kmod server after the kill: {e}"));
    let fresh_pid = fresh.pid();
    // SIGTERM: it shuts down cleanly and its workers go too.
    // SAFETY: kill(2) on our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(fresh_pid as i32, libc::SIGTERM) }, 0);
    let mut fresh = fresh;
    let status = fresh.child.wait().unwrap();
    assert!(status.success(), "fresh server: {status}");
    common::wait_until(
        "the fresh server's workers to go away",
        Duration::from_secs(10),
        || common::workers_of(fresh_pid).is_empty(),
    );
    println!("fresh kmod server echoed and shut down cleanly");
}
