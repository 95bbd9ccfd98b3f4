//! Many runtimes: the thread-per-core [`Pool`], the `Send + Sync` [`Handle`] that hands
//! work to a runtime from any thread, [`switch_to`] another worker, and [`unblock`] for
//! the system calls the rings do not offer yet.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use super::task::{panic_message, JoinError, Remote, MAIN};
use super::{current, Runtime};
use crate::config::Config;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// One-shot results across threads
// ---------------------------------------------------------------------------------------

/// The result (once there) and the waker of whoever awaits it.
type ShotState<T> = (Option<Result<T, JoinError>>, Option<Waker>);

struct Oneshot<T> {
    slot: Mutex<ShotState<T>>,
    cv: Condvar,
}

impl<T> Oneshot<T> {
    fn new() -> Arc<Self> {
        Arc::new(Oneshot {
            slot: Mutex::new((None, None)),
            cv: Condvar::new(),
        })
    }

    fn set(&self, v: Result<T, JoinError>) {
        let waker = {
            let mut s = lock(&self.slot);
            s.0 = Some(v);
            s.1.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The result of work handed to another thread ([`Handle::spawn`], [`Pool::spawn_on`]):
/// await it from any runtime, or [`RemoteJoinHandle::join`] it from a plain thread.
/// `Err` if the work panicked (or its worker stopped before running it).
pub struct RemoteJoinHandle<T> {
    shot: Arc<Oneshot<T>>,
}

impl<T> RemoteJoinHandle<T> {
    /// Blocks the calling thread until the result is there. Do not call it on a runtime
    /// thread (await the handle there).
    pub fn join(self) -> Result<T, JoinError> {
        let mut s = lock(&self.shot.slot);
        loop {
            if let Some(v) = s.0.take() {
                return v;
            }
            s = self.shot.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether the result is there.
    pub fn is_finished(&self) -> bool {
        lock(&self.shot.slot).0.is_some()
    }
}

impl<T> Future for RemoteJoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = lock(&self.shot.slot);
        match s.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> fmt::Debug for RemoteJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Sends a `JoinError` if the work is dropped unrun (its runtime stopped).
struct Reply<T> {
    shot: Option<Arc<Oneshot<T>>>,
}

impl<T> Reply<T> {
    fn send(mut self, v: Result<T, JoinError>) {
        if let Some(s) = self.shot.take() {
            s.set(v);
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(s) = self.shot.take() {
            s.set(Err(JoinError::new(Box::new(
                "the runtime stopped before the work finished",
            ))));
        }
    }
}

/// `fut` with its panic caught and its result sent to `reply`.
async fn answered<F: Future>(fut: F, reply: Reply<F::Output>) {
    let r = CatchUnwind { fut: Box::pin(fut) }.await;
    reply.send(r.map_err(|panic| {
        eprintln!(
            "fastio::rt: a task panicked: {}; the runtime keeps serving",
            panic_message(&*panic)
        );
        JoinError::new(panic)
    }));
}

struct CatchUnwind<F: Future> {
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Handle
// ---------------------------------------------------------------------------------------

/// Submits work to one runtime from any thread (`Send + Sync`, cheap to clone).
///
/// Work that arrives while the runtime is busy is taken in one batch at its next turn,
/// and the requests of the whole batch go to the rings in one submit: many threads
/// feeding one runtime cost one wakeup (an eventfd write) per batch, not per request
/// (io_uring_actor's model). Each caller gets its own [`RemoteJoinHandle`].
///
/// A plain [`Runtime`] takes work only while it runs (`block_on`); a [`Pool`]'s workers
/// always do.
///
/// ```
/// # use fastio::{rt, BackendKind, Config};
/// let config = Config { backend: BackendKind::Threads, ..Config::default() };
/// let pool = rt::Pool::new(&config, rt::PoolOptions { workers: 1, pin: None })?;
/// let h = pool.handle(0);
/// let answers: Vec<_> = (0..4u64)
///     .map(|i| {
///         let h = h.clone();
///         std::thread::spawn(move || h.spawn(async move { rt::nop().await.map(|()| i * 2) }).join())
///     })
///     .collect();
/// for (i, a) in answers.into_iter().enumerate() {
///     assert_eq!(a.join().unwrap().unwrap().unwrap(), i as u64 * 2);
/// }
/// # Ok::<_, std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    remote: Arc<Remote>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handle")
    }
}

/// How the work sent through [`Handle`]s reached a runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Pieces of work (spawns) taken.
    pub jobs: u64,
    /// Turns of the runtime that took them: `jobs / batches` is the mean batch.
    pub batches: u64,
}

impl Handle {
    pub(crate) fn new(remote: Arc<Remote>) -> Handle {
        Handle { remote }
    }

    /// Work taken by the runtime so far, and in how many batches.
    pub fn batch_stats(&self) -> BatchStats {
        BatchStats {
            jobs: self.remote.jobs_taken.load(Ordering::Relaxed),
            batches: self.remote.job_batches.load(Ordering::Relaxed),
        }
    }

    /// Runs `fut` as a task of the runtime. In a [`Pool`], the task may move to another
    /// worker with [`switch_to`] (that is why it must be `Send`).
    pub fn spawn<F>(&self, fut: F) -> RemoteJoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let shot = Oneshot::new();
        let reply = Reply {
            shot: Some(Arc::clone(&shot)),
        };
        let task: SendTask = Box::pin(answered(fut, reply));
        self.remote.push_job(Box::new(move || spawn_movable(task)));
        RemoteJoinHandle { shot }
    }

    /// Builds a local (`!Send`) future with `make` on the runtime's thread and runs it as
    /// a task there: for work on the runtime's own I/O objects.
    pub fn spawn_with<M, F>(&self, make: M) -> RemoteJoinHandle<F::Output>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        let shot = Oneshot::new();
        let reply = Reply {
            shot: Some(Arc::clone(&shot)),
        };
        self.remote.push_job(Box::new(move || {
            match catch_unwind(AssertUnwindSafe(make)) {
                Ok(fut) => {
                    current().spawn_local(answered(fut, reply));
                }
                Err(p) => reply.send(Err(JoinError::new(p))),
            }
        }));
        RemoteJoinHandle { shot }
    }
}

// ---------------------------------------------------------------------------------------
// Tasks that move between workers
// ---------------------------------------------------------------------------------------

type SendTask = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// This thread's pool and index in it, if it is a pool worker.
    static WORKER: RefCell<Option<(Arc<PoolShared>, usize)>> = const { RefCell::new(None) };
    /// Set while a movable task is polled.
    static IN_MOVABLE: Cell<bool> = const { Cell::new(false) };
    /// Set by `switch_to`: the worker the polled task wants to continue on.
    static MOVE_TO: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the pool worker running the caller, if it runs on one.
pub fn current_worker() -> Option<usize> {
    WORKER.with(|w| w.borrow().as_ref().map(|(_, i)| *i))
}

fn spawn_movable(task: SendTask) {
    current().spawn_local(Movable { task: Some(task) });
}

/// A `Send` task that can leave its worker when it awaits [`switch_to`].
struct Movable {
    task: Option<SendTask>,
}

impl Future for Movable {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(());
        };
        IN_MOVABLE.with(|m| m.set(true));
        MOVE_TO.with(|m| m.set(None));
        let r = task.as_mut().poll(cx);
        IN_MOVABLE.with(|m| m.set(false));
        if r.is_ready() {
            return Poll::Ready(());
        }
        let Some(to) = MOVE_TO.with(Cell::take) else {
            return Poll::Pending;
        };
        let task = self.task.take().expect("checked above");
        let remote = WORKER.with(|w| {
            w.borrow()
                .as_ref()
                .and_then(|(p, _)| p.remotes.get(to).cloned())
        });
        match remote {
            // The task continues over there; this local shell ends.
            Some(r) => r.push_job(Box::new(move || spawn_movable(task))),
            None => unreachable!("switch_to checked the worker index"),
        }
        Poll::Ready(())
    }
}

