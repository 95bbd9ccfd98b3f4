//! `wake_probe`: latency of the first echo request after an idle period (the wakeup path
//! of a sleeping worker), next to the latency of a request on a busy connection.
//!
//! Connects to an echo server, warms the connection up with `--warm` round trips, then
//! `--count` times: sleeps `--idle` seconds, times one round trip of `--length` bytes
//! (the first after idle), then times `--hot` back-to-back round trips. Prints each
//! sample, then `RESULT {json}` with `first_us_median`, `first_us_min`, `first_us_max`
//! and `hot_us_median`. Exit status 1 on any error or mismatch.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use fastio_bench::{duration, ResultLine};

/// First-request-after-idle latency probe for echo servers.
#[derive(Parser, Debug)]
#[command(name = "wake_probe", version)]
struct Args {
    /// Server address (host:port).
    #[arg(short = 'a', long = "address", default_value = "127.0.0.1:12345")]
    address: String,
    /// Message length in bytes.
    #[arg(short = 'l', long = "length", default_value_t = 64)]
    length: usize,
    /// Idle seconds before each probe.
    #[arg(long, default_value_t = 1.0)]
    idle: f64,
    /// Number of idle → probe cycles.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Round trips on the connection before the first idle period.
    #[arg(long, default_value_t = 100)]
    warm: usize,
    /// Back-to-back round trips timed after each probe.
    #[arg(long, default_value_t = 100)]
    hot: usize,
}

fn main() -> ExitCode {
    fastio_bench::exit_status("wake_probe", run(&Args::parse()))
}

/// One timed echo round trip of `msg`.
fn round_trip(s: &mut TcpStream, msg: &[u8], back: &mut [u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    s.write_all(msg).map_err(|e| format!("send: {e}"))?;
    s.read_exact(back).map_err(|e| format!("receive: {e}"))?;
    let took = t0.elapsed();
    if back != msg {
        return Err("the echo differs from the request".into());
    }
    Ok(took)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run(args: &Args) -> Result<(), String> {
    if args.length == 0 || args.count == 0 {
        return Err("--length and --count must be positive".into());
    }
    let idle = duration(args.idle, "--idle")?;
    let mut s = TcpStream::connect(&args.address)
        .map_err(|e| format!("cannot connect to {}: {e}", args.address))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let msg: Vec<u8> = (0..args.length).map(|i| b'a' + (i % 26) as u8).collect();
    let mut back = vec![0u8; args.length];
    for _ in 0..args.warm {
        round_trip(&mut s, &msg, &mut back)?;
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut firsts = Vec::with_capacity(args.count);
    let mut hots = Vec::new();
    for i in 0..args.count {
        std::thread::sleep(idle);
        let first = us(round_trip(&mut s, &msg, &mut back)?);
        let mut hot = Vec::with_capacity(args.hot);
        for _ in 0..args.hot {
            hot.push(us(round_trip(&mut s, &msg, &mut back)?));
        }
        let hot_med = median(&mut hot);
        println!(
            "wake_probe: cycle {}: first after {:.1} s idle {first:.1} us, hot median {hot_med:.1} us",
            i + 1,
            args.idle
        );
        firsts.push(first);
        hots.push(hot_med);
    }
    let min = firsts.iter().copied().fold(f64::INFINITY, f64::min);
    let max = firsts.iter().copied().fold(0.0, f64::max);
    let line = ResultLine::new()
        .num("idle_secs", args.idle)
        .num("first_us_median", median(&mut firsts))
        .num("first_us_min", min)
        .num("first_us_max", max)
        .num("hot_us_median", median(&mut hots));
    println!("{line}");
    Ok(())
}
