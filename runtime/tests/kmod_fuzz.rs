//! Random SQEs against fastio.ko, through the raw ring (no proactor in between): for
//! 30 s (`FASTIO_FUZZ_SECS`), batches of random requests over registered files: a TCP
//! listener, connected TCP sockets, both ends of pipes, regular files on tmpfs and ext4,
//! a read-only file and /dev/zero. Opcodes valid and not, slots valid, empty and out of
//! range, lengths 0, small and huge, random offsets, reserved fields and flags set,
//! buffer addresses inside a scratch area fenced by PROT_NONE guard pages, and invalid
//! ones (0, unmapped, kernel addresses). Meanwhile the test keeps the peers of the
//! sockets and pipes fed and drained, connects new clients for ACCEPTs, truncates the
//! files, and re-registers closed slots.
//!
//! Checked: every SQE gets exactly one CQE (unique user_data), and its result agrees
//! with `fastio_uapi::decode` (refused SQEs complete with the exact errno, NOPs with 0,
//! transfers never exceed the length); no request is left pending in the kernel; and
//! after everything is closed, the kernel's slab memory is back near its baseline.
//! `make vm-test` then checks that the module unloads and that the kernel log has no
//! WARNING/BUG/Oops (slub_debug=FZPU catches use-after-free and overwrites).
//!
//! `FASTIO_FUZZ_SEED` replays a run (the seed is printed). Runs where /dev/fastio exists,
//! as root (inside the VM: `make vm-test`); elsewhere it prints SKIP and the reason.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastio::backend::DEVICE_PATH;
use fastio::ring::{CqConsumer, Geometry, RingMemory, SqProducer};
use fastio::uapi::{
    decode, EnterArgs, FilesUpdate, IoVec, Op, SetupParams, SlotArg, Sqe, Stats, ABI_VERSION,
    ACCEPT_NONBLOCK, ENTER_GETEVENTS, ENTER_SQ_WAKEUP, FASTIO_ENTER, FASTIO_GET_STATS,
    FASTIO_INSTALL_FD, FASTIO_REGISTER_FILES, FASTIO_SETUP, FASTIO_UNREGISTER_FILE, MAX_RW_LEN,
    OFF_CURRENT, OP_ACCEPT, OP_ASYNC_CANCEL, OP_CLOSE, OP_NOP, OP_READ, OP_RECV, OP_SEND, OP_WRITE,
    OP_WRITEV, RECV_FLAGS, SEND_FLAGS,
};

mod common;

