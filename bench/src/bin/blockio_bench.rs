//! `blockio_bench`: 4 KiB random O_DIRECT reads or writes through the fastio proactor,
//! the fio-style block I/O benchmark of `scripts/bench/blockio.py`.
//!
//! `--rw layout` writes the whole file once (`--size-mib`, every block self-describing:
//! see `fastio_bench::blockio`) with ordinary writes and an fsync, so that later reads hit
//! real blocks. `--rw randread` / `randwrite` open the file (or a block device) with
//! `O_DIRECT` by an OPENAT through the proactor on the configured backend and keep
//! `--depth` READs or WRITEs of one aligned 4 KiB block at uniformly random aligned
//! offsets in flight for `--duration` seconds (after a `--warmup`), or until
//! `--max-ops` transfers. Prints a summary line, then `RESULT {json}` with IOPS, the
//! latency percentiles (request queued → completion reaped) and the CPU seconds of the
//! process (all its threads: lanes, helpers, SQPOLL, io-wq).
//!
//! `--verify`: writes carry the full block pattern (tagged `--tag`) and every block read
//! is checked byte for byte; the run fails at the first wrong block. Without it a write
//! sets only the block's 16-byte header, so the time goes to I/O as with fio.
//! Exit status 1 on any failed transfer or wrong block, 2 when the file system refuses
//! O_DIRECT (the message says so).

use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use fastio::{BackendKind, Config, Proactor, RejectReason, Slot};
use fastio_bench::blockio::{
    check_block, fill_block, process_cpu, AlignedBlock, Offsets, Role, ThreadTicks, BLOCK,
};
use fastio_bench::{duration, ResultLine};
use fastio_echo::latency::LatencyHistogram;

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Rw {
    /// Write the whole file once (ordinary writes, then fsync).
    Layout,
    /// Random 4 KiB O_DIRECT reads.
    Randread,
    /// Random 4 KiB O_DIRECT writes.
    Randwrite,
}

/// 4 KiB random O_DIRECT block I/O through the fastio proactor.
#[derive(Parser, Debug)]
#[command(name = "blockio_bench", version)]
struct Args {
    /// Configuration file (default: $FASTIO_CONF, else the recorded path, else defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the config's backend: auto, kmod, uring or threads.
    #[arg(long)]
    backend: Option<BackendKind>,
    /// Override the config's sqpoll (uring backend).
    #[arg(long)]
    sqpoll: Option<bool>,
    /// The file (or block device) to read or write.
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// What to do.
    #[arg(long, value_enum)]
    rw: Rw,
    /// Size of the file `--rw layout` writes, in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Transfers kept in flight.
    #[arg(short = 'd', long, default_value_t = 1)]
    depth: usize,
    /// Measured duration in seconds.
    #[arg(short = 't', long, default_value_t = 5.0)]
    duration: f64,
    /// Unmeasured warm-up before it, in seconds (0: none).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// At most this many measured transfers.
    #[arg(long, default_value_t = 10_000_000)]
    max_ops: u64,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tag written into the blocks' headers (layout writes tag 0).
    #[arg(long, default_value_t = 1)]
    tag: u64,
    /// Write full block patterns / check every block read.
    #[arg(long)]
    verify: bool,
    /// Open with O_DSYNC as well (every write reaches stable storage).
    #[arg(long)]
    dsync: bool,
}

/// Counters of one phase.
struct Phase {
    ops: u64,
    elapsed: Duration,
    cpu: Duration,
    /// CPU time of the lane (polling) threads and of the helper threads.
    lanes_cpu: Duration,
    helpers_cpu: Duration,
    hist: LatencyHistogram,
    verified: u64,
}

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.to_string().contains("no O_DIRECT") => {
            eprintln!("blockio_bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => fastio_bench::exit_status("blockio_bench", Err(e)),
    }
}

