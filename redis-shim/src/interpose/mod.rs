//! The interposed C library functions (`#[no_mangle]`), and the global shim state.
//!
//! # Who takes which path
//!
//! - Every call first reads the lock-free [`fdtable`]: a descriptor that is not a queued
//!   socket goes straight to the C library, from any thread.
//! - Only the *owner* thread, the first that writes to a non-blocking stream socket or
//!   waits in `epoll_wait`/`epoll_pwait` (Redis's event loop), classifies descriptors,
//!   registers sockets and flushes in the waits (`poll` flushes too, but only on the
//!   owner: it never makes a thread the owner). Other threads (Redis's bio
//!   threads, the `threads` backend's own workers) never classify anything and never
//!   block on the shim's lock for descriptors that are not queued sockets, so the
//!   runtime's workers, which call `send`/`epoll_wait` on their own duplicates of the
//!   sockets, are never interposed.
//! - Nothing inside the shim waits for a peer (only the drains before `exit` and `exec`
//!   do), so the lock is never held for long.
//! - While a thread runs inside the shim (holding its lock, or waiting for it), every
//!   call it makes (the runtime's syscalls, `eprintln!`) goes to the C library: a
//!   thread-local flag, set before the lock is taken and cleared after it is released.
//!   A signal handler that interrupts such a thread and writes to a queued socket has
//!   its bytes deferred ([`crate::signals`]): the thread queues them as it leaves the
//!   shim, after what it queued itself, so they never overtake queued bytes and the
//!   handler never waits for the lock its own thread holds. `exit` from a handler
//!   sends what it can without waiting for peers.
//! - After `fork` in a process whose shim is running, the child never touches the
//!   parent's rings: every call goes to the C library (`pthread_atfork`); a `vfork`
//!   child (same memory, other process) is told apart by its pid and leaves the shim's
//!   state alone.

mod fds;
mod io;
mod wait;

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use fastio::BackendKind;
use libc::{c_int, ssize_t};

use crate::fdtable::{self, Kind};
use crate::settings::{self, Settings};
use crate::shim::Shim;
use crate::signals;

/// Nothing done yet.
const UNINIT: u8 = 0;
/// The owner thread is opening the proactor.
const STARTING: u8 = 1;
/// Running.
const ACTIVE: u8 = 2;
/// Every call goes to the C library (a forked child, a failed start, or disabled).
const OFF: u8 = 3;

static PHASE: AtomicU8 = AtomicU8::new(UNINIT);
static OWNER: AtomicUsize = AtomicUsize::new(0);
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
static STATE: Mutex<Option<Shim>> = Mutex::new(None);
static HOOKS: Once = Once::new();

/// How long the process's exit (or an `exec`) waits for queued writes.
const EXIT_DRAIN: Duration = Duration::from_secs(5);
/// How long the process's exit waits for the shim's lock (held by another thread).
const EXIT_LOCK: Duration = Duration::from_secs(1);

thread_local! {
    static IN_SHIM: Cell<bool> = const { Cell::new(false) };
}

fn this_thread() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

fn in_shim() -> bool {
    IN_SHIM.with(Cell::get)
}

fn active() -> bool {
    PHASE.load(Ordering::Acquire) == ACTIVE
}

fn is_owner() -> bool {
    OWNER.load(Ordering::Relaxed) == this_thread()
}

/// Whether this is not the process that started the shim (a `vfork` child, which shares
/// the parent's memory until it calls `exec` or `_exit`).
fn in_child() -> bool {
    // SAFETY: getpid has no preconditions.
    OWNER_PID.load(Ordering::Relaxed) != unsafe { libc::getpid() }
}

/// Holds the shim's lock and marks the thread as inside the shim.
struct Inside {
    /// The lock; `None` only while dropping.
    guard: Option<MutexGuard<'static, Option<Shim>>>,
}