const LANES: u32 = 2;
const SQ_ENTRIES: u32 = 64;
const CQ_ENTRIES: u32 = 128;
const MAX_FILES: u32 = 16;
const SCRATCH: usize = 256 << 10;
const GUARD: usize = 64 << 10;
const IOV_AREA: usize = 32 << 10;
/// Longest time without any completion while requests are in flight.
const STALL: Duration = Duration::from_secs(20);
/// Slab growth allowed after everything is closed.
const SLAB_TOLERANCE_KIB: u64 = 1024;

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with `pct` percent probability.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// One ioctl; `Ok(result)` or `Err(errno)`.
///
/// # Safety
///
/// `T` must be `cmd`'s argument type; user addresses inside must be live (or
/// deliberately bad).
unsafe fn ioctl<T>(fd: RawFd, cmd: u32, arg: &mut T) -> Result<i32, i32> {
    // SAFETY: forwarded to the caller.
    let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

/// A raw context: the device, its rings, and the userspace ends of each lane.
struct RawContext {
    lanes: Vec<(SqProducer, CqConsumer)>,
    _mem: Arc<RingMemory>,
    dev: File,
}

impl RawContext {
    fn open() -> RawContext {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(DEVICE_PATH)
            .unwrap();
        let mut p = SetupParams {
            abi_version: ABI_VERSION,
            workers: LANES,
            sq_entries: SQ_ENTRIES,
            cq_entries: CQ_ENTRIES,
            idle_ms: 2,
            max_files: MAX_FILES,
            ..SetupParams::default()
        };
        // SAFETY: SETUP takes a SetupParams without user addresses.
        unsafe { ioctl(dev.as_raw_fd(), FASTIO_SETUP, &mut p) }.expect("SETUP");
        let g = Geometry::new(LANES, SQ_ENTRIES, CQ_ENTRIES).unwrap();
        assert_eq!(p.mmap_size as usize, g.mmap_size());
        let map = memmap2::MmapOptions::new()
            .len(g.mmap_size())
            .map_raw(&dev)
            .unwrap();
        // SAFETY: the mapping is the context's ring memory in the uapi layout (checked
        // size), kept by `_mem` while the lanes use it.
        let mem = unsafe { RingMemory::from_map(map, g) }.unwrap();
        let lanes = (0..LANES)
            .map(|l| {
                // SAFETY: the only userspace ends of each lane of this fresh mapping; the
                // kernel is its only worker side.
                unsafe {
                    let r = mem.lane(l);
                    (r.sq_producer(), r.cq_consumer())
                }
            })
            .collect();
        RawContext {
            lanes,
            _mem: mem,
            dev,
        }
    }

    fn fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    /// Registers `fd` into `slot`; `Err(errno)` (EBUSY when the slot is taken).
    fn register(&self, fd: RawFd, slot: u32) -> Result<i32, i32> {
        let (fds, slots) = ([fd], [slot]);
        let mut u = FilesUpdate {
            fds: fds.as_ptr() as u64,
            slots: slots.as_ptr() as u64,
            count: 1,
            resv: 0,
        };
        // SAFETY: the arrays live for the call.
        unsafe { ioctl(self.fd(), FASTIO_REGISTER_FILES, &mut u) }
    }

    fn slot_ioctl(&self, cmd: u32, slot: u32, flags: u32) -> Result<i32, i32> {
        // SAFETY: SlotArg carries no addresses.
        unsafe { ioctl(self.fd(), cmd, &mut SlotArg { slot, flags }) }
    }

    fn enter(&self, flags: u32, lane: u32, min: u32, timeout: Duration) -> Result<i32, i32> {
        let mut a = EnterArgs {
            flags,
            lane,
            min_complete: min,
            timeout_ns: timeout.as_nanos() as u64,
            ..EnterArgs::default()
        };
        // SAFETY: EnterArgs carries no addresses.
        unsafe { ioctl(self.fd(), FASTIO_ENTER, &mut a) }
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default();
        // SAFETY: the kernel writes a Stats.
        unsafe { ioctl(self.fd(), FASTIO_GET_STATS, &mut s) }.expect("GET_STATS");
        s
    }
}

/// `len` bytes of fresh memory between two PROT_NONE guards; returns (base, mapping).
struct Fenced {
    map: *mut libc::c_void,
    total: usize,
    base: u64,
}

impl Fenced {
    fn new(len: usize) -> Fenced {
        let total = len + 2 * GUARD;
        // SAFETY: a fresh private anonymous mapping; nothing else is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let base = map as u64 + GUARD as u64;
        // SAFETY: the middle of our own mapping.
        let r = unsafe {
            libc::mprotect(
                base as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(r, 0);
        Fenced { map, total, base }
    }
}

impl Drop for Fenced {
    fn drop(&mut self) {
        // SAFETY: our mapping; nothing in flight uses it any more (checked by the caller).
        unsafe { libc::munmap(self.map, self.total) };
    }
}

/// Sets `SO_LINGER {on, 0}`: close sends RST and leaves no TIME_WAIT socket behind.
fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a live linger struct of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// A pipe (read end, write end); both blocking.
fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we own from here on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: as above.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Makes the test's own end of a pipe non-blocking.
fn nonblocking(f: &File) {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        assert_eq!(
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK),
            0
        );
    }
}

/// The files of the run: what goes into the base slots, and the test's ends of them.
struct Files {
    /// (slot, descriptor) re-registered when a slot is found empty.
    base: Vec<(u32, OwnedFd)>,
    clients: Vec<TcpStream>,
    listener_addr: std::net::SocketAddr,
    /// Written by the test, read through the ring (slot 5).
    pipe_in: File,
    /// Written through the ring (slot 6), drained by the test.
    pipe_out: File,
    /// Regular files to truncate now and then.
    regular: Vec<File>,
    paths: Vec<PathBuf>,
}

fn files() -> Files {
    let mut base: Vec<(u32, OwnedFd)> = Vec::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener_addr = listener.local_addr().unwrap();
    base.push((0, listener.into()));
    let helper = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    for slot in 1..=4 {
        let c = TcpStream::connect(helper.local_addr().unwrap()).unwrap();
        let (s, _) = helper.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        linger0(&c);
        clients.push(c);
        base.push((slot, s.into()));
    }
    let (rd_in, pipe_in) = pipe();
    let (pipe_out, wr_out) = pipe();
    nonblocking(&pipe_in);
    nonblocking(&pipe_out);
    base.push((5, rd_in.into()));
    base.push((6, wr_out.into()));
    let dirs = [
        PathBuf::from("/tmp"),
        std::env::var("FASTIO_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("/tmp")),
    ];
    let mut regular = Vec::new();
    let mut paths = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let path = dir.join(format!("fastio-fuzz-{}-{i}", std::process::id()));
        let f = common::rw_file(&path);
        base.push((7 + i as u32, f.try_clone().unwrap().into()));
        regular.push(f);
        paths.push(path);
    }
    let ro = File::open(&paths[0]).unwrap();
    base.push((9, ro.into()));
    base.push((10, File::open("/dev/zero").unwrap().into()));
    Files {
        base,
        clients,
        listener_addr,
        pipe_in,
        pipe_out,
        regular,
        paths,
    }
}

impl Files {
    /// Drains what the ring sent, feeds what the ring may receive.
    fn pump(&mut self, rng: &mut Rng) {
        let mut sink = [0u8; 64 << 10];
        let feed = [0x5au8; 512];
        let mut dead = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            loop {
                match c.read(&mut sink) {
                    Ok(0) => {
                        dead.push(i);
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead.push(i);
                        break;
                    }
                }
            }
            if rng.pct(50) {
                let n = 1 + rng.below(feed.len() as u64) as usize;
                let _ = c.write(&feed[..n]);
            }
        }
        // Peers the ring closed: forget them (keep the four base connections' peers
        // even then, so their indices stay put; they are just no longer fed).
        for i in dead.into_iter().rev() {
            if i >= 4 {
                self.clients.remove(i);
            }
        }
        while matches!(self.pipe_out.read(&mut sink), Ok(n) if n > 0) {}
        if rng.pct(50) {
            let _ = self.pipe_in.write(&feed[..1 + rng.below(256) as usize]);
        }
    }

    /// A new connection for the ring's ACCEPTs (at most 24 kept; older ones are reset).
    fn connect(&mut self) {
        if let Ok(c) = TcpStream::connect(self.listener_addr) {
            c.set_nonblocking(true).unwrap();
            linger0(&c);
            self.clients.push(c);
        }
        if self.clients.len() > 28 {
            self.clients.remove(4);
        }
    }
}

