// SPDX-License-Identifier: GPL-2.0

//! fastio: system calls offloaded to polling threads through shared rings.
//!
//! `/dev/fastio` is a misc device. Each open is a context bound to the opening process;
//! `FASTIO_SETUP` creates its lanes (one submission ring and one completion ring each)
//! in kernel memory that the process maps with `mmap`. The ABI is `uapi/src/abi.rs`,
//! compiled here from the very same source.
//!
//! # The v2 model: workers are threads of the process
//!
//! The module creates no thread. The process starts one thread per lane that calls
//! `FASTIO_RUN_LANE` and stays in the kernel as the lane's polling worker (lane.rs), and
//! helper threads that call `FASTIO_RUN_HELPER` for blocking work (helper.rs,
//! offload.rs). Because they are the process's own threads, every request runs with its
//! address space, credentials (a later `setuid()` reaches them through glibc's signal),
//! rlimits, cgroups (cpu, memory, io) and signals; `ps` and `top` show their CPU time;
//! kill -9 and exec end them like any thread. This is what io_uring's io-threads give
//! since Linux 5.12, reached with exported APIs only (`create_io_thread` is not
//! exported). v1 used kernel threads borrowing the mm and creds plus a module-wide
//! workqueue; a hostile test found a panic, a POLLFREE use-after-free, a permanent leak
//! and a D-state hang in that design.
//!
//! Opcodes: NOP, ACCEPT, RECV, SEND, READ, WRITE, WRITEV, CLOSE, ASYNC_CANCEL, OPENAT,
//! FSYNC, FALLOCATE, SHUTDOWN, CONNECT, SENDFILE (`uapi/src/abi.rs` describes each,
//! `decode.rs` validates them). OPENAT, FSYNC, FALLOCATE and `O_DIRECT` transfers always
//! go to the helper threads (ops/fs.rs, ops/file.rs); CONNECT in progress waits for
//! readiness like RECV (ops/net.rs); SENDFILE waits for a writable socket on its lane,
//! then `do_splice_direct` runs on a helper (ops/sendfile.rs).
//!
//! ABI 3 (provided buffers, multishot): the SQE flags are validated by `decode` like
//! every field, and `FASTIO_REGISTER_BUF_RING` / `FASTIO_UNREGISTER_BUF_RING` validate
//! and record a group's description (context.rs: copied once, `validate_buf_ring` with
//! checked arithmetic, `access_ok` of both ranges; nothing pinned). RECV with
//! BUFFER_SELECT takes a buffer from the group's ring in user memory (pbuf.rs: user
//! copies only, the kernel's own head, the tail and each id read once and checked, a
//! buffer consumed only once data went into it, so an empty ring is `-ENOBUFS` with the
//! data left in the socket); multishot RECV and ACCEPT stay armed on their lane and post
//! `CQE_F_MORE` completions, at most 32 per round (multishot.rs). An armed multishot
//! request holds no CQ reservation: its last completion, if the CQ has no room for it,
//! waits in a per-lane backlog allocated when the request started. UNREGISTER of a group
//! that a request in flight uses is `-EBUSY`.
//!
//! Requests are first tried without blocking (ops/). One that must wait for readiness
//! is armed on the file's poll queues; the wake function hands it back to its lane
//! thread through the lane's port, and the lane thread re-issues it (pending.rs):
//! no kworker hop. Blocking work goes to the context's own helper threads, so no
//! context can starve another, and every blocking wait is interruptible or killable.
//!
//! `ENTER` with `ENTER_INLINE` runs a sleeping lane's rounds on the calling thread
//! instead of waking the lane thread: its SQEs, and while the caller waits for
//! completions, its ready requests (inline.rs). A lane's `round` lock (held by its
//! thread while awake; only ever try-locked by callers) keeps one round at a time.
//!
//! # Hostile input and limits
//!
//! Every value from user space is read once, copied and validated: ioctl arguments,
//! ring words (head and tail are only trusted modulo the ring size), SQEs (each read
//! once into a private copy and checked by `abi::decode`). Unprivileged use is bounded:
//! contexts per user (`max_user_contexts`) and in all (`max_contexts`), lanes and
//! helpers per context (`max_workers`, `max_helpers`), the idle spin (`max_idle_ms`),
//! ring memory charged to the memory cgroup and to RLIMIT_MEMLOCK (limits.rs). A
//! /dev/fastio file cannot be registered into a context (no reference cycles).
//!
//! Known limits, because no exported API allows better:
//! - ACCEPT creates the new socket with `kernel_accept`, as a kernel socket for LSMs and
//!   without `security_socket_accept` (ops/net.rs).
//! - Reference cycles: /dev/fastio and io_uring files cannot be registered, but a
//!   registered Unix socket whose receive queue holds a /dev/fastio descriptor in flight
//!   (SCM_RIGHTS) keeps the context alive after its process exits; the Unix garbage
//!   collector only follows Unix sockets. io_uring closed this by refusing to be sent over
//!   SCM_RIGHTS, which a module cannot do; the fix here would be an mmu_notifier release
//!   hook that empties the file table when the owner's address space goes (not in this
//!   kernel's configuration). The leak is bounded by the owner's own context limits.
//! - A lane thread's non-blocking WRITE to a regular file still takes the file system's
//!   freeze protection (`file_start_write`) and so waits, uninterruptibly, while the file
//!   system is frozen, as write(2) does.
//! - A cancelled request that another lane thread is executing at that very moment is
//!   not cancelled (ordering is only promised within one lane).
//! - OPENAT in a directory slot uses `file_open_root`, the one exported open relative to
//!   a directory: the directory is the root of the lookup (`..` and absolute paths stay
//!   inside it, like `openat2(RESOLVE_IN_ROOT)`), not `openat(2)`'s plain relative
//!   lookup; the other backends use `openat2(RESOLVE_IN_ROOT)` to match.
//! - A CONNECT that was in progress completes with the socket's error (`sock_error`,
//!   `SO_ERROR`) and does not call connect again (the address is copied once and not
//!   kept), so the socket's `sock->state` stays "connecting" as after userspace's own
//!   non-blocking connect + `SO_ERROR`: a later CONNECT to it returns 0 where io_uring
//!   (which connects again) says `-EISCONN`.
//! - UNREGISTER_FILE does not cancel requests in flight on the file (io_uring's fixed
//!   files behave the same): they keep their own reference; ASYNC_CANCEL or SHUTDOWN
//!   cancels them.

