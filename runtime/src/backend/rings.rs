//! The userspace side of a context's rings, shared by the backends that drive
//! `fastio_uapi` rings (`threads` and `kmod`): one SQ producer and one CQ consumer per
//! lane, the publish step of `submit`, `reap`, the CQ fill level `wait` compares
//! against, and the NEED_WAKEUP probe.
//!
//! Only the *executor* differs between those backends (worker threads in this process
//! that poll in user space, or lane threads of this process that poll inside
//! `fastio.ko`), and with it how a sleeping worker is woken and how
//! `wait` sleeps; everything here is identical.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fastio_uapi::{Cqe, Sqe, SQ_NEED_WAKEUP};

use crate::ring::{CqConsumer, LaneRing, RingMemory, SqProducer};

/// Every lane's SQ producer and CQ consumer. Holds the [`RingMemory`] alive (through its
/// [`LaneRing`]s) until dropped.
pub(crate) struct RingSide {
    lanes: Vec<LaneRing>,
    sq: Vec<SqProducer>,
    cq: Vec<CqConsumer>,
}

/// A set of lanes (`MAX_WORKERS` is 64, so one bit per lane fits a `u64`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LaneSet(u64);

const _: () = assert!(fastio_uapi::MAX_WORKERS as usize <= u64::BITS as usize);

impl LaneSet {
    /// Adds `lane` (below 64).
    pub(crate) fn insert(&mut self, lane: usize) {
        self.0 |= 1 << lane;
    }

    /// Number of lanes in the set.
    pub(crate) fn count(self) -> u32 {
        self.0.count_ones()
    }

    /// The lanes in the set, lowest first.
    pub(crate) fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let lane = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(lane)
        })
    }
}

impl RingSide {
    /// Takes the userspace ends of every lane of `mem`. Only one `RingSide` may exist per
    /// ring memory (each end is single-owner).
    pub(crate) fn new(mem: &Arc<RingMemory>) -> Self {
        let lanes: Vec<LaneRing> = (0..mem.geometry().lanes).map(|l| mem.lane(l)).collect();
        RingSide {
            sq: lanes.iter().map(LaneRing::sq_producer).collect(),
            cq: lanes.iter().map(LaneRing::cq_consumer).collect(),
            lanes,
        }
    }

    /// Number of lanes.
    pub(crate) fn lanes(&self) -> u32 {
        self.lanes.len() as u32
    }

    /// Requests that may be in flight on one lane: its CQ size.
    pub(crate) fn lane_capacity(&self) -> u32 {
        self.lanes[0].cq_entries()
    }

    /// Stages `sqe` on `lane`; false when that SQ is full.
    pub(crate) fn push(&mut self, lane: u32, sqe: &Sqe) -> bool {
        self.sq[lane as usize].push(sqe)
    }

    /// Publishes the staged entries of every lane; returns the lanes whose worker is
    /// asleep with work pending, which the caller must wake (`ENTER(SQ_WAKEUP)`).
    pub(crate) fn publish(&mut self) -> LaneSet {
        let mut wake = LaneSet::default();
        for (lane, sq) in self.sq.iter_mut().enumerate() {
            if sq.staged() != 0 && sq.publish() {
                wake.insert(lane);
            }
        }
        wake
    }

    /// Hands every available completion to `f`; returns how many.
    pub(crate) fn reap(&mut self, f: &mut dyn FnMut(Cqe)) -> usize {
        self.cq
            .iter_mut()
            .map(|cq| cq.drain(&mut *f) as usize)
            .sum()
    }

    /// Completions posted and not yet reaped, over all lanes.
    pub(crate) fn cq_ready(&self) -> u32 {
        self.lanes.iter().map(LaneRing::cq_ready).sum()
    }

    /// Whether the worker of `lane` has NEED_WAKEUP set (None: no such lane).
    pub(crate) fn lane_asleep(&self, lane: u32) -> Option<bool> {
        let ring = self.lanes.get(lane as usize)?;
        Some(ring.sq_flags().load(Ordering::SeqCst) & SQ_NEED_WAKEUP != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Geometry;

    #[test]
    fn lane_set_iterates_in_order() {
        let mut s = LaneSet::default();
        assert_eq!(s.count(), 0);
        for l in [63, 0, 5] {
            s.insert(l);
        }
        assert_eq!(s.count(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 5, 63]);
    }

    /// A worker-side stand-in: the lanes a sleeping worker announced are reported by
    /// `publish` only when they received work; completions of every lane are reaped
    /// and counted.
    #[test]
    fn publish_reports_sleeping_lanes_with_work() {
        let mem = RingMemory::anonymous(Geometry::new(3, 4, 8).unwrap()).unwrap();
        let mut side = RingSide::new(&mem);
        assert_eq!((side.lanes(), side.lane_capacity()), (3, 8));
        let workers: Vec<_> = (0..3).map(|l| mem.lane(l).sq_consumer()).collect();
        for w in &workers {
            assert!(w.prepare_sleep());
        }
        assert_eq!(side.lane_asleep(1), Some(true));
        assert_eq!(side.lane_asleep(3), None);
        let sqe = Sqe::ZERO;
        assert!(side.push(0, &sqe) && side.push(2, &sqe));
        let wake = side.publish();
        assert_eq!(wake.iter().collect::<Vec<_>>(), vec![0, 2]);
        // Nothing newly staged: nobody to wake.
        assert_eq!(side.publish(), LaneSet::default());

        let mut cqs: Vec<_> = (0..3).map(|l| mem.lane(l).cq_producer()).collect();
        for (l, cq) in cqs.iter_mut().enumerate() {
            assert!(cq.push(Cqe {
                user_data: l as u64,
                res: 0,
                flags: 0
            }));
        }
        assert_eq!(side.cq_ready(), 3);
        let mut got = vec![];
        assert_eq!(side.reap(&mut |c| got.push(c.user_data)), 3);
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(side.cq_ready(), 0);
    }
}