/// Every SQE handed to the rings until its CQE comes back, and counts for the summary.
struct Ledger {
    /// user_data -> (lane, SQE) of what is in flight.
    outstanding: HashMap<u64, (u32, Sqe)>,
    inflight: [u32; LANES as usize],
    next_ud: u64,
    submitted: u64,
    completed: u64,
    by_op: BTreeMap<String, (u64, u64)>,
    by_result: BTreeMap<i32, u64>,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            outstanding: HashMap::new(),
            inflight: [0; LANES as usize],
            next_ud: 1,
            submitted: 0,
            completed: 0,
            by_op: BTreeMap::new(),
            by_result: BTreeMap::new(),
        }
    }

    /// Stages the SQE `make` builds for the next user_data on `lane`; false (nothing
    /// staged) when the lane has as many requests in flight as its CQ holds, or its SQ
    /// is full.
    fn push(&mut self, ctx: &mut RawContext, lane: u32, make: impl FnOnce(u64) -> Sqe) -> bool {
        if self.inflight[lane as usize] >= CQ_ENTRIES {
            return false;
        }
        let sqe = make(self.next_ud);
        if !ctx.lanes[lane as usize].0.push(&sqe) {
            return false;
        }
        self.outstanding.insert(self.next_ud, (lane, sqe));
        self.next_ud += 1;
        self.inflight[lane as usize] += 1;
        self.submitted += 1;
        self.by_op.entry(op_name(sqe.opcode)).or_default().0 += 1;
        true
    }

    /// Publishes the staged SQEs, waking the workers that sleep.
    fn publish(&self, ctx: &mut RawContext) {
        for lane in 0..LANES {
            if ctx.lanes[lane as usize].0.publish() {
                ctx.enter(ENTER_SQ_WAKEUP, lane, 0, Duration::ZERO)
                    .expect("ENTER(SQ_WAKEUP)");
            }
        }
    }

    /// Reaps every lane, checking each CQE; returns how many came.
    fn reap(&mut self, ctx: &mut RawContext) -> u32 {
        let mut n = 0;
        for (lane, (_, cq)) in ctx.lanes.iter_mut().enumerate() {
            n += cq.drain(|cqe| {
                let (l, sqe) = self.outstanding.remove(&cqe.user_data).unwrap_or_else(|| {
                    panic!(
                        "CQE for unknown or already completed user_data {:#x} (res {}) \
                         on lane {lane}",
                        cqe.user_data, cqe.res
                    )
                });
                assert_eq!(l as usize, lane, "CQE on another lane than its SQE");
                self.inflight[lane] -= 1;
                check_result(&sqe, cqe.res);
                self.completed += 1;
                self.by_op.entry(op_name(sqe.opcode)).or_default().1 += 1;
                *self.by_result.entry(cqe.res.min(1)).or_default() += 1;
            });
        }
        n
    }
}