//! Lock order (outer first): `Context::state` → a lane's `round` → `Shared::pendings` → leaves
//! (`Shared::files`, `Shared::buf_rings`, `Jobs::inner`, each lane's CQ lock,
//! `Shared::cq_lock`, `limits::USERS`); a provided-buffer group's head lock is taken with
//! none of them held (pbuf.rs). Wait-queue and port wakeups take no lock of the module.

use kernel::{
    fs::File,
    ioctl::{_IO, _IOC_SIZE, _IOR, _IOW, _IOWR},
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::virt::VmaNew,
    prelude::*,
    sync::{Arc, ArcBorrow},
    uaccess::{UserPtr, UserSlice},
};

#[path = "../uapi/src/abi.rs"]
#[allow(dead_code, unreachable_pub)]
mod abi;
mod context;
mod files;
mod helper;
mod inline;
mod lane;
mod limits;
mod multishot;
mod offload;
mod ops;
mod pbuf;
mod pending;
mod ring;
mod shared;
mod sys;
mod waiters;
mod waitq;

use context::Context;

module! {
    type: FastioModule,
    name: "fastio",
    authors: ["fastio-rs developers"],
    description: "System call offload rings served by polling threads of the process",
    license: "GPL",
    params: {
        max_workers: u32 {
            default: 16,
            description: "Most polling workers (lanes) one context may create",
        },
        max_contexts: u32 {
            default: 64,
            description: "Most contexts (set-up opens of /dev/fastio) in the system",
        },
        max_user_contexts: u32 {
            default: 8,
            description: "Most contexts one user may have set up (CAP_SYS_RESOURCE: no per-user limit)",
        },
        max_helpers: u32 {
            default: 16,
            description: "Most helper threads (blocking work) one context may have",
        },
        max_idle_ms: u32 {
            default: 1000,
            description: "Longest idle spin (SetupParams::idle_ms) a lane thread may be given",
        },
    },
}

