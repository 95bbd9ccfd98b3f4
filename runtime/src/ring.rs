//! Ring memory in the exact `fastio_uapi` layout, and the four ends of a lane's rings.
//!
//! [`RingMemory`] owns one mapping that holds every lane (anonymous memory for the
//! in-process `threads` backend, the `/dev/fastio` mapping for `kmod`). A [`LaneRing`]
//! is a raw view of one lane. The userspace side drives it through [`SqProducer`] and
//! [`CqConsumer`]; the worker side (the in-process workers, or the kernel module in C of
//! the same protocol) through [`SqConsumer`] and [`CqProducer`].
//!
//! Each of the four ends assumes it is the only one of its kind on its lane: two SQ
//! producers would both write the SQE slot at their shared tail and publish over each
//! other. Safe code therefore cannot make them: [`RingMemory::lane`] and the four
//! constructors on [`LaneRing`] are `unsafe fn`s whose contract is "one end of each kind
//! per lane at a time", a [`LaneRing`] can neither be cloned nor shared between threads
//! by reference (it is `Send`, not `Sync`), and the in-process anonymous mapping is
//! crate-private. The backends take every end exactly once when they start.
//!
//! Indices are free-running `u32`s that wrap; every comparison is done with
//! `wrapping_sub`, so wrapping past `u32::MAX` is ordinary operation (and tested).
//! The worker side treats indices written by the other side as untrusted: a head that
//! claims more entries than exist is treated as "full", never as a reason to index out
//! of bounds (all indexing is masked).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use fastio_uapi::{Cqe, LaneLayout, RingHeader, Sqe, SQ_NEED_WAKEUP};
use memmap2::{MmapOptions, MmapRaw};

/// Geometry of a context's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of lanes.
    pub lanes: u32,
    /// Entries per SQ (power of two).
    pub sq_entries: u32,
    /// Entries per CQ (power of two).
    pub cq_entries: u32,
    /// Where the parts of a lane lie.
    pub layout: LaneLayout,
}

impl Geometry {
    /// Validates the sizes and computes the layout.
    pub fn new(lanes: u32, sq_entries: u32, cq_entries: u32) -> io::Result<Self> {
        if lanes == 0 || lanes > fastio_uapi::MAX_WORKERS {
            return Err(invalid(format!(
                "lanes = {lanes}: must be between 1 and {}",
                fastio_uapi::MAX_WORKERS
            )));
        }
        for (name, n) in [("sq_entries", sq_entries), ("cq_entries", cq_entries)] {
            if !fastio_uapi::valid_entries(n) {
                return Err(invalid(format!(
                    "{name} = {n}: must be a power of two between 1 and {}",
                    fastio_uapi::MAX_ENTRIES
                )));
            }
        }
        Ok(Geometry {
            lanes,
            sq_entries,
            cq_entries,
            layout: fastio_uapi::lane_layout(sq_entries, cq_entries),
        })
    }