fn op_name(opcode: u8) -> String {
    match opcode {
        OP_NOP => "NOP".into(),
        OP_ACCEPT => "ACCEPT".into(),
        OP_RECV => "RECV".into(),
        OP_SEND => "SEND".into(),
        OP_READ => "READ".into(),
        OP_WRITE => "WRITE".into(),
        OP_WRITEV => "WRITEV".into(),
        OP_CLOSE => "CLOSE".into(),
        OP_ASYNC_CANCEL => "ASYNC_CANCEL".into(),
        _ => "bad-opcode".into(),
    }
}

/// What the CQE of `sqe` may say, given the ABI's decoder.
fn check_result(sqe: &Sqe, res: i32) {
    let ctx = || format!("{sqe:?} completed with {res}");
    assert!(res >= -4095, "{}: not an errno", ctx());
    match decode(sqe, MAX_FILES) {
        Err(e) => assert_eq!(res, -e.errno(), "{}: refused SQE", ctx()),
        Ok(Op::Nop) => assert_eq!(res, 0, "{}", ctx()),
        Ok(Op::Close { .. }) => assert!(res == 0 || res == -libc::EBADF, "{}", ctx()),
        Ok(Op::AsyncCancel { .. }) => assert!(res == 0 || res == -libc::ENOENT, "{}", ctx()),
        Ok(Op::Accept { dest, .. }) => {
            assert!(res < 0 || res == dest as i32, "{}", ctx())
        }
        Ok(
            Op::Recv { len, .. }
            | Op::Send { len, .. }
            | Op::Read { len, .. }
            | Op::Write { len, .. },
        ) => assert!(res < 0 || res as u32 <= len, "{}", ctx()),
        Ok(Op::Writev { .. }) => assert!(res <= MAX_RW_LEN as i32, "{}", ctx()),
    }
}

/// The request generator.
struct Gen {
    rng: Rng,
    scratch: u64,
    guard: u64,
    iov_area: u64,
    iov_next: usize,
}

impl Gen {
    fn addr(&mut self) -> u64 {
        let r = self.rng.below(100);
        match r {
            0..=69 => self.scratch + self.rng.below(SCRATCH as u64),
            70..=75 => 0,
            76..=81 => self.guard + self.rng.below(GUARD as u64),
            82..=87 => self.rng.pick(&[
                0xffff_8880_0000_0000,
                0xffff_ffff_8100_0000,
                0xffff_ffff_ffff_f000,
                0x0000_8000_0000_0000,
                u64::MAX,
            ]),
            88..=93 => self.scratch + SCRATCH as u64 - 1 - self.rng.below(4096),
            _ => self.rng.next(),
        }
    }