fn run(args: &Args) -> Result<(), BoxError> {
    if args.rw == Rw::Layout {
        return layout(&args.file, args.size_mib);
    }
    let (mut config, source) = Config::resolve(args.config.as_deref())?;
    if let Some(b) = args.backend {
        config.backend = b;
    }
    if let Some(s) = args.sqpoll {
        config.sqpoll = s;
    }
    config.validate()?;
    let measured = duration(args.duration, "--duration")?;
    if args.depth == 0 || args.depth > 4096 {
        return Err("--depth must be between 1 and 4096".into());
    }
    let blocks = blocks_of(&args.file)?;
    eprintln!("blockio_bench: config from {source}: {}", config.describe());
    let mut p = Proactor::new(&config)?;
    let slot = open_direct(&mut p, &args.file, args.dsync)?;
    let backend = p.backend().to_string();
    let mut io = Io {
        slot,
        write: args.rw == Rw::Randwrite,
        verify: args.verify,
        tag: args.tag,
        offsets: Offsets::new(args.seed, blocks),
        bufs: (0..args.depth).map(|_| Some(AlignedBlock::new())).collect(),
    };
    if args.warmup > 0.0 {
        io.drive(&mut p, duration(args.warmup, "--warmup")?, u64::MAX)?;
    }
    let m = io.drive(&mut p, measured, args.max_ops)?;
    let secs = m.elapsed.as_secs_f64();
    let iops = m.ops as f64 / secs;
    let us = |q| m.hist.percentile(q).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    let rw = if io.write { "randwrite" } else { "randread" };
    println!(
        "blockio_bench: {backend}, {rw}, depth {}: {iops:.0} IOPS ({} in {secs:.2} s), \
         latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, CPU {:.2} s \
         (lanes {:.2} s, helpers {:.2} s)",
        args.depth,
        m.ops,
        us(0.5),
        us(0.99),
        us(0.999),
        m.cpu.as_secs_f64(),
        m.lanes_cpu.as_secs_f64(),
        m.helpers_cpu.as_secs_f64()
    );
    let line = ResultLine::new()
        .text("backend", config.backend.as_str())
        .num("sqpoll", f64::from(u8::from(p.backend().sqpoll)))
        .text("rw", rw)
        .num("depth", args.depth as f64)
        .num("blocks", blocks as f64)
        .num("ops", m.ops as f64)
        .num("secs", secs)
        .num("iops", iops)
        .num("cpu_s", m.cpu.as_secs_f64())
        .num(
            "cpu_us_per_op",
            m.cpu.as_secs_f64() * 1e6 / m.ops.max(1) as f64,
        )
        .num("lanes_cpu_s", m.lanes_cpu.as_secs_f64())
        .num("helpers_cpu_s", m.helpers_cpu.as_secs_f64())
        .num("verified", m.verified as f64)
        .latency("", &m.hist);
    println!("{line}");
    Ok(())
}

/// Writes `size_mib` MiB of tag-0 blocks to `path` (created or truncated), then fsyncs.
fn layout(path: &Path, size_mib: u64) -> Result<(), BoxError> {
    let blocks = size_mib
        .checked_mul((1 << 20) / BLOCK as u64)
        .filter(|&b| b > 0)
        .ok_or("--size-mib must be between 1 and 2^44")?;
    let mut f = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut chunk = vec![0u8; 256 * BLOCK];
    let mut next = 0u64;
    while next < blocks {
        let n = (blocks - next).min(256) as usize;
        for (i, b) in chunk[..n * BLOCK].chunks_exact_mut(BLOCK).enumerate() {
            fill_block(b, next + i as u64, 0, true);
        }
        f.write_all(&chunk[..n * BLOCK])?;
        next += n as u64;
    }
    f.sync_all()?;
    println!(
        "blockio_bench: laid out {} ({size_mib} MiB, {blocks} blocks)",
        path.display()
    );
    Ok(())
}

/// Whole blocks in the file or device at `path` (its size, found by seeking to its end).
fn blocks_of(path: &Path) -> Result<u64, BoxError> {
    let mut f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    match size / BLOCK as u64 {
        0 => Err(format!(
            "{} holds no whole 4 KiB block (lay it out with --rw layout)",
            path.display()
        )
        .into()),
        n => Ok(n),
    }
}

/// Opens `path` read-write with O_DIRECT by an OPENAT through the proactor.
fn open_direct(p: &mut Proactor, path: &Path, dsync: bool) -> Result<Slot, BoxError> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let flags = libc::O_RDWR | libc::O_DIRECT | if dsync { libc::O_DSYNC } else { 0 };
    p.openat(None, &c, flags, 0, u64::MAX)?;
    p.wait(1, Some(Duration::from_secs(30)))?;
    let c = p
        .next_completion()
        .ok_or("OPENAT did not complete within 30 s")?;
    match (c.result, c.accepted) {
        (r, Some(slot)) if r >= 0 => Ok(slot),
        (r, _) if r == -libc::EINVAL => Err(format!(
            "the file system of {} has no O_DIRECT (OPENAT: EINVAL)",
            path.display()
        )
        .into()),
        (r, _) => Err(format!(
            "OPENAT {} with O_DIRECT: {}",
            path.display(),
            std::io::Error::from_raw_os_error(-r)
        )
        .into()),
    }
}

/// The state of the transfers: one aligned buffer per in-flight request.
struct Io {
    slot: Slot,
    write: bool,
    verify: bool,
    tag: u64,
    offsets: Offsets,
    /// Buffer `id` is `None` while request `id` (its user_data) is in flight.
    bufs: Vec<Option<AlignedBlock>>,
}

