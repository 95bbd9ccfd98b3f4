//! An async/await runtime over the proactor, on every backend (kmod, uring with or
//! without SQPOLL, threads), in the shape of monoio and kio: thread-per-core, owned
//! buffers, cancellation on drop.
//!
//! ```
//! use fastio::rt::{self, Runtime, TcpListener, TcpStream};
//! use fastio::{BackendKind, Config};
//! # fn main() -> std::io::Result<()> {
//! let config = Config { backend: BackendKind::Threads, ..Config::default() };
//! let rt = Runtime::new(&config)?;
//! rt.block_on(async {
//!     let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//!     let addr = listener.local_addr()?;
//!     let server = rt::spawn(async move {
//!         let conn = listener.accept().await?;
//!         let (n, buf) = conn.read(Vec::with_capacity(64)).await;
//!         let (r, _) = conn.write_all(buf).await;
//!         r.map(|()| n.unwrap())
//!     });
//!     let client = TcpStream::connect(addr).await?;
//!     let (r, _) = client.write_all(b"ping".to_vec()).await;
//!     r?;
//!     let (n, buf) = client.read(vec![0; 16]).await;
//!     assert_eq!(&buf[..n?], b"ping");
//!     assert_eq!(server.await.unwrap()?, 4);
//!     Ok(())
//! })
//! # }
//! ```
//!
//! # Model
//!
//! - A [`Runtime`] is one thread's executor driving one [`Proactor`]: [`Runtime::block_on`]
//!   runs a future and the tasks it [`spawn`]s (local, `!Send`), each with a
//!   [`JoinHandle`]. A task that panics is reported (stderr and its join handle) and the
//!   runtime keeps serving the others.
//! - A [`Pool`] runs N runtimes on N threads (optionally pinned, kio's `IOPool`), with
//!   [`Pool::spawn_on`] and [`switch_to`], which moves the running task to another worker
//!   (kio's `SwitchToWorker`). A [`Handle`] is `Send + Sync`: any thread submits work to a
//!   worker through it; what arrives together is taken in one batch and its requests go
//!   to the rings in one submit (io_uring_actor's model).
//! - Every worker of a pool can accept: each binds the address with
//!   [`TcpListener::bind_reuseport`] (the kernel spreads connections by hash; measured in
//!   the pool test: 18/17/25 of 60 over three io_uring workers) or registers one shared
//!   listener with [`TcpListener::from_std`] (each connection goes to whichever ACCEPT
//!   waits first: on io_uring often the same worker, 0/30/0).
//! - I/O objects ([`TcpListener`], [`TcpStream`], [`File`]) own their slot and close it
//!   when dropped. Their operations take owned buffers ([`IoBuf`], [`IoBufMut`]) and give
//!   them back: `let (res, buf) = stream.read(buf).await`.
//! - Requests the proactor refuses as Busy (lane full) wait inside the runtime, in order,
//!   and go out as completions free room: no caller writes a retry loop.
//!
//! # Cancellation
//!
//! Dropping an operation's future cancels its request with ASYNC_CANCEL. The runtime
//! keeps the buffer until the request's own completion arrives (with `-ECANCELED`, or
//! with its result if the transfer had already happened), and only then frees it: an
//! executor never writes into memory that was freed or handed back. A request that never
//! left the runtime (still queued behind Busy) is simply forgotten. [`timeout`] is built
//! on this: when the deadline wins, the inner future and its request are dropped.
//!
//! Cancellation is a request like any other: a read whose future is dropped may still
//! have taken data from the stream before the cancel reached it, and that data goes with
//! its buffer (as in monoio and tokio-uring). Drop reads only on streams you are giving
//! up, or await them.
//!
//! # Time
//!
//! [`sleep`], [`timeout`] and [`interval`] are driven by a timer list in the runtime: the
//! earliest deadline bounds the proactor's wait (`ENTER(GETEVENTS)`'s timeout on kmod,
//! io_uring's wait timeout, `ppoll` on threads). Chosen over a TIMEOUT op in the rings
//! because it works the same on every backend without an ABI addition, a timer costs no
//! CQ entry nor in-flight slot (10 000 sleeping tasks do not fill a lane), and cancelling
//! one is removing a map entry, not another request. The cost: the serving thread, not
//! an executor, notices the deadline, so a timer fires when that thread wakes (its
//! resolution is the wait's, microseconds, not the executors' idle spin).
//!
//! # Never block a runtime thread
//!
//! Requests go to the rings when the runtime turns (between task polls): a task that
//! blocks its thread (a blocking `read`, `join`, `sleep` of std) stops every task of the
//! runtime and keeps even its already queued requests (a CLOSE of a dropped stream) from
//! being submitted. Run such calls with [`unblock`].
//!
//! # What is synchronous
//!
//! Opening, syncing and allocating files ([`File::open`], [`File::sync_all`],
//! [`File::sync_data`], [`File::allocate`], [`File::punch_hole`]), connecting and shutting
//! down sockets ([`TcpStream::connect`], [`TcpStream::shutdown`]) are requests through
//! the rings (OPENAT, FSYNC, FALLOCATE, CONNECT, SHUTDOWN) like reads and writes; the
//! kernel module runs the blocking ones on its helper threads. What stays synchronous:
//! [`File::metadata`] (one `fstat` of a descriptor of the slot).