    fn len(&mut self) -> u32 {
        match self.rng.below(100) {
            0..=14 => 0,
            15..=59 => 1 + self.rng.below(4096) as u32,
            60..=74 => 1 + self.rng.below(SCRATCH as u64) as u32,
            _ => {
                let any = self.rng.next() as u32;
                self.rng.pick(&[u32::MAX, MAX_RW_LEN, MAX_RW_LEN + 1, any])
            }
        }
    }

    fn off(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=49 => self.rng.below(1 << 20),
            50..=64 => OFF_CURRENT,
            65..=74 => 0,
            75..=79 => i64::MAX as u64 - self.rng.below(1 << 16),
            _ => self.rng.next(),
        }
    }

    fn slot(&mut self) -> u32 {
        match self.rng.below(100) {
            0..=84 => self.rng.below(MAX_FILES as u64) as u32,
            85..=92 => MAX_FILES + self.rng.below(1000) as u32,
            _ => self
                .rng
                .pick(&[u32::MAX, 1 << 20, MAX_FILES, i32::MAX as u32]),
        }
    }

    /// Writes an iovec array into the iovec area; returns its address.
    fn iovecs(&mut self, count: u32) -> u64 {
        let n = (count as usize).min(1024);
        let bytes = n * std::mem::size_of::<IoVec>();
        if self.iov_next + bytes > IOV_AREA {
            self.iov_next = 0;
        }
        let at = self.iov_area + self.iov_next as u64;
        self.iov_next += bytes.next_multiple_of(64);
        for i in 0..n {
            let v = IoVec {
                base: match self.rng.below(100) {
                    0..=84 => self.scratch + self.rng.below(SCRATCH as u64),
                    _ => self.addr(),
                },
                len: match self.rng.below(100) {
                    0..=89 => self.rng.below(4097),
                    90..=94 => u64::MAX,
                    _ => self.rng.next() >> self.rng.below(64),
                },
            };
            // SAFETY: `at + i * 16` lies inside the iovec area (checked above), which
            // is ours; the kernel only reads it.
            unsafe { ((at as *mut IoVec).add(i)).write_unaligned(v) };
        }
        at
    }

    fn sqe(&mut self, user_data: u64) -> Sqe {
        let opcode = if self.rng.pct(12) {
            self.rng.next() as u8
        } else if self.rng.pct(5) {
            OP_ASYNC_CANCEL
        } else {
            self.rng.pick(&[
                OP_NOP, OP_NOP, OP_ACCEPT, OP_ACCEPT, OP_RECV, OP_RECV, OP_RECV, OP_RECV, OP_SEND,
                OP_SEND, OP_SEND, OP_READ, OP_READ, OP_READ, OP_WRITE, OP_WRITE, OP_WRITE,
                OP_WRITEV, OP_WRITEV, OP_CLOSE,
            ])
        };
        let mut s = Sqe {
            opcode,
            user_data,
            ..Sqe::ZERO
        };
        // Mostly well-formed for the opcode, sometimes anything goes.
        let sloppy = self.rng.pct(10);
        match opcode {
            OP_NOP => {}
            OP_ACCEPT => {
                s.slot = if self.rng.pct(60) { 0 } else { self.slot() };
                s.aux = if self.rng.pct(85) {
                    self.rng.below(MAX_FILES as u64) as u32
                } else {
                    self.rng.next() as u32
                };
                s.op_flags = self.rng.pick(&[0, 0, ACCEPT_NONBLOCK, 1 << 3]);
            }
            OP_RECV | OP_SEND => {
                s.slot = self.slot();
                s.addr = self.addr();
                s.len = self.len();
                let allowed = if opcode == OP_RECV {
                    RECV_FLAGS
                } else {
                    SEND_FLAGS
                };
                s.op_flags = match self.rng.below(100) {
                    0..=69 => 0,
                    70..=94 => self.rng.next() as u32 & allowed,
                    _ => self.rng.next() as u32,
                };
            }
            OP_READ | OP_WRITE => {
                s.slot = self.slot();
                s.addr = self.addr();
                s.len = self.len();
                s.off = self.off();
            }
            OP_WRITEV => {
                s.slot = self.slot();
                s.len = match self.rng.below(100) {
                    0..=74 => 1 + self.rng.below(8) as u32,
                    75..=79 => 1024,
                    80..=84 => 0,
                    85..=89 => 1025,
                    _ => self.rng.next() as u32,
                };
                s.addr = if self.rng.pct(85) {
                    self.iovecs(s.len)
                } else {
                    self.addr()
                };
                s.off = self.off();
            }
            OP_CLOSE => s.slot = self.rng.below(MAX_FILES as u64) as u32,
            // A recent request (maybe still parked), or garbage.
            OP_ASYNC_CANCEL => {
                s.addr = if self.rng.pct(80) {
                    user_data.saturating_sub(self.rng.below(32))
                } else {
                    self.rng.next()
                }
            }
            _ => {
                s.slot = self.slot();
                s.addr = self.addr();
                s.len = self.len();
            }
        }
        if sloppy {
            match self.rng.below(9) {
                0 => s.flags = 1 + self.rng.below(255) as u8,
                1 => s.ioprio = 1 + self.rng.below(65535) as u16,
                2 => s.resv0 = 1 + self.rng.below(u32::MAX as u64 - 1) as u32,
                3 => s.resv[0] = 1 + self.rng.below(u64::MAX - 1),
                4 => s.resv[1] = 1 + self.rng.below(u64::MAX - 1),
                5 => s.aux = self.rng.next() as u32,
                6 => s.op_flags = self.rng.next() as u32,
                7 => s.off = self.rng.next(),
                _ => s.slot = self.slot(),
            }
        }
        s
    }
}

