// SPDX-License-Identifier: GPL-2.0

//! A context: one open of `/dev/fastio`, bound to the process that opened it, and the
//! ioctls on it.
//!
//! Lock order (outer first): `Context::state` → `Lane::round` → `Shared::pendings` → leaves
//! (`Shared::files`, `Jobs::inner`, lane CQ locks, `Shared::cq_lock`, `limits::USERS`).
//! `Context::state` is only held to read or swap the `Arc<Setup>`.

use core::sync::atomic::{AtomicU32, Ordering};

use kernel::{
    alloc::flags::{GFP_KERNEL, GFP_KERNEL_ACCOUNT},
    fs::{file::FileDescriptorReservation, File, LocalFile},
    mm::{virt::VmaNew, Mm},
    new_mutex,
    page::{AsPageIter, PAGE_SIZE},
    prelude::*,
    sync::{aref::ARef, Arc, Mutex},
    task::Pid,
    transmute::{AsBytes, FromBytes},
    uaccess::{UserPtr, UserSlice, UserSliceReader, UserSliceWriter},
};

use crate::abi;
use crate::helper;
use crate::inline;
use crate::lane::Lane;
use crate::limits::Charge;
use crate::shared::Shared;

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
unsafe impl FromBytes for abi::ThreadArg {}
// SAFETY: as above.
unsafe impl AsBytes for abi::Stats {}
// SAFETY: as above.
unsafe impl FromBytes for abi::BufRingReg {}
// SAFETY: as above.
unsafe impl FromBytes for abi::BufGroupArg {}

/// Notices about refused requests printed so far; capped so that a looping program
/// cannot flood the log.
static NOTICES: AtomicU32 = AtomicU32::new(0);
const MAX_NOTICES: u32 = 20;

/// Largest ring mapping of one context (all lanes).
const MAX_MMAP_BYTES: u64 = 256 << 20;

/// Helper threads allowed when SETUP asks for the default (0).
const DEFAULT_HELPERS: u32 = 2;

