//! `echo_bench`: load client for echo servers, flag-compatible with `rust_echo_bench`
//! (see [`fastio_echo::bench`]).
//!
//! Prints `rust_echo_bench`'s header and summary lines on stdout, problems on stderr.
//! Exit status: 0 on success; 1 if the run had mismatches, failed or stalled
//! connections, or no response at all; 2 if it could not run (connect refused, bad
//! arguments...).

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fastio_echo::bench::{self, BenchConfig};

/// Echo server load client (rust_echo_bench compatible, with pipelining, latency
/// percentiles and verification of every echoed byte).
#[derive(Parser, Debug)]
#[command(name = "echo_bench", version)]
struct Args {
    /// Server address (host:port).
    #[arg(short = 'a', long = "address", default_value = "127.0.0.1:12345")]
    address: String,
    /// Number of concurrent connections.
    #[arg(short = 'c', long = "number", default_value_t = 50)]
    number: usize,
    /// Duration of the run in seconds (fractions allowed).
    #[arg(short = 't', long = "duration", default_value = "60", value_parser = parse_secs)]
    duration: Duration,
    /// Message length in bytes.
    #[arg(short = 'l', long = "length", default_value_t = 512)]
    length: usize,
    /// Messages in flight per connection (pipelining depth).
    #[arg(short = 'd', long = "depth", default_value_t = 1)]
    depth: usize,
    /// Seconds without progress after which a connection counts as stalled.
    #[arg(long = "stall-timeout", default_value = "5", value_parser = parse_secs)]
    stall_timeout: Duration,
    /// Worker threads (default: min(connections, 2 x cores)).
    #[arg(long = "threads")]
    threads: Option<usize>,
    /// No progress lines on stderr.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("`{s}`: a positive number of seconds is needed")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = BenchConfig {
        address: args.address,
        connections: args.number,
        duration: args.duration,
        length: args.length,
        depth: args.depth,
        stall_timeout: args.stall_timeout,
        progress: !args.quiet,
        threads: args.threads,
    };
    println!("{}", cfg.header());
    let _ = io::stdout().flush();
    match bench::run(&cfg) {
        Ok(report) => {
            println!("{report}");
            let _ = io::stdout().flush();
            for problem in &report.problems {
                eprintln!("echo_bench: {problem}");
            }
            if report.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "echo_bench: FAILED: {} mismatches, {} failed connections, {} responses",
                    report.mismatches, report.errors, report.responses
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("echo_bench: error: {e}");
            ExitCode::from(2)
        }
    }
}