mod buf;
mod driver;
mod fs;
mod net;
mod op;
mod pool;
mod task;
mod time;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use self::buf::{IoBuf, IoBufMut, Slice};
pub use self::fs::File;
pub use self::net::{TcpListener, TcpStream};
pub use self::pool::{
    current_worker, switch_to, unblock, BatchStats, Handle, Pool, PoolOptions, RemoteJoinHandle,
    SwitchTo, Unblock,
};
pub use self::task::{JoinError, JoinHandle};
pub use self::time::{interval, sleep, sleep_until, timeout, Elapsed, Interval, Sleep};

use self::driver::Driver;
use self::task::{Job, Remote, Tasks, MAIN};
use crate::config::Config;
use crate::proactor::{BufGroup, Proactor};

/// The state of one runtime, shared by its I/O objects and futures (`Rc`: one thread).
pub(crate) struct Inner {
    pub(crate) driver: RefCell<Driver>,
    tasks: RefCell<Tasks>,
    pub(crate) remote: Arc<Remote>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Inner>>> = const { RefCell::new(None) };
}

/// The runtime running on this thread.
pub(crate) fn current() -> Rc<Inner> {
    try_current().expect("not inside a fastio runtime (use Runtime::block_on)")
}

pub(crate) fn try_current() -> Option<Rc<Inner>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `f` on the runtime `id` if it is the current one on this thread.
pub(crate) fn with_runtime<R>(id: usize, f: impl FnOnce(&Inner) -> R) -> Option<R> {
    CURRENT.with(|c| {
        let c = c.borrow();
        let rt = c.as_ref().filter(|rt| rt.id() == id)?;
        Some(f(rt))
    })
}

impl Inner {
    /// The runtime's identity (the address of its `Remote`, shared by nothing else).
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.remote) as usize
    }
}

/// A single-threaded executor driving one proactor. See the [module docs](self).
pub struct Runtime {
    inner: Rc<Inner>,
}

impl Runtime {
    /// Opens a proactor on the backend `config` asks for and builds a runtime on it.
    pub fn new(config: &Config) -> io::Result<Runtime> {
        let remote = Remote::new()?;
        let p = Proactor::new(config)?;
        let driver = Driver::new(p, remote.efd())?;
        Ok(Runtime {
            inner: Rc::new(Inner {
                driver: RefCell::new(driver),
                tasks: RefCell::new(Tasks::default()),
                remote,
            }),
        })
    }

    /// The proactor's backend.
    pub fn backend(&self) -> crate::Choice {
        self.inner.driver.borrow().proactor().backend().clone()
    }

    /// A `Send + Sync` handle that submits work to this runtime from any thread.
    pub fn handle(&self) -> Handle {
        Handle::new(Arc::clone(&self.inner.remote))
    }

    /// Runs `fut` to completion on this thread, together with the tasks spawned
    /// meanwhile (they keep their state between calls and run again in the next one).
    ///
    /// Panics if called inside a runtime.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        assert!(
            try_current().is_none(),
            "block_on inside a fastio runtime (spawn the future instead)"
        );
        let _enter = Enter::new(&self.inner);
        let mut fut = pin!(fut);
        let (main_waker, main_tw) = task::waker_for(&self.inner.remote, MAIN);
        let mut cx = Context::from_waker(&main_waker);
        let mut main_woken = true;
        let mut ready = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        loop {
            if main_woken {
                main_woken = false;
                main_tw
                    .scheduled
                    .store(false, std::sync::atomic::Ordering::Release);
                if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                    return v;
                }
            }
            self.inner.remote.take(&mut ready, &mut jobs);
            for id in ready.drain(..) {
                if id == MAIN {
                    main_woken = true;
                } else {
                    self.inner.run_task(id);
                }
            }
            for job in jobs.drain(..) {
                job();
            }
            let idle = !main_woken && !self.inner.remote.has_work();
            let dead = {
                let mut d = self.inner.driver.borrow_mut();
                if let Err(e) = d.turn(idle) {
                    // The backend itself failed (e.g. a kmod worker died): nothing can
                    // make progress any more.
                    panic!("fastio::rt: the proactor failed: {e}");
                }
                d.take_graveyard()
            };
            drop(dead);
        }
    }

    /// Tasks spawned and not yet finished.
    pub fn tasks(&self) -> usize {
        self.inner.tasks.borrow().live
    }
}

