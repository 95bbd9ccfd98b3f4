//! The backends behind the proactor, and the choice between them.
//!
//! | backend   | who executes requests                                  | module needed |
//! |-----------|--------------------------------------------------------|---------------|
//! | `kmod`    | kernel workers of `fastio.ko` (`/dev/fastio`)          | yes           |
//! | `uring`   | io_uring, with an SQPOLL kernel thread when `sqpoll`   | no            |
//! | `threads` | polling threads in this process, ordinary syscalls     | no            |
//!
//! `auto` takes the first that works, in that order, and says why.

pub(crate) mod files;
pub(crate) mod kmod;
pub(crate) mod rings;
pub(crate) mod threads;
pub(crate) mod uring;

use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use fastio_uapi::{Cqe, Sqe};

use crate::config::{BackendKind, Config};

/// Path of the kernel module's device.
pub const DEVICE_PATH: &str = "/dev/fastio";

/// The operations every backend provides; the proactor adds slots, buffers and limits.
pub(crate) trait Backend: Send {
    /// Number of lanes (independent SQ/CQ pairs).
    fn lanes(&self) -> u32;
    /// Requests that may be in flight on one lane (its CQ size).
    fn lane_capacity(&self) -> u32;
    /// Puts a new reference to `fd`'s file into the empty `slot`.
    fn register(&mut self, slot: u32, fd: BorrowedFd<'_>) -> io::Result<()>;
    /// Empties `slot`.
    fn unregister(&mut self, slot: u32) -> io::Result<()>;
    /// Returns a new descriptor for the file in `slot`.
    fn install_fd(&mut self, slot: u32) -> io::Result<OwnedFd>;
    /// Stages a request on `lane`; false when that SQ is full.
    fn push(&mut self, lane: u32, sqe: &Sqe) -> bool;
    /// Makes staged requests visible to the executors (waking sleeping ones).
    fn submit(&mut self) -> io::Result<()>;
    /// Whether requests staged before the last `submit` are still not handed to the
    /// executor (io_uring answered `EBUSY`/`EAGAIN`): the next `submit` must retry.
    fn has_unsubmitted(&mut self) -> bool {
        false
    }
    /// CQ entries one CLOSE makes the executor post (io_uring: the close and the cancel
    /// of what waits on the file).
    fn close_cost(&self) -> u32 {
        1
    }
    /// Hands every available completion to `f`; returns how many.
    fn reap(&mut self, f: &mut dyn FnMut(Cqe)) -> usize;
    /// Sleeps until at least `min` completions are available to `reap`, the timeout
    /// passes (Ok) or a signal interrupts (`Interrupted`).
    fn wait(&mut self, min: u32, timeout: Option<Duration>) -> io::Result<()>;
    /// Asks every in-flight request to finish early (shutdown). Completions still come.
    /// Returns false when the backend has no way to do that: the proactor then CLOSEs
    /// every slot with requests in flight instead.
    fn cancel_all(&mut self) -> io::Result<bool>;
    /// Whether the executor of `lane` is asleep with NEED_WAKEUP set (None: no such flag).
    fn lane_asleep(&self, lane: u32) -> Option<bool>;
    /// The kernel module's counters of this context (`FASTIO_GET_STATS`); None on
    /// backends other than `kmod`.
    fn kernel_stats(&self) -> Option<io::Result<fastio_uapi::Stats>> {
        None
    }
}

/// The backend a proactor ended up with, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The backend in use.
    pub kind: BackendKind,
    /// Whether io_uring runs with an SQPOLL thread (uring only).
    pub sqpoll: bool,
    /// Why this backend was chosen.
    pub reason: String,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.kind, self.sqpoll) {
            (BackendKind::Uring, true) => "uring (SQPOLL)".to_string(),
            (k, _) => k.to_string(),
        };
        write!(f, "{kind}: {}", self.reason)
    }
}

/// Opens the backend the config asks for.
pub(crate) fn open(config: &Config) -> io::Result<(Box<dyn Backend>, Choice)> {
    match config.backend {
        BackendKind::Kmod => open_kmod(config),
        BackendKind::Uring => {
            let (b, sqpoll, note) = uring::UringBackend::open(config)?;
            Ok((
                Box::new(b),
                Choice {
                    kind: BackendKind::Uring,
                    sqpoll,
                    reason: format!("requested by config{note}"),
                },
            ))
        }
        BackendKind::Threads => Ok((
            Box::new(threads::ThreadsBackend::open(config)?),
            Choice {
                kind: BackendKind::Threads,
                sqpoll: false,
                reason: format!(
                    "requested by config ({} polling thread(s))",
                    config.max_ker_worker
                ),
            },
        )),
        BackendKind::Auto => open_auto(config),
    }
}

fn open_kmod(config: &Config) -> io::Result<(Box<dyn Backend>, Choice)> {
    let (b, note) = kmod::KmodBackend::open(config)?;
    Ok((
        Box::new(b),
        Choice {
            kind: BackendKind::Kmod,
            sqpoll: false,
            reason: format!("requested by config ({note})"),
        },
    ))
}

fn open_auto(config: &Config) -> io::Result<(Box<dyn Backend>, Choice)> {
    let mut why = if Path::new(DEVICE_PATH).exists() {
        match kmod::KmodBackend::open(config) {
            Ok((b, note)) => {
                return Ok((
                    Box::new(b),
                    Choice {
                        kind: BackendKind::Kmod,
                        sqpoll: false,
                        reason: format!("{DEVICE_PATH} present: fastio.ko with {note}"),
                    },
                ))
            }
            Err(e) => format!("{DEVICE_PATH} exists but the kmod backend failed ({e}); "),
        }
    } else {
        format!("{DEVICE_PATH} not present; ")
    };
    match uring::UringBackend::open(config) {
        Ok((b, sqpoll, note)) => {
            why.push_str("io_uring works");
            why.push_str(&note);
            return Ok((
                Box::new(b),
                Choice {
                    kind: BackendKind::Uring,
                    sqpoll,
                    reason: why,
                },
            ));
        }
        Err(e) => why.push_str(&format!("io_uring unavailable ({e}); ")),
    }
    why.push_str(&format!(
        "using {} in-process polling thread(s)",
        config.max_ker_worker
    ));
    Ok((
        Box::new(threads::ThreadsBackend::open(config)?),
        Choice {
            kind: BackendKind::Threads,
            sqpoll: false,
            reason: why,
        },
    ))
}

/// Raises the soft `RLIMIT_NOFILE` towards `needed` (at most to the hard limit); returns
/// the hard limit.
pub(crate) fn raise_nofile_limit(needed: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < needed {
            lim.rlim_cur = needed.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_max)
}