impl Inside {
    fn enter() -> Inside {
        IN_SHIM.with(|f| f.set(true));
        Inside {
            guard: Some(STATE.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    /// Like [`Inside::enter`], but gives up (None) when the lock stays taken for `limit`
    /// (zero: one try).
    fn try_enter(limit: Duration) -> Option<Inside> {
        IN_SHIM.with(|f| f.set(true));
        let deadline = Instant::now() + limit;
        loop {
            let guard = match STATE.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(TryLockError::WouldBlock) => {
                    IN_SHIM.with(|f| f.set(false));
                    return None;
                }
            };
            return Some(Inside { guard: Some(guard) });
        }
    }

    fn shim(&mut self) -> Option<&mut Shim> {
        self.guard.as_mut().and_then(|g| g.as_mut())
    }

    fn install(&mut self, shim: Shim) {
        if let Some(g) = self.guard.as_mut() {
            **g = Some(shim);
        }
    }

    /// Queues the writes of signal handlers that ran on this thread inside the shim.
    fn take_deferred(&mut self) {
        let mut shim = self.shim();
        signals::with_deferred(|d| {
            d.take(|slot, id, bytes| {
                if let Some(s) = shim.as_deref_mut() {
                    s.deferred_write(slot, id, bytes);
                }
            })
        });
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        loop {
            self.take_deferred();
            // The lock first: a signal handler that runs before the flag is cleared
            // still sees the thread inside, and defers its writes.
            drop(self.guard.take());
            IN_SHIM.with(|f| f.set(false));
            if !signals::with_deferred(signals::Deferred::pending) {
                return;
            }
            // A handler deferred a write after the buffer was taken: take it too.
            IN_SHIM.with(|f| f.set(true));
            self.guard = Some(STATE.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }
}

/// Starts the shim on this thread (which becomes the owner). True when it runs.
fn start() -> bool {
    match PHASE.load(Ordering::Acquire) {
        ACTIVE => return is_owner(),
        UNINIT => {}
        _ => return false,
    }
    if PHASE
        .compare_exchange(UNINIT, STARTING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    OWNER.store(this_thread(), Ordering::Relaxed);
    // SAFETY: getpid has no preconditions.
    OWNER_PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    let mut inside = Inside::enter();
    let ok = if settings::disabled_by_env() {
        eprintln!("fastio-redis-shim: disabled by {}=1", settings::DISABLE_VAR);
        false
    } else {
        match open() {
            Ok(shim) => {
                inside.install(shim);
                true
            }
            Err(e) => {
                eprintln!("fastio-redis-shim: not active, every call goes to the C library: {e}");
                false
            }
        }
    };
    drop(inside);
    if ok {
        HOOKS.call_once(|| {
            // SAFETY: registering plain extern "C" handlers without arguments.
            unsafe {
                libc::pthread_atfork(None, None, Some(after_fork_in_child));
                libc::atexit(at_exit);
            }
        });
    }
    PHASE.store(if ok { ACTIVE } else { OFF }, Ordering::Release);
    ok
}

fn open() -> Result<Shim, String> {
    let (mut config, source) = fastio::Config::resolve(None).map_err(|e| e.to_string())?;
    // Redis sleeps in epoll_wait, not in the proactor: what becomes ready on the module
    // must wake a lane thread, never wait for a call that may not come (`kmod_defer`).
    config.kmod_defer = false;
    let settings = Settings::resolve(source.path())?;
    eprintln!("fastio-redis-shim: config {source}; {settings}");
    if config.backend == BackendKind::Auto {
        // Redis serves from one thread that makes a system call per event-loop turn
        // anyway; a polling backend (the module's lanes, SQPOLL, the threads backend)
        // only takes CPU from it. Measured (BENCHMARKS.md, redis-benchmark -c 50):
        // io_uring without SQPOLL 0.94-1.10x plain redis-server, the polling ones
        // 0.3-0.8x. So `auto` means io_uring without SQPOLL here; a backend set by
        // name is used as asked.
        let uring = fastio::Config {
            backend: BackendKind::Uring,
            sqpoll: false,
            ..config.clone()
        };
        match Shim::new(&uring, settings.clone()) {
            Ok(shim) => {
                eprintln!("{AUTO_NOTE}");
                return Ok(shim);
            }
            Err(e) => eprintln!(
                "fastio-redis-shim: backend auto: io_uring without SQPOLL failed ({e}); \
                 trying the runtime's own choice"
            ),
        }
    }
    let shim =
        Shim::new(&config, settings).map_err(|e| format!("cannot open the proactor: {e}"))?;
    let sqpoll = shim.stats().backend.starts_with("uring (SQPOLL)");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(note) = crate::settings::sqpoll_note(sqpoll, cpus) {
        eprintln!("{note}");
    }
    Ok(shim)
}

/// What the shim says when `backend = "auto"` makes it pick io_uring without SQPOLL.
const AUTO_NOTE: &str = "fastio-redis-shim: backend auto: io_uring without SQPOLL \
    (polling backends - kmod, SQPOLL, threads - take CPU from Redis's own thread and \
    measured 0.3-0.8x plain redis-server; set backend = \"kmod\", \"threads\" or \
    sqpoll = true in fastio.conf to use one anyway)";

extern "C" fn after_fork_in_child() {
    // The child has one thread and a copy of the parent's rings: it must not use them.
    PHASE.store(OFF, Ordering::Release);
}

/// Sends what is queued before the process ends or replaces its image: waits while
/// peers take the bytes (bounded), except in a signal handler, which only hands them to
/// the executors. Nothing when the thread is inside the shim (a handler interrupted it:
/// the lock is its own), or in a `vfork` child.
fn drain_before_end() {
    if !active() || in_shim() || in_child() {
        return;
    }
    let handler = signals::in_handler();
    let lock_wait = if handler { Duration::ZERO } else { EXIT_LOCK };
    let Some(mut inside) = Inside::try_enter(lock_wait) else {
        return;
    };
    let Some(shim) = inside.shim() else { return };
    if handler {
        shim.pump();
    } else {
        shim.drain_all(EXIT_DRAIN);
    }
}

extern "C" fn at_exit() {
    drain_before_end();
    if !active() || in_shim() || in_child() {
        return;
    }
    let Some(mut inside) = Inside::try_enter(Duration::ZERO) else {
        return;
    };
    let Some(shim) = inside.shim() else { return };
    if let Some(path) = shim.settings().stats_path.clone() {
        if let Err(e) = std::fs::write(&path, shim.stats().to_string()) {
            eprintln!("fastio-redis-shim: cannot write {}: {e}", path.display());
        }
    }
}

/// Takes the shim's lock to forget what `fd` mapped to, and counts it as stale.
fn reconcile(fd: c_int) {
    let mut inside = Inside::enter();
    if let Some(s) = inside.shim() {
        s.forget_stale(fd);
    } else {
        fdtable::set(fd, Kind::Unknown);
    }
}

/// Forgets what `fd` was when it is closed or replaced (or after a new descriptor got
/// the number): a queued socket's bytes still go out, from its slot.
fn forget(fd: c_int) {
    let k = fdtable::kind(fd);
    if k == Kind::Unknown {
        return;
    }
    if k.is_managed() && active() {
        if in_child() {
            return;
        }
        if in_shim() || !is_owner() {
            // A signal handler, the shim's own thread, or another thread (which may be
            // a worker the lock's holder waits for): the owner forgets it later.
            fdtable::invalidate(fd);
            return;
        }
        let mut inside = Inside::enter();
        if let Some(s) = inside.shim() {
            s.detach(fd);
            return;
        }
    }
    fdtable::set(fd, Kind::Unknown);
}

/// [`forget`] for every number in `first..=last`.
fn forget_range(first: u32, last: u32) {
    for fd in fdtable::known_in(first, last) {
        forget(fd);
    }
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// Fails a call with errno `e`.
fn fail_call(e: c_int) -> ssize_t {
    set_errno(e);
    -1
}