// The ioctl numbers of the ABI are the kernel's own encoding of its argument types.
const _: () = {
    assert!(abi::FASTIO_SETUP == _IOWR::<abi::SetupParams>(0xFA, 1));
    assert!(abi::FASTIO_ENTER == _IOW::<abi::EnterArgs>(0xFA, 2));
    assert!(abi::FASTIO_REGISTER_FILES == _IOW::<abi::FilesUpdate>(0xFA, 3));
    assert!(abi::FASTIO_UNREGISTER_FILE == _IOW::<abi::SlotArg>(0xFA, 4));
    assert!(abi::FASTIO_INSTALL_FD == _IOW::<abi::SlotArg>(0xFA, 5));
    assert!(abi::FASTIO_GET_STATS == _IOR::<abi::Stats>(0xFA, 6));
    assert!(abi::FASTIO_RUN_LANE == _IOW::<abi::ThreadArg>(0xFA, 7));
    assert!(abi::FASTIO_RUN_HELPER == _IOW::<abi::ThreadArg>(0xFA, 8));
    assert!(abi::FASTIO_SHUTDOWN == _IO(0xFA, 9));
};

#[pin_data]
struct FastioModule {
    #[pin]
    _miscdev: MiscDeviceRegistration<FastioDevice>,
}

impl kernel::InPlaceModule for FastioModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pr_info!(
            "fastio: ABI {}, max_workers={}, max_helpers={}, max_contexts={}, max_user_contexts={}, max_idle_ms={}\n",
            abi::ABI_VERSION,
            module_parameters::max_workers.value(),
            module_parameters::max_helpers.value(),
            module_parameters::max_contexts.value(),
            module_parameters::max_user_contexts.value(),
            module_parameters::max_idle_ms.value()
        );
        // SAFETY: called once, before the device (the only way to a context) exists.
        unsafe { limits::init() };
        let options = MiscDeviceOptions { name: c"fastio" };
        try_pin_init!(Self {
            _miscdev <- MiscDeviceRegistration::register(options),
        })
    }
}

/// The private data of an open `/dev/fastio`.
struct FastioDevice;

#[vtable]
impl MiscDevice for FastioDevice {
    type Ptr = Arc<Context>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Arc<Context>> {
        Context::new()
    }

    fn release(ctx: Arc<Context>, _file: &File) {
        ctx.teardown();
    }

    fn mmap(ctx: ArcBorrow<'_, Context>, _file: &File, vma: &VmaNew) -> Result {
        ctx.mmap(vma)
    }

    fn ioctl(ctx: ArcBorrow<'_, Context>, file: &File, cmd: u32, arg: usize) -> Result<isize> {
        ctx.check_owner()?;
        let user = UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd));
        match cmd {
            abi::FASTIO_SETUP => {
                let (reader, writer) = user.reader_writer();
                ctx.setup(file, reader, writer)?;
                Ok(0)
            }
            abi::FASTIO_ENTER => ctx.enter(user.reader()),
            abi::FASTIO_REGISTER_FILES => ctx.register_files(file, user.reader()),
            abi::FASTIO_UNREGISTER_FILE => ctx.unregister_file(user.reader()),
            abi::FASTIO_INSTALL_FD => ctx.install_fd(user.reader()),
            abi::FASTIO_GET_STATS => ctx.stats(user.writer()),
            abi::FASTIO_RUN_LANE => ctx.run_lane(user.reader()),
            abi::FASTIO_RUN_HELPER => ctx.run_helper(user.reader()),
            abi::FASTIO_SHUTDOWN => ctx.shutdown(),
            abi::FASTIO_REGISTER_BUF_RING => ctx.register_buf_ring(user.reader()),
            abi::FASTIO_UNREGISTER_BUF_RING => ctx.unregister_buf_ring(user.reader()),
            _ => Err(ENOTTY),
        }
    }
}
