// SPDX-License-Identifier: GPL-2.0

//! What a context costs its user, and the limits that keep an unprivileged user from
//! denying the module (or the machine) to others:
//! - contexts: at most `max_contexts` in the system and `max_user_contexts` per user
//!   (`-EMFILE`); a user with `CAP_SYS_RESOURCE` is held only to the global limit;
//! - ring memory: counted in the user's `locked_vm` against `RLIMIT_MEMLOCK` unless the
//!   caller has `CAP_IPC_LOCK`, exactly as io_uring accounts its rings (`-ENOMEM`); it
//!   is also charged to the caller's memory cgroup (`GFP_KERNEL_ACCOUNT`, in context.rs).
//!
//! Lock order: `USERS` is a leaf.

use core::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use kernel::{alloc::flags::GFP_KERNEL, bindings, prelude::*};

use crate::sys;

kernel::sync::global_lock! {
    // SAFETY: initialised in the module initialiser (`init`) before the device exists.
    unsafe(uninit) static USERS: Mutex<KVec<(usize, u32)>> = KVec::new();
}

/// Initialises the global state.
///
/// # Safety
///
/// Called exactly once, before any context can be created.
pub(crate) unsafe fn init() {
    // SAFETY: forwarded to the caller: once, before first use.
    unsafe { USERS.init() };
}

/// Contexts set up, system wide.
static CONTEXTS: AtomicU32 = AtomicU32::new(0);

/// The charges of one context, given back when dropped.
pub(crate) struct Charge {
    /// The user, with a reference of ours.
    user: *mut bindings::user_struct,
    /// Pages counted in the user's `locked_vm` (0 when not accounted).
    pages: u64,
}

// SAFETY: `user` is a counted reference to a `user_struct`, which may be used and put
// from any thread; `locked_vm` is only touched atomically.
unsafe impl Send for Charge {}
// SAFETY: `&Charge` gives access to nothing.
unsafe impl Sync for Charge {}

impl Charge {
    /// Charges a new context with `bytes` of ring memory to the caller.
    pub(crate) fn new(bytes: u64) -> Result<Self> {
        let max = crate::module_parameters::max_contexts.value();
        if CONTEXTS.fetch_add(1, Ordering::SeqCst) >= max {
            CONTEXTS.fetch_sub(1, Ordering::SeqCst);
            return Err(EMFILE);
        }
        // SAFETY: returns a counted reference to the caller's user.
        let user = unsafe { sys::fastio_get_current_user() };
        // From here on, dropping `charge` gives back what was taken.
        let mut charge = Charge { user, pages: 0 };
        charge.count_user()?;
        if !sys::can_lock_memory() {
            let pages = bytes.div_ceil(kernel::page::PAGE_SIZE as u64);
            charge.lock_pages(pages)?;
        }
        Ok(charge)
    }

    fn count_user(&mut self) -> Result {
        let max = crate::module_parameters::max_user_contexts.value();
        // SAFETY: a capability check of the current task.
        let exempt = unsafe { bindings::capable(bindings::CAP_SYS_RESOURCE as i32) };
        let mut users = USERS.lock();
        let key = self.user as usize;
        match users.iter_mut().find(|(u, _)| *u == key) {
            Some((_, n)) if *n >= max && !exempt => {
                drop(users);
                // Not counted: undo only the global count (Drop would undo both).
                self.pages = u64::MAX;
                Err(EMFILE)
            }
            Some((_, n)) => {
                *n += 1;
                Ok(())
            }
            None => {
                let r = users.push((key, 1), GFP_KERNEL);
                if r.is_err() {
                    self.pages = u64::MAX;
                }
                Ok(r?)
            }
        }
    }

    fn lock_pages(&mut self, pages: u64) -> Result {
        let limit = sys::rlimit_memlock() / kernel::page::PAGE_SIZE as u64;
        // SAFETY: `user` is held; `locked_vm` is an atomic_long_t, a `long` that the
        // kernel only accesses atomically, as we do through `AtomicI64` (same size and
        // alignment on 64-bit).
        let locked = unsafe { AtomicI64::from_ptr(sys::fastio_user_locked_vm(self.user).cast()) };
        let mut cur = locked.load(Ordering::Relaxed);
        loop {
            let new = (cur.max(0) as u64).saturating_add(pages);
            if new > limit {
                return Err(ENOMEM);
            }
            match locked.compare_exchange_weak(cur, new as i64, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.pages = pages;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        // `pages == u64::MAX` marks a charge that failed before the user was counted.
        if self.pages != u64::MAX {
            if self.pages != 0 {
                // SAFETY: as in `lock_pages`.
                let locked =
                    unsafe { AtomicI64::from_ptr(sys::fastio_user_locked_vm(self.user).cast()) };
                locked.fetch_sub(self.pages as i64, Ordering::SeqCst);
            }
            let mut users = USERS.lock();
            let key = self.user as usize;
            if let Some(i) = users.iter().position(|(u, _)| *u == key) {
                users[i].1 = users[i].1.saturating_sub(1);
                if users[i].1 == 0 {
                    let last = users.len() - 1;
                    users.swap(i, last);
                    users.pop();
                }
            }
        }
        CONTEXTS.fetch_sub(1, Ordering::SeqCst);
        // SAFETY: gives back the reference taken in `new`.
        unsafe { bindings::free_uid(self.user) };
    }
}
