//! The backends behind the proactor, and the choice between them.
//!
//! | backend   | who executes requests                                  | module needed |
//! |-----------|--------------------------------------------------------|---------------|
//! | `kmod`    | lane threads of this process inside `fastio.ko`        | yes           |
//! | `uring`   | io_uring, with an SQPOLL kernel thread when `sqpoll`   | no            |
//! | `threads` | polling threads in this process, ordinary syscalls     | no            |
//!
//! `auto` takes the first that works, in that order, and says why.

pub(crate) mod files;
pub(crate) mod kmod;
pub(crate) mod rings;
mod splice;
pub(crate) mod threads;
pub(crate) mod uring;
mod uring_bufs;

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
    /// Registers provided-buffer group `group`: `count` buffers of `buf_size` bytes
    /// starting at `bufs` (buffer `id` at `bufs + id * buf_size`), every one of them
    /// given to the executor. `Unsupported` on a backend without provided buffers.
    ///
    /// # Safety
    ///
    /// The memory must stay valid until `unregister_buffers` of the group returned Ok
    /// (or the backend is dropped), and nobody may access a buffer while the executor
    /// owns it: from registration, or from `provide_buffer`, until a CQE hands its id
    /// out.
    unsafe fn register_buffers(
        &mut self,
        group: u16,
        bufs: *mut u8,
        buf_size: u32,
        count: u32,
    ) -> io::Result<()> {
        let _ = (group, bufs, buf_size, count);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "provided-buffer rings are not supported by this backend",
        ))
    }
    /// Gives buffer `id` of `group` back to the executor (its bytes are no longer
    /// accessed by userspace). An id the executor already owns is a caller bug.
    fn provide_buffer(&mut self, group: u16, id: u16) {
        let _ = (group, id);
    }
    /// Unregisters `group`; the caller made sure no request that uses it is in flight.
    fn unregister_buffers(&mut self, group: u16) -> io::Result<()> {
        let _ = group;
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }
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

/// The CPU that worker `index` of a group pinned from `offset` runs on: entry
/// `(offset + index) % n` of the `n` CPUs the process may run on (`allowed`, ascending;
/// CPU `offset + index` modulo the CPU count when it may run on all of them); `None` when
/// the group is not pinned or `allowed` is empty.
pub(crate) fn pinned_cpu(offset: Option<u32>, index: u32, allowed: &[usize]) -> Option<usize> {
    let off = offset?;
    let n = allowed.len();
    if n == 0 {
        return None;
    }
    // Both operands reduced first: no overflow whatever the offset and index.
    allowed
        .get((off as usize % n + index as usize % n) % n)
        .copied()
}

/// A fresh private anonymous read-write mapping of `len` bytes (zeroed, page aligned),
/// for a provided-buffer ring; the caller unmaps it.
pub(crate) fn anon_map(len: usize) -> io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: a new private anonymous mapping touches no existing memory; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// The CPUs this process may run on, ascending: the affinity of its main thread (the
/// thread-group leader), not of the calling thread, so a serving thread that pinned
/// itself before starting the workers does not squeeze them onto its own CPU. Falls back
/// to the calling thread's mask if the leader's cannot be read, and to `0..n` if neither
/// can.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: getpid has no preconditions.
    let leader = unsafe { libc::getpid() };
    affinity_of(leader)
        .or_else(|| affinity_of(0))
        .unwrap_or_else(|| (0..available_cpus()).collect())
}

/// The CPUs in the affinity mask of task `tid` (0: the calling thread).
fn affinity_of(tid: libc::pid_t) -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data (all-zero is an empty set); sched_getaffinity writes
    // at most size_of::<cpu_set_t>() bytes into it; CPU_ISSET reads bits inside the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect();
        (!cpus.is_empty()).then_some(cpus)
    }
}

/// Number of CPUs the calling thread may run on (at least 1).
pub(crate) fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `cpu` (`sched_setaffinity` of this thread only).
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // CPU_SET would index out of the set (and panic) beyond CPU_SETSIZE.
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data, so an all-zero one is a valid empty set; CPU_SET
    // writes bit `cpu`, inside the set (checked above); sched_setaffinity(0, ...) reads
    // the set and changes the calling thread's affinity only.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_cpus_wrap_around_the_available_ones() {
        let all = [0, 1, 2, 3];
        assert_eq!(pinned_cpu(None, 3, &all), None);
        assert_eq!(pinned_cpu(Some(0), 0, &all), Some(0));
        assert_eq!(pinned_cpu(Some(2), 1, &all), Some(3));
        assert_eq!(pinned_cpu(Some(2), 3, &all), Some(1));
        assert_eq!(pinned_cpu(Some(1023), 63, &all[..2]), Some(0));
        assert_eq!(pinned_cpu(Some(u32::MAX), u32::MAX, &all[..3]), Some(0));
        // A cpuset of CPUs 4 and 6: the workers go there, never to a CPU outside it.
        let cpuset = [4, 6];
        assert_eq!(pinned_cpu(Some(0), 0, &cpuset), Some(4));
        assert_eq!(pinned_cpu(Some(0), 1, &cpuset), Some(6));
        assert_eq!(pinned_cpu(Some(1), 1, &cpuset), Some(4));
        // Never a division by zero.
        assert_eq!(pinned_cpu(Some(5), 0, &[]), None);
    }

    #[test]
    fn allowed_cpus_are_the_process_s_not_the_calling_thread_s() {
        let process = allowed_cpus();
        assert!(!process.is_empty());
        let seen = std::thread::spawn(|| {
            // SAFETY: plain syscall on this thread.
            let cpu = unsafe { libc::sched_getcpu() };
            pin_current_thread(cpu as usize).unwrap();
            assert_eq!(available_cpus(), 1);
            allowed_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(seen, process);
    }

    #[test]
    fn pinning_moves_only_the_calling_thread() {
        let before = std::thread::available_parallelism().unwrap();
        // A CPU beyond any cpu_set_t is refused, not a panic.
        let e = pin_current_thread(1 << 20).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        let pinned_width = std::thread::spawn(|| {
            // SAFETY: plain syscall on this thread.
            let cpu = unsafe { libc::sched_getcpu() };
            assert!(cpu >= 0);
            pin_current_thread(cpu as usize).unwrap();
            std::thread::available_parallelism().unwrap().get()
        })
        .join()
        .unwrap();
        assert_eq!(pinned_width, 1);
        assert_eq!(std::thread::available_parallelism().unwrap(), before);
    }
}