fn fuzz_secs() -> u64 {
    std::env::var("FASTIO_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn slab() -> (u64, u64) {
    (
        common::meminfo_kib("Slab"),
        common::meminfo_kib("SUnreclaim"),
    )
}

/// Lets deferred frees (RCU, delayed fput, workqueues) run, drops caches, reads Slab.
fn settled_slab() -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(1500));
    common::drop_caches();
    std::thread::sleep(Duration::from_millis(500));
    slab()
}

#[test]
fn random_sqes_each_complete_once_and_leave_nothing_behind() {
    let test = "kmod_fuzz::random_sqes";
    if !common::have_module(test) || !common::have_root(test) {
        return;
    }
    let seed = std::env::var("FASTIO_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let secs = fuzz_secs();
    println!("kmod_fuzz: seed {seed} (FASTIO_FUZZ_SEED replays), {secs} s");
    let me = std::process::id();
    let (slab0, unrecl0) = settled_slab();

    let scratch = Fenced::new(SCRATCH);
    let iov = Fenced::new(IOV_AREA);
    let mut files = files();
    let mut ctx = RawContext::open();
    for (slot, fd) in &files.base {
        ctx.register(fd.as_raw_fd(), *slot)
            .unwrap_or_else(|e| panic!("register slot {slot}: errno {e}"));
    }
    let mut gen = Gen {
        rng: Rng(seed),
        scratch: scratch.base,
        guard: scratch.base + SCRATCH as u64,
        iov_area: iov.base,
        iov_next: 0,
    };
    let mut book = Ledger::new();
    let t0 = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_connect = Instant::now();
    let mut iteration = 0u64;
    let mut ioctl_calls = 0u64;
    let end = Duration::from_secs(secs);

    while t0.elapsed() < end {
        iteration += 1;
        // A batch of random SQEs on random lanes, within each lane's CQ size.
        for _ in 0..1 + gen.rng.below(16) {
            let lane = gen.rng.below(LANES as u64) as u32;
            book.push(&mut ctx, lane, |ud| gen.sqe(ud));
        }
        book.publish(&mut ctx);
        let got = book.reap(&mut ctx);
        if got > 0 {
            last_progress = Instant::now();
        } else if !book.outstanding.is_empty() {
            assert!(
                last_progress.elapsed() < STALL,
                "no completion for {STALL:?} with {} in flight: {:?}",
                book.outstanding.len(),
                book.outstanding.values().take(8).collect::<Vec<_>>()
            );
            if book.inflight.iter().all(|&n| n >= CQ_ENTRIES / 2) {
                let _ = ctx.enter(ENTER_GETEVENTS, 0, 1, Duration::from_millis(2));
            }
        }
        files.pump(&mut gen.rng);
        if last_connect.elapsed() > Duration::from_millis(100) {
            files.connect();
            last_connect = Instant::now();
        }
        if iteration.is_multiple_of(64) {
            for f in &files.regular {
                f.set_len(0).unwrap();
            }
        }
        if iteration.is_multiple_of(16) {
            // Refill base slots the fuzz CLOSEd (EBUSY: still or again in use).
            for (slot, fd) in &files.base {
                let _ = ctx.register(fd.as_raw_fd(), *slot);
            }
            // The slot ioctls, on random slots, while requests run.
            let slot = gen.rng.below(MAX_FILES as u64 + 2) as u32;
            if let Ok(fd) = ctx.slot_ioctl(FASTIO_INSTALL_FD, slot, 0) {
                // SAFETY: INSTALL_FD returned a new descriptor of ours.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if slot >= 11 && gen.rng.pct(30) {
                let _ = ctx.slot_ioctl(FASTIO_UNREGISTER_FILE, slot, 0);
            }
            let st = ctx.stats();
            assert!(st.pending <= book.outstanding.len() as u64, "{st:?}");
            ioctl_calls += 3;
        }
    }
    let fuzz_time = t0.elapsed();

    // Wind down: CLOSE every slot (cancels what waits), keep pumping until every SQE
    // has its CQE.
    let mut to_close: Vec<u32> = (0..MAX_FILES).collect();
    let t1 = Instant::now();
    while !book.outstanding.is_empty() || !to_close.is_empty() {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "{} requests never completed after CLOSE of every slot: {:?}",
            book.outstanding.len(),
            book.outstanding.values().take(8).collect::<Vec<_>>()
        );
        while let Some(&slot) = to_close.last() {
            let close = |user_data| Sqe {
                opcode: OP_CLOSE,
                slot,
                user_data,
                ..Sqe::ZERO
            };
            if !book.push(&mut ctx, slot % LANES, close) {
                break;
            }
            to_close.pop();
        }
        book.publish(&mut ctx);
        if book.reap(&mut ctx) == 0 {
            let _ = ctx.enter(ENTER_GETEVENTS, 0, 1, Duration::from_millis(10));
        }
        files.pump(&mut gen.rng);
    }
    let st = ctx.stats();
    println!(
        "kmod_fuzz: {} SQEs in {:.1} s ({:.0}/s), {} CQEs, {} slot ioctls; kernel stats {st:?}",
        book.submitted,
        fuzz_time.as_secs_f64(),
        book.submitted as f64 / fuzz_time.as_secs_f64(),
        book.completed,
        ioctl_calls
    );
    println!(
        "kmod_fuzz: per opcode (submitted, completed): {:?}",
        book.by_op
    );
    let results: Vec<String> = book
        .by_result
        .iter()
        .map(|(r, n)| match r {
            1 => format!(">0:{n}"),
            r => format!("{r}:{n}"),
        })
        .collect();
    println!("kmod_fuzz: results {}", results.join(" "));
    assert_eq!(book.submitted, book.completed, "every SQE gets one CQE");
    assert_eq!(st.pending, 0, "requests left pending in the kernel");
    assert!(book.submitted > 1000, "too few SQEs for a fuzz run");

    drop(ctx);
    let paths = files.paths.clone();
    drop(files);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    drop(scratch);
    drop(iov);
    common::wait_workers_gone(me, Duration::from_secs(10));
    let (slab1, unrecl1) = settled_slab();
    println!(
        "kmod_fuzz: Slab {slab0} KiB -> {slab1} KiB ({:+} KiB), SUnreclaim {unrecl0} KiB -> \
         {unrecl1} KiB ({:+} KiB)",
        slab1 as i64 - slab0 as i64,
        unrecl1 as i64 - unrecl0 as i64
    );
    assert!(
        slab1 <= slab0 + SLAB_TOLERANCE_KIB,
        "slab grew by {} KiB after the fuzz run (tolerance {SLAB_TOLERANCE_KIB} KiB)",
        slab1 - slab0
    );
}

