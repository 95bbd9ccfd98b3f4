// SPDX-License-Identifier: GPL-2.0

//! A context: one open of `/dev/fastio`, bound to the process that opened it.
//!
//! Lock order (outer first): `Context::state` → `Shared::files`. `Shared::cq_lock` and
//! `Lane::sleep` are leaves.

use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use kernel::{
    alloc::flags::{__GFP_ZERO, GFP_KERNEL, GFP_KERNEL_ACCOUNT},
    bindings,
    fs::{file::FileDescriptorReservation, File, LocalFile},
    mm::{virt::VmaNew, Mm},
    new_condvar, new_mutex,
    page::{AsPageIter, PAGE_SIZE},
    prelude::*,
    sync::{aref::ARef, Arc, CondVar, CondVarTimeoutResult, Mutex},
    task::Pid,
    time::msecs_to_jiffies,
    transmute::{AsBytes, FromBytes},
    uaccess::{UserPtr, UserSlice, UserSliceReader, UserSliceWriter},
};

use crate::abi;
use crate::io::{Owner, Pending};
use crate::worker::{self, Lane, RingView};

// SAFETY: these ABI structs are `#[repr(C)]`, made only of integers, and have no padding
// (their sizes and offsets are asserted in abi.rs), so every bit pattern is a valid value
// and every byte is initialised.
unsafe impl FromBytes for abi::SetupParams {}
// SAFETY: as above.
unsafe impl AsBytes for abi::SetupParams {}
// SAFETY: as above.
unsafe impl FromBytes for abi::EnterArgs {}
// SAFETY: as above.
unsafe impl FromBytes for abi::FilesUpdate {}
// SAFETY: as above.
unsafe impl FromBytes for abi::SlotArg {}
// SAFETY: as above.
unsafe impl AsBytes for abi::Stats {}

/// Contexts that completed SETUP, system wide (bounded by `max_contexts`).
static CONTEXTS: AtomicU32 = AtomicU32::new(0);

/// Notices about refused requests printed so far; capped so that a looping program
/// cannot flood the log.
static NOTICES: AtomicU32 = AtomicU32::new(0);
const MAX_NOTICES: u32 = 20;

/// Largest ring mapping of one context (all lanes).
const MAX_MMAP_BYTES: u64 = 256 << 20;

/// Longest idle spin a worker may be configured with (ten minutes).
const MAX_IDLE_MS: u32 = 600_000;

/// One counted context; gives its place back when dropped.
struct ContextSlot;

impl ContextSlot {
    fn acquire() -> Result<Self> {
        let max = crate::module_parameters::max_contexts.value();
        if CONTEXTS.fetch_add(1, Ordering::SeqCst) >= max {
            CONTEXTS.fetch_sub(1, Ordering::SeqCst);
            return Err(EMFILE);
        }
        Ok(ContextSlot)
    }
}