fn notice_allowed() -> bool {
    NOTICES.fetch_add(1, Ordering::Relaxed) < MAX_NOTICES
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
            if notice_allowed() {
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

    /// Last close (no ioctl of this file runs any more, so no lane or helper thread
    /// does): cancel what waits, drop the file references and the ring memory.
    pub(crate) fn teardown(&self) {
        let setup = self.state.lock().take();
        if let Some(setup) = setup {
            setup.teardown();
        }
    }

    pub(crate) fn setup(
        &self,
        own: &File,
        mut reader: UserSliceReader,
        mut writer: UserSliceWriter,
    ) -> Result {
        let mut p: abi::SetupParams = reader.read()?;
        if self.state.lock().is_some() {
            return Err(EBUSY);
        }
        let layout = validate_setup(&mut p)?;
        // SAFETY: our own file is held; `f_op` is fixed once a file is open (and is the
        // device's, static, for as long as the module is loaded).
        let fops = unsafe { (*own.as_ptr()).f_op };
        let setup = Setup::new(&p, layout, fops)?;
        p.lane_size = layout.lane_size;
        p.mmap_size = setup.shared.mmap_size;
        p.sq_off = layout.sq_off;
        p.sqes_off = layout.sqes_off;
        p.cq_off = layout.cq_off;
        p.cqes_off = layout.cqes_off;
        p.resv_out = [0; 4];
        // The copy-out may fault, taking mmap_lock, which mmap() holds while it takes
        // `state`: so `state` is never held here. On a failed copy the new setup is
        // dropped: memory and charges go.
        writer.write(&p)?;
        let mut state = self.state.lock();
        if state.is_some() {
            // A concurrent SETUP won.
            return Err(EBUSY);
        }
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
        let defer = a.flags & abi::ENTER_DEFER != 0;
        if defer && a.flags & abi::ENTER_INLINE == 0 {
            return Err(EINVAL);
        }
        if a.flags & abi::ENTER_INLINE != 0 {
            let inline = &setup.shared.inline;
            inline.used.store(true, Ordering::Relaxed);
            let lanes: &[Arc<Lane>] = if a.lane == abi::LANE_ALL {
                &setup.lanes
            } else {
                let i = a.lane as usize;
                setup.lanes.get(i..=i).ok_or(EINVAL)?
            };
            // Requests deferred to this call run first, on every lane whose thread
            // sleeps (ENTER_DEFER); those rounds take the addressed lanes' SQEs too.
            if inline.defer.swap(false, Ordering::SeqCst) {
                inline::submit(&setup.lanes);
            } else if a.flags & abi::ENTER_SQ_WAKEUP != 0 {
                inline::submit(lanes);
            }
            let r = if a.flags & abi::ENTER_GETEVENTS != 0 {
                // Completions are counted over every lane, as without INLINE; the
                // rounds run on every lane too.
                inline::wait(
                    &setup.shared,
                    &setup.lanes,
                    a.min_complete,
                    a.timeout_ns,
                    defer,
                )
            } else {
                // (A wait sets it itself, before its last look at the ports.)
                if defer {
                    inline.defer.store(true, Ordering::SeqCst);
                }
                Ok(())
            };
            return r.map(|()| 0);
        }
        if a.flags & abi::ENTER_SQ_WAKEUP != 0 {
            if a.lane == abi::LANE_ALL {
                setup.lanes.iter().for_each(|l| l.kick());
            } else {
                setup.lanes.get(a.lane as usize).ok_or(EINVAL)?.kick();
            }
        }
        if a.flags & abi::ENTER_GETEVENTS != 0 {
            // A lane that stopped on a full CQ may have room again now (for SQEs, or
            // for the last completions of multishot requests it keeps back).
            for lane in setup
                .lanes
                .iter()
                .filter(|l| l.sq_runnable() || l.backlog_flushable())
            {
                lane.kick();
            }
            let lanes = &setup.lanes;
            let ready = || -> u64 { lanes.iter().map(|l| l.ring.cq_ready() as u64).sum() };
            setup.shared.wait_cq(ready, a.min_complete, a.timeout_ns)?;
        }
        Ok(0)
    }

    pub(crate) fn register_files(&self, own: &File, mut reader: UserSliceReader) -> Result<isize> {
        let u: abi::FilesUpdate = reader.read()?;
        let setup = self.setup_ref()?;
        let max = setup.shared.params.max_files;
        if u.resv != 0 || u.count == 0 || u.count > max {
            return Err(EINVAL);
        }
        let n = u.count as usize;
        let fds = read_u32s(u.fds, n)?;
        let slots = read_u32s(u.slots, n)?;
        // Slots in range and distinct (a bitmap of the slots seen).
        let mut seen = KVVec::from_elem(0u64, (max as usize).div_ceil(64), GFP_KERNEL)?;
        for &s in slots.iter() {
            if s >= max {
                return Err(EBADF);
            }
            let (word, bit) = ((s / 64) as usize, 1u64 << (s % 64));
            let w = seen.get_mut(word).ok_or(EBADF)?;
            if *w & bit != 0 {
                return Err(EINVAL);
            }
            *w |= bit;
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
            // SAFETY: our own file is held; `f_op` is fixed once a file is open.
            let fops = unsafe { (*own.as_ptr()).f_op };
            if crate::sys::refused_in_slot(&file, fops) {
                return Err(EBADF);
            }
            files.push(file, GFP_KERNEL)?;
        }
        let mut table = setup.shared.files.lock();
        if slots.iter().any(|&s| !table.is_empty(s)) {
            return Err(EBUSY);
        }
        for (file, &s) in files.into_iter().zip(slots.iter()) {
            table.put(s, file);
        }
        Ok(0)
    }

    pub(crate) fn unregister_file(&self, mut reader: UserSliceReader) -> Result<isize> {
        let a: abi::SlotArg = reader.read()?;
        if a.flags != 0 {
            return Err(EINVAL);
        }
        let setup = self.setup_ref()?;
        let old = setup.shared.files.lock().take(a.slot).ok_or(EBADF)?;
        // As with io_uring's fixed files, requests in flight keep their own reference
        // and complete normally (or -ECANCELED at SHUTDOWN); a later CLOSE of whatever
        // the slot holds then cancels only that file's requests. The reference is
        // dropped outside the lock.
        drop(old);
        Ok(0)
    }

    /// `FASTIO_REGISTER_BUF_RING`: the description is copied once and validated
    /// (`validate_buf_ring`: counts, sizes, alignment, ranges with checked arithmetic
    /// below `TASK_SIZE_MAX`, then `access_ok` of both ranges); only the copy is kept.
    /// Nothing is pinned or mapped: the memory stays the process's, so there is nothing
    /// to charge beyond the small record (at most `MAX_BUF_GROUPS` per context).
    pub(crate) fn register_buf_ring(&self, mut reader: UserSliceReader) -> Result<isize> {
        let reg: abi::BufRingReg = reader.read()?;
        let ring = abi::validate_buf_ring(&reg, crate::sys::user_end()).map_err(|_| EINVAL)?;
        let ring_len = abi::buf_ring_size(ring.entries);
        // Cannot overflow: validate_buf_ring checked count * buf_size.
        let bufs_len = ring.count as u64 * ring.buf_size as u64;
        if !crate::sys::user_range_ok(ring.ring_addr, ring_len)
            || !crate::sys::user_range_ok(ring.bufs_addr, bufs_len)
        {
            return Err(EFAULT);
        }
        let setup = self.setup_ref()?;
        let group = crate::pbuf::Group::new(ring)?;
        let mut rings = setup.shared.buf_rings.lock();
        if rings.iter().any(|r| r.ring.group == ring.group) {
            return Err(EEXIST);
        }
        rings.push(group, GFP_KERNEL_ACCOUNT)?;
        Ok(0)
    }

    /// `FASTIO_UNREGISTER_BUF_RING`: `-ENOENT` for a group that is not registered,
    /// `-EBUSY` while a request that uses it is in flight (pbuf.rs).
    pub(crate) fn unregister_buf_ring(&self, mut reader: UserSliceReader) -> Result<isize> {
        let a: abi::BufGroupArg = reader.read()?;
        if a.flags != 0 || a.group >= abi::MAX_BUF_GROUPS {
            return Err(EINVAL);
        }
        let setup = self.setup_ref()?;
        let mut rings = setup.shared.buf_rings.lock();
        let i = rings
            .iter()
            .position(|r| r.ring.group as u32 == a.group)
            .ok_or(ENOENT)?;
        if rings[i].users.load(core::sync::atomic::Ordering::Relaxed) != 0 {
            return Err(EBUSY);
        }
        let old = rings.remove(i).map_err(|_| ENOENT)?;
        drop(rings);
        drop(old);
        Ok(0)
    }

    pub(crate) fn stats(&self, mut writer: UserSliceWriter) -> Result<isize> {
        let setup = self.setup_ref()?;
        let sh = &setup.shared;
        let st = &sh.stats;
        let out = abi::Stats {
            ops: st.ops.load(Ordering::Relaxed),
            parked: st.parked.load(Ordering::Relaxed),
            wakeups: st.wakeups.load(Ordering::Relaxed),
            offloaded: st.offloaded.load(Ordering::Relaxed),
            pending: sh.pendings.len() as u64 + sh.jobs.count(),
            inline_ops: st.inline_ops.load(Ordering::Relaxed),
            lane_wakes: st.lane_wakes.load(Ordering::Relaxed),
            polls: st.polls.load(Ordering::Relaxed),
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

    fn thread_arg(&self, mut reader: UserSliceReader) -> Result<(Arc<Setup>, u32)> {
        let a: abi::ThreadArg = reader.read()?;
        if a.flags != 0 {
            return Err(EINVAL);
        }
        Ok((self.setup_ref()?, a.index))
    }

    /// `FASTIO_RUN_LANE`: the calling thread serves a lane until SHUTDOWN or a signal.
    pub(crate) fn run_lane(&self, reader: UserSliceReader) -> Result<isize> {
        let (setup, idx) = self.thread_arg(reader)?;
        let lane = setup.lanes.get(idx as usize).ok_or(EINVAL)?;
        lane.run()
    }

    /// `FASTIO_RUN_HELPER`: the calling thread does blocking work until SHUTDOWN or a
    /// signal.
    pub(crate) fn run_helper(&self, reader: UserSliceReader) -> Result<isize> {
        let (setup, idx) = self.thread_arg(reader)?;
        helper::run(&setup.shared, &setup.lanes, idx)
    }

    /// `FASTIO_SHUTDOWN`: every lane and helper thread returns; waiting requests
    /// complete with -ECANCELED.
    pub(crate) fn shutdown(&self) -> Result<isize> {
        self.setup_ref()?.shutdown();
        Ok(0)
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

/// Checks a SETUP request (filling in defaults); returns the lane layout.
fn validate_setup(p: &mut abi::SetupParams) -> Result<abi::LaneLayout> {
    use crate::module_parameters as mp;
    if p.abi_version != abi::ABI_VERSION {
        if notice_allowed() {
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
    if p.workers > mp::max_workers.value() {
        return Err(E2BIG);
    }
    if p.helpers == 0 {
        p.helpers = DEFAULT_HELPERS.min(mp::max_helpers.value().max(1));
    }
    if p.helpers > abi::MAX_HELPERS {
        return Err(EINVAL);
    }
    if p.helpers > mp::max_helpers.value() {
        return Err(E2BIG);
    }
    let sizes_ok = abi::valid_entries(p.sq_entries) && abi::valid_entries(p.cq_entries);
    let files_ok = p.max_files != 0 && p.max_files <= abi::MAX_FILES;
    let idle_ok = p.idle_ms != 0 && p.idle_ms <= mp::max_idle_ms.value();
    let resv_ok = p.resv_in.iter().all(|&r| r == 0) && p.flags & !abi::SETUP_FLAGS == 0;
    // SAFETY: reads a kernel variable that is fixed after boot.
    let ncpu = unsafe { kernel::bindings::nr_cpu_ids };
    let affinity_ok = p.flags & abi::SETUP_AFFINITY == 0 || p.affinity_offset < ncpu;
    if !(sizes_ok && files_ok && idle_ok && resv_ok && affinity_ok) {
        if !idle_ok && p.idle_ms != 0 && notice_allowed() {
            pr_notice!(
                "fastio: SETUP with idle_ms {} above the module's max_idle_ms {}\n",
                p.idle_ms,
                mp::max_idle_ms.value()
            );
        }
        return Err(EINVAL);
    }
    let layout = abi::lane_layout(p.sq_entries, p.cq_entries);
    let total = layout
        .lane_size
        .checked_mul(p.workers as u64)
        .ok_or(EINVAL)?;
    if total > MAX_MMAP_BYTES {
        return Err(EINVAL);
    }
    Ok(layout)
}

/// The lanes of a set-up context.
pub(crate) struct Setup {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lanes: KVec<Arc<Lane>>,
}

impl Setup {
    fn new(
        p: &abi::SetupParams,
        layout: abi::LaneLayout,
        fops: *const kernel::bindings::file_operations,
    ) -> Result<Arc<Self>> {
        let charge = Charge::new(layout.lane_size * p.workers as u64)?;
        let shared = Shared::new(p, layout, charge, fops)?;
        let mut lanes = KVec::with_capacity(p.workers as usize, GFP_KERNEL)?;
        for i in 0..p.workers {
            let view = shared.lane_view(i);
            view.init_info(i);
            lanes.push(Lane::new(i, shared.clone(), view)?, GFP_KERNEL)?;
        }
        Ok(Arc::new(Setup { shared, lanes }, GFP_KERNEL)?)
    }

    /// Makes every lane and helper thread return; every request waiting for
    /// readiness or for a helper completes with -ECANCELED (requests running on a
    /// helper are interrupted and complete by themselves).
    fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for lane in self.lanes.iter() {
            lane.kick();
        }
        // Inline ENTER callers wait for `stopping` too.
        self.shared.inline.wq.wake_all();
        // Interrupts running blocking jobs and wakes idle helpers.
        self.shared.jobs.cancel(|_, _, _| true);
        // Lanes with a thread retire themselves; the others are retired here.
        for lane in self.lanes.iter() {
            lane.with_claim(Lane::retire);
        }
        self.complete_queued_jobs();
    }

    /// Completes every queued blocking job with -ECANCELED (after SHUTDOWN).
    pub(crate) fn complete_queued_jobs(&self) {
        for job in self.shared.jobs.take_where(|_| true) {
            helper::complete(
                &self.lanes,
                &job,
                crate::sys::neg(kernel::bindings::ECANCELED),
            );
        }
    }

    /// No thread serves the context any more (last close): complete everything still
    /// in flight and break the reference cycles (request → lane's port → request).
    fn teardown(&self) {
        self.shutdown();
        if self.shared.pendings.any(|_| true) {
            // Only possible if a lane could not be claimed, which no thread can hold
            // at release. Leak rather than free what a wait queue may point at.
            pr_warn!("fastio: teardown: requests still waiting; leaking them\n");
            self.shared.pendings.leak_all();
        }
        // The file references go with the table, after its lock.
        let files = self.shared.files.lock().clear();
        drop(files);
    }
}
