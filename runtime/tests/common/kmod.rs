//! Raw-ABI support for the kernel-module tests: `/dev/fastio` driven with plain system
//! calls over the `fastio_uapi` layout, no runtime in between.
//!
//! A [`Ctx`] opens the device, runs SETUP, maps the rings, pushes SQEs and reaps CQEs
//! lane by lane, wraps the ioctls, and with [`Ctx::start_threads`] gives the context its
//! workers the ABI 2 way: one thread per lane that calls `FASTIO_RUN_LANE` and one per
//! helper that calls `FASTIO_RUN_HELPER`, each named as the runtime names them
//! (`fastio-lane-N`, `fastio-help-N`), each calling again after `EINTR`. Dropping the
//! context sends `FASTIO_SHUTDOWN` and joins them.
//!
//! The same tests also run against the old (ABI 1) module, to show that a new test fails
//! there: [`abi_version`] asks the module once (`RUN_LANE` before SETUP: ABI 1 does not
//! know the command and says `ENOTTY`, ABI 2 says `EINVAL`); on ABI 1 [`params`] puts
//! version 1 into SETUP and [`Ctx::start_threads`] starts nothing (that module runs its
//! own kernel threads, `fastio-<pid>-<lane>`).
//!
//! Also here: the kernel log since a mark ([`kernel_log_mark`],
//! [`assert_kernel_log_clean_since`]), the module's sysfs numbers, per-thread CPU time and
//! state from /proc, SCM_RIGHTS, forked children with deadlines.
//!
//! Included by the kmod test programs next to `common`: `mod common;` and
//! `#[path = "common/kmod.rs"] mod kmod;`.

// Each test program uses a different subset.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastio::backend::DEVICE_PATH;
use fastio::uapi::{
    Cqe, EnterArgs, FilesUpdate, RingHeader, SetupParams, SlotArg, Sqe, Stats, ThreadArg,
    ENTER_GETEVENTS, ENTER_SQ_WAKEUP, FASTIO_ENTER, FASTIO_GET_STATS, FASTIO_INSTALL_FD,
    FASTIO_REGISTER_FILES, FASTIO_RUN_HELPER, FASTIO_RUN_LANE, FASTIO_SETUP, FASTIO_SHUTDOWN,
    FASTIO_UNREGISTER_FILE, OP_ACCEPT, OP_CLOSE, OP_NOP, OP_READ, OP_RECV, OP_SEND, OP_WRITE,
    SETUP_AFFINITY, SQ_NEED_WAKEUP,
};

/// How long [`Ctx`]'s drop waits for its threads to leave the kernel after SHUTDOWN.
const JOIN_LIMIT: Duration = Duration::from_secs(10);

/// The helpers a context gets when SETUP says 0 (the module default).
pub const DEFAULT_HELPERS: u32 = 2;

