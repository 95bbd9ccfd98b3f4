//! Signal handlers and the shim.
//!
//! - **Writes of a handler that interrupted the shim.** The thread holds (or waits for)
//!   the shim's lock, so the handler must not take it, and must not send its bytes
//!   ahead of those already queued. Its write is copied into a per-thread buffer (fixed
//!   size, no allocation: [`Deferred::push`] is async-signal-safe) and returns at once;
//!   the thread queues those bytes as it leaves the shim, after everything queued so
//!   far, as if the signal had come after the call it interrupted. A write that does
//!   not fit in the buffer fails with `EAGAIN`, as on a full socket.
//! - **Whether the thread runs a handler.** The interposed `sigaction` and `signal`
//!   (see `interpose`) install [`trampoline`] in front of the program's handlers, which
//!   counts the handlers running on the thread ([`in_handler`]), so that `exit` from a
//!   handler sends what it can without waiting for the peers. `sigaction` reports the
//!   program's own handler as the old action. (A handler left with `siglongjmp` leaves
//!   the count raised: that thread's later `exit` then does not wait either.)

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use libc::{c_int, c_void, siginfo_t};

/// Bytes one thread's buffer holds.
pub const DEFERRED_BYTES: usize = 8 << 10;
/// Writes one thread's buffer holds.
pub const DEFERRED_WRITES: usize = 32;

/// One deferred write.
struct Record {
    slot: AtomicU64,
    id: AtomicU64,
    /// `offset << 32 | len` in the data buffer.
    span: AtomicU64,
    ready: AtomicBool,
}

/// A thread's buffer of deferred writes. Only its own thread touches it: the handlers
/// that fill it (which may nest), and the thread itself when it leaves the shim.
pub struct Deferred {
    /// `writes << 32 | bytes` reserved.
    state: AtomicU64,
    records: [Record; DEFERRED_WRITES],
    data: UnsafeCell<[u8; DEFERRED_BYTES]>,
}

// SAFETY: a `Deferred` is only reached through a thread-local, by its own thread;
// disjoint ranges of `data` are reserved atomically before they are written.
unsafe impl Sync for Deferred {}

impl Deferred {
    /// An empty buffer.
    pub const fn new() -> Deferred {
        Deferred {
            state: AtomicU64::new(0),
            records: [const {
                Record {
                    slot: AtomicU64::new(0),
                    id: AtomicU64::new(0),
                    span: AtomicU64::new(0),
                    ready: AtomicBool::new(false),
                }
            }; DEFERRED_WRITES],
            data: UnsafeCell::new([0; DEFERRED_BYTES]),
        }
    }

