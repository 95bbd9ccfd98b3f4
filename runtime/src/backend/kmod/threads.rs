//! The lane and helper threads of a `kmod` context (ABI 2).
//!
//! `fastio.ko` starts no thread of its own. After SETUP and mmap the backend starts, for
//! every lane `i`, a thread `fastio-lane-<i>` that calls `FASTIO_RUN_LANE {index: i}` and
//! stays in the kernel as that lane's polling worker, and `wq_max_active` threads
//! `fastio-help-<j>` that call `FASTIO_RUN_HELPER {index: j}` and do the context's
//! blocking work (uncached file reads, FIFOs, ttys: such work progresses only while a
//! helper is attached). Every request thus runs as this process: its address space,
//! credentials, rlimits and cgroups, and its CPU time shows here.
//!
//! Each thread
//! - starts with every signal blocked: [`Workers::start`] blocks them in the spawning
//!   thread around `spawn`, and a new thread inherits its creator's mask, so there is no
//!   moment at which a worker could take one of the application's signals.
//!   Process-directed signals go to the application's threads and never pull a worker
//!   out of the kernel. glibc's `pthread_sigmask` never blocks its internal SIGCANCEL and
//!   SIGSETXID, so `setuid()` and friends still reach the workers (their ioctl returns
//!   `EINTR`, glibc's handler runs, the thread calls the ioctl again);
//! - pins itself with `sched_setaffinity` when the config says so: lane `i` to CPU
//!   `(affinity_offset + i) % n` of the `n` CPUs the process may run on, helper `j` to
//!   `(wq_affinity_offset + j) % n`. A pin that fails is reported on stderr
//!   and the thread runs unpinned (as the `threads` backend does);
//! - calls its ioctl until it returns for good: `EINTR` → again; 0 (or `ESHUTDOWN`)
//!   after the backend asked for the shutdown → the thread ends; any other error, or a
//!   return without a shutdown, → the failure is recorded on the [`Device`] (the first
//!   one is kept) and the thread ends.
//!
//! A recorded failure is sticky: from then on [`Device::check`] (called by the
//! backend's `submit` and `wait`) returns it as an error naming the thread, the ioctl and
//! the errno. A fatal signal ends the threads together with the process, as usual.
//!
//! Teardown is [`Workers`]' `Drop`: `FASTIO_SHUTDOWN`, then every thread is joined.

use std::fs::File;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use fastio_uapi::{ThreadArg, FASTIO_RUN_HELPER, FASTIO_RUN_LANE, FASTIO_SHUTDOWN};

use super::ioctl;
use crate::backend::{allowed_cpus, pin_current_thread, pinned_cpu};
use crate::config::Config;

/// An open `/dev/fastio` context, shared by the backend and its threads, with the first
/// failure of one of those threads.
pub(super) struct Device {
    file: File,
    /// Set before `FASTIO_SHUTDOWN`: a thread whose ioctl returns after that is done,
    /// not failed.
    stopping: AtomicBool,
    /// The first thread that left the kernel unasked.
    failure: OnceLock<ThreadFailure>,
}

impl Device {
    /// Wraps the open device.
    pub(super) fn new(file: File) -> Self {
        Device {
            file,
            stopping: AtomicBool::new(false),
            failure: OnceLock::new(),
        }
    }

    /// The device, for the backend's own ioctls.
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// `Err` once a lane or helper thread has failed: an error that names the thread,
    /// the ioctl and its errno. Sticky: every later call returns it again (a lane without
    /// its worker never runs its requests), until the backend is dropped.
    pub(super) fn check(&self) -> io::Result<()> {
        match self.failure.get() {
            None => Ok(()),
            Some(f) => Err(f.to_error()),
        }
    }

    /// Records `f` unless a failure is recorded already (the first one explains best).
    fn record(&self, f: ThreadFailure) {
        let _ = self.failure.set(f);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// What a thread does in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The polling worker of a lane (`FASTIO_RUN_LANE`).
    Lane,
    /// A helper for blocking work (`FASTIO_RUN_HELPER`).
    Helper,
}

impl Role {
    fn cmd(self) -> u32 {
        match self {
            Role::Lane => FASTIO_RUN_LANE,
            Role::Helper => FASTIO_RUN_HELPER,
        }
    }

    fn ioctl_name(self) -> &'static str {
        match self {
            Role::Lane => "FASTIO_RUN_LANE",
            Role::Helper => "FASTIO_RUN_HELPER",
        }
    }