/// Continues the calling task on pool worker `worker` (kio's `SwitchToWorker`): after
/// the `await` the task runs on that worker's thread, with its runtime as the current
/// one. Works in tasks started with [`Pool::spawn_on`] or [`Handle::spawn`] on a pool
/// worker (they are `Send`); elsewhere it fails with `Unsupported`. I/O objects belong to
/// the runtime that made them and are `!Send`, so they cannot be carried across.
///
/// ```
/// # use fastio::{rt, BackendKind, Config};
/// # let config = Config { backend: BackendKind::Threads, ..Config::default() };
/// let pool = rt::Pool::new(&config, rt::PoolOptions { workers: 2, pin: None })?;
/// let path = pool.spawn_on(0, async {
///     let a = rt::current_worker();
///     rt::switch_to(1).await?;
///     Ok::<_, std::io::Error>((a, rt::current_worker()))
/// });
/// assert_eq!(path.join().unwrap()?, (Some(0), Some(1)));
/// # Ok::<_, std::io::Error>(())
/// ```
pub fn switch_to(worker: usize) -> SwitchTo {
    SwitchTo { worker }
}

/// See [`switch_to`].
#[derive(Debug)]
pub struct SwitchTo {
    worker: usize,
}

impl Future for SwitchTo {
    type Output = io::Result<()>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pool_size = WORKER.with(|w| w.borrow().as_ref().map(|(p, _)| p.remotes.len()));
        let Some(size) = pool_size else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "switch_to outside a pool worker",
            )));
        };
        if current_worker() == Some(self.worker) {
            return Poll::Ready(Ok(()));
        }
        if self.worker >= size {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("switch_to({}): the pool has {size} workers", self.worker),
            )));
        }
        if !IN_MOVABLE.with(Cell::get) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "switch_to in a task that cannot move (start it with Pool::spawn_on)",
            )));
        }
        MOVE_TO.with(|m| m.set(Some(self.worker)));
        // Polled again on the target worker, where `current_worker` matches.
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------------
// Pool
// ---------------------------------------------------------------------------------------

