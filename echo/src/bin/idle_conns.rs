//! `idle_conns -a HOST:PORT -n N`: opens N connections to an echo server, makes one
//! 16-byte echo round trip on each (so the server has accepted it and armed its
//! receive), prints `ready N` on stdout, then keeps them open and idle until its stdin
//! closes or says anything; exits 0. For measuring a server's memory per idle
//! connection (scripts/bench/idle_memory.py). Bounded: each round trip must finish
//! within `--timeout` seconds.

use std::io::{self, BufRead, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Opens N idle connections to an echo server and holds them.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server address (host:port).
    #[arg(short = 'a', long = "address", default_value = "127.0.0.1:12345")]
    address: String,
    /// Number of connections.
    #[arg(short = 'n', long = "number", default_value_t = 10_000)]
    number: usize,
    /// Seconds one connect or round trip may take.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_conns: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    fastio_echo::check::raise_fd_limit(args.number as u64 + 64)?;
    let t = Some(Duration::from_secs(args.timeout.max(1)));
    let mut conns = Vec::with_capacity(args.number);
    for i in 0..args.number {
        let mut s = TcpStream::connect(&args.address)
            .map_err(|e| format!("connection {i} to {}: {e}", args.address))?;
        s.set_read_timeout(t).map_err(|e| e.to_string())?;
        let msg = [(i % 251) as u8; 16];
        s.write_all(&msg)
            .map_err(|e| format!("connection {i}: send: {e}"))?;
        let mut back = [0u8; 16];
        s.read_exact(&mut back)
            .map_err(|e| format!("connection {i}: no echo: {e}"))?;
        if back != msg {
            return Err(format!("connection {i}: echo differs"));
        }
        conns.push(s);
    }
    println!("ready {}", conns.len());
    io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
    drop(conns);
    Ok(())
}