/// Garbage in the shared ring memory itself (indices, flags, SQEs, CQ head), rewritten
/// over and over while the workers run and ENTER is called: the module must neither
/// crash nor hang, and the context must close cleanly. No file is registered, so the
/// garbage requests can only be refused, NOPs or CLOSEs of empty slots.
#[test]
fn garbage_ring_memory_is_survived() {
    let test = "kmod_fuzz::garbage_ring";
    if !common::have_module(test) {
        return;
    }
    let me = std::process::id();
    let ctx = RawContext::open();
    let g = Geometry::new(LANES, SQ_ENTRIES, CQ_ENTRIES).unwrap();
    let map = memmap2::MmapOptions::new()
        .len(g.mmap_size())
        .map_raw(&ctx.dev)
        .unwrap();
    let words = g.mmap_size() / 8;
    let mut rng = Rng(0x6a09_e667_f3bc_c909 ^ me as u64);
    let t0 = Instant::now();
    let mut rounds = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        rounds += 1;
        for _ in 0..256 {
            let i = rng.below(words as u64) as usize;
            // SAFETY: `i` < words: inside our mapping of the ring memory, which the
            // kernel treats as untrusted; volatile because the workers read it.
            unsafe {
                (map.as_mut_ptr() as *mut u64)
                    .add(i)
                    .write_volatile(rng.next())
            };
        }
        let lane = if rng.pct(50) {
            fastio::uapi::LANE_ALL
        } else {
            rng.below(LANES as u64) as u32
        };
        ctx.enter(ENTER_SQ_WAKEUP, lane, 0, Duration::ZERO)
            .expect("ENTER(SQ_WAKEUP)");
        let min = rng.below(300) as u32;
        match ctx.enter(ENTER_GETEVENTS, 0, min, Duration::from_micros(200)) {
            Ok(_) => {}
            Err(e) => assert_eq!(e, libc::ETIME, "GETEVENTS on garbage rings"),
        }
    }
    let st = ctx.stats();
    println!("garbage ring: {rounds} rounds of 256 random words; kernel stats {st:?}");
    drop(map);
    drop(ctx);
    common::wait_workers_gone(me, Duration::from_secs(10));
}