    /// The thread's name, which is also its comm (at most 15 bytes: indices are below
    /// `MAX_WORKERS` and `MAX_HELPERS`, so at most `fastio-lane-63`).
    fn thread_name(self, index: u32) -> String {
        match self {
            Role::Lane => format!("fastio-lane-{index}"),
            Role::Helper => format!("fastio-help-{index}"),
        }
    }
}

/// A thread that left the kernel although the backend did not shut the context down.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ThreadFailure {
    role: Role,
    index: u32,
    /// The ioctl's errno; `None` when it returned 0 without a shutdown.
    errno: Option<i32>,
}

impl ThreadFailure {
    /// The error `submit` and `wait` return; its kind is the errno's.
    fn to_error(&self) -> io::Error {
        let thread = self.role.thread_name(self.index);
        let ioctl = self.role.ioctl_name();
        let consequence = match self.role {
            Role::Lane => format!(
                "lane {} has no polling worker, so its requests no longer run",
                self.index
            ),
            Role::Helper => "blocking I/O of this context may no longer progress".to_owned(),
        };
        let advice = "drop the proactor (the kernel log, dmesg, may say more)";
        match self.errno {
            Some(errno) => {
                let os = io::Error::from_raw_os_error(errno);
                io::Error::new(
                    os.kind(),
                    format!(
                        "fastio.ko: thread {thread} left the kernel: {ioctl} failed with {}: \
                         {os}; {consequence}; {advice}",
                        errno_name(errno)
                    ),
                )
            }
            None => io::Error::other(format!(
                "fastio.ko: thread {thread} left the kernel: {ioctl} returned 0 although the \
                 context was not shut down; {consequence}; {advice}"
            )),
        }
    }
}

/// The symbolic name of the errnos the RUN ioctls can give, else `errno N`.
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::ENXIO => "ENXIO",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::E2BIG => "E2BIG",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno {errno}"),
    };
    name.to_owned()
}

/// Calls `run` (one RUN_LANE or RUN_HELPER ioctl) until the thread is done: `Ok` when it
/// returned after the shutdown (`stopping`), `Err(errno)` when it failed, `Err(None)`
/// when it returned 0 unasked. `EINTR` (a signal such as glibc's SIGSETXID, or the
/// freezer) only means "call again".
fn serve(
    stopping: impl Fn() -> bool,
    mut run: impl FnMut() -> io::Result<i32>,
) -> Result<(), Option<i32>> {
    loop {
        match run() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(_) if stopping() => return Ok(()),
            Ok(_) => return Err(None),
            // A thread that reaches the kernel only after the shutdown.
            Err(e) if e.raw_os_error() == Some(libc::ESHUTDOWN) && stopping() => return Ok(()),
            Err(e) => return Err(Some(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
}

/// The body of a lane or helper thread (its signals are already blocked).
fn thread_main(dev: Arc<Device>, role: Role, index: u32, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        if let Err(e) = pin_current_thread(cpu) {
            // Not fatal: the thread serves unpinned. `writeln!` rather than `eprintln!`:
            // a closed stderr must not panic a worker.
            let _ = writeln!(
                io::stderr(),
                "fastio: cannot pin {} to CPU {cpu}: {e}; it runs unpinned",
                role.thread_name(index)
            );
        }
    }
    let served = serve(
        || dev.stopping(),
        || {
            let mut arg = ThreadArg { index, flags: 0 };
            // SAFETY: RUN_LANE and RUN_HELPER are _IOW(ThreadArg); `arg` is a live
            // ThreadArg without user addresses, read once by the kernel.
            unsafe { ioctl(dev.file(), role.cmd(), &mut arg) }
        },
    );
    if let Err(errno) = served {
        dev.record(ThreadFailure { role, index, errno });
    }
}

/// Every signal blocked in the calling thread until dropped, which restores the
/// previous mask; threads spawned meanwhile inherit the full mask. (glibc leaves its
/// internal SIGCANCEL and SIGSETXID unblocked whatever the set says.)
struct SignalsBlocked {
    previous: libc::sigset_t,
}

impl SignalsBlocked {
    fn new() -> io::Result<Self> {
        let mut all = MaybeUninit::<libc::sigset_t>::uninit();
        let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigfillset initialises `all` (it only fails for a null pointer);
        // pthread_sigmask reads `all`, writes the current mask into `previous` when it
        // succeeds, and changes the calling thread's mask only.
        let r = unsafe {
            libc::sigfillset(all.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_BLOCK, all.as_ptr(), previous.as_mut_ptr())
        };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: pthread_sigmask succeeded, so it wrote the previous mask.
        let previous = unsafe { previous.assume_init() };
        Ok(SignalsBlocked { previous })
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: `previous` is the mask pthread_sigmask returned; setting it back
        // changes the calling thread's mask only (it cannot fail with SIG_SETMASK).
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut()) };
    }
}

