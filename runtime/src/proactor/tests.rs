//! The proactor's bookkeeping against a mock backend driven by the test.

use super::*;
use crate::config::BackendKind;
use fastio_uapi::{Sqe, OP_RECV};
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex};

/// What the mock executor has been given, and what it will complete.
#[derive(Default)]
struct MockState {
    staged: Vec<Sqe>,
    submitted: Vec<Sqe>,
    cq: VecDeque<Cqe>,
    submits: u32,
    /// Entries one submit hands over (None: all), like io_uring after EBUSY.
    per_submit: Option<usize>,
}

/// A one-lane backend driven by the test.
struct Mock {
    st: Arc<Mutex<MockState>>,
    capacity: u32,
    close_cost: u32,
}

impl Backend for Mock {
    fn lanes(&self) -> u32 {
        1
    }
    fn lane_capacity(&self) -> u32 {
        self.capacity
    }
    fn register(&mut self, _slot: u32, _fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(())
    }
    fn unregister(&mut self, _slot: u32) -> io::Result<()> {
        Ok(())
    }
    fn install_fd(&mut self, _slot: u32) -> io::Result<OwnedFd> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn push(&mut self, _lane: u32, sqe: &Sqe) -> bool {
        self.st
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .staged
            .push(*sqe);
        true
    }
    fn submit(&mut self) -> io::Result<()> {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        st.submits += 1;
        let n = st.per_submit.unwrap_or(usize::MAX).min(st.staged.len());
        let taken: Vec<Sqe> = st.staged.drain(..n).collect();
        st.submitted.extend(taken);
        Ok(())
    }
    fn has_unsubmitted(&mut self) -> bool {
        !self
            .st
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .staged
            .is_empty()
    }
    fn close_cost(&self) -> u32 {
        self.close_cost
    }
    fn reap(&mut self, f: &mut dyn FnMut(Cqe)) -> usize {
        let got: Vec<Cqe> = self
            .st
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .cq
            .drain(..)
            .collect();
        got.iter().for_each(|&c| f(c));
        got.len()
    }
    fn wait(&mut self, _min: u32, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn cancel_all(&mut self) -> io::Result<bool> {
        let mut st = self.st.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *st;
        for sqe in st.staged.drain(..).chain(st.submitted.drain(..)) {
            st.cq.push_back(Cqe {
                user_data: sqe.user_data,
                res: -libc::ECANCELED,
                flags: 0,
            });
        }
        Ok(true)
    }
    fn lane_asleep(&self, _lane: u32) -> Option<bool> {
        None
    }
}

fn mock(capacity: u32, close_cost: u32) -> (Proactor, Arc<Mutex<MockState>>) {
    let st = Arc::new(Mutex::new(MockState::default()));
    let backend = Mock {
        st: Arc::clone(&st),
        capacity,
        close_cost,
    };
    let choice = Choice {
        kind: BackendKind::Threads,
        sqpoll: false,
        reason: "mock".into(),
    };
    (Proactor::with_backend(Box::new(backend), choice, 16), st)
}

fn null() -> std::fs::File {
    std::fs::File::open("/dev/null").unwrap()
}

/// The token the proactor gave the oldest uncompleted request with `opcode`.
fn token(st: &Mutex<MockState>, opcode: u8) -> u64 {
    let st = st.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = st.staged.iter().chain(&st.submitted);
    all.find(|s| s.opcode == opcode)
        .expect("request pushed")
        .user_data
}

/// Completes the request `user_data` with `res`.
fn post(st: &Mutex<MockState>, user_data: u64, res: i32) {
    let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
    st.staged.retain(|s| s.user_data != user_data);
    st.submitted.retain(|s| s.user_data != user_data);
    st.cq.push_back(Cqe {
        user_data,
        res,
        flags: 0,
    });
}

/// A CLOSE whose CQE arrives before the cancelled RECV's (io_uring's order) is held
/// back: it is reported after the RECV, and its slot is freed only then.
#[test]
fn close_completion_waits_for_the_requests_on_its_slot() {
    let (mut p, st) = mock(16, 2);
    let f = null();
    let slot = p.register(&f).unwrap();
    p.recv(slot, vec![0; 4], 0..4, 1).unwrap();
    p.close(slot, 2).unwrap();
    p.submit().unwrap();
    post(&st, token(&st, OP_CLOSE), 0);
    assert_eq!(p.reap(), 0, "the CLOSE must wait for the RECV");
    assert_eq!(p.in_flight(), 2);
    let other = p.register(&f).unwrap();
    assert_ne!(other, slot, "slot freed before its CLOSE was reported");
    post(&st, token(&st, OP_RECV), -libc::ECANCELED);
    assert_eq!(p.reap(), 2);
    let got: Vec<(u64, i32)> = p.completions().map(|c| (c.user_data, c.result)).collect();
    assert_eq!(got, vec![(1, -libc::ECANCELED), (2, 0)]);
    assert_eq!(p.in_flight(), 0);
    // wait() never waits for a CQE the held CLOSE will not get.
    assert_eq!(p.wait(5, None).unwrap(), 0);
    assert_eq!(p.register(&f).unwrap(), slot, "slot free after the CLOSE");
}

/// A CLOSE counts for the backend's `close_cost` CQ entries until it completes.
#[test]
fn a_close_counts_as_its_backends_cq_cost() {
    let (mut p, st) = mock(8, 2);
    assert_eq!(p.lane_limit(), 6);
    let f = null();
    let slots: Vec<Slot> = (0..6).map(|_| p.register(&f).unwrap()).collect();
    let mut closed = 0;
    for (i, &s) in slots.iter().enumerate() {
        match p.close(s, i as u64) {
            Ok(()) => closed += 1,
            Err(r) => {
                assert_eq!(r.reason, RejectReason::Busy);
                break;
            }
        }
    }
    assert_eq!(closed, 3, "3 CLOSEs of 2 CQEs fill a limit of 6");
    p.submit().unwrap();
    for _ in 0..closed {
        post(&st, token(&st, OP_CLOSE), 0);
    }
    assert_eq!(p.reap(), closed);
    assert_eq!(p.in_flight(), 0);
    for i in 0..6 {
        p.nop(100 + i).unwrap();
    }
    assert_eq!(p.nop(200).unwrap_err().reason, RejectReason::Busy);
}

/// Requests the backend could not hand over (io_uring's EBUSY) stay staged: the next
/// submit tries again.
#[test]
fn unsubmitted_requests_stay_staged() {
    let (mut p, st) = mock(16, 1);
    st.lock().unwrap_or_else(|e| e.into_inner()).per_submit = Some(1);
    for i in 0..3 {
        p.nop(i).unwrap();
    }
    for _ in 0..3 {
        p.submit().unwrap();
    }
    let st = st.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!((st.submitted.len(), st.submits), (3, 3));
}

/// ASYNC_CANCEL goes to its target's lane with the target's token in `addr`; its
/// completion and the target's come back separately. A target the proactor does not
/// know is answered at once with -ENOENT, without a request.
#[test]
fn cancel_names_the_targets_token_and_unknown_targets_are_enoent() {
    let (mut p, st) = mock(16, 1);
    let f = null();
    let slot = p.register(&f).unwrap();
    p.recv(slot, vec![0; 4], 0..4, 7).unwrap();
    p.cancel(7, 8).unwrap();
    p.submit().unwrap();
    let recv = token(&st, OP_RECV);
    let cancel = {
        let st = st.lock().unwrap_or_else(|e| e.into_inner());
        *st.submitted
            .iter()
            .find(|s| s.opcode == fastio_uapi::OP_ASYNC_CANCEL)
            .expect("cancel pushed")
    };
    assert_eq!(cancel.addr, recv, "the target is the RECV's token");
    assert_eq!((cancel.slot, cancel.len, cancel.off), (0, 0, 0));
    post(&st, recv, -libc::ECANCELED);
    post(&st, cancel.user_data, 0);
    assert_eq!(p.reap(), 2);
    let mut got: Vec<(u64, i32, bool)> = p
        .completions()
        .map(|c| (c.user_data, c.result, c.buf.is_some()))
        .collect();
    got.sort();
    assert_eq!(got, vec![(7, -libc::ECANCELED, true), (8, 0, false)]);
    // Nothing with user_data 7 in flight any more.
    p.cancel(7, 9).unwrap();
    let c = p.next_completion().expect("answered at once");
    assert_eq!((c.user_data, c.result), (9, -libc::ENOENT));
    assert_eq!(p.in_flight(), 0);
}