impl Drop for ContextSlot {
    fn drop(&mut self) {
        CONTEXTS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Per-open state.
#[pin_data]
pub(crate) struct Context {
    /// Thread group that opened the device.
    owner: Pid,
    /// The opener's address space (a grab, not a user: it keeps nothing mapped alive);
    /// only compared against, to refuse every other process.
    mm: ARef<Mm>,
    /// The lanes once SETUP ran.
    #[pin]
    state: Mutex<Option<Arc<Setup>>>,
}

impl Context {
    pub(crate) fn new() -> Result<Arc<Self>> {
        let cur = kernel::current!();
        let mm: &Mm = cur.mm().ok_or(EINVAL)?;
        let mm = ARef::from(mm);
        let owner = cur.tgid();
        Arc::pin_init(
            pin_init!(Context {
                owner,
                mm,
                state <- new_mutex!(None),
            }),
            GFP_KERNEL,
        )
    }

    /// A context serves only the process that created it: a child after fork(), or a
    /// process that received the descriptor over a socket, gets EPERM.
    pub(crate) fn check_owner(&self) -> Result {
        let cur = kernel::current!();
        let same_mm = cur.mm().is_some_and(|m| m.as_raw() == self.mm.as_raw());
        if !same_mm {
            if NOTICES.fetch_add(1, Ordering::Relaxed) < MAX_NOTICES {
                pr_notice!(
                    "fastio: pid {} used a context of pid {}: refused\n",
                    cur.tgid(),
                    self.owner
                );
            }
            return Err(EPERM);
        }
        Ok(())
    }

    fn setup_ref(&self) -> Result<Arc<Setup>> {
        self.state.lock().clone().ok_or(EINVAL)
    }

    /// Last close: stop the workers, drop the file references and the ring memory.
    pub(crate) fn teardown(&self) {
        let setup = self.state.lock().take();
        drop(setup);
    }

    pub(crate) fn setup(&self, mut reader: UserSliceReader, mut writer: UserSliceWriter) -> Result {
        let mut p: abi::SetupParams = reader.read()?;
        let mut state = self.state.lock();
        if state.is_some() {
            return Err(EBUSY);
        }
        let layout = validate_setup(&p)?;
        let owner = Owner::current(self.mm.clone())?;
        let setup = Setup::new(&p, layout, self.owner, owner)?;
        p.lane_size = layout.lane_size;
        p.mmap_size = layout.lane_size * p.workers as u64;
        p.sq_off = layout.sq_off;
        p.sqes_off = layout.sqes_off;
        p.cq_off = layout.cq_off;
        p.cqes_off = layout.cqes_off;
        p.resv_out = [0; 4];
        // On a failed copy-out the new setup is dropped here: workers stop, memory goes.
        writer.write(&p)?;
        *state = Some(setup);
        Ok(())
    }

    pub(crate) fn mmap(&self, vma: &VmaNew) -> Result {
        self.check_owner()?;
        let setup = self.setup_ref()?;
        let shared = &setup.shared;
        // SAFETY: the VMA is being set up by mmap and valid for this call.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff };
        if pgoff != 0 || (vma.end() - vma.start()) as u64 != shared.mmap_size {
            return Err(EINVAL);
        }
        vma.try_clear_mayexec()?;
        vma.set_dontcopy();
        vma.set_dontexpand();
        let mixed = vma.set_mixedmap();
        let mut mem = shared.mem.lock();
        let mut addr = vma.start();
        for page in mem.page_iter() {
            if addr >= vma.end() {
                break;
            }
            mixed.vm_insert_page(addr, &page)?;
            addr += PAGE_SIZE;
        }
        Ok(())
    }

    pub(crate) fn enter(&self, mut reader: UserSliceReader) -> Result<isize> {
        let a: abi::EnterArgs = reader.read()?;
        if a.flags & !abi::ENTER_FLAGS != 0 || a.resv != 0 {
            return Err(EINVAL);
        }
        let setup = self.setup_ref()?;
        if a.flags & abi::ENTER_SQ_WAKEUP != 0 {
            if a.lane == abi::LANE_ALL {
                setup.lanes.iter().for_each(|l| l.wake());
            } else {
                setup.lanes.get(a.lane as usize).ok_or(EINVAL)?.wake();
            }
        }
        if a.flags & abi::ENTER_GETEVENTS != 0 {
            setup
                .shared
                .wait_cq(&setup.lanes, a.min_complete, a.timeout_ns)?;
        }
        Ok(0)
    }

    pub(crate) fn register_files(&self, mut reader: UserSliceReader) -> Result<isize> {
        let u: abi::FilesUpdate = reader.read()?;
        let setup = self.setup_ref()?;
        let max = setup.shared.params.max_files;
        if u.resv != 0 || u.count == 0 || u.count > max {
            return Err(EINVAL);
        }
        let n = u.count as usize;
        let fds = read_u32s(u.fds, n)?;
        let slots = read_u32s(u.slots, n)?;
        // Slots in range and distinct.
        let mut sorted = KVVec::with_capacity(n, GFP_KERNEL)?;
        for &s in slots.iter() {
            if s >= max {
                return Err(EBADF);
            }
            sorted.push(s, GFP_KERNEL)?;
        }
        sorted.sort_unstable();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(EINVAL);
        }
        // Take every file reference before changing anything: all or nothing.
        let mut files = KVVec::with_capacity(n, GFP_KERNEL)?;
        for &fd in fds.iter() {
            if fd as i32 <= -1 {
                return Err(EBADF);
            }
            let local = LocalFile::fget(fd).map_err(|_| EBADF)?;
            // SAFETY: this runs in an ioctl of another file, which never holds
            // fdget_pos on this thread.
            let file = unsafe { LocalFile::assume_no_fdget_pos(local) };
            files.push(file, GFP_KERNEL)?;
        }
        let mut table = setup.shared.files.lock();
        if slots.iter().any(|&s| table[s as usize].is_some()) {
            return Err(EBUSY);
        }
        for (file, &s) in files.into_iter().zip(slots.iter()) {
            table[s as usize] = Some(file);
        }
        Ok(0)
    }

    pub(crate) fn unregister_file(&self, mut reader: UserSliceReader) -> Result<isize> {
        let a: abi::SlotArg = reader.read()?;
        if a.flags != 0 {
            return Err(EINVAL);
        }
        let setup = self.setup_ref()?;
        let old = {
            let mut table = setup.shared.files.lock();
            table.get_mut(a.slot as usize).ok_or(EBADF)?.take()
        };
        // The reference (if any) is dropped outside the lock.
        old.map(|_| 0).ok_or(EBADF)
    }

    pub(crate) fn stats(&self, mut writer: UserSliceWriter) -> Result<isize> {
        let setup = self.setup_ref()?;
        let st = &setup.shared.stats;
        let out = abi::Stats {
            ops: st.ops.load(Ordering::Relaxed),
            parked: st.parked.load(Ordering::Relaxed),
            wakeups: st.wakeups.load(Ordering::Relaxed),
            offloaded: st.offloaded.load(Ordering::Relaxed),
            pending: setup.shared.pending.lock().len() as u64,
            resv: [0; 3],
        };
        writer.write(&out)?;
        Ok(0)
    }

    pub(crate) fn install_fd(&self, mut reader: UserSliceReader) -> Result<isize> {
        let a: abi::SlotArg = reader.read()?;
        if a.flags & !abi::INSTALL_CLOEXEC != 0 {
            return Err(EINVAL);
        }
        let setup = self.setup_ref()?;
        let file = setup.shared.file(a.slot).ok_or(EBADF)?;
        let res = FileDescriptorReservation::get_unused_fd_flags(a.flags)?;
        let fd = res.reserved_fd();
        res.fd_install(file);
        Ok(fd as isize)
    }
}

/// Reads `n` u32 values from user memory at `addr`.
fn read_u32s(addr: u64, n: usize) -> Result<KVVec<u32>> {
    let bytes_len = n.checked_mul(4).ok_or(EINVAL)?;
    let mut bytes = KVVec::from_elem(0u8, bytes_len, GFP_KERNEL)?;
    UserSlice::new(UserPtr::from_addr(addr as usize), bytes_len)
        .reader()
        .read_slice(&mut bytes)?;
    let mut out = KVVec::with_capacity(n, GFP_KERNEL)?;
    for c in bytes.chunks_exact(4) {
        out.push(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]), GFP_KERNEL)?;
    }
    Ok(out)
}