/// The calling thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// One ioctl; `Ok(result)` or `Err(errno)`.
///
/// # Safety
///
/// `T` must be the argument type `cmd` encodes; user addresses inside `*arg` must be
/// live for the call (or deliberately bad, which the kernel reports as `EFAULT`).
pub unsafe fn ioctl<T>(fd: RawFd, cmd: u32, arg: *mut T) -> Result<i32, i32> {
    // SAFETY: forwarded to the caller.
    let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `FASTIO_SETUP`; on success `p` holds the geometry the module returned.
pub fn setup(fd: RawFd, p: &mut SetupParams) -> Result<(), i32> {
    // SAFETY: SETUP reads and writes a SetupParams, which holds no addresses.
    unsafe { ioctl(fd, FASTIO_SETUP, p) }.map(drop)
}

/// `FASTIO_ENTER`.
pub fn enter(fd: RawFd, mut args: EnterArgs) -> Result<i32, i32> {
    // SAFETY: ENTER reads an EnterArgs, which holds no addresses.
    unsafe { ioctl(fd, FASTIO_ENTER, &mut args) }
}

/// `FASTIO_ENTER(GETEVENTS)` for `min` completions over all lanes, at most `timeout`.
pub fn getevents(fd: RawFd, min: u32, timeout: Duration) -> Result<i32, i32> {
    enter(
        fd,
        EnterArgs {
            flags: ENTER_GETEVENTS,
            min_complete: min,
            timeout_ns: timeout.as_nanos().min(u64::MAX as u128 - 1) as u64,
            ..EnterArgs::default()
        },
    )
}

/// `FASTIO_ENTER(SQ_WAKEUP)` of `lane` (or [`fastio::uapi::LANE_ALL`]).
pub fn wake(fd: RawFd, lane: u32) -> Result<i32, i32> {
    enter(
        fd,
        EnterArgs {
            flags: ENTER_SQ_WAKEUP,
            lane,
            ..EnterArgs::default()
        },
    )
}

/// `FASTIO_REGISTER_FILES` of `fds[i]` into `slots[i]`.
pub fn register(fd: RawFd, fds: &[RawFd], slots: &[u32]) -> Result<i32, i32> {
    assert_eq!(fds.len(), slots.len());
    let mut u = FilesUpdate {
        fds: fds.as_ptr() as u64,
        slots: slots.as_ptr() as u64,
        count: fds.len() as u32,
        resv: 0,
    };
    // SAFETY: both arrays live for the call; the kernel only reads them.
    unsafe { ioctl(fd, FASTIO_REGISTER_FILES, &mut u) }
}

/// `FASTIO_UNREGISTER_FILE` of `slot`.
pub fn unregister(fd: RawFd, slot: u32) -> Result<i32, i32> {
    slot_ioctl(fd, FASTIO_UNREGISTER_FILE, slot, 0)
}

/// A slot ioctl (`UNREGISTER_FILE`, `INSTALL_FD`) with explicit flags.
pub fn slot_ioctl(fd: RawFd, cmd: u32, slot: u32, flags: u32) -> Result<i32, i32> {
    // SAFETY: the slot ioctls read a SlotArg, which holds no addresses.
    unsafe { ioctl(fd, cmd, &mut SlotArg { slot, flags }) }
}

/// `FASTIO_INSTALL_FD` of `slot`: the new descriptor.
pub fn install(fd: RawFd, slot: u32, flags: u32) -> Result<OwnedFd, i32> {
    let new = slot_ioctl(fd, FASTIO_INSTALL_FD, slot, flags)?;
    // SAFETY: INSTALL_FD just installed this descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `FASTIO_GET_STATS`.
pub fn stats(fd: RawFd) -> Result<Stats, i32> {
    let mut s = Stats::default();
    // SAFETY: GET_STATS writes a Stats.
    unsafe { ioctl(fd, FASTIO_GET_STATS, &mut s) }?;
    Ok(s)
}

/// One `FASTIO_RUN_LANE` call (returns when the lane is shut down, on a signal, or at
/// once with an error).
pub fn run_lane(fd: RawFd, index: u32, flags: u32) -> Result<i32, i32> {
    // SAFETY: RUN_LANE reads a ThreadArg, which holds no addresses.
    unsafe { ioctl(fd, FASTIO_RUN_LANE, &mut ThreadArg { index, flags }) }
}

/// One `FASTIO_RUN_HELPER` call.
pub fn run_helper(fd: RawFd, index: u32, flags: u32) -> Result<i32, i32> {
    // SAFETY: RUN_HELPER reads a ThreadArg, which holds no addresses.
    unsafe { ioctl(fd, FASTIO_RUN_HELPER, &mut ThreadArg { index, flags }) }
}

/// `FASTIO_SHUTDOWN` (`_IO`: no argument).
pub fn shutdown(fd: RawFd) -> Result<i32, i32> {
    // SAFETY: SHUTDOWN reads no argument; 0 is passed.
    let r = unsafe { libc::ioctl(fd, FASTIO_SHUTDOWN as libc::c_ulong, 0usize) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// mmap of `len` bytes of a `/dev/fastio` descriptor at `offset`, shared and writable;
/// `Ok(address)` or `Err(errno)`.
pub fn map_device(fd: RawFd, len: usize, offset: i64) -> Result<*mut libc::c_void, i32> {
    // SAFETY: a fresh shared mapping at an address the kernel picks; nothing else is
    // affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p)
    }
}

/// Opens `/dev/fastio` read-write.
pub fn open_device() -> File {
    try_open_device().unwrap_or_else(|e| panic!("{DEVICE_PATH}: {e}"))
}

/// Opens `/dev/fastio` read-write, or the error.
pub fn try_open_device() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(DEVICE_PATH)
}

/// The ABI the loaded module speaks: this build's [`ABI_VERSION`] (2 and later: lane
/// threads of the process), or 1 for the old module (kernel threads). Asked once per
/// process: `RUN_LANE` on a fresh descriptor before SETUP is `EINVAL` since ABI 2 and
/// an unknown command (`ENOTTY`) on ABI 1.
///
/// [`ABI_VERSION`]: fastio::uapi::ABI_VERSION
pub fn abi_version() -> u32 {
    static VERSION: OnceLock<u32> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let dev = open_device();
        let v = match run_lane(dev.as_raw_fd(), 0, 0) {
            Err(libc::ENOTTY) => 1,
            Err(libc::EINVAL) => fastio::uapi::ABI_VERSION,
            other => panic!(
                "RUN_LANE before SETUP gave {other:?}: neither ABI 1 (ENOTTY) nor ABI 2 (EINVAL)"
            ),
        };
        if v == 1 {
            println!("kmod: the loaded module speaks ABI 1 (kernel threads; no RUN_LANE)");
        }
        v
    })
}

/// Whether the loaded module is the old one (ABI 1).
pub fn is_v1() -> bool {
    abi_version() == 1
}

/// SETUP parameters for the loaded module's ABI: `workers` lanes of `sq`/`cq` entries,
/// 8 file slots, idle 5 ms, default helpers.
pub fn params(workers: u32, sq: u32, cq: u32) -> SetupParams {
    SetupParams {
        abi_version: abi_version(),
        workers,
        sq_entries: sq,
        cq_entries: cq,
        idle_ms: 5,
        max_files: 8,
        ..SetupParams::default()
    }
}

/// An SQE of `opcode` with `user_data` (everything else zero).
pub fn sqe(opcode: u8, user_data: u64) -> Sqe {
    Sqe {
        opcode,
        user_data,
        ..Sqe::ZERO
    }
}

/// `NOP`.
pub fn nop(user_data: u64) -> Sqe {
    sqe(OP_NOP, user_data)
}

/// `RECV` of up to `len` bytes into `addr` from the socket in `slot`.
pub fn recv(slot: u32, addr: *mut u8, len: u32, user_data: u64) -> Sqe {
    Sqe {
        slot,
        addr: addr as u64,
        len,
        ..sqe(OP_RECV, user_data)
    }
}

