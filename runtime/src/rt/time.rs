//! Timers: deadlines kept by the runtime's driver, which bound its wait (see the module
//! docs of [`crate::rt`] for why not a TIMEOUT op).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{current, with_runtime};

/// Completes at its deadline. Dropping it removes the timer. `Send`: a task that moves
/// between pool workers may sleep (on one worker at a time).
pub struct Sleep {
    rt: usize,
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

/// Waits for `d`.
///
/// ```
/// # use fastio::{rt, BackendKind, Config};
/// # use std::time::{Duration, Instant};
/// # let rt = rt::Runtime::new(&Config { backend: BackendKind::Threads, ..Config::default() }).unwrap();
/// rt.block_on(async {
///     let t0 = Instant::now();
///     rt::sleep(Duration::from_millis(20)).await;
///     assert!(t0.elapsed() >= Duration::from_millis(20));
/// });
/// ```
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

/// Waits until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        rt: current().id(),
        deadline,
        key: None,
    }
}

impl Sleep {
    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let ready = Instant::now() >= this.deadline;
        with_runtime(this.rt, |rt| {
            let mut d = rt.driver.borrow_mut();
            if ready {
                if let Some(k) = this.key.take() {
                    d.remove_timer(k);
                }
                return;
            }
            match this.key {
                Some(k) => d.update_timer(k, cx.waker()),
                None => this.key = Some(d.add_timer(this.deadline, cx.waker().clone())),
            }
        })
        .expect("a fastio timer polled outside the runtime that made it");
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            with_runtime(self.rt, |rt| {
                if let Ok(mut d) = rt.driver.try_borrow_mut() {
                    d.remove_timer(k);
                }
            });
        }
    }
}

/// The deadline of a [`timeout`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(_: Elapsed) -> std::io::Error {
        std::io::ErrorKind::TimedOut.into()
    }
}

/// Runs `fut` for at most `d`. When the deadline wins, `fut` is dropped, which cancels
/// its request (its buffer is kept until the completion comes back).
///
/// ```
/// # use fastio::{rt, BackendKind, Config};
/// # use std::time::Duration;
/// # let rt = rt::Runtime::new(&Config { backend: BackendKind::Threads, ..Config::default() }).unwrap();
/// rt.block_on(async {
///     let l = rt::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
///     let c = rt::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
///     // Nobody writes: the read is cancelled after 20 ms.
///     let r = rt::timeout(Duration::from_millis(20), c.read(vec![0u8; 8])).await;
///     assert!(r.is_err());
/// });
/// ```
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    Timeout {
        fut: Box::pin(fut),
        sleep: sleep(d),
    }
    .await
}

struct Timeout<F: Future> {
    fut: Pin<Box<F>>,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Ticks every `period`, the first tick at once. A tick that is late (the task was busy)
/// is not caught up: the next comes `period` after it.
pub fn interval(period: Duration) -> Interval {
    assert!(!period.is_zero(), "interval period must be non-zero");
    Interval {
        next: Instant::now(),
        period,
    }
}

/// See [`interval`].
#[derive(Debug)]
pub struct Interval {
    next: Instant,
    period: Duration,
}

impl Interval {
    /// Waits for the next tick; returns its scheduled time.
    pub async fn tick(&mut self) -> Instant {
        let at = self.next;
        sleep_until(at).await;
        let now = Instant::now();
        self.next = if now >= at + self.period {
            now + self.period
        } else {
            at + self.period
        };
        at
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}
