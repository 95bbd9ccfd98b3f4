// SPDX-License-Identifier: GPL-2.0

//! fastio: system calls offloaded to polling kernel workers through shared rings.
//!
//! `/dev/fastio` is a misc device. Each open is a context bound to the opening process;
//! `FASTIO_SETUP` creates its lanes (one submission ring, one completion ring and one
//! polling kernel worker each) in kernel memory that the process maps with `mmap`.
//! The ABI is `uapi/src/abi.rs`, compiled here from the very same source.
//!
//! Only exported kernel APIs are used: no syscall table, no kallsyms. Ring memory is
//! treated as hostile: each SQE is read once into a private copy and validated by
//! `abi::decode` before anything else looks at it.
//!
//! Lock order (outer first): `Context::state` → `Shared::files`; `Lane::sleep` and
//! `Shared::cq_lock` are leaves and never held while taking another lock.

use core::sync::atomic::Ordering;

use kernel::{
    fs::File,
    ioctl::{_IOC_SIZE, _IOR, _IOW, _IOWR},
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
mod io;
mod worker;

use context::Context;

module! {
    type: FastioModule,
    name: "fastio",
    authors: ["fastio-rs developers"],
    description: "System call offload rings served by polling kernel workers",
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
        wq_max_active: u32 {
            default: 4,
            description: "Concurrency of the workqueue that re-issues ready requests and runs blocking file I/O",
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
};

#[pin_data]
struct FastioModule {
    // Dropped first: no new context can start once the device is gone.
    #[pin]
    _miscdev: MiscDeviceRegistration<FastioDevice>,
    _wq: ModuleWorkqueue,
}

/// The workqueue that re-issues ready requests and runs blocking file I/O.
struct ModuleWorkqueue;

impl ModuleWorkqueue {
    fn new() -> Result<Self> {
        let max_active = module_parameters::wq_max_active.value().clamp(1, 512);
        // SAFETY: a plain allocation call; the format has no conversions.
        let wq = unsafe {
            kernel::bindings::alloc_workqueue_noprof(
                c"fastio".as_ptr().cast(),
                kernel::bindings::wq_flags_WQ_UNBOUND,
                max_active as core::ffi::c_int,
            )
        };
        if wq.is_null() {
            return Err(ENOMEM);
        }
        io::WQ.store(wq, Ordering::Release);
        Ok(ModuleWorkqueue)
    }
}

impl Drop for ModuleWorkqueue {
    fn drop(&mut self) {
        // The device is gone and no context exists (each holds a module reference), so
        // only finishing work can be left: destroy_workqueue drains it.
        let wq = io::WQ.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !wq.is_null() {
            // SAFETY: allocated in `new`, used by nobody any more.
            unsafe { kernel::bindings::destroy_workqueue(wq) };
        }
    }
}

impl kernel::InPlaceModule for FastioModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pr_info!(
            "fastio: ABI {}, max_workers={}, max_contexts={}, wq_max_active={}\n",
            abi::ABI_VERSION,
            module_parameters::max_workers.value(),
            module_parameters::max_contexts.value(),
            module_parameters::wq_max_active.value()
        );
        let options = MiscDeviceOptions { name: c"fastio" };
        try_pin_init!(Self {
            _wq: ModuleWorkqueue::new()?,
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

    fn ioctl(ctx: ArcBorrow<'_, Context>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        ctx.check_owner()?;
        let user = UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd));
        match cmd {
            abi::FASTIO_SETUP => {
                let (reader, writer) = user.reader_writer();
                ctx.setup(reader, writer)?;
                Ok(0)
            }
            abi::FASTIO_ENTER => ctx.enter(user.reader()),
            abi::FASTIO_REGISTER_FILES => ctx.register_files(user.reader()),
            abi::FASTIO_UNREGISTER_FILE => ctx.unregister_file(user.reader()),
            abi::FASTIO_INSTALL_FD => ctx.install_fd(user.reader()),
            abi::FASTIO_GET_STATS => ctx.stats(user.writer()),
            _ => Err(ENOTTY),
        }
    }
}