/// The lane and helper threads of a context. Dropping it shuts the context down
/// (`FASTIO_SHUTDOWN`) and joins every thread.
pub(super) struct Workers {
    dev: Arc<Device>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `max_ker_worker` lane threads and `wq_max_active` helper threads on `dev`,
    /// which must be set up (SETUP done, `helpers` = `wq_max_active`). On error, the
    /// threads already started are shut down and joined.
    pub(super) fn start(dev: &Arc<Device>, config: &Config) -> io::Result<Workers> {
        let (lanes, helpers) = (config.max_ker_worker, config.wq_max_active);
        let mut workers = Workers {
            dev: Arc::clone(dev),
            threads: Vec::with_capacity((lanes + helpers) as usize),
        };
        let cpus = allowed_cpus();
        let lane_threads =
            (0..lanes).map(|i| (Role::Lane, i, pinned_cpu(config.affinity_offset, i, &cpus)));
        let helper_threads = (0..helpers).map(|j| {
            let cpu = pinned_cpu(config.wq_affinity_offset, j, &cpus);
            (Role::Helper, j, cpu)
        });
        for (role, index, cpu) in lane_threads.chain(helper_threads) {
            workers.spawn(role, index, cpu)?;
        }
        Ok(workers)
    }

    fn spawn(&mut self, role: Role, index: u32, cpu: Option<usize>) -> io::Result<()> {
        let name = role.thread_name(index);
        let dev = Arc::clone(&self.dev);
        let builder = std::thread::Builder::new().name(name.clone());
        let spawned = SignalsBlocked::new().and_then(|_blocked| {
            // The new thread inherits the full mask; `_blocked` restores ours after.
            builder.spawn(move || thread_main(dev, role, index, cpu))
        });
        let thread = spawned.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("fastio.ko: cannot start thread {name}: {e}"),
            )
        })?;
        self.threads.push(thread);
        Ok(())
    }

    /// `FASTIO_SHUTDOWN`: every lane and helper thread returns 0, waiting requests
    /// complete with `-ECANCELED`, later RUN calls fail with `ESHUTDOWN`.
    fn shutdown(&self) -> io::Result<()> {
        self.dev.stopping.store(true, Ordering::SeqCst);
        loop {
            // SAFETY: FASTIO_SHUTDOWN is _IO: the kernel reads no argument.
            match unsafe { ioctl(self.dev.file(), FASTIO_SHUTDOWN, std::ptr::null_mut::<u8>()) } {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r.map(drop),
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        match self.shutdown() {
            Ok(()) => {
                for t in self.threads.drain(..) {
                    // The threads never panic; a join error would carry nothing useful.
                    let _ = t.join();
                }
            }
            Err(e) => {
                // Without SHUTDOWN a thread inside the kernel never returns, and joining
                // it would hang. Join those that are gone and leave the others to the
                // process's exit: each holds its own reference to the device, so the
                // descriptor stays open under them.
                let mut left = 0;
                for t in self.threads.drain(..) {
                    if t.is_finished() {
                        let _ = t.join();
                    } else {
                        left += 1;
                    }
                }
                if left > 0 {
                    let _ = writeln!(
                        io::stderr(),
                        "fastio: FASTIO_SHUTDOWN failed ({e}): {left} lane/helper thread(s) \
                         stay in the kernel until the process exits"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    /// Feeds `serve` the given ioctl results in order; returns its verdict and how many
    /// calls it made.
    fn serve_with(
        stopping: bool,
        results: Vec<io::Result<i32>>,
    ) -> (Result<(), Option<i32>>, usize) {
        let mut results = results.into_iter();
        let mut calls = 0;
        let verdict = serve(
            || stopping,
            || {
                calls += 1;
                results.next().unwrap_or(Ok(0))
            },
        );
        (verdict, calls)
    }

    #[test]
    fn serve_retries_signals_and_tells_shutdown_from_failure() {
        let eintr = || Err(os(libc::EINTR));
        assert_eq!(serve_with(true, vec![eintr(), eintr(), Ok(0)]), (Ok(()), 3));
        assert_eq!(
            serve_with(true, vec![Err(os(libc::ESHUTDOWN))]),
            (Ok(()), 1)
        );
        // Returning without a shutdown, or ESHUTDOWN nobody asked for, is a failure.
        assert_eq!(serve_with(false, vec![eintr(), Ok(0)]), (Err(None), 2));
        assert_eq!(
            serve_with(false, vec![Err(os(libc::ESHUTDOWN))]),
            (Err(Some(libc::ESHUTDOWN)), 1)
        );
        for errno in [libc::EBUSY, libc::EINVAL, libc::EPERM, libc::ENOMEM] {
            assert_eq!(
                serve_with(true, vec![Err(os(errno))]),
                (Err(Some(errno)), 1)
            );
        }
    }

    #[test]
    fn thread_names_fit_comm() {
        let max = fastio_uapi::MAX_WORKERS.max(fastio_uapi::MAX_HELPERS) - 1;
        for role in [Role::Lane, Role::Helper] {
            assert!(
                role.thread_name(max).len() <= 15,
                "{}",
                role.thread_name(max)
            );
        }
        assert_eq!(Role::Lane.thread_name(3), "fastio-lane-3");
        assert_eq!(Role::Helper.thread_name(0), "fastio-help-0");
    }

    #[test]
    fn failures_name_the_thread_the_ioctl_and_the_errno() {
        let e = ThreadFailure {
            role: Role::Lane,
            index: 1,
            errno: Some(libc::EBUSY),
        }
        .to_error();
        let msg = e.to_string();
        for want in [
            "thread fastio-lane-1 left the kernel",
            "FASTIO_RUN_LANE failed with EBUSY",
            "(os error 16)",
            "lane 1 has no polling worker",
        ] {
            assert!(msg.contains(want), "{msg:?} should say {want:?}");
        }
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);

        let e = ThreadFailure {
            role: Role::Helper,
            index: 0,
            errno: None,
        }
        .to_error();
        let msg = e.to_string();
        assert!(msg.contains("fastio-help-0"), "{msg}");
        assert!(msg.contains("FASTIO_RUN_HELPER returned 0"), "{msg}");
        assert!(msg.contains("blocking I/O"), "{msg}");
        assert_eq!(errno_name(4095), "errno 4095");
    }

    fn current_mask() -> libc::sigset_t {
        let mut mask = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: a null new set only queries this thread's mask into `mask`.
        let r =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), mask.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: pthread_sigmask succeeded and wrote the mask.
        unsafe { mask.assume_init() }
    }

    fn blocked(mask: &libc::sigset_t, sig: i32) -> bool {
        // SAFETY: `mask` is an initialised set; sigismember only reads it.
        unsafe { libc::sigismember(mask, sig) == 1 }
    }

    #[test]
    fn spawned_threads_are_born_with_every_signal_blocked() {
        let before = current_mask();
        assert!(
            !blocked(&before, libc::SIGUSR1),
            "the test thread blocks SIGUSR1"
        );
        let child = {
            let _blocked = SignalsBlocked::new().unwrap();
            std::thread::spawn(current_mask)
        };
        let child = child.join().unwrap();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGPIPE,
        ] {
            assert!(
                blocked(&child, sig),
                "signal {sig} not blocked in the worker"
            );
        }
        // glibc keeps SIGSETXID (its 33) deliverable, so setuid() reaches the workers.
        #[cfg(target_env = "gnu")]
        assert!(!blocked(&child, 33), "SIGSETXID blocked");
        // The spawning thread has its own mask back.
        let after = current_mask();
        for sig in 1..libc::SIGRTMIN() {
            assert_eq!(blocked(&after, sig), blocked(&before, sig), "signal {sig}");
        }
    }

    /// On a device that is not fastio.ko every RUN ioctl fails (ENOTTY): the failure is
    /// recorded, surfaces (again and again) with the thread's name, and dropping the
    /// workers joins the threads that are gone without hanging on the failed SHUTDOWN.
    #[test]
    fn a_failed_thread_surfaces_and_teardown_does_not_hang() {
        let dev = Arc::new(Device::new(File::open("/dev/null").unwrap()));
        let config = Config {
            max_ker_worker: 2,
            wq_max_active: 1,
            ..Config::default()
        };
        let workers = Workers::start(&dev, &config).unwrap();
        assert_eq!(workers.threads.len(), 3);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !workers.threads.iter().all(|t| t.is_finished()) {
            assert!(
                Instant::now() < deadline,
                "RUN threads on /dev/null did not end"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let e = dev.check().unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("thread fastio-"), "{msg}");
        assert!(msg.contains("failed with ENOTTY"), "{msg}");
        assert_eq!(dev.check().unwrap_err().to_string(), msg, "not sticky");
        drop(workers);
        // Every thread has dropped its reference: the backend's is the last one.
        assert_eq!(Arc::strong_count(&dev), 1);
        assert!(dev.stopping());
    }
}