impl Inner {
    fn run_task(self: &Rc<Self>, id: usize) {
        let (mut fut, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(task) = tasks.slots.get_mut(id).and_then(Option::as_mut) else {
                return;
            };
            let Some(fut) = task.future.take() else {
                return;
            };
            (fut, Arc::clone(&task.waker))
        };
        waker
            .scheduled
            .store(false, std::sync::atomic::Ordering::Release);
        let w = std::task::Waker::from(waker);
        let mut cx = Context::from_waker(&w);
        // Panics are caught inside the task future (`Catching`).
        let done = fut.as_mut().poll(&mut cx).is_ready();
        if done {
            self.tasks.borrow_mut().remove(id);
            drop(fut);
        } else if let Some(task) = self
            .tasks
            .borrow_mut()
            .slots
            .get_mut(id)
            .and_then(Option::as_mut)
        {
            task.future = Some(fut);
        }
    }

    pub(crate) fn spawn_local<F: Future + 'static>(
        self: &Rc<Self>,
        fut: F,
    ) -> JoinHandle<F::Output> {
        let (task, handle) = task::joinable(fut);
        self.tasks.borrow_mut().insert(&self.remote, task);
        handle
    }
}

impl Drop for Runtime {
    /// Drops every task (their requests are cancelled), then waits (bounded) for the
    /// requests still in flight before the proactor goes.
    fn drop(&mut self) {
        let _enter = Enter::new(&self.inner);
        // Tasks hold the runtime (through their futures): take them out, then drop them
        // with no borrow held (dropping a future cancels its requests in the driver).
        let slots = std::mem::take(&mut self.inner.tasks.borrow_mut().slots);
        drop(slots);
        self.inner.driver.borrow_mut().shutdown();
    }
}

/// Makes a runtime current on this thread for the guard's life.
struct Enter {
    prev: Option<Rc<Inner>>,
    remote: Arc<Remote>,
    prev_remote: (usize, Vec<usize>),
}

impl Enter {
    fn new(inner: &Rc<Inner>) -> Enter {
        let prev = CURRENT.with(|c| c.replace(Some(Rc::clone(inner))));
        Enter {
            prev,
            remote: Arc::clone(&inner.remote),
            prev_remote: inner.remote.enter(),
        }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
        self.remote.leave(std::mem::take(&mut self.prev_remote));
    }
}

/// Spawns a local task on the current runtime; it runs while the runtime does.
///
/// Panics outside a runtime.
///
/// ```
/// # use fastio::{rt, BackendKind, Config};
/// # let rt = rt::Runtime::new(&Config { backend: BackendKind::Threads, ..Config::default() }).unwrap();
/// rt.block_on(async {
///     let h = rt::spawn(async { 6 * 7 });
///     assert_eq!(h.await.unwrap(), 42);
///     // A panic is reported, and the runtime goes on.
///     let bad = rt::spawn(async { panic!("boom") });
///     assert!(bad.await.is_err());
/// });
/// ```
pub fn spawn<F: Future + 'static>(fut: F) -> JoinHandle<F::Output> {
    current().spawn_local(fut)
}

/// Requests of the current runtime handed to the proactor and not completed yet
/// (including the runtime's own eventfd READ and cancels), plus those waiting inside it
/// for room. For diagnostics and tests.
pub fn in_flight() -> usize {
    let rt = current();
    let d = rt.driver.borrow();
    d.proactor().in_flight() + d.queued()
}

/// Registers a group of `count` provided buffers of `size` bytes each on the current
/// runtime, for [`TcpStream::recv_provided`]. The group belongs to this runtime (its id
/// means nothing to another one). `Unsupported` on a backend without provided buffers.
pub fn register_buffers(count: u32, size: u32) -> io::Result<BufGroup> {
    current()
        .driver
        .borrow_mut()
        .proactor_mut()
        .register_buffers(count, size)
}

/// Unregisters a group of the current runtime: `ResourceBusy` while a receive into it
/// is in flight. Buffers still held stay readable.
pub fn unregister_buffers(group: BufGroup) -> io::Result<()> {
    current()
        .driver
        .borrow_mut()
        .proactor_mut()
        .unregister_buffers(group)
}

/// A NOP through the rings: completes when an executor has seen it (a round trip).
pub async fn nop() -> io::Result<()> {
    let op = op::Op::new(&current(), driver::Req::Nop, ());
    op.await.0.io().map(drop)
}