    /// Copies `parts` (`len` bytes in all) for the socket `id` in `slot`, as one write;
    /// false when it does not fit. Async-signal-safe.
    pub fn push<'a>(
        &self,
        slot: u32,
        id: u64,
        len: usize,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        let (idx, off) = loop {
            let (n, used) = ((s >> 32) as usize, (s & 0xffff_ffff) as usize);
            if n >= DEFERRED_WRITES || len > DEFERRED_BYTES - used {
                return false;
            }
            let next = ((n as u64 + 1) << 32) | (used + len) as u64;
            match self
                .state
                .compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break (n, used),
                Err(now) => s = now,
            }
        };
        let mut at = off;
        for p in parts {
            let k = p.len().min(off + len - at);
            // SAFETY: bytes `off..off + len` were reserved for this write alone above,
            // and `at + k` stays within them.
            unsafe {
                let base = self.data.get().cast::<u8>().add(at);
                std::ptr::copy_nonoverlapping(p.as_ptr(), base, k);
            }
            at += k;
        }
        let r = &self.records[idx];
        r.slot.store(u64::from(slot), Ordering::Relaxed);
        r.id.store(id, Ordering::Relaxed);
        r.span
            .store(((off as u64) << 32) | (at - off) as u64, Ordering::Relaxed);
        r.ready.store(true, Ordering::Release);
        true
    }

    /// Whether writes wait to be taken.
    pub fn pending(&self) -> bool {
        self.state.load(Ordering::Acquire) != 0
    }

    /// Hands every deferred write to `f` in the order of the writes, and empties the
    /// buffer (also the writes of handlers that run meanwhile). Runs on the buffer's
    /// thread, outside its handlers.
    pub fn take(&self, mut f: impl FnMut(u32, u64, &[u8])) {
        let mut done = 0;
        loop {
            let s = self.state.load(Ordering::Acquire);
            let n = (s >> 32) as usize;
            while done < n {
                let r = &self.records[done];
                // Every handler that reserved a record has returned: this thread runs.
                if r.ready.swap(false, Ordering::Acquire) {
                    let span = r.span.load(Ordering::Relaxed);
                    let (off, len) = ((span >> 32) as usize, (span & 0xffff_ffff) as usize);
                    // SAFETY: the record's range was written before `ready` was set, and
                    // is not reused until the state is reset below.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(self.data.get().cast::<u8>().add(off), len)
                    };
                    f(
                        r.slot.load(Ordering::Relaxed) as u32,
                        r.id.load(Ordering::Relaxed),
                        bytes,
                    );
                }
                done += 1;
            }
            if n == 0
                || self
                    .state
                    .compare_exchange(s, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return;
            }
        }
    }
}

impl Default for Deferred {
    fn default() -> Deferred {
        Deferred::new()
    }
}

