//! SIGINT/SIGTERM → a shutdown flag that the serving loops poll.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static SHUTDOWN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SHUTDOWN.store(true, Ordering::SeqCst);
}

/// Installs handlers for SIGINT and SIGTERM that set the returned flag, and ignores
/// SIGPIPE (a peer that disappears must give EPIPE, not kill the server).
pub fn shutdown_flag() -> io::Result<&'static AtomicBool> {
    // SAFETY: a zeroed sigaction with an extern "C" handler that only does an atomic
    // store; no SA_RESTART, so blocking calls return EINTR and loops re-check the flag.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    Ok(&SHUTDOWN)
}