struct PoolShared {
    remotes: Vec<Arc<Remote>>,
}

/// How to build a [`Pool`].
#[derive(Clone, Debug, Default)]
pub struct PoolOptions {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Pin worker `i` to entry `(first + i) % n` of the `n` CPUs the process may run on
    /// (CPU `(first + i) % n` when it may run on all); `None`: not pinned.
    pub pin: Option<usize>,
}

/// N runtimes on N threads (`fastio-rt-<i>`), each with its own proactor (kio's
/// `IOPool`). Dropping the pool stops the workers (their tasks are dropped, their
/// requests cancelled) and joins them.
///
/// Each worker can accept on the same listening socket: register it in every worker
/// with [`super::TcpListener::from_std`] (the kernel hands each connection to one of
/// the waiting ACCEPTs).
pub struct Pool {
    shared: Arc<PoolShared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Pool {
    /// Starts the workers; fails if any cannot open its proactor.
    pub fn new(config: &Config, opts: PoolOptions) -> io::Result<Pool> {
        let n = opts.workers.max(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(n);
        let shared_slot: Arc<Mutex<Option<Arc<PoolShared>>>> = Arc::new(Mutex::new(None));
        let go = Arc::new((Mutex::new(false), Condvar::new()));
        let cpus = crate::backend::allowed_cpus();
        for i in 0..n {
            let (tx, config, shared_slot, go) = (
                tx.clone(),
                config.clone(),
                Arc::clone(&shared_slot),
                Arc::clone(&go),
            );
            let cpu = crate::backend::pinned_cpu(
                opts.pin.map(|first| (first % cpus.len().max(1)) as u32),
                i as u32,
                &cpus,
            );
            let t = std::thread::Builder::new()
                .name(format!("fastio-rt-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = crate::backend::pin_current_thread(cpu) {
                            eprintln!("fastio::rt: worker {i}: cannot pin to CPU {cpu}: {e}");
                        }
                    }
                    let rt = match Runtime::new(&config) {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send((i, Err(e)));
                            return;
                        }
                    };
                    let _ = tx.send((i, Ok(Arc::clone(&rt.inner.remote))));
                    drop(tx);
                    // Wait for the pool to be complete (or abandoned).
                    let (m, cv) = &*go;
                    let mut started = lock(m);
                    while !*started {
                        started = cv.wait(started).unwrap_or_else(|e| e.into_inner());
                    }
                    drop(started);
                    let Some(shared) = lock(&shared_slot).clone() else {
                        return;
                    };
                    WORKER.with(|w| *w.borrow_mut() = Some((shared, i)));
                    rt.block_on(Stopped {
                        remote: Arc::clone(&rt.inner.remote),
                    });
                    drop(rt);
                    WORKER.with(|w| w.borrow_mut().take());
                })?;
            threads.push(t);
        }
        drop(tx);
        let mut remotes: Vec<Option<Arc<Remote>>> = vec![None; n];
        let mut first_err = None;
        for (i, r) in rx {
            match r {
                Ok(remote) => remotes[i] = Some(remote),
                Err(e) => {
                    first_err.get_or_insert(io::Error::new(
                        e.kind(),
                        format!("fastio::rt: pool worker {i}: {e}"),
                    ));
                }
            }
        }
        let complete = first_err.is_none() && remotes.iter().all(Option::is_some);
        if complete {
            *lock(&shared_slot) = Some(Arc::new(PoolShared {
                remotes: remotes.into_iter().flatten().collect(),
            }));
        }
        {
            let (m, cv) = &*go;
            *lock(m) = true;
            cv.notify_all();
        }
        let shared = lock(&shared_slot).clone();
        match shared {
            Some(shared) => Ok(Pool { shared, threads }),
            None => {
                for t in threads {
                    let _ = t.join();
                }
                Err(first_err.unwrap_or_else(|| io::Error::other("a pool worker died")))
            }
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.remotes.len()
    }