/// Checks a SETUP request; returns the lane layout.
fn validate_setup(p: &abi::SetupParams) -> Result<abi::LaneLayout> {
    if p.abi_version != abi::ABI_VERSION {
        if NOTICES.fetch_add(1, Ordering::Relaxed) < MAX_NOTICES {
            pr_notice!(
                "fastio: SETUP with ABI version {}, this module speaks {}\n",
                p.abi_version,
                abi::ABI_VERSION
            );
        }
        return Err(EINVAL);
    }
    if p.workers == 0 || p.workers > abi::MAX_WORKERS {
        return Err(EINVAL);
    }
    if p.workers > crate::module_parameters::max_workers.value() {
        return Err(E2BIG);
    }
    let sizes_ok = abi::valid_entries(p.sq_entries) && abi::valid_entries(p.cq_entries);
    let files_ok = p.max_files != 0 && p.max_files <= abi::MAX_FILES;
    let idle_ok = p.idle_ms != 0 && p.idle_ms <= MAX_IDLE_MS;
    let resv_ok = p.resv_in.iter().all(|&r| r == 0) && p.flags & !abi::SETUP_FLAGS == 0;
    if !(sizes_ok && files_ok && idle_ok && resv_ok) {
        return Err(EINVAL);
    }
    let layout = abi::lane_layout(p.sq_entries, p.cq_entries);
    if layout.lane_size * p.workers as u64 > MAX_MMAP_BYTES {
        return Err(EINVAL);
    }
    Ok(layout)
}

/// Counters behind `FASTIO_GET_STATS`.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) ops: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) wakeups: AtomicU64,
    pub(crate) offloaded: AtomicU64,
}

