//! Tasks, wakers and join handles of one runtime thread.
//!
//! Tasks are local (`!Send` futures) and live in a slab owned by their runtime. A waker
//! is an `Arc` (wakers must be `Send + Sync`): waking pushes the task's index onto the
//! runtime's [`Remote`] queue; from another thread it also writes the runtime's eventfd,
//! whose READ the driver keeps in flight, so a runtime asleep in its wait wakes up.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Index of the future given to `block_on` in the ready queue.
pub(crate) const MAIN: usize = usize::MAX;

/// Work sent to a runtime from another thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// The `Remote` of the runtime running on this thread (its address), so that a
    /// wake from the runtime's own thread skips the eventfd and the lock.
    static RUNNING: Cell<usize> = const { Cell::new(0) };
    /// Tasks woken on this thread by the runtime running on it: no lock, no atomic.
    static LOCAL_READY: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The part of a runtime other threads may touch.
pub(crate) struct Remote {
    efd: OwnedFd,
    ready: Mutex<Vec<usize>>,
    jobs: Mutex<Vec<Job>>,
    /// An eventfd write is pending (cleared by the runtime before it drains): many
    /// wakes from other threads cost one write until the runtime looks.
    notified: AtomicBool,
    /// Asked to stop (pool workers).
    pub(crate) stop: AtomicBool,
    /// Entries pushed to `ready` or `jobs` since the runtime last took them: lets the
    /// runtime see "no work" without taking the locks.
    pending: AtomicUsize,
    /// Jobs taken, and the batches they were taken in.
    pub(crate) jobs_taken: AtomicU64,
    pub(crate) job_batches: AtomicU64,
}

impl Remote {
    pub(crate) fn new() -> io::Result<Arc<Self>> {
        // SAFETY: plain syscall; the result is checked and then owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Remote {
            // SAFETY: a fresh descriptor nobody else owns.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
            ready: Mutex::new(Vec::new()),
            jobs: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            jobs_taken: AtomicU64::new(0),
            job_batches: AtomicU64::new(0),
        }))
    }

    pub(crate) fn efd(&self) -> &OwnedFd {
        &self.efd
    }

    fn addr(&self) -> usize {
        self as *const Remote as usize
    }

    /// Marks this runtime as the one running on the calling thread; returns what `leave`
    /// puts back (the previous runtime and its locally woken tasks).
    pub(crate) fn enter(&self) -> (usize, Vec<usize>) {
        let prev = RUNNING.with(|r| r.replace(self.addr()));
        (
            prev,
            LOCAL_READY.with(|q| std::mem::take(&mut *q.borrow_mut())),
        )
    }

    /// Ends `enter`: tasks woken locally and not run yet go to the shared queue (they
    /// run at the next `block_on`), and the previous runtime's state comes back.
    pub(crate) fn leave(&self, prev: (usize, Vec<usize>)) {
        let left = LOCAL_READY.with(|q| std::mem::replace(&mut *q.borrow_mut(), prev.1));
        if !left.is_empty() {
            let n = left.len();
            lock(&self.ready).extend(left);
            self.pending.fetch_add(n, Ordering::SeqCst);
        }
        RUNNING.with(|r| r.set(prev.0));
    }

    /// Wakes the runtime if the caller is another thread.
    pub(crate) fn notify(&self) {
        if RUNNING.with(Cell::get) == self.addr() {
            return;
        }
        if self.notified.swap(true, Ordering::SeqCst) {
            return;
        }
        let one: u64 = 1;
        // SAFETY: an 8-byte write from a valid u64 to our own eventfd. It can only fail
        // with EAGAIN on a saturated counter, which is a pending wakeup anyway.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub(crate) fn schedule(&self, id: usize) {
        if RUNNING.with(Cell::get) == self.addr() {
            LOCAL_READY.with(|q| q.borrow_mut().push(id));
            return;
        }
        lock(&self.ready).push(id);
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.notify();
    }

    pub(crate) fn push_job(&self, job: Job) {
        lock(&self.jobs).push(job);
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.notify();
    }

    /// Takes the woken tasks and the jobs (into the given vectors, reused).
    /// Called on the runtime's thread, between `enter` and `leave`.
    pub(crate) fn take(&self, ready: &mut Vec<usize>, jobs: &mut Vec<Job>) {
        LOCAL_READY.with(|q| std::mem::swap(&mut *q.borrow_mut(), ready));
        self.notified.store(false, Ordering::SeqCst);
        // Reset before taking: what is pushed after the swap counts again.
        if self.pending.swap(0, Ordering::SeqCst) == 0 {
            return;
        }
        ready.append(&mut lock(&self.ready));
        let mut j = lock(&self.jobs);
        if !j.is_empty() {
            std::mem::swap(&mut *j, jobs);
            drop(j);
            self.jobs_taken
                .fetch_add(jobs.len() as u64, Ordering::Relaxed);
            self.job_batches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether tasks were woken or jobs pushed since the last `take` (on the runtime's
    /// thread).
    pub(crate) fn has_work(&self) -> bool {
        self.pending.load(Ordering::SeqCst) != 0 || LOCAL_READY.with(|q| !q.borrow().is_empty())
    }
}

/// The waker of one task.
pub(crate) struct TaskWaker {
    pub(crate) id: usize,
    /// In the ready queue already: a second wake adds nothing.
    pub(crate) scheduled: AtomicBool,
    pub(crate) remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            self.remote.schedule(self.id);
        }
    }
}