impl Io {
    /// Queues request `id` on a random block; false if the lane is busy (the buffer is
    /// back in place).
    fn queue(&mut self, p: &mut Proactor, id: usize, block: u64) -> Result<bool, String> {
        let mut b = self.bufs[id].take().expect("free request has its buffer");
        if self.write {
            fill_block(b.block_mut(), block, self.tag, self.verify);
        }
        let (range, off) = (b.range(), Some(block * BLOCK as u64));
        let r = if self.write {
            p.write(self.slot, b.into_vec(), range, off, id as u64)
        } else {
            p.read(self.slot, b.into_vec(), range, off, id as u64)
        };
        match r {
            Ok(()) => Ok(true),
            Err(r) if r.reason == RejectReason::Busy => {
                let v = r.buf.expect("a refused request gives its buffer back");
                self.bufs[id] = Some(AlignedBlock::from_vec(v));
                Ok(false)
            }
            Err(r) => Err(format!("request refused: {r}")),
        }
    }

    /// Keeps every request in flight for `duration` or until `max_ops` completed, then
    /// waits for the stragglers (not counted).
    fn drive(
        &mut self,
        p: &mut Proactor,
        duration: Duration,
        max_ops: u64,
    ) -> Result<Phase, String> {
        let depth = self.bufs.len();
        let mut free: Vec<usize> = (0..depth).rev().collect();
        let start = Instant::now();
        let cpu0 = process_cpu();
        let ticks0 = ThreadTicks::now();
        let mut queued_at = vec![start; depth];
        let mut block_of = vec![0u64; depth];
        let end = start + duration;
        let mut hist = LatencyHistogram::new();
        let (mut ops, mut issued, mut verified) = (0u64, 0u64, 0u64);
        let mut now = start;
        while now < end && ops < max_ops {
            while issued < max_ops {
                let Some(id) = free.pop() else { break };
                let block = self.offsets.next_block();
                if !self.queue(p, id, block)? {
                    free.push(id);
                    break;
                }
                queued_at[id] = Instant::now();
                block_of[id] = block;
                issued += 1;
            }
            p.wait(1, Some(Duration::from_secs(5)))
                .map_err(|e| format!("wait: {e}"))?;
            now = Instant::now();
            let mut got = 0;
            for c in p.completions() {
                let id = c.user_data as usize;
                let Some(v) = c.buf.filter(|_| id < depth) else {
                    return Err(format!("unexpected completion {}", c.user_data));
                };
                let b = AlignedBlock::from_vec(v);
                if c.result != BLOCK as i32 {
                    return Err(format!(
                        "{} of block {} completed with {}",
                        if self.write { "WRITE" } else { "READ" },
                        block_of[id],
                        describe(c.result)
                    ));
                }
                hist.record(now - queued_at[id]);
                if self.verify && !self.write {
                    check_block(b.block(), block_of[id])?;
                    verified += 1;
                }
                self.bufs[id] = Some(b);
                free.push(id);
                got += 1;
            }
            if got == 0 {
                return Err("no transfer completed within 5 s".into());
            }
            ops += got;
        }
        let elapsed = start.elapsed();
        let cpu = process_cpu().saturating_sub(cpu0);
        let ticks = ThreadTicks::now();
        self.drain(p, depth - free.len())?;
        Ok(Phase {
            ops,
            elapsed,
            cpu,
            lanes_cpu: ticks.since(&ticks0, Role::Lane),
            helpers_cpu: ticks.since(&ticks0, Role::Helper),
            hist,
            verified,
        })
    }

    /// Waits for the `in_flight` requests still out and takes their buffers back.
    fn drain(&mut self, p: &mut Proactor, mut in_flight: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while in_flight > 0 {
            if Instant::now() > deadline {
                return Err(format!("{in_flight} transfer(s) never completed"));
            }
            p.wait(1, Some(Duration::from_secs(5)))
                .map_err(|e| format!("wait: {e}"))?;
            for c in p.completions() {
                if c.result != BLOCK as i32 {
                    return Err(format!("a transfer completed with {}", describe(c.result)));
                }
                let id = c.user_data as usize;
                if let (Some(v), true) = (c.buf, id < self.bufs.len()) {
                    self.bufs[id] = Some(AlignedBlock::from_vec(v));
                }
                in_flight -= 1;
            }
        }
        Ok(())
    }
}

/// A completion result for messages: bytes, or the errno's text.
fn describe(result: i32) -> String {
    if result < 0 {
        format!("{} ({result})", std::io::Error::from_raw_os_error(-result))
    } else {
        format!("{result} bytes")
    }
}