/// `SEND` of `len` bytes from `addr` on the socket in `slot`.
pub fn send(slot: u32, addr: *const u8, len: u32, user_data: u64) -> Sqe {
    Sqe {
        slot,
        addr: addr as u64,
        len,
        ..sqe(OP_SEND, user_data)
    }
}

/// `READ` of up to `len` bytes at `off` into `addr`.
pub fn read(slot: u32, addr: *mut u8, len: u32, off: u64, user_data: u64) -> Sqe {
    Sqe {
        slot,
        addr: addr as u64,
        len,
        off,
        ..sqe(OP_READ, user_data)
    }
}

/// `WRITE` of `len` bytes from `addr` at `off`.
pub fn write(slot: u32, addr: *const u8, len: u32, off: u64, user_data: u64) -> Sqe {
    Sqe {
        slot,
        addr: addr as u64,
        len,
        off,
        ..sqe(OP_WRITE, user_data)
    }
}

/// `ACCEPT` on the listener in `slot` into `dest`.
pub fn accept(slot: u32, dest: u32, user_data: u64) -> Sqe {
    Sqe {
        slot,
        aux: dest,
        ..sqe(OP_ACCEPT, user_data)
    }
}

/// `CLOSE` of `slot`.
pub fn close(slot: u32, user_data: u64) -> Sqe {
    Sqe {
        slot,
        ..sqe(OP_CLOSE, user_data)
    }
}

/// The userspace view of one lane's rings.
struct LaneRing {
    sq: *const RingHeader,
    sqes: *mut Sqe,
    cq: *const RingHeader,
    cqes: *const Cqe,
    sq_entries: u32,
    cq_entries: u32,
    /// Our SQ tail: staged entries lie between the published tail and it.
    sq_tail: u32,
    /// Our CQ head.
    cq_head: u32,
}

impl LaneRing {
    fn sq(&self) -> &RingHeader {
        // SAFETY: the header lies inside the context's mapping, which outlives the
        // lane; only its atomic words are used.
        unsafe { &*self.sq }
    }

    fn cq(&self) -> &RingHeader {
        // SAFETY: as in `sq`.
        unsafe { &*self.cq }
    }
}

/// A thread serving a lane or a helper slot of a context.
struct Worker {
    name: String,
    handle: JoinHandle<Result<(), i32>>,
}

/// A context driven through the raw ABI: the device, its rings, and (ABI 2) the lane and
/// helper threads started by [`Ctx::start_threads`].
pub struct Ctx {
    /// The parameters SETUP returned.
    pub p: SetupParams,
    lanes: Vec<LaneRing>,
    map: *mut libc::c_void,
    map_len: usize,
    workers: Vec<Worker>,
    /// (thread name, tid) of each started thread, recorded by the thread itself.
    tids: Arc<Mutex<Vec<(String, i32)>>>,
    /// How often a `RUN_*` call of these threads returned EINTR (and was called again).
    eintr: Arc<AtomicU64>,
    /// CQEs reaped but not handed out yet (see [`Ctx::wait_for`]).
    backlog: VecDeque<Cqe>,
    /// Set when a thread did not leave the kernel after SHUTDOWN: the descriptor and the
    /// mapping are leaked instead of pulled from under it.
    leak: bool,
    dev: Option<File>,
}

// SAFETY: the raw pointers lead into `map`, which the context owns; nothing else in it
// is tied to a thread.
unsafe impl Send for Ctx {}

impl Ctx {
    /// Opens the device, runs SETUP with `p` and maps the rings; starts no thread.
    pub fn new(mut p: SetupParams) -> Result<Ctx, i32> {
        let dev = try_open_device().map_err(|e| e.raw_os_error().unwrap_or(0))?;
        setup(dev.as_raw_fd(), &mut p)?;
        let map_len = p.mmap_size as usize;
        let map = map_device(dev.as_raw_fd(), map_len, 0)?;
        let lanes = (0..p.workers as usize)
            .map(|i| {
                let base = map as usize + i * p.lane_size as usize;
                LaneRing {
                    sq: (base + p.sq_off as usize) as *const RingHeader,
                    sqes: (base + p.sqes_off as usize) as *mut Sqe,
                    cq: (base + p.cq_off as usize) as *const RingHeader,
                    cqes: (base + p.cqes_off as usize) as *const Cqe,
                    sq_entries: p.sq_entries,
                    cq_entries: p.cq_entries,
                    sq_tail: 0,
                    cq_head: 0,
                }
            })
            .collect();
        Ok(Ctx {
            p,
            lanes,
            map,
            map_len,
            workers: Vec::new(),
            tids: Arc::new(Mutex::new(Vec::new())),
            eintr: Arc::new(AtomicU64::new(0)),
            backlog: VecDeque::new(),
            leak: false,
            dev: Some(dev),
        })
    }

    /// [`Ctx::new`] with its threads started; panics on failure.
    pub fn started(p: SetupParams) -> Ctx {
        let mut ctx = Ctx::new(p).unwrap_or_else(|e| panic!("SETUP + mmap: errno {e}"));
        ctx.start_threads();
        ctx
    }

    /// The context's descriptor.
    pub fn fd(&self) -> RawFd {
        self.dev.as_ref().expect("context closed").as_raw_fd()
    }

