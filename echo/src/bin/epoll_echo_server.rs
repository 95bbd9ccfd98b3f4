//! `epoll_echo_server PORT`: the epoll echo baseline ([`fastio_echo::epoll_server`]).
//!
//! Listens on `0.0.0.0:PORT` (`SO_REUSEADDR` is set, as by every `std` listener on
//! Unix; PORT 0 picks a free port), prints `listening on ADDR`, serves until SIGINT or
//! SIGTERM, then prints a one-line summary and exits 0. Exits 1 with a clear message if
//! the port is in use or the server fails.

use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use fastio_echo::epoll_server;

/// The classic epoll echo server (the baseline for the FastIO proactor server).
#[derive(Parser, Debug)]
#[command(name = "epoll_echo_server", version)]
struct Args {
    /// TCP port to listen on (0.0.0.0:PORT); 0 picks a free port.
    port: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addr = SocketAddr::from(([0, 0, 0, 0], args.port));
    let listener = match fastio_echo::net::listen(addr) {
        Ok(l) => l,
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            eprintln!(
                "epoll_echo_server: cannot listen on {addr}: port {} is already in use \
                 (is another server running?)",
                args.port
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("epoll_echo_server: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = match fastio_echo::signals::shutdown_flag() {
        Ok(flag) => flag,
        Err(e) => {
            eprintln!("epoll_echo_server: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    println!("epoll_echo_server: listening on {local}");
    let _ = io::stdout().flush();
    match epoll_server::serve(listener, shutdown) {
        Ok(stats) => {
            println!("epoll_echo_server: shut down: {stats}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("epoll_echo_server: event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}