thread_local! {
    static DEFERRED: Deferred = const { Deferred::new() };
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f` with this thread's buffer of deferred writes.
pub fn with_deferred<R>(f: impl FnOnce(&Deferred) -> R) -> R {
    DEFERRED.with(f)
}

/// Whether this thread runs a signal handler of the program's (one installed through
/// the interposed `sigaction` or `signal`).
pub fn in_handler() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// Signal numbers handled here (1 to 64).
const NSIG: usize = 65;

/// The program's handler of each signal, behind [`trampoline`] (0: none).
static HANDLERS: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];
/// Whether the program's handler takes `(sig, info, context)` (`SA_SIGINFO`).
static SIGINFO: [AtomicBool; NSIG] = [const { AtomicBool::new(false) }; NSIG];

/// The handler installed in front of the program's handlers.
pub extern "C" fn trampoline(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    let Some(i) = usize::try_from(sig).ok().filter(|&i| i < NSIG) else {
        return;
    };
    let h = HANDLERS[i].load(Ordering::Acquire);
    if h <= libc::SIG_IGN {
        return;
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    if SIGINFO[i].load(Ordering::Acquire) {
        // SAFETY: the program installed `h` with SA_SIGINFO: it takes these arguments.
        let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the program installed `h` without SA_SIGINFO: it takes the number.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
    DEPTH.with(|d| d.set(d.get() - 1));
}

/// The address of [`trampoline`].
fn trampoline_addr() -> usize {
    trampoline as *const () as usize
}

/// The action to install for the program's `act` on `sig`: `act` itself, or a copy
/// with [`trampoline`] in front of the program's handler (which is recorded). Returns
/// what to restore with [`restore`] if the installation fails.
pub fn wrap(sig: c_int, act: &libc::sigaction) -> (libc::sigaction, (usize, bool)) {
    let i = sig as usize;
    let saved = wrap_state(sig);
    let h = act.sa_sigaction;
    if h <= libc::SIG_IGN || h == trampoline_addr() {
        return (*act, saved);
    }
    SIGINFO[i].store(act.sa_flags & libc::SA_SIGINFO != 0, Ordering::Release);
    HANDLERS[i].store(h, Ordering::Release);
    let mut copy = *act;
    copy.sa_sigaction = trampoline_addr();
    copy.sa_flags |= libc::SA_SIGINFO;
    (copy, saved)
}

/// The program's handler of `sig` recorded by [`wrap`], and whether it takes
/// `SA_SIGINFO` arguments.
pub fn wrap_state(sig: c_int) -> (usize, bool) {
    let i = sig as usize;
    (
        HANDLERS[i].load(Ordering::Acquire),
        SIGINFO[i].load(Ordering::Acquire),
    )
}

/// Puts back what [`wrap`] recorded for `sig`.
pub fn restore(sig: c_int, (h, info): (usize, bool)) {
    let i = sig as usize;
    SIGINFO[i].store(info, Ordering::Release);
    HANDLERS[i].store(h, Ordering::Release);
}

/// Rewrites an old action the kernel reported: [`trampoline`] becomes the program's
/// handler recorded before (`saved`).
pub fn unwrap_old(old: &mut libc::sigaction, (h, info): (usize, bool)) {
    if old.sa_sigaction == trampoline_addr() {
        old.sa_sigaction = h;
        if !info {
            old.sa_flags &= !libc::SA_SIGINFO;
        }
    }
}

/// Whether `sig` is one [`wrap`] handles.
pub fn wrappable(sig: c_int) -> bool {
    usize::try_from(sig).is_ok_and(|i| (1..NSIG).contains(&i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_writes_come_out_in_order_and_the_buffer_empties() {
        let d = Deferred::new();
        assert!(!d.pending());
        assert!(d.push(3, 30, 3, [&b"one"[..]]));
        assert!(d.push(4, 40, 3, [&b"t"[..], &b"wo"[..]]));
        let mut got = Vec::new();
        d.take(|slot, id, b| got.push((slot, id, b.to_vec())));
        assert_eq!(
            got,
            vec![(3, 30, b"one".to_vec()), (4, 40, b"two".to_vec())]
        );
        assert!(!d.pending());
        // Reusable from the start once taken.
        assert!(d.push(5, 50, DEFERRED_BYTES, [&[7; DEFERRED_BYTES][..]]));
        assert!(!d.push(5, 50, 1, [&b"x"[..]]), "full: bytes");
        let mut n = 0;
        d.take(|_, _, b| n += b.len());
        assert_eq!(n, DEFERRED_BYTES);
        for i in 0..DEFERRED_WRITES {
            assert!(d.push(1, 1, 1, [&[i as u8][..]]));
        }
        assert!(!d.push(1, 1, 1, [&b"y"[..]]), "full: writes");
    }

    #[test]
    fn writes_pushed_while_taking_are_taken_too() {
        let d = Deferred::new();
        d.push(1, 1, 1, [&b"a"[..]]);
        let mut got = Vec::new();
        let mut once = true;
        d.take(|_, _, b| {
            got.push(b.to_vec());
            if once {
                // A handler that runs while the thread takes the buffer.
                once = false;
                assert!(d.push(2, 2, 1, [&b"b"[..]]));
            }
        });
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()]);
        assert!(!d.pending());
    }

    #[test]
    fn wrap_records_the_handler_and_unwrap_reports_it() {
        extern "C" fn h(_: c_int) {}
        let h_addr = h as *const () as usize;
        // SAFETY: a zeroed sigaction is a valid value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = h_addr;
        let (installed, saved) = wrap(libc::SIGUSR2, &act);
        assert_eq!(installed.sa_sigaction, trampoline_addr());
        assert_ne!(installed.sa_flags & libc::SA_SIGINFO, 0);
        let mut old = installed;
        unwrap_old(&mut old, (h_addr, false));
        assert_eq!(old.sa_sigaction, h_addr);
        assert_eq!(old.sa_flags & libc::SA_SIGINFO, 0);
        restore(libc::SIGUSR2, saved);
        // SIG_IGN and SIG_DFL are installed as they are.
        act.sa_sigaction = libc::SIG_IGN;
        assert_eq!(wrap(libc::SIGUSR2, &act).0.sa_sigaction, libc::SIG_IGN);
    }
}