    /// Total bytes of the mapping.
    pub fn mmap_size(&self) -> usize {
        self.layout.lane_size as usize * self.lanes as usize
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// One mapping holding every lane of a context.
pub struct RingMemory {
    map: MmapRaw,
    geometry: Geometry,
}

impl RingMemory {
    /// Anonymous zeroed memory for an in-process backend; writes each ring's
    /// [`fastio_uapi::RingInfo`] the way the kernel does. Crate-private: only the
    /// `threads` backend (and the tests) make rings of their own.
    pub(crate) fn anonymous(geometry: Geometry) -> io::Result<Arc<Self>> {
        let map = MmapOptions::new().len(geometry.mmap_size()).map_anon()?;
        let mem = Arc::new(RingMemory {
            map: MmapRaw::from(map),
            geometry,
        });
        for lane in 0..geometry.lanes {
            // SAFETY: the view is only used to find the headers below; no end is made.
            let ring = unsafe { mem.lane(lane) };
            for (hdr, entries) in [
                (ring.sq.as_ptr(), geometry.sq_entries),
                (ring.cq.as_ptr(), geometry.cq_entries),
            ] {
                let info = fastio_uapi::RingInfo {
                    entries,
                    mask: entries - 1,
                    lane,
                    resv: 0,
                };
                // SAFETY: the header lies in the fresh mapping, which no other thread sees
                // yet; `info` is a plain field nobody accesses atomically.
                unsafe { std::ptr::addr_of_mut!((*hdr).info).write(info) };
            }
        }
        Ok(mem)
    }

    /// Adopts a mapping made elsewhere (e.g. of `/dev/fastio`).
    ///
    /// # Safety
    ///
    /// `map` must be at least `geometry.mmap_size()` bytes laid out as `fastio_uapi`
    /// describes, and stay mapped with that layout for the life of the returned value.
    pub unsafe fn from_map(map: MmapRaw, geometry: Geometry) -> io::Result<Arc<Self>> {
        if map.len() < geometry.mmap_size() {
            return Err(invalid(format!(
                "ring mapping is {} bytes, the layout needs {}",
                map.len(),
                geometry.mmap_size()
            )));
        }
        Ok(Arc::new(RingMemory { map, geometry }))
    }

    /// The geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// A view of lane `lane` (panics if out of range: lanes are chosen internally).
    ///
    /// # Safety
    ///
    /// The view gives access to the lane's four ends ([`LaneRing::sq_producer`] and its
    /// siblings). The caller must make sure that, over every view of this lane, at most
    /// one end of each kind exists at a time (see the `unsafe fn`s on [`LaneRing`]).
    pub unsafe fn lane(self: &Arc<Self>, lane: u32) -> LaneRing {
        assert!(lane < self.geometry.lanes, "lane {lane} out of range");
        let g = self.geometry;
        let base = self.map.as_mut_ptr() as usize + lane as usize * g.layout.lane_size as usize;
        let at = |off: u32| base + off as usize;
        // SAFETY: every offset below lies inside the mapping (mmap_size covers all lanes,
        // lane_layout keeps each part inside lane_size) and is non-null.
        unsafe {
            LaneRing {
                sq: NonNull::new_unchecked(at(g.layout.sq_off) as *mut RingHeader),
                sqes: NonNull::new_unchecked(at(g.layout.sqes_off) as *mut Sqe),
                cq: NonNull::new_unchecked(at(g.layout.cq_off) as *mut RingHeader),
                cqes: NonNull::new_unchecked(at(g.layout.cqes_off) as *mut Cqe),
                sq_entries: g.sq_entries,
                cq_entries: g.cq_entries,
                _mem: Arc::clone(self),
            }
        }
    }
}

/// A raw view of one lane. Keeps its [`RingMemory`] alive.
///
/// Neither `Clone` nor `Sync`: the ends made from it share it, and making an end is an
/// `unsafe fn` whose caller guarantees a single end of each kind per lane.
pub struct LaneRing {
    sq: NonNull<RingHeader>,
    sqes: NonNull<Sqe>,
    cq: NonNull<RingHeader>,
    cqes: NonNull<Cqe>,
    sq_entries: u32,
    cq_entries: u32,
    _mem: Arc<RingMemory>,
}

// SAFETY: the view only points into memory kept alive by `_mem`; all shared fields are
// accessed through atomics, and each entry slot is written by exactly one side at a time
// (the protocol hands slots over with release/acquire on head and tail). Not `Sync`:
// the ends are made through `&LaneRing`, and one thread making them is what keeps
// "one end of each kind" checkable by their `unsafe` callers.
unsafe impl Send for LaneRing {}

impl LaneRing {
    /// Another view of the same lane, for an end to hold (not public: two views would
    /// let safe code make two ends of one kind).
    fn view(&self) -> LaneRing {
        LaneRing {
            sq: self.sq,
            sqes: self.sqes,
            cq: self.cq,
            cqes: self.cqes,
            sq_entries: self.sq_entries,
            cq_entries: self.cq_entries,
            _mem: Arc::clone(&self._mem),
        }
    }

    fn sq(&self) -> &RingHeader {
        // SAFETY: the header lies in live memory; shared access is atomic-only.
        unsafe { self.sq.as_ref() }
    }
    fn cq(&self) -> &RingHeader {
        // SAFETY: as for `sq`.
        unsafe { self.cq.as_ref() }
    }
    fn sq_head(&self) -> &AtomicU32 {
        &self.sq().head.value
    }
    fn sq_tail(&self) -> &AtomicU32 {
        &self.sq().tail.value
    }
    /// The SQ flags word.
    pub fn sq_flags(&self) -> &AtomicU32 {
        &self.sq().flags.value
    }
    fn cq_head(&self) -> &AtomicU32 {
        &self.cq().head.value
    }
    fn cq_tail(&self) -> &AtomicU32 {
        &self.cq().tail.value
    }

    /// Entries per SQ.
    pub fn sq_entries(&self) -> u32 {
        self.sq_entries
    }

    /// Entries per CQ.
    pub fn cq_entries(&self) -> u32 {
        self.cq_entries
    }

    /// Completions posted and not yet consumed, as the worker side sees it (bounded by
    /// the CQ size even if the consumer's head is garbage).
    pub fn cq_ready(&self) -> u32 {
        let tail = self.cq_tail().load(Ordering::Acquire);
        let head = self.cq_head().load(Ordering::Acquire);
        tail.wrapping_sub(head).min(self.cq_entries)
    }

    /// Whether the SQ holds entries the worker has not taken yet.
    pub fn sq_pending(&self) -> bool {
        self.sq_tail().load(Ordering::Acquire) != self.sq_head().load(Ordering::Acquire)
    }

    /// Userspace end of the SQ.
    ///
    /// # Safety
    ///
    /// At most one SQ producer may exist per lane at a time, over every view of the lane
    /// (and, for a mapping shared with the kernel, the kernel is the only worker side).
    /// Two would write the same entries and indices without synchronisation.
    pub unsafe fn sq_producer(&self) -> SqProducer {
        let tail = self.sq_tail().load(Ordering::Acquire);
        SqProducer {
            ring: self.view(),
            local_tail: tail,
            published: tail,
        }
    }

    /// Userspace end of the CQ.
    ///
    /// # Safety
    ///
    /// At most one CQ consumer may exist per lane at a time, over every view of the lane
    /// (and, for a mapping shared with the kernel, the kernel is the only worker side).
    /// Two would write the same entries and indices without synchronisation.
    pub unsafe fn cq_consumer(&self) -> CqConsumer {
        CqConsumer {
            ring: self.view(),
            local_head: self.cq_head().load(Ordering::Acquire),
        }
    }

    /// Worker end of the SQ.
    ///
    /// # Safety
    ///
    /// At most one SQ consumer may exist per lane at a time, over every view of the lane
    /// (and, for a mapping shared with the kernel, the kernel is the only worker side).
    /// Two would write the same entries and indices without synchronisation.
    pub unsafe fn sq_consumer(&self) -> SqConsumer {
        SqConsumer {
            ring: self.view(),
            local_head: self.sq_head().load(Ordering::Acquire),
        }
    }

    /// Worker end of the CQ.
    ///
    /// # Safety
    ///
    /// At most one CQ producer may exist per lane at a time, over every view of the lane
    /// (and, for a mapping shared with the kernel, the kernel is the only worker side).
    /// Two would write the same entries and indices without synchronisation.
    pub unsafe fn cq_producer(&self) -> CqProducer {
        CqProducer {
            ring: self.view(),
            local_tail: self.cq_tail().load(Ordering::Acquire),
        }
    }
}

/// Userspace end of an SQ: stages entries, publishes them in one release store.
pub struct SqProducer {
    ring: LaneRing,
    local_tail: u32,
    published: u32,
}

impl SqProducer {
    /// Free entries (staged entries count as used).
    pub fn space(&self) -> u32 {
        let head = self.ring.sq_head().load(Ordering::Acquire);
        self.ring
            .sq_entries
            .saturating_sub(self.local_tail.wrapping_sub(head))
    }

    /// Stages `sqe`; returns false (and stages nothing) when the SQ is full.
    pub fn push(&mut self, sqe: &Sqe) -> bool {
        if self.space() == 0 {
            return false;
        }
        let idx = (self.local_tail & (self.ring.sq_entries - 1)) as usize;
        // SAFETY: idx < sq_entries; the slot is ours: it lies between the consumer's head
        // and our tail + 1, so the worker does not read it until we publish.
        unsafe { self.ring.sqes.as_ptr().add(idx).write_volatile(*sqe) };
        self.local_tail = self.local_tail.wrapping_add(1);
        true
    }

    /// Entries staged and not yet published.
    pub fn staged(&self) -> u32 {
        self.local_tail.wrapping_sub(self.published)
    }

    /// Publishes staged entries. Returns true when the worker is asleep and must be woken
    /// (the caller then issues `ENTER` with `ENTER_SQ_WAKEUP`).
    pub fn publish(&mut self) -> bool {
        if self.staged() != 0 {
            self.ring
                .sq_tail()
                .store(self.local_tail, Ordering::Release);
            self.published = self.local_tail;
        }
        // Pairs with the worker's fence between setting NEED_WAKEUP and re-reading the
        // tail: either it sees our tail or we see its flag.
        fence(Ordering::SeqCst);
        self.ring.sq_flags().load(Ordering::Relaxed) & SQ_NEED_WAKEUP != 0 && self.ring.sq_pending()
    }
}

/// Userspace end of a CQ.
pub struct CqConsumer {
    ring: LaneRing,
    local_head: u32,
}

impl CqConsumer {
    /// Moves every available CQE to `f`, then releases their slots in one store.
    /// Returns how many were consumed: never more than the CQ holds, even if the tail
    /// is garbage (a bogus tail must not make us replay stale entries).
    pub fn drain(&mut self, mut f: impl FnMut(Cqe)) -> u32 {
        let tail = self.ring.cq_tail().load(Ordering::Acquire);
        let n = tail.wrapping_sub(self.local_head).min(self.ring.cq_entries);
        for _ in 0..n {
            let idx = (self.local_head & (self.ring.cq_entries - 1)) as usize;
            // SAFETY: idx < cq_entries; entries between head and the acquired tail were
            // fully written before the worker's release store of the tail.
            let cqe = unsafe { self.ring.cqes.as_ptr().add(idx).read_volatile() };
            self.local_head = self.local_head.wrapping_add(1);
            f(cqe);
        }
        if n != 0 {
            self.ring
                .cq_head()
                .store(self.local_head, Ordering::Release);
        }
        n
    }
}

/// Worker end of an SQ.
pub struct SqConsumer {
    ring: LaneRing,
    local_head: u32,
}

impl SqConsumer {
    /// Copies the next SQE out of the ring (read once) and releases its slot.
    pub fn pop(&mut self) -> Option<Sqe> {
        let tail = self.ring.sq_tail().load(Ordering::Acquire);
        if tail == self.local_head {
            return None;
        }
        let idx = (self.local_head & (self.ring.sq_entries - 1)) as usize;
        // SAFETY: idx < sq_entries (masked); the entry was published by the producer's
        // release store of the tail. A producer that lies about the tail can only make us
        // read stale bytes, which the caller validates like any other input.
        let sqe = unsafe { self.ring.sqes.as_ptr().add(idx).read_volatile() };
        self.local_head = self.local_head.wrapping_add(1);
        self.ring
            .sq_head()
            .store(self.local_head, Ordering::Release);
        Some(sqe)
    }

    /// Announces that the worker is about to sleep. Returns false (and clears the flag)
    /// when new entries arrived meanwhile, in which case the worker must not sleep.
    pub fn prepare_sleep(&self) -> bool {
        self.ring
            .sq_flags()
            .fetch_or(SQ_NEED_WAKEUP, Ordering::SeqCst);
        // Pairs with the fence in `SqProducer::publish`.
        fence(Ordering::SeqCst);
        if self.ring.sq_tail().load(Ordering::Acquire) != self.local_head {
            self.finish_sleep();
            return false;
        }
        true
    }

    /// Clears NEED_WAKEUP after a sleep.
    pub fn finish_sleep(&self) {
        self.ring
            .sq_flags()
            .fetch_and(!SQ_NEED_WAKEUP, Ordering::SeqCst);
    }
}

/// Worker end of a CQ.
pub struct CqProducer {
    ring: LaneRing,
    local_tail: u32,
}

impl CqProducer {
    /// Posts `cqe`; returns false when the CQ is full (the entry is not posted; the caller
    /// keeps it and retries: completions are never dropped).
    pub fn push(&mut self, cqe: Cqe) -> bool {
        let head = self.ring.cq_head().load(Ordering::Acquire);
        if self.local_tail.wrapping_sub(head) >= self.ring.cq_entries {
            return false;
        }
        let idx = (self.local_tail & (self.ring.cq_entries - 1)) as usize;
        // SAFETY: idx < cq_entries; the slot is free (the consumer's head has passed it).
        unsafe { self.ring.cqes.as_ptr().add(idx).write_volatile(cqe) };
        self.local_tail = self.local_tail.wrapping_add(1);
        self.ring
            .cq_tail()
            .store(self.local_tail, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqe(ud: u64) -> Sqe {
        Sqe {
            user_data: ud,
            ..Sqe::ZERO
        }
    }

    fn set_indices(ring: &LaneRing, v: u32) {
        for a in [
            ring.sq_head(),
            ring.sq_tail(),
            ring.cq_head(),
            ring.cq_tail(),
        ] {
            a.store(v, Ordering::SeqCst);
        }
    }

    #[test]
    fn full_sq_refuses_and_keeps_order() {
        let mem = RingMemory::anonymous(Geometry::new(1, 4, 8).unwrap()).unwrap();
        // SAFETY (every ring test): each lane gets at most one end of each kind at a time.
        let ring = unsafe { mem.lane(0) };
        let mut p = unsafe { ring.sq_producer() };
        for i in 0..4 {
            assert!(p.push(&sqe(i)));
        }
        assert!(!p.push(&sqe(99)), "a full SQ must refuse");
        assert_eq!(p.staged(), 4);
        p.publish();
        let mut c = unsafe { ring.sq_consumer() };
        assert_eq!(c.pop().unwrap().user_data, 0);
        assert!(p.push(&sqe(4)), "one slot freed");
        assert!(!p.push(&sqe(5)));
        p.publish();
        let got: Vec<u64> = std::iter::from_fn(|| c.pop())
            .map(|s| s.user_data)
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn wraps_past_u32_max() {
        let mem = RingMemory::anonymous(Geometry::new(1, 8, 8).unwrap()).unwrap();
        // SAFETY (every ring test): each lane gets at most one end of each kind at a time.
        let ring = unsafe { mem.lane(0) };
        set_indices(&ring, u32::MAX - 20);
        let mut p = unsafe { ring.sq_producer() };
        let mut sc = unsafe { ring.sq_consumer() };
        let mut cp = unsafe { ring.cq_producer() };
        let mut cc = unsafe { ring.cq_consumer() };
        let mut next = 0u64;
        let mut seen = 0u64;
        // 100 rounds of 5 entries crosses the wrap point with full and partial batches.
        for _ in 0..100 {
            for _ in 0..5 {
                assert!(p.push(&sqe(next)));
                next += 1;
            }
            p.publish();
            while let Some(s) = sc.pop() {
                assert!(cp.push(Cqe {
                    user_data: s.user_data,
                    res: s.user_data as i32,
                    flags: 0
                }));
            }
            cc.drain(|c| {
                assert_eq!(c.user_data, seen);
                assert_eq!(c.res, seen as i32);
                seen += 1;
            });
        }
        assert_eq!(seen, 500);
        assert!(ring.sq_tail().load(Ordering::SeqCst) < 1000, "tail wrapped");
    }

    #[test]
    fn full_cq_refuses_without_dropping() {
        let mem = RingMemory::anonymous(Geometry::new(1, 8, 2).unwrap()).unwrap();
        // SAFETY (every ring test): each lane gets at most one end of each kind at a time.
        let ring = unsafe { mem.lane(0) };
        set_indices(&ring, u32::MAX);
        let mut cp = unsafe { ring.cq_producer() };
        let mut cc = unsafe { ring.cq_consumer() };
        let c = |ud| Cqe {
            user_data: ud,
            res: 0,
            flags: 0,
        };
        assert!(cp.push(c(1)) && cp.push(c(2)));
        assert!(!cp.push(c(3)), "a full CQ must refuse");
        assert_eq!(ring.cq_ready(), 2);
        let mut got = vec![];
        cc.drain(|x| got.push(x.user_data));
        assert!(cp.push(c(3)));
        cc.drain(|x| got.push(x.user_data));
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn hostile_head_reads_as_full_not_out_of_bounds() {
        let mem = RingMemory::anonymous(Geometry::new(1, 4, 4).unwrap()).unwrap();
        // SAFETY (every ring test): each lane gets at most one end of each kind at a time.
        let ring = unsafe { mem.lane(0) };
        // A consumer head far ahead of the tail: the producer must not treat the wrapped
        // difference as free space.
        ring.cq_head().store(1000, Ordering::SeqCst);
        let mut cp = unsafe { ring.cq_producer() };
        assert!(!cp.push(Cqe::default()));
        assert_eq!(ring.cq_ready(), 4, "clamped to the ring size");
    }

    /// A CQ tail far ahead of the head (a broken or hostile producer) yields at most one
    /// ring's worth of entries per drain, never the same stale slots over and over.
    #[test]
    fn bogus_cq_tail_is_capped_at_the_ring_size() {
        let mem = RingMemory::anonymous(Geometry::new(1, 4, 4).unwrap()).unwrap();
        // SAFETY (every ring test): each lane gets at most one end of each kind at a time.
        let ring = unsafe { mem.lane(0) };
        let mut cp = unsafe { ring.cq_producer() };
        let mut cc = unsafe { ring.cq_consumer() };
        for ud in 0..2 {
            assert!(cp.push(Cqe {
                user_data: ud,
                res: 0,
                flags: 0
            }));
        }
        ring.cq_tail().store(1000, Ordering::SeqCst);
        let mut got = vec![];
        assert_eq!(cc.drain(|c| got.push(c.user_data)), 4);
        assert_eq!(got.len(), 4, "each CQ slot read at most once");
        assert_eq!(ring.cq_head().load(Ordering::SeqCst), 4);
    }

    #[test]
    fn need_wakeup_handshake() {
        let mem = RingMemory::anonymous(Geometry::new(2, 4, 4).unwrap()).unwrap();
        // SAFETY (every ring test): each lane gets at most one end of each kind at a time.
        let ring = unsafe { mem.lane(1) };
        let mut p = unsafe { ring.sq_producer() };
        let c = unsafe { ring.sq_consumer() };
        assert!(c.prepare_sleep(), "empty SQ: may sleep");
        assert!(p.push(&sqe(1)));
        assert!(p.publish(), "worker asleep with work pending: must wake it");
        c.finish_sleep();
        drop(c);
        assert!(!p.publish());
        // Work that arrives before the flag is set prevents the sleep.
        let c2 = unsafe { ring.sq_consumer() };
        assert!(!c2.prepare_sleep(), "pending entry: must not sleep");
        assert_eq!(ring.sq_flags().load(Ordering::SeqCst) & SQ_NEED_WAKEUP, 0);
    }

    #[test]
    fn geometry_validation() {
        assert!(Geometry::new(0, 4, 4).is_err());
        assert!(Geometry::new(1, 3, 4).is_err());
        assert!(Geometry::new(1, 4, 0).is_err());
        assert!(Geometry::new(65, 4, 4).is_err());
        let g = Geometry::new(3, 256, 512).unwrap();
        assert_eq!(g.mmap_size() % 4096, 0);
        assert_eq!(g.mmap_size(), 3 * g.layout.lane_size as usize);
    }
}
