//! `nop_bench`: NOP round trips through the fastio proactor, to measure the cost of the
//! submission/completion path itself (no I/O).
//!
//! Lanes, SQPOLL and the rest come from the configuration file (`--config`); the
//! backend may be overridden with `--backend`.
//!
//! Keeps `--depth` NOPs in flight for `--duration` seconds: each completion is reaped
//! and a new NOP queued in its place, then [`Proactor::wait`] submits and waits for at
//! least one completion. `--depth 1` is the strict round trip (submit one, wait for it);
//! a larger depth measures batched throughput. Prints a summary line, then
//! `RESULT {json}` with `ops_per_sec` and the per-NOP latency (queue → completion
//! reaped) percentiles. Exit status 1 if a NOP failed or the run could not start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use fastio::{BackendKind, Config, Proactor, RejectReason};
use fastio_bench::{duration, ResultLine};
use fastio_echo::latency::LatencyHistogram;

/// NOP round-trip benchmark of the fastio proactor.
#[derive(Parser, Debug)]
#[command(name = "nop_bench", version)]
struct Args {
    /// Configuration file (default: $FASTIO_CONF, else the recorded path, else defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the config's backend: auto, kmod, uring or threads.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// NOPs kept in flight (1 = strict round trip).
    #[arg(short = 'd', long, default_value_t = 1)]
    depth: usize,
    /// Measured duration in seconds (after a warm-up of a fifth of it, at most 0.5 s).
    #[arg(short = 't', long, default_value_t = 2.0)]
    duration: f64,
}

/// Counters of one phase.
struct Phase {
    ops: u64,
    elapsed: Duration,
    hist: LatencyHistogram,
}

fn main() -> ExitCode {
    fastio_bench::exit_status("nop_bench", run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (mut config, source) = Config::resolve(args.config.as_deref())?;
    if let Some(b) = args.backend {
        config.backend = b;
    }
    config.validate()?;
    let duration = duration(args.duration, "--duration")?;
    if args.depth == 0 || args.depth > 1 << 16 {
        return Err("--depth must be between 1 and 65536".into());
    }
    eprintln!("nop_bench: config from {source}: {}", config.describe());
    let mut p = Proactor::new(&config)?;
    let backend = p.backend().to_string();
    let warm = (duration / 5).min(Duration::from_millis(500));
    drive(&mut p, args.depth, warm)?;
    let m = drive(&mut p, args.depth, duration)?;
    let ops_per_sec = m.ops as f64 / m.elapsed.as_secs_f64();
    let us = |q| m.hist.percentile(q).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    println!(
        "nop_bench: {backend}, depth {}: {:.0} NOPs/s ({} in {:.2} s), latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us",
        args.depth,
        ops_per_sec,
        m.ops,
        m.elapsed.as_secs_f64(),
        us(0.5),
        us(0.99),
        us(0.999)
    );
    let line = ResultLine::new()
        .text("backend", config.backend.as_str())
        .num("lanes", f64::from(p.lanes()))
        .num("sqpoll", f64::from(u8::from(config.sqpoll)))
        .num("depth", args.depth as f64)
        .num("ops", m.ops as f64)
        .num("secs", m.elapsed.as_secs_f64())
        .num("ops_per_sec", ops_per_sec)
        .latency("", &m.hist);
    println!("{line}");
    Ok(())
}

/// Runs NOPs with `depth` in flight for `duration`, then waits for the stragglers.
fn drive(p: &mut Proactor, depth: usize, duration: Duration) -> Result<Phase, String> {
    let mut free: Vec<u64> = (0..depth as u64).collect();
    let start = Instant::now();
    let mut queued_at = vec![start; depth];
    let end = start + duration;
    let mut hist = LatencyHistogram::new();
    let mut ops = 0u64;
    let mut now = start;
    while now < end {
        while let Some(id) = free.pop() {
            match p.nop(id) {
                Ok(()) => queued_at[id as usize] = now,
                Err(r) if r.reason == RejectReason::Busy => {
                    free.push(id);
                    break;
                }
                Err(r) => return Err(format!("NOP refused: {r}")),
            }
        }
        p.wait(1, Some(Duration::from_secs(5)))
            .map_err(|e| format!("wait: {e}"))?;
        now = Instant::now();
        let mut got = 0;
        for c in p.completions() {
            if c.result != 0 {
                return Err(format!("NOP completed with {}", c.result));
            }
            hist.record(now - queued_at[c.user_data as usize]);
            free.push(c.user_data);
            got += 1;
        }
        if got == 0 {
            return Err("no NOP completed within 5 s".into());
        }
        ops += got;
    }
    let elapsed = start.elapsed();
    let in_flight = depth - free.len();
    if in_flight > 0 {
        let n = p
            .wait(in_flight, Some(Duration::from_secs(5)))
            .map_err(|e| format!("wait: {e}"))?;
        p.completions().for_each(drop);
        if n < in_flight {
            return Err(format!("{} NOP(s) never completed", in_flight - n));
        }
    }
    Ok(Phase { ops, elapsed, hist })
}