    /// A handle to worker `worker` (panics if out of range).
    pub fn handle(&self, worker: usize) -> Handle {
        Handle::new(Arc::clone(&self.shared.remotes[worker]))
    }

    /// Runs `fut` on worker `worker`; it may [`switch_to`] another.
    pub fn spawn_on<F>(&self, worker: usize, fut: F) -> RemoteJoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle(worker).spawn(fut)
    }

    /// Builds a local future with `make` on worker `worker` and runs it there (for I/O
    /// objects, which stay on the worker that made them).
    pub fn spawn_with_on<M, F>(&self, worker: usize, make: M) -> RemoteJoinHandle<F::Output>
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future + 'static,
        F::Output: Send + 'static,
    {
        self.handle(worker).spawn_with(make)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for r in &self.shared.remotes {
            r.stop.store(true, Ordering::SeqCst);
            r.schedule(MAIN);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A pool worker's `block_on` future: ends when the pool stops it.
struct Stopped {
    remote: Arc<Remote>,
}

impl Future for Stopped {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        // `Pool::drop` sets `stop`, then wakes this future (schedules MAIN).
        if self.remote.stop.load(Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

// ---------------------------------------------------------------------------------------
// Blocking calls
// ---------------------------------------------------------------------------------------

/// Runs `f` on a new helper thread and completes with its result, so that a blocking
/// system call the rings do not offer (open, fsync, connect) does not stop the runtime.
/// Usable outside a runtime too (it only needs a waker).
pub fn unblock<T, F>(f: F) -> Unblock<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let shot = Oneshot::new();
    let reply = Reply {
        shot: Some(Arc::clone(&shot)),
    };
    let spawned = std::thread::Builder::new()
        .name("fastio-unblock".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(f)).map_err(JoinError::new);
            reply.send(r);
        });
    if let Err(e) = spawned {
        shot.set(Err(JoinError::new(Box::new(format!(
            "cannot start a helper thread: {e}"
        )))));
    }
    Unblock {
        inner: RemoteJoinHandle { shot },
    }
}

/// See [`unblock`]; resumes the helper thread's panic, if any.
pub struct Unblock<T> {
    inner: RemoteJoinHandle<T>,
}

impl<T> Future for Unblock<T> {
    type Output = T;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(Ok(v)) => Poll::Ready(v),
            Poll::Ready(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Poll::Pending => Poll::Pending,
        }
    }
}
