//! The future of one request: queued on creation, resolved by its completion,
//! cancelled when dropped before that.
//!
//! An `Op` names its runtime by identity instead of holding it, so that it is `Send`
//! whenever what it owns is: a task that may move between pool workers can await
//! requests (between two moves: an `Op` must be polled and dropped on its own runtime's
//! thread, which [`super::switch_to`] guarantees since a task moves only at that await).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::driver::{OpResult, Req};
use super::{with_runtime, Inner};

/// A request in flight and what it owns (`T`: its buffer, or `()`), handed back with the
/// result. Dropped early, it leaves `T` with the driver until the completion arrives.
pub(crate) struct Op<T: 'static> {
    rt: usize,
    ud: u64,
    data: Option<T>,
}

impl<T: 'static> Op<T> {
    /// Queues `req`, whose memory (if any) `data` owns.
    pub(crate) fn new(rt: &Inner, req: Req, data: T) -> Self {
        let ud = rt.driver.borrow_mut().start(req);
        Op {
            rt: rt.id(),
            ud,
            data: Some(data),
        }
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    type Output = (OpResult, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        assert!(this.data.is_some(), "Op polled after completion");
        let r = with_runtime(this.rt, |rt| rt.driver.borrow_mut().poll_op(this.ud, cx))
            .expect("a fastio request polled outside the runtime that started it");
        match r {
            Poll::Ready(r) => Poll::Ready((r, this.data.take().expect("checked above"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return;
        };
        let (ud, data) = (self.ud, Box::new(data));
        let mut data = Some(data);
        let done = with_runtime(self.rt, |rt| {
            let d = data.take().expect("taken once");
            rt.driver.borrow_mut().drop_op(ud, d);
        });
        if done.is_none() {
            // Not on the runtime's thread (or it is gone): the request may still be in
            // flight, so its buffer must never be freed.
            eprintln!("fastio::rt: a request dropped outside its runtime; leaking its buffer");
            std::mem::forget(data);
        }
    }
}