/// A task's future, type-erased.
pub(crate) type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

pub(crate) struct Task {
    pub(crate) future: Option<LocalTask>,
    pub(crate) waker: Arc<TaskWaker>,
}

/// Every task of a runtime.
#[derive(Default)]
pub(crate) struct Tasks {
    pub(crate) slots: Vec<Option<Task>>,
    free: Vec<usize>,
    pub(crate) live: usize,
}

impl Tasks {
    pub(crate) fn insert(&mut self, remote: &Arc<Remote>, future: LocalTask) -> usize {
        let id = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let waker = Arc::new(TaskWaker {
            id,
            scheduled: AtomicBool::new(true),
            remote: Arc::clone(remote),
        });
        self.slots[id] = Some(Task {
            future: Some(future),
            waker,
        });
        self.live += 1;
        remote.schedule(id);
        id
    }

    pub(crate) fn remove(&mut self, id: usize) {
        if self.slots.get_mut(id).and_then(Option::take).is_some() {
            self.free.push(id);
            self.live -= 1;
        }
    }
}

/// Why a task gave no result: it panicked. `Send + Sync` (so it converts into
/// `io::Error`), with the panic's message and payload.
pub struct JoinError {
    message: String,
    panic: std::sync::Mutex<Box<dyn Any + Send>>,
}

impl JoinError {
    pub(crate) fn new(panic: Box<dyn Any + Send>) -> JoinError {
        JoinError {
            message: panic_message(&*panic).to_owned(),
            panic: std::sync::Mutex::new(panic),
        }
    }

    /// The panic's message, if it was a string.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The panic payload, to resume it with `std::panic::resume_unwind`.
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        self.panic.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinError(task panicked: {:?})", self.message)
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task panicked: {}", self.message)
    }
}

impl std::error::Error for JoinError {}

pub(crate) fn panic_message(p: &(dyn Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

struct JoinState<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
}

/// Awaits the result of a task spawned with [`crate::rt::spawn`]; `Err` if it panicked.
/// Dropping the handle detaches the task (it keeps running).
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.state.borrow_mut();
        match st.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                st.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Polls `fut` with panics caught; the result goes to the join state.
struct Catching<F: Future> {
    fut: Pin<Box<F>>,
    state: Rc<RefCell<JoinState<F::Output>>>,
}

impl<F: Future> Future for Catching<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let r = match catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(v)) => Ok(v),
            Err(panic) => {
                eprintln!(
                    "fastio::rt: a task panicked: {}; the runtime keeps serving",
                    panic_message(&*panic)
                );
                Err(JoinError::new(panic))
            }
        };
        let waker = {
            let mut st = this.state.borrow_mut();
            st.result = Some(r);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Poll::Ready(())
    }
}

/// The task future and the handle for `fut`.
pub(crate) fn joinable<F: Future + 'static>(fut: F) -> (LocalTask, JoinHandle<F::Output>) {
    let state = Rc::new(RefCell::new(JoinState {
        result: None,
        waker: None,
    }));
    let task = Catching {
        fut: Box::pin(fut),
        state: Rc::clone(&state),
    };
    (Box::pin(task), JoinHandle { state })
}

/// A waker that schedules `id` on `remote` (used for `block_on`'s own future).
pub(crate) fn waker_for(remote: &Arc<Remote>, id: usize) -> (Waker, Arc<TaskWaker>) {
    let tw = Arc::new(TaskWaker {
        id,
        scheduled: AtomicBool::new(false),
        remote: Arc::clone(remote),
    });
    (Waker::from(Arc::clone(&tw)), tw)
}