    /// The device file (e.g. to map it again).
    pub fn file(&self) -> &File {
        self.dev.as_ref().expect("context closed")
    }

    /// The ring mapping: (address, length).
    pub fn mapping(&self) -> (*mut u8, usize) {
        (self.map.cast(), self.map_len)
    }

    /// Helper slots the context has (SETUP's 0 means the module default).
    pub fn helpers(&self) -> u32 {
        if self.p.helpers == 0 {
            DEFAULT_HELPERS
        } else {
            self.p.helpers
        }
    }

    /// Starts one `RUN_LANE` thread per lane and one `RUN_HELPER` thread per helper
    /// slot (ABI 2); nothing on ABI 1, whose module starts kernel threads at SETUP.
    pub fn start_threads(&mut self) {
        if is_v1() {
            return;
        }
        for i in 0..self.p.workers {
            self.start_lane(i);
        }
        for i in 0..self.helpers() {
            self.start_helper(i);
        }
    }

    /// Starts the thread of lane `i` (`fastio-lane-i`; pinned as SETUP_AFFINITY asks).
    pub fn start_lane(&mut self, i: u32) {
        let cpu = (self.p.flags & SETUP_AFFINITY != 0)
            .then(|| (self.p.affinity_offset as u64 + i as u64) as usize);
        self.spawn(format!("fastio-lane-{i}"), FASTIO_RUN_LANE, i, cpu);
    }

    /// Starts the thread of helper `i` (`fastio-help-i`).
    pub fn start_helper(&mut self, i: u32) {
        self.spawn(format!("fastio-help-{i}"), FASTIO_RUN_HELPER, i, None);
    }