/// What the workers and the ioctls share once SETUP ran.
#[pin_data]
pub(crate) struct Shared {
    /// The validated SETUP parameters.
    pub(crate) params: abi::SetupParams,
    /// Who requests run as.
    pub(crate) owner: Owner,
    pub(crate) stats: Stats,
    /// Requests waiting for readiness or a workqueue worker.
    #[pin]
    pub(crate) pending: Mutex<KVec<Arc<Pending>>>,
    pub(crate) layout: abi::LaneLayout,
    pub(crate) mmap_size: u64,
    /// The ring memory (vmalloc pages, charged to the process); locked only to hand
    /// its pages to mmap.
    #[pin]
    mem: Mutex<VVec<u8>>,
    /// Start of `mem`: stable, as the vector is never resized.
    base: *mut u8,
    /// Registered files by slot.
    #[pin]
    pub(crate) files: Mutex<KVVec<Option<ARef<File>>>>,
    /// `ENTER(GETEVENTS)` callers sleeping on `cq_cv`.
    pub(crate) cq_waiters: AtomicU32,
    #[pin]
    pub(crate) cq_lock: Mutex<()>,
    #[pin]
    pub(crate) cq_cv: CondVar,
}

// SAFETY: `base` points into `mem`, which `Shared` owns and never resizes; the ring
// memory is only accessed through atomics and volatile copies (see worker.rs), and the
// rest of `Shared` is made of Send + Sync parts.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    /// Raw view of lane `i` of the ring memory.
    pub(crate) fn lane_view(&self, i: u32) -> RingView {
        let off = |o: u32| i as usize * self.layout.lane_size as usize + o as usize;
        // SAFETY: lane_layout keeps every part of lane `i` inside its lane_size bytes,
        // and `mem` holds workers * lane_size bytes (validated at SETUP).
        unsafe {
            RingView::new(
                self.base.add(off(self.layout.sq_off)),
                self.base.add(off(self.layout.sqes_off)),
                self.base.add(off(self.layout.cq_off)),
                self.base.add(off(self.layout.cqes_off)),
                self.params.sq_entries,
                self.params.cq_entries,
            )
        }
    }

    /// The file in `slot`, as a new reference.
    pub(crate) fn file(&self, slot: u32) -> Option<ARef<File>> {
        self.files.lock().get(slot as usize).and_then(|f| f.clone())
    }

    /// Puts a new file (an accepted connection) into the empty `dest`.
    pub(crate) fn install(&self, dest: u32, file: ARef<File>) -> core::result::Result<(), i32> {
        let mut table = self.files.lock();
        match table.get_mut(dest as usize) {
            Some(s @ None) => {
                *s = Some(file);
                Ok(())
            }
            Some(Some(_)) => Err(-(bindings::EBUSY as i32)),
            None => Err(-(bindings::EBADF as i32)),
        }
    }

    pub(crate) fn track(&self, p: &Arc<Pending>) -> Result {
        self.pending.lock().push(p.clone(), GFP_KERNEL)?;
        Ok(())
    }

    pub(crate) fn untrack(&self, p: &Arc<Pending>) {
        let old = {
            let mut list = self.pending.lock();
            let pos = list.iter().position(|q| Arc::ptr_eq(q, p));
            pos.and_then(|i| list.remove(i).ok())
        };
        // The list's reference is dropped outside the lock.
        drop(old);
    }

    /// Cancels the waiting requests on `slot` (or all with `None`); each completes
    /// (-ECANCELED, or its own result if it won the race) before this returns.
    pub(crate) fn cancel_slot(&self, slot: u32) {
        self.cancel_where(|p| p.slot() == Some(slot));
    }

    pub(crate) fn cancel_all(&self) {
        self.cancel_where(|_| true);
    }

    fn cancel_where(&self, pred: impl Fn(&Pending) -> bool) {
        loop {
            // Pick one at a time: cancelling takes the list lock (untrack).
            let next = self.pending.lock().iter().find(|p| pred(p)).cloned();
            match next {
                Some(p) => Pending::cancel(&p),
                None => return,
            }
        }
    }

    /// Empties `slot`; true if it held a file.
    pub(crate) fn close_slot(&self, slot: u32) -> bool {
        let old = self
            .files
            .lock()
            .get_mut(slot as usize)
            .and_then(Option::take);
        // The file reference is dropped after the lock (fput from a kthread is deferred).
        old.is_some()
    }

    /// Called by a worker after posting completions.
    pub(crate) fn notify_cq(&self) {
        // Pairs with the SeqCst increment of `cq_waiters` in `wait_cq` before it
        // re-checks the rings: either the waiter sees our tail or we see the waiter.
        fence(Ordering::SeqCst);
        if self.cq_waiters.load(Ordering::Relaxed) != 0 {
            let _g = self.cq_lock.lock();
            self.cq_cv.notify_all();
        }
    }

    fn wait_cq(&self, lanes: &KVec<Arc<Lane>>, min: u32, timeout_ns: u64) -> Result {
        let ready = || -> u64 { lanes.iter().map(|l| l.ring.cq_ready() as u64).sum() };
        if ready() >= min as u64 {
            return Ok(());
        }
        let mut left = if timeout_ns == abi::TIMEOUT_NONE {
            None
        } else {
            let ms = timeout_ns.div_ceil(1_000_000).min(u32::MAX as u64) as u32;
            Some(msecs_to_jiffies(ms))
        };
        self.cq_waiters.fetch_add(1, Ordering::SeqCst);
        let mut guard = self.cq_lock.lock();
        let mut result = Ok(());
        while ready() < min as u64 {
            match left {
                None => {
                    if self.cq_cv.wait_interruptible(&mut guard) {
                        result = Err(EINTR);
                        break;
                    }
                }
                Some(j) => match self.cq_cv.wait_interruptible_timeout(&mut guard, j) {
                    CondVarTimeoutResult::Timeout => {
                        if ready() < min as u64 {
                            result = Err(ETIME);
                        }
                        break;
                    }
                    CondVarTimeoutResult::Signal { .. } => {
                        result = Err(EINTR);
                        break;
                    }
                    CondVarTimeoutResult::Woken { jiffies } => left = Some(jiffies),
                },
            }
        }
        drop(guard);
        self.cq_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// The lanes and workers of a context.
pub(crate) struct Setup {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lanes: KVec<Arc<Lane>>,
    /// The workers' tasks, each with a reference of ours (dropped by kthread_stop_put).
    tasks: KVec<*mut bindings::task_struct>,
    _slot: ContextSlot,
}

// SAFETY: the task pointers are only handed to kthread_stop_put, once, in Drop; we hold
// a reference on each task, so they stay valid from any thread.
unsafe impl Send for Setup {}
// SAFETY: `&Setup` never touches `tasks`.
unsafe impl Sync for Setup {}

impl Setup {
    fn new(
        p: &abi::SetupParams,
        layout: abi::LaneLayout,
        pid: Pid,
        owner: Owner,
    ) -> Result<Arc<Self>> {
        let slot = ContextSlot::acquire()?;
        let mmap_size = layout.lane_size * p.workers as u64;
        let mut mem =
            VVec::<u8>::with_capacity(mmap_size as usize, GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
        mem.resize(mmap_size as usize, 0, GFP_KERNEL_ACCOUNT)?;
        let base = mem.as_mut_ptr();
        let files = KVVec::from_elem(None, p.max_files as usize, GFP_KERNEL_ACCOUNT)?;
        let params = *p;
        let shared = Arc::pin_init(
            pin_init!(Shared {
                params,
                owner,
                stats: Stats::default(),
                pending <- new_mutex!(KVec::new()),
                layout,
                mmap_size,
                mem <- new_mutex!(mem),
                base,
                files <- new_mutex!(files),
                cq_waiters: AtomicU32::new(0),
                cq_lock <- new_mutex!(()),
                cq_cv <- new_condvar!(),
            }),
            GFP_KERNEL_ACCOUNT,
        )?;
        let mut lanes = KVec::with_capacity(p.workers as usize, GFP_KERNEL)?;
        for i in 0..p.workers {
            let view = shared.lane_view(i);
            view.init_info(i);
            lanes.push(Lane::new(i, shared.clone(), view)?, GFP_KERNEL)?;
        }
        let mut setup = Setup {
            shared,
            lanes,
            tasks: KVec::with_capacity(p.workers as usize, GFP_KERNEL)?,
            _slot: slot,
        };
        let affinity = (p.flags & abi::SETUP_AFFINITY != 0).then_some(p.affinity_offset);
        for i in 0..p.workers as usize {
            let task = worker::spawn(&setup.lanes[i], pid, affinity)?;
            // Capacity was reserved above, so this cannot fail; if it did, the worker
            // would never be stopped, so stop it right here.
            if let Err(e) = setup.tasks.push(task, GFP_KERNEL) {
                setup.lanes[i].request_stop();
                // SAFETY: `task` is a live worker we hold a reference on.
                unsafe { bindings::kthread_stop_put(task) };
                return Err(e.into());
            }
        }
        Ok(Arc::new(setup, GFP_KERNEL)?)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for lane in self.lanes.iter() {
            lane.request_stop();
        }
        for &task in self.tasks.iter() {
            // SAFETY: each task is a worker created by us with a reference we hold; it
            // returns once it sees its stop flag; this drops our reference.
            unsafe { bindings::kthread_stop_put(task) };
        }
        // No worker runs now: take every waiting request off its wait queues and
        // let queued work finish, before the memory they touch goes away.
        self.shared.cancel_all();
    }
}