/// Deterministic replays of what the fuzz found in the module:
/// - a WRITEV of exactly one iovec (import_iovec's single-segment path writes it into
///   the caller's fast array, which the module passed as NULL: NULL-pointer oops);
/// - a READ at the file position (OFF_CURRENT) of a file without non-blocking reads
///   (tmpfs: done by a workqueue worker) whose buffer ends in an unmapped page: after
///   the short first pass the next offset was computed as OFF_CURRENT + done, an
///   arithmetic overflow (a Rust panic in the kernel). Now: the bytes that fit.
#[test]
fn fuzz_findings_stay_fixed() {
    let test = "kmod_fuzz::findings";
    if !common::have_module(test) {
        return;
    }
    let cfg = fastio::Config {
        backend: fastio::BackendKind::Kmod,
        max_ker_worker: 1,
        sq_entries: 8,
        cq_entries: 8,
        max_files: 4,
        ..fastio::Config::default()
    };
    let mut p = fastio::Proactor::new(&cfg).unwrap();
    let path = PathBuf::from(format!("/tmp/fastio-fuzz-findings-{}", std::process::id()));
    let file = common::rw_file(&path);
    let slot = p.register(&file).unwrap();

    p.writev(slot, vec![vec![7u8; 12 << 10]], Some(0), 1)
        .unwrap();
    assert_eq!(p.wait(1, Some(Duration::from_secs(30))).unwrap(), 1);
    let c = p.next_completion().unwrap();
    assert_eq!(c.result, 12 << 10, "WRITEV of one iovec");

    // The buffer: 8 KiB from the last mapped page of a fenced area into its guard.
    let area = Fenced::new(SCRATCH);
    let sqe = Sqe {
        opcode: OP_READ,
        slot: slot.index(),
        addr: area.base + SCRATCH as u64 - 4096,
        len: 8192,
        off: OFF_CURRENT,
        user_data: 2,
        ..Sqe::ZERO
    };
    // SAFETY: the address lies in `area`, which outlives the request (we wait for it).
    unsafe { p.submit_raw(0, sqe) }.unwrap();
    assert_eq!(p.wait(1, Some(Duration::from_secs(30))).unwrap(), 1);
    let c = p.next_completion().unwrap();
    assert_eq!(
        c.result, 4096,
        "READ at the file position into a buffer that ends in an unmapped page"
    );
    drop(p);
    drop(area);
    std::fs::remove_file(&path).unwrap();
}