    fn spawn(&mut self, name: String, cmd: u32, index: u32, cpu: Option<usize>) {
        let fd = self.fd();
        let tids = self.tids.clone();
        let eintr = self.eintr.clone();
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                tids.lock().unwrap().push((thread_name, tid));
                if let Some(n) = cpu {
                    pin_to_nth_allowed_cpu(n);
                }
                serve(fd, cmd, index, &eintr)
            })
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.workers.push(Worker { name, handle });
    }

    /// How often a `RUN_*` call of the context's threads returned EINTR.
    pub fn eintr_count(&self) -> u64 {
        self.eintr.load(Ordering::Relaxed)
    }

    /// (name, tid) of every started thread that has begun to run.
    pub fn thread_tids(&self) -> Vec<(String, i32)> {
        self.tids.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until every started thread has recorded its tid.
    pub fn wait_threads_running(&self, limit: Duration) {
        let n = self.workers.len();
        crate::common::wait_until("the lane and helper threads running", limit, || {
            self.tids.lock().unwrap().len() == n
        });
    }

    /// SHUTDOWN (ABI 2), then joins the threads: each one's name and what its last
    /// `RUN_*` call returned (`Ok` for 0 or ESHUTDOWN, else `Err(errno)`). A thread
    /// still in the kernel after [`JOIN_LIMIT`] is reported as `Err(-1)` and left behind
    /// (the context is then leaked rather than closed under it).
    pub fn shutdown_and_join(&mut self) -> Vec<(String, Result<(), i32>)> {
        if self.workers.is_empty() {
            return Vec::new();
        }
        if !is_v1() {
            if let Err(e) = shutdown(self.fd()) {
                eprintln!("kmod: SHUTDOWN: errno {e}");
            }
        }
        let t0 = Instant::now();
        while t0.elapsed() < JOIN_LIMIT && !self.workers.iter().all(|w| w.handle.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut out = Vec::new();
        for w in self.workers.drain(..) {
            if w.handle.is_finished() {
                let r = w.handle.join().unwrap_or(Err(-2));
                out.push((w.name, r));
            } else {
                eprintln!(
                    "kmod: {} still in the kernel {JOIN_LIMIT:?} after SHUTDOWN: leaking the context",
                    w.name
                );
                self.leak = true;
                out.push((w.name, Err(-1)));
                std::mem::forget(w.handle);
            }
        }
        out
    }

    /// Stages `sqe` on `lane`; false when the SQ is full. No in-flight limit is applied:
    /// keeping in-flight requests within the CQ size is the caller's business.
    pub fn push(&mut self, lane: u32, sqe: &Sqe) -> bool {
        let l = &mut self.lanes[lane as usize];
        let head = l.sq().head.value.load(Ordering::Acquire);
        if l.sq_tail.wrapping_sub(head) >= l.sq_entries {
            return false;
        }
        let idx = (l.sq_tail & (l.sq_entries - 1)) as usize;
        // SAFETY: idx < sq_entries, inside the SQE array of the mapping; the entry is
        // not visible to the worker until the tail is published.
        unsafe { l.sqes.add(idx).write_volatile(*sqe) };
        l.sq_tail = l.sq_tail.wrapping_add(1);
        true
    }

    /// Publishes what is staged on `lane`; wakes the lane's worker (ENTER SQ_WAKEUP)
    /// when it sleeps. Returns whether it did.
    pub fn publish(&mut self, lane: u32) -> bool {
        let l = &self.lanes[lane as usize];
        l.sq().tail.value.store(l.sq_tail, Ordering::Release);
        // Pairs with the worker's fence between NEED_WAKEUP and its re-read of the tail.
        fence(Ordering::SeqCst);
        let asleep = l.sq().flags.value.load(Ordering::Relaxed) & SQ_NEED_WAKEUP != 0;
        if asleep {
            wake(self.fd(), lane).expect("ENTER(SQ_WAKEUP)");
        }
        asleep
    }

    /// Stages and publishes one SQE; panics when the SQ is full.
    pub fn submit(&mut self, lane: u32, sqe: Sqe) {
        assert!(self.push(lane, &sqe), "SQ of lane {lane} full");
        self.publish(lane);
    }

    /// The SQ flags word of `lane`.
    pub fn sq_flags(&self, lane: u32) -> u32 {
        self.lanes[lane as usize]
            .sq()
            .flags
            .value
            .load(Ordering::Acquire)
    }

    /// The SQ head of `lane` (how far the worker has consumed).
    pub fn sq_head(&self, lane: u32) -> u32 {
        self.lanes[lane as usize]
            .sq()
            .head
            .value
            .load(Ordering::Acquire)
    }

    /// The CQ tail of `lane` (how many completions the worker has posted, ever).
    pub fn cq_tail(&self, lane: u32) -> u32 {
        self.lanes[lane as usize]
            .cq()
            .tail
            .value
            .load(Ordering::Acquire)
    }

    /// Takes every CQE waiting on `lane`.
    pub fn reap(&mut self, lane: u32) -> Vec<Cqe> {
        let l = &mut self.lanes[lane as usize];
        let tail = l.cq().tail.value.load(Ordering::Acquire);
        let n = tail.wrapping_sub(l.cq_head).min(l.cq_entries);
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let idx = (l.cq_head & (l.cq_entries - 1)) as usize;
            // SAFETY: idx < cq_entries, inside the CQE array; the entries up to the
            // acquired tail were written before the worker's release of the tail.
            out.push(unsafe { l.cqes.add(idx).read_volatile() });
            l.cq_head = l.cq_head.wrapping_add(1);
        }
        if n != 0 {
            l.cq().head.value.store(l.cq_head, Ordering::Release);
        }
        out
    }

    /// Takes every CQE waiting on every lane (after the backlog).
    pub fn reap_all(&mut self) -> Vec<Cqe> {
        let mut out: Vec<Cqe> = self.backlog.drain(..).collect();
        for lane in 0..self.lanes.len() as u32 {
            out.extend(self.reap(lane));
        }
        out
    }

    /// Collects CQEs until `n` have come or `limit` has passed (sleeping in
    /// ENTER(GETEVENTS) in between, which also wakes workers stopped on a full CQ);
    /// returns what came.
    pub fn wait(&mut self, n: usize, limit: Duration) -> Vec<Cqe> {
        let t0 = Instant::now();
        let mut got = self.reap_all();
        while got.len() < n && t0.elapsed() < limit {
            let slice = (limit - t0.elapsed()).min(Duration::from_millis(50));
            match getevents(self.fd(), 1, slice) {
                Ok(_) | Err(libc::ETIME) | Err(libc::EINTR) => {}
                Err(e) => panic!("ENTER(GETEVENTS): errno {e}"),
            }
            got.extend(self.reap_all());
        }
        got
    }

    /// Waits (at most `limit`) for the CQE of `user_data`; other CQEs stay for later.
    pub fn wait_for(&mut self, user_data: u64, limit: Duration) -> Option<Cqe> {
        let t0 = Instant::now();
        loop {
            let got = self.reap_all();
            let mut found = None;
            for c in got {
                if found.is_none() && c.user_data == user_data {
                    found = Some(c);
                } else {
                    self.backlog.push_back(c);
                }
            }
            if found.is_some() || t0.elapsed() >= limit {
                return found;
            }
            let slice = (limit - t0.elapsed()).min(Duration::from_millis(50));
            match getevents(self.fd(), 1, slice) {
                Ok(_) | Err(libc::ETIME) | Err(libc::EINTR) => {}
                Err(e) => panic!("ENTER(GETEVENTS): errno {e}"),
            }
        }
    }

    /// Submits `sqe` on `lane` and waits (at most `limit`) for its completion's result.
    pub fn call(&mut self, lane: u32, sqe: Sqe, limit: Duration) -> Option<i32> {
        let ud = sqe.user_data;
        self.submit(lane, sqe);
        self.wait_for(ud, limit).map(|c| c.res)
    }

    /// `FASTIO_REGISTER_FILES` of one descriptor into `slot`.
    pub fn register(&self, fd: RawFd, slot: u32) -> Result<i32, i32> {
        register(self.fd(), &[fd], &[slot])
    }

    /// `FASTIO_UNREGISTER_FILE` of `slot`.
    pub fn unregister(&self, slot: u32) -> Result<i32, i32> {
        unregister(self.fd(), slot)
    }

    /// `FASTIO_INSTALL_FD` of `slot` (close-on-exec).
    pub fn install(&self, slot: u32) -> Result<OwnedFd, i32> {
        install(self.fd(), slot, fastio::uapi::INSTALL_CLOEXEC)
    }

    /// `FASTIO_GET_STATS`; panics on failure.
    pub fn stats(&self) -> Stats {
        stats(self.fd()).expect("GET_STATS")
    }

    /// `FASTIO_ENTER` with the given arguments.
    pub fn enter(&self, args: EnterArgs) -> Result<i32, i32> {
        enter(self.fd(), args)
    }

    /// Waits (at most `limit`) until `cond(stats)` holds; false if it never did.
    pub fn wait_stats(&self, limit: Duration, mut cond: impl FnMut(&Stats) -> bool) -> bool {
        let t0 = Instant::now();
        loop {
            if cond(&self.stats()) {
                return true;
            }
            if t0.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Unmaps the rings (the context lives on while its descriptor is open); the ring
    /// methods must not be used afterwards.
    pub fn unmap(&mut self) {
        if !self.map.is_null() {
            // SAFETY: our mapping of map_len bytes; the caller uses the rings no more.
            unsafe { libc::munmap(self.map, self.map_len) };
            self.map = std::ptr::null_mut();
            self.lanes.clear();
        }
    }

    /// Closes the descriptor (the context lives on while the rings are mapped). Call
    /// after [`Ctx::shutdown_and_join`] on ABI 2: the threads use the descriptor.
    pub fn close_fd(&mut self) {
        assert!(self.workers.is_empty(), "close_fd with threads running");
        self.dev = None;
    }

    /// Closes the context: shuts the threads down, unmaps, closes the descriptor.
    pub fn close(mut self) {
        self.release();
    }

    fn release(&mut self) {
        self.shutdown_and_join();
        if self.leak {
            std::mem::forget(self.dev.take());
            return;
        }
        self.unmap();
        self.dev = None;
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.release();
    }
}

/// The body of a lane or helper thread: `RUN_*` again after every `EINTR`, until it
/// returns 0 or ESHUTDOWN (both mean: the context was shut down) or another error.
fn serve(fd: RawFd, cmd: u32, index: u32, eintr: &AtomicU64) -> Result<(), i32> {
    loop {
        // SAFETY: RUN_LANE and RUN_HELPER read a ThreadArg, which holds no addresses.
        match unsafe { ioctl(fd, cmd, &mut ThreadArg { index, flags: 0 }) } {
            // ESHUTDOWN: SHUTDOWN came before this thread got in; its work is over too.
            Ok(_) | Err(libc::ESHUTDOWN) => return Ok(()),
            Err(libc::EINTR) => {
                eintr.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Pins the calling thread to the `n % count`-th CPU it may run on (what the runtime
/// does for SETUP_AFFINITY).
fn pin_to_nth_allowed_cpu(n: usize) {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return;
    }
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if allowed.is_empty() {
        return;
    }
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the CPU number is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(allowed[n % allowed.len()], &mut one) };
    // SAFETY: sets this thread's own affinity.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&one), &one) };
}

// ---------------------------------------------------------------------------------------
// The kernel log
// ---------------------------------------------------------------------------------------

/// Kernel log lines that mean the kernel found a bug (its own or the module's).
pub const KERNEL_LOG_BAD: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "panicked",
    "refcount_t",
    "list_del corruption",
    "list_add corruption",
    "kernel BUG",
    "general protection",
    "Poison overwritten",
    "Redzone overwritten",
    "Object already free",
    "ODEBUG:",
    "UBSAN:",
    "soft lockup",
    "blocked for more than",
];

/// A place in the kernel log: [`assert_kernel_log_clean_since`] reads what came after.
pub struct KmsgMark {
    /// /dev/kmsg opened at its end (None where it cannot be read).
    kmsg: Option<File>,
    test: String,
}

/// Marks the kernel log before `test` does something (and writes a line saying so into
/// it, where allowed).
pub fn kernel_log_mark(test: &str) -> KmsgMark {
    let kmsg = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/kmsg");
    let kmsg = match kmsg {
        Ok(f) => {
            // SAFETY: lseek on our descriptor; SEEK_END on /dev/kmsg skips the records
            // logged so far.
            unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
            Some(f)
        }
        Err(e) => {
            println!("kmod: /dev/kmsg cannot be read ({e}): {test} does not check the kernel log");
            None
        }
    };
    if let Ok(mut w) = OpenOptions::new().write(true).open("/dev/kmsg") {
        use std::io::Write;
        // One write is one record.
        let _ = w.write_all(format!("<6>fastio-test: {test}\n").as_bytes());
    }
    KmsgMark {
        kmsg,
        test: test.to_string(),
    }
}

/// The kernel log records since `mark` (the message text of each).
pub fn kernel_log_since(mark: &KmsgMark) -> Vec<String> {
    let Some(mut f) = mark.kmsg.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let first = rec.lines().next().unwrap_or("");
                let text = first.split_once(';').map_or(first, |(_, t)| t);
                out.push(text.to_string());
            }
            // Records overwritten before we read them: carry on with the next ones.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read /dev/kmsg: {e}"),
        }
    }
    out
}

/// Fails if the kernel logged a warning, a BUG, an oops, a Rust panic, a refcount or
/// list corruption... since `mark`; prints the offending lines and what surrounds them.
pub fn assert_kernel_log_clean_since(mark: &KmsgMark) {
    let lines = kernel_log_since(mark);
    let bad: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| KERNEL_LOG_BAD.iter().any(|p| l.contains(p)))
        .map(|(i, _)| i)
        .collect();
    if let Some(&first) = bad.first() {
        let ctx: Vec<&str> = lines[first.saturating_sub(3)..(first + 12).min(lines.len())]
            .iter()
            .map(String::as_str)
            .collect();
        panic!(
            "{}: the kernel log reports {} problem line(s) since the test began:\n  {}",
            mark.test,
            bad.len(),
            ctx.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------------------
// The module and the threads, as /sys and /proc show them
// ---------------------------------------------------------------------------------------

/// A parameter of the loaded module (`/sys/module/fastio/parameters/NAME`).
pub fn module_param(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/module/fastio/parameters/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The module's reference count (`/sys/module/fastio/refcnt`): one per open device.
pub fn module_refcnt() -> Option<i64> {
    std::fs::read_to_string("/sys/module/fastio/refcnt")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-1` → 2).
pub fn possible_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let last = text
        .trim()
        .rsplit([',', '-'])
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .expect("/sys/devices/system/cpu/possible");
    last + 1
}

/// The fields of a /proc `stat` file after the command name (field 3, the state, first).
fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime (clock ticks) of the task whose /proc directory is `dir`.
pub fn cpu_ticks(dir: &Path) -> Option<u64> {
    let f = stat_fields(&dir.join("stat"))?;
    // Fields 14 and 15 of stat; `f[0]` is field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The state letter (R, S, D, Z...) of the task whose /proc directory is `dir`.
pub fn task_state(dir: &Path) -> Option<char> {
    stat_fields(&dir.join("stat"))?.first()?.chars().next()
}

/// The state letter of process `pid`.
pub fn proc_state(pid: i32) -> Option<char> {
    task_state(Path::new(&format!("/proc/{pid}")))
}

/// The threads of process `pid` whose name starts with `prefix`: (name, /proc dir).
pub fn threads_named(pid: u32, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            out.push((comm.trim().to_string(), e.path()));
        }
    }
    out.sort();
    out
}

/// The /proc directory of the task that serves lane `lane` of a context of process
/// `pid`: its `fastio-lane-N` thread (ABI 2), or the module's kernel thread
/// `fastio-<pid>-<lane>` (ABI 1).
pub fn lane_worker_dir(pid: u32, lane: u32) -> Option<PathBuf> {
    let v2 = format!("fastio-lane-{lane}");
    if let Some((_, dir)) = threads_named(pid, &v2).into_iter().find(|(n, _)| *n == v2) {
        return Some(dir);
    }
    let v1 = format!("fastio-{pid}-{lane}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == v1).then(|| e.path())
    })
}

// ---------------------------------------------------------------------------------------
// Processes and descriptors
// ---------------------------------------------------------------------------------------

/// Forks; the child runs `f` and `_exit`s with what it returns (101 if it panicked).
/// Returns the child's pid.
///
/// The child of a multithreaded test process may only rely on what fork keeps: keep `f`
/// to system calls and simple Rust (no locks another thread may hold, e.g. stdout's).
pub fn fork_fn(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: fork; the child only runs `f` and `_exit`s, never returning into the test
    // harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// The parent's end of a child forked by [`fork_reporting`]: its pid, the pipe it reports
/// on, and the pipe that tells it to go on. Dropping it kills the child (SIGKILL) and
/// reaps it, if that has not happened yet.
pub struct Forked {
    /// The child's pid.
    pub pid: i32,
    report: File,
    go: Option<File>,
    pending: Vec<u8>,
    status: Option<i32>,
}

/// The child's ends: `report` (lines for the parent) and `go` (see [`ChildIo::wait_go`]).
pub struct ChildIo {
    /// Write lines here for [`Forked::line`].
    pub report: File,
    go: File,
}

impl ChildIo {
    /// Writes one report line.
    pub fn say(&mut self, line: &str) {
        use std::io::Write;
        let _ = self.report.write_all(format!("{line}\n").as_bytes());
    }

    /// Blocks until the parent calls [`Forked::go`] (or is gone).
    pub fn wait_go(&mut self) {
        let mut b = [0u8; 1];
        let _ = self.go.read(&mut b);
    }
}

/// A pipe (read end, write end), close-on-exec.
pub fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we own from here on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: as above.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Forks a child that runs `f` with its [`ChildIo`] and `_exit`s with what `f` returns
/// (101 if it panicked). Same caveats as [`fork_fn`].
pub fn fork_reporting(f: impl FnOnce(&mut ChildIo) -> i32) -> Forked {
    let (report_rd, report_wr) = pipe();
    let (go_rd, go_wr) = pipe();
    let parent_ends = [report_rd.as_raw_fd(), go_wr.as_raw_fd()];
    let mut io = Some(ChildIo {
        report: report_wr,
        go: go_rd,
    });
    let pid = fork_fn(|| {
        // The child's copies of the parent's ends: closed, so that EOF comes through.
        for fd in parent_ends {
            // SAFETY: descriptors this (forked) process owns and never uses.
            unsafe { libc::close(fd) };
        }
        let mut io = io.take().unwrap();
        f(&mut io)
    });
    // The child's ends are the child's.
    drop(io);
    Forked {
        pid,
        report: report_rd,
        go: Some(go_wr),
        pending: Vec::new(),
        status: None,
    }
}

impl Forked {
    /// The child's next report line, waiting at most `limit`; None when it closed its
    /// end (exited) or said nothing in time.
    pub fn line(&mut self, limit: Duration) -> Option<String> {
        let t0 = Instant::now();
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            let left = limit.saturating_sub(t0.elapsed());
            let mut pfd = libc::pollfd {
                fd: self.report.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one live pollfd (a zero timeout just looks).
            let r =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if r <= 0 {
                if left.is_zero() {
                    return None;
                }
                continue;
            }
            let mut buf = [0u8; 4096];
            match self.report.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the child's report: {e}"),
            }
        }
    }

    /// The value of the child's next report line `KEY=value` (other lines are skipped),
    /// waiting at most `limit` in all.
    pub fn value(&mut self, key: &str, limit: Duration) -> Option<String> {
        let t0 = Instant::now();
        let tag = format!("{key}=");
        while let Some(l) = self.line(limit.saturating_sub(t0.elapsed())) {
            if let Some(v) = l.strip_prefix(&tag) {
                return Some(v.to_string());
            }
        }
        None
    }

    /// Lets the child past [`ChildIo::wait_go`].
    pub fn go(&mut self) {
        self.go = None;
    }

    /// Waits at most `limit` for the child to end; its wait status.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        if self.status.is_none() {
            self.status = wait_child(self.pid, limit);
        }
        self.status
    }

    /// Waits at most `limit` for the child to end; its exit code (panics if it was
    /// killed by a signal, naming `what`).
    pub fn exit_code(&mut self, what: &str, limit: Duration) -> Option<i32> {
        let status = self.wait(limit)?;
        assert!(
            libc::WIFEXITED(status),
            "{what}: the child was killed (status {status:#x})"
        );
        Some(libc::WEXITSTATUS(status))
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if self.status.is_none() {
            kill(self.pid, libc::SIGKILL);
            if wait_child(self.pid, Duration::from_secs(10)).is_none() {
                eprintln!("kmod: child {} not reaped 10 s after SIGKILL", self.pid);
            }
        }
    }
}

/// Waits at most `limit` for child `pid`; its wait status, or None if it is still
/// running.
pub fn wait_child(pid: i32, limit: Duration) -> Option<i32> {
    let t0 = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        assert!(r == 0, "waitpid({pid}): {}", io::Error::last_os_error());
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Drops to uid/gid 65534 (`nobody`) for the whole process (glibc applies it to every
/// thread): the supplementary groups, then the gid, then the uid.
pub fn become_nobody() {
    const NOBODY: u32 = 65534;
    // SAFETY: plain credential system calls.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setresgid(NOBODY, NOBODY, NOBODY), 0, "setresgid");
        assert_eq!(libc::setresuid(NOBODY, NOBODY, NOBODY), 0, "setresuid");
    }
}

/// Sets both limits of resource `res`.
pub fn set_rlimit(res: libc::__rlimit_resource_t, value: u64) {
    let r = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads a live rlimit.
    assert_eq!(unsafe { libc::setrlimit(res, &r) }, 0, "setrlimit({res})");
}

/// Blocks `sig` in the calling thread (threads started later inherit the mask).
pub fn block_signal(sig: i32) {
    // SAFETY: sigset_t is plain data filled by sigemptyset/sigaddset; pthread_sigmask
    // changes only this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
}

/// A signalfd for `sig` (which the caller blocks).
pub fn signalfd(sig: i32) -> OwnedFd {
    // SAFETY: as in `block_signal`; signalfd returns a new descriptor we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        assert!(fd >= 0, "signalfd: {}", io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    }
}

/// Creates the named pipe `path` with `mode` (replacing whatever was there).
pub fn mkfifo(path: &Path, mode: u32) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), mode) },
        0,
        "mkfifo {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
    // mkfifo's mode is filtered by the umask.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// A one-byte message with room for one control message: `iov` and `space` are the
/// byte and the control buffer it points to, which must outlive its use.
fn one_byte_msg(byte: &mut [u8; 1], iov: &mut libc::iovec, space: &mut [u64; 8]) -> libc::msghdr {
    iov.iov_base = byte.as_mut_ptr().cast();
    iov.iov_len = 1;
    // SAFETY: msghdr is plain data; zero is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(space);
    msg
}

/// Receives one descriptor by SCM_RIGHTS on `sock`.
pub fn recv_fd(sock: &UnixStream) -> OwnedFd {
    let (mut byte, mut space) = ([0u8; 1], [0u64; 8]);
    // SAFETY: iovec is plain data; one_byte_msg fills it.
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    let mut msg = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: `msg` points to live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert_eq!(n, 1, "recvmsg: {}", io::Error::last_os_error());
    // SAFETY: recvmsg filled the control buffer; CMSG_FIRSTHDR stays inside it.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    assert!(!cmsg.is_null(), "no control message");
    // SAFETY: `cmsg` points to a header inside `space`, checked non-null above.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    assert_eq!((level, kind), (libc::SOL_SOCKET, libc::SCM_RIGHTS));
    // SAFETY: an SCM_RIGHTS message carries ints; the first is the descriptor, which
    // now belongs to this process.
    unsafe { OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast())) }
}

/// Sends `fd` by SCM_RIGHTS on `sock`; `Err(errno)` if sendmsg fails.
pub fn send_fd(sock: &UnixStream, fd: RawFd) -> Result<(), i32> {
    let (mut byte, mut space) = ([0u8; 1], [0u64; 8]);
    // SAFETY: iovec is plain data; one_byte_msg fills it.
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    let mut msg = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as _;
    // SAFETY: the control buffer is large enough for one header with one int (checked
    // against `space` first); every pointer stays inside it.
    unsafe {
        assert!(msg.msg_controllen <= std::mem::size_of::<[u64; 8]>());
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), fd);
    }
    // SAFETY: `msg` points to live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n == 1 {
        Ok(())
    } else {
        Err(errno())
    }
}
