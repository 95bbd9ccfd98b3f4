//! proactor_echo_server end to end, on every backend this machine can run (io_uring with
//! and without SQPOLL, threads with one and two lanes): real sockets on 127.0.0.1,
//! every byte verified. A backend that cannot run here is skipped with the reason.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fastio::{BackendKind, Config, Proactor};
use fastio_echo::check;
use fastio_echo::proactor_server::{serve, EchoOptions, ServeStats};

struct Server {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    handle: Option<JoinHandle<std::io::Result<ServeStats>>>,
}

impl Server {
    fn start(config: Config) -> Server {
        let listener = fastio_echo::net::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&shutdown);
        let handle =
            std::thread::spawn(move || serve(&listener, &config, &EchoOptions::default(), &flag));
        Server {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Stops the server and returns its statistics (fails the test on a server error).
    fn stop(mut self) -> ServeStats {
        self.shutdown.store(true, Ordering::SeqCst);
        let h = self.handle.take().unwrap();
        h.join().expect("server panicked").expect("server failed")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn flavors() -> Vec<(&'static str, Config)> {
    let base = Config {
        idle_ms: 10,
        ..Config::default()
    };
    vec![
        (
            "uring+sqpoll",
            Config {
                backend: BackendKind::Uring,
                sqpoll: true,
                ..base.clone()
            },
        ),
        (
            "uring",
            Config {
                backend: BackendKind::Uring,
                sqpoll: false,
                ..base.clone()
            },
        ),
        (
            "threads x1",
            Config {
                backend: BackendKind::Threads,
                ..base.clone()
            },
        ),
        (
            "threads x2",
            Config {
                backend: BackendKind::Threads,
                max_ker_worker: 2,
                ..base
            },
        ),
    ]
}

/// Runs `f` against a fresh server per backend that can run here.
fn each_backend(test: &str, f: impl Fn(&str, SocketAddr) -> Result<(), String>) {
    let mut ran = 0;
    for (name, cfg) in flavors() {
        if let Err(e) = Proactor::new(&cfg) {
            println!("SKIP {test} [{name}]: backend cannot run here: {e}");
            continue;
        }
        let server = Server::start(cfg);
        if let Err(e) = f(name, server.addr) {
            panic!("{test} [{name}]: {e}");
        }
        let stats = server.stop();
        assert!(stats.accepted > 0, "{test} [{name}]: nothing accepted");
        ran += 1;
    }
    assert!(ran > 0, "{test}: no backend could run");
}

const PAYLOADS: [usize; 4] = [1, 512, 64 * 1024, 1024 * 1024];

#[test]
fn one_connection_all_payloads() {
    each_backend("one_connection", |_, addr| {
        for len in PAYLOADS {
            check::echo_roundtrip(addr, 1, len, 3, Duration::from_secs(60))
                .map_err(|e| format!("payload {len}: {e}"))?;
        }
        Ok(())
    });
}

#[test]
fn two_hundred_connections_all_payloads() {
    each_backend("200_connections", |_, addr| {
        for len in PAYLOADS {
            let rounds = if len >= 64 * 1024 { 1 } else { 4 };
            check::echo_roundtrip(addr, 200, len, rounds, Duration::from_secs(120))
                .map_err(|e| format!("payload {len}: {e}"))?;
        }
        Ok(())
    });
}

#[test]
fn clients_that_disconnect_mid_stream() {
    each_backend("disconnect_mid_stream", |_, addr| {
        check::disconnect_mid_stream(addr, Duration::from_secs(60))
    });
}

#[test]
fn client_that_never_reads_does_not_stall_others() {
    each_backend("never_reader", |_, addr| {
        let hog = check::never_reader(addr, Duration::from_secs(30))?;
        check::echo_roundtrip(addr, 20, 64 * 1024, 2, Duration::from_secs(60))
            .map_err(|e| format!("while a client never reads: {e}"))?;
        drop(hog);
        check::echo_roundtrip(addr, 1, 512, 1, Duration::from_secs(30))
    });
}

#[test]
fn thousand_concurrent_connections() {
    // Client and (on the threads backend) server descriptors share this process.
    if let Err(e) = check::raise_fd_limit(4200) {
        println!("SKIP thousand_concurrent_connections: {e}");
        return;
    }
    each_backend("1000_connections", |_, addr| {
        check::hold_idle(
            addr,
            1000,
            Duration::from_millis(500),
            Duration::from_secs(120),
        )
    });
}
