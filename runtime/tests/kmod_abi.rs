//! The `/dev/fastio` ioctl and mmap ABI, checked against the loaded kernel module with
//! raw system calls: what SETUP returns, what it refuses, mmap's size rule, ENTER's flag
//! check and timeout, REGISTER_FILES' all-or-nothing rule, INSTALL_FD, and that a
//! context serves only the process that created it.
//!
//! The module runs inside the VM (`make vm-test`); where `/dev/fastio` does not exist
//! every test prints a SKIP line and passes.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use fastio::backend::DEVICE_PATH;
use fastio::uapi::{
    lane_layout, EnterArgs, RingHeader, RingInfo, SetupParams, ENTER_DEFER, ENTER_FLAGS,
    ENTER_GETEVENTS, ENTER_INLINE, ENTER_SQ_WAKEUP, FASTIO_INSTALL_FD, FASTIO_RUN_HELPER,
    FASTIO_RUN_LANE, FASTIO_UNREGISTER_FILE, INSTALL_CLOEXEC, LANE_ALL, MAX_HELPERS, MAX_WORKERS,
    PAGE_SIZE, TIMEOUT_NONE,
};
use fastio::{BackendKind, Config, Proactor};

mod common;
#[path = "common/kmod.rs"]
mod kmod;

use kmod::{params, Ctx};

/// Opens the device, or prints why `test` is skipped.
fn device(test: &str) -> Option<File> {
    common::have_module(&format!("kmod_abi::{test}")).then(kmod::open_device)
}

/// Skips (SKIP line) `test` on the old module, which has no lane or helper threads.
fn abi2(test: &str) -> bool {
    let ok = !kmod::is_v1();
    if !ok {
        println!("SKIP kmod_abi::{test}: the loaded module speaks ABI 1 (no RUN_LANE)");
    }
    ok
}

fn setup(f: &File, p: &mut SetupParams) -> Result<(), i32> {
    kmod::setup(f.as_raw_fd(), p)
}

/// A device with a context of one lane of 8/16 entries and 8 file slots (no threads).
fn ready_device(test: &str) -> Option<File> {
    let f = device(test)?;
    setup(&f, &mut params(1, 8, 16)).unwrap_or_else(|e| panic!("{test}: SETUP: errno {e}"));
    Some(f)
}

fn enter(f: &File, args: EnterArgs) -> Result<i32, i32> {
    kmod::enter(f.as_raw_fd(), args)
}

fn register(f: &File, fds: &[RawFd], slots: &[u32]) -> Result<i32, i32> {
    kmod::register(f.as_raw_fd(), fds, slots)
}

fn install(f: &File, slot: u32) -> Result<OwnedFd, i32> {
    kmod::install(f.as_raw_fd(), slot, INSTALL_CLOEXEC)
}

fn unregister(f: &File, slot: u32) -> Result<i32, i32> {
    kmod::unregister(f.as_raw_fd(), slot)
}

/// (device, inode) of a descriptor: identifies the file behind it.
fn identity(fd: RawFd) -> (u64, u64) {
    // SAFETY: fstat into a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is open for the caller.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    (st.st_dev, st.st_ino)
}

/// mmap of the device; `Ok(address)` or `Err(errno)`.
fn map(f: &File, len: usize, offset: i64) -> Result<*mut libc::c_void, i32> {
    kmod::map_device(f.as_raw_fd(), len, offset)
}

fn unmap(p: *mut libc::c_void, len: usize) {
    // SAFETY: `p` is a mapping of `len` bytes made by `map` and no longer used.
    assert_eq!(unsafe { libc::munmap(p, len) }, 0);
}

#[test]
fn setup_returns_the_uapi_layout_and_initialised_rings() {
    let Some(f) = device("setup_layout") else {
        return;
    };
    let mut p = params(2, 64, 128);
    setup(&f, &mut p).expect("SETUP");
    let l = lane_layout(64, 128);
    assert_eq!(
        (p.lane_size, p.sq_off, p.sqes_off, p.cq_off, p.cqes_off),
        (l.lane_size, l.sq_off, l.sqes_off, l.cq_off, l.cqes_off)
    );
    assert_eq!(p.mmap_size, 2 * l.lane_size);
    assert_eq!(p.resv_out, [0; 4]);
    let len = p.mmap_size as usize;
    let base = map(&f, len, 0).expect("mmap of mmap_size bytes") as usize;
    for lane in 0..2u32 {
        let lane_base = base + lane as usize * l.lane_size as usize;
        for (off, entries) in [(l.sq_off, 64), (l.cq_off, 128)] {
            let hdr = (lane_base + off as usize) as *const RingHeader;
            // SAFETY: the header lies inside the mapping; `info` is plain data the kernel
            // wrote at SETUP.
            let info: RingInfo = unsafe { std::ptr::addr_of!((*hdr).info).read_volatile() };
            assert_eq!(
                (info.entries, info.mask, info.lane),
                (entries, entries - 1, lane),
                "RingInfo of lane {lane} at +{off}"
            );
        }
    }
    unmap(base as *mut _, len);
}

#[test]
fn setup_with_a_wrong_abi_version_fails() {
    let Some(f) = device("wrong_abi") else {
        return;
    };
    for v in [0, kmod::abi_version() + 1, u32::MAX] {
        let mut p = SetupParams {
            abi_version: v,
            ..params(1, 8, 16)
        };
        assert_eq!(setup(&f, &mut p), Err(libc::EINVAL), "abi_version {v}");
    }
    // The context is still unused: a correct SETUP works afterwards.
    setup(&f, &mut params(1, 8, 16)).expect("SETUP after refused ones");
}

#[test]
fn setup_twice_on_one_descriptor_fails() {
    let Some(f) = ready_device("setup_twice") else {
        return;
    };
    let e = setup(&f, &mut params(1, 8, 16)).unwrap_err();
    assert!(
        e == libc::EBUSY || e == libc::EINVAL,
        "second SETUP: errno {e}"
    );
}

#[test]
fn setup_refuses_bad_sizes_and_fields() {
    let Some(f) = device("setup_bad_params") else {
        return;
    };
    let bad = [
        ("sq_entries not a power of two", params(1, 3, 16)),
        ("cq_entries not a power of two", params(1, 8, 12)),
        ("sq_entries 0", params(1, 0, 16)),
        ("sq_entries above MAX_ENTRIES", params(1, 65536, 65536)),
        ("workers 0", params(0, 8, 16)),
        ("workers above MAX_WORKERS", params(MAX_WORKERS + 1, 8, 16)),
        (
            "max_files 0",
            SetupParams {
                max_files: 0,
                ..params(1, 8, 16)
            },
        ),
        (
            "unknown setup flag",
            SetupParams {
                flags: 1 << 7,
                ..params(1, 8, 16)
            },
        ),
        (
            "reserved input field",
            SetupParams {
                resv_in: [0, 0, 0, 0, 0, 0, 1],
                ..params(1, 8, 16)
            },
        ),
    ];
    let mut bad = bad.to_vec();
    if !kmod::is_v1() {
        bad.push((
            "helpers above MAX_HELPERS",
            SetupParams {
                helpers: MAX_HELPERS + 1,
                ..params(1, 8, 16)
            },
        ));
    }
    for (what, mut p) in bad {
        assert_eq!(setup(&f, &mut p), Err(libc::EINVAL), "{what}");
    }
}

/// More workers than the module parameter `max_workers` allows: E2BIG, and the
/// backend's message names the parameter.
#[test]
fn workers_above_the_module_limit_name_max_workers() {
    let Some(f) = device("max_workers") else {
        return;
    };
    // The parameter, where sysfs shows it; else the ABI's largest count, which is above
    // the module's default limit.
    let path = "/sys/module/fastio/parameters/max_workers";
    let too_many = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u32>().expect("max_workers is a number") + 1,
        Err(_) => MAX_WORKERS,
    };
    if too_many > MAX_WORKERS {
        println!("SKIP kmod_abi::max_workers: max_workers is not below the ABI limit");
        return;
    }
    match setup(&f, &mut params(too_many, 8, 16)) {
        Err(e) => assert_eq!(e, libc::E2BIG, "workers = {too_many}"),
        Ok(()) => {
            println!("SKIP kmod_abi::max_workers: {too_many} workers are allowed here");
            return;
        }
    }
    let cfg = Config {
        backend: BackendKind::Kmod,
        max_ker_worker: too_many,
        sq_entries: 8,
        cq_entries: 16,
        max_files: 8,
        ..Config::default()
    };
    let e = Proactor::new(&cfg).err().expect("too many workers");
    assert!(e.to_string().contains("max_workers"), "{e}");
}

/// `auto` takes the module when the device exists, and says so.
#[test]
fn auto_chooses_kmod_when_the_device_exists() {
    if device("auto").is_none() {
        return;
    }
    let cfg = Config {
        backend: BackendKind::Auto,
        max_ker_worker: 2,
        sq_entries: 8,
        cq_entries: 16,
        max_files: 8,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).expect("auto with the module loaded");
    assert_eq!(p.backend().kind, BackendKind::Kmod, "{}", p.backend());
    assert!(p.backend().reason.contains(DEVICE_PATH), "{}", p.backend());
    assert_eq!(p.lanes(), 2);
    p.nop(7).unwrap();
    assert_eq!(p.wait(1, Some(Duration::from_secs(5))).unwrap(), 1);
    let c = p.next_completion().unwrap();
    assert_eq!((c.user_data, c.result), (7, 0));
}

#[test]
fn mmap_needs_setup_offset_zero_and_the_exact_size() {
    let Some(f) = device("mmap_size") else {
        return;
    };
    assert!(map(&f, PAGE_SIZE, 0).is_err(), "mmap before SETUP");
    let mut p = params(2, 8, 16);
    setup(&f, &mut p).expect("SETUP");
    let size = p.mmap_size as usize;
    for (len, off) in [
        (size - PAGE_SIZE, 0),
        (size + PAGE_SIZE, 0),
        (PAGE_SIZE, 0),
        (size, PAGE_SIZE as i64),
    ] {
        match map(&f, len, off) {
            Ok(addr) => {
                unmap(addr, len);
                panic!("mmap of {len} bytes at offset {off} accepted (mmap_size {size})");
            }
            Err(e) => assert_eq!(e, libc::EINVAL, "mmap of {len} bytes at offset {off}"),
        }
    }
    let addr = map(&f, size, 0).expect("mmap of mmap_size bytes");
    unmap(addr, size);
}

#[test]
fn enter_refuses_unknown_flags_and_bad_lanes() {
    let Some(f) = ready_device("enter_flags") else {
        return;
    };
    let ok = EnterArgs {
        flags: ENTER_SQ_WAKEUP,
        lane: 0,
        ..EnterArgs::default()
    };
    assert_eq!(enter(&f, ok), Ok(0));
    assert_eq!(
        enter(
            &f,
            EnterArgs {
                lane: LANE_ALL,
                ..ok
            }
        ),
        Ok(0)
    );
    assert_eq!(
        enter(&f, EnterArgs::default()),
        Ok(0),
        "no flags: nothing to do"
    );
    let bad = [
        (
            "unknown flag",
            EnterArgs {
                flags: ENTER_FLAGS + 1,
                ..ok
            },
        ),
        (
            "flag 1<<31",
            EnterArgs {
                flags: 1 << 31,
                ..ok
            },
        ),
        ("reserved field", EnterArgs { resv: 1, ..ok }),
        (
            "defer without inline",
            EnterArgs {
                flags: ENTER_SQ_WAKEUP | ENTER_DEFER,
                ..ok
            },
        ),
        (
            "defer alone",
            EnterArgs {
                flags: ENTER_DEFER,
                ..ok
            },
        ),
        ("lane out of range", EnterArgs { lane: 1, ..ok }),
        (
            "inline, lane out of range",
            EnterArgs {
                flags: ENTER_SQ_WAKEUP | ENTER_INLINE,
                lane: 1,
                ..ok
            },
        ),
        (
            "inline, lane u32::MAX - 1",
            EnterArgs {
                flags: ENTER_SQ_WAKEUP | ENTER_INLINE,
                lane: u32::MAX - 1,
                ..ok
            },
        ),
    ];
    for (what, args) in bad {
        assert_eq!(enter(&f, args), Err(libc::EINVAL), "{what}");
    }
    // ENTER_INLINE runs the (empty) rounds of lane 0 or of every lane, and waits with a
    // timeout like GETEVENTS without it.
    for lane in [0, LANE_ALL] {
        let inline = EnterArgs {
            flags: ENTER_SQ_WAKEUP | ENTER_INLINE,
            lane,
            ..ok
        };
        assert_eq!(enter(&f, inline), Ok(0), "inline submit, lane {lane}");
    }
    let wait = EnterArgs {
        flags: ENTER_GETEVENTS | ENTER_INLINE,
        min_complete: 1,
        timeout_ns: 2_000_000,
        ..ok
    };
    assert_eq!(
        enter(&f, wait),
        Err(libc::ETIME),
        "inline wait, nothing to complete"
    );
    // ENTER_DEFER with ENTER_INLINE: accepted on a submit and on a wait; the next inline
    // call clears it.
    let defer_submit = EnterArgs {
        flags: ENTER_SQ_WAKEUP | ENTER_INLINE | ENTER_DEFER,
        ..ok
    };
    assert_eq!(enter(&f, defer_submit), Ok(0), "inline submit with defer");
    let defer_wait = EnterArgs {
        flags: ENTER_GETEVENTS | ENTER_INLINE | ENTER_DEFER,
        ..wait
    };
    assert_eq!(
        enter(&f, defer_wait),
        Err(libc::ETIME),
        "inline wait with defer"
    );
}

#[test]
fn enter_before_setup_fails() {
    let Some(f) = device("enter_before_setup") else {
        return;
    };
    let args = EnterArgs {
        flags: ENTER_SQ_WAKEUP,
        ..EnterArgs::default()
    };
    assert!(enter(&f, args).is_err());
}

#[test]
fn getevents_times_out_with_etime() {
    let Some(f) = ready_device("getevents_timeout") else {
        return;
    };
    let t0 = Instant::now();
    let r = enter(
        &f,
        EnterArgs {
            flags: ENTER_GETEVENTS,
            min_complete: 1,
            timeout_ns: 50_000_000,
            ..EnterArgs::default()
        },
    );
    let took = t0.elapsed();
    assert_eq!(r, Err(libc::ETIME));
    assert!(
        took >= Duration::from_millis(40),
        "returned early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "timeout ignored: {took:?}");
    // Nothing to wait for: returns at once, even without a timeout.
    let r = enter(
        &f,
        EnterArgs {
            flags: ENTER_GETEVENTS,
            min_complete: 0,
            timeout_ns: TIMEOUT_NONE,
            ..EnterArgs::default()
        },
    );
    assert_eq!(r, Ok(0));
}

#[test]
fn register_files_is_all_or_nothing() {
    let Some(f) = ready_device("register_files") else {
        return;
    };
    let [a, b, c] = [0; 3].map(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    let (a, b, c) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
    assert_eq!(register(&f, &[a], &[1]), Ok(0));

    // Second entry's slot is occupied: nothing changes, slot 2 stays empty.
    assert_eq!(register(&f, &[b, c], &[2, 1]), Err(libc::EBUSY));
    assert_eq!(install(&f, 2).err(), Some(libc::EBADF), "slot 2 was filled");
    // Second entry's descriptor is bad.
    assert_eq!(register(&f, &[b, -1], &[2, 3]), Err(libc::EBADF));
    assert_eq!(install(&f, 2).err(), Some(libc::EBADF), "slot 2 was filled");
    assert_eq!(install(&f, 3).err(), Some(libc::EBADF), "slot 3 was filled");
    // Second entry's slot is beyond max_files (8).
    assert!(register(&f, &[b, c], &[2, 8]).is_err());
    assert_eq!(install(&f, 2).err(), Some(libc::EBADF), "slot 2 was filled");
    // The same slot twice.
    assert!(register(&f, &[b, c], &[4, 4]).is_err());
    assert_eq!(install(&f, 4).err(), Some(libc::EBADF), "slot 4 was filled");
    // No entries.
    assert_eq!(register(&f, &[], &[]), Err(libc::EINVAL));

    // Slot 1 still holds the first file.
    let fd = install(&f, 1).expect("INSTALL_FD of slot 1");
    assert_eq!(identity(fd.as_raw_fd()), identity(a));
    // SAFETY: F_GETFD on a descriptor we own.
    let fdflags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    assert_eq!(
        fdflags & libc::FD_CLOEXEC,
        libc::FD_CLOEXEC,
        "INSTALL_CLOEXEC"
    );

    // Both at once works, and unregistering empties exactly one slot.
    assert_eq!(register(&f, &[b, c], &[2, 3]), Ok(0));
    assert_eq!(unregister(&f, 2), Ok(0));
    assert_eq!(unregister(&f, 2), Err(libc::EBADF), "already empty");
    assert_eq!(identity(install(&f, 3).unwrap().as_raw_fd()), identity(c));
    assert_eq!(
        kmod::slot_ioctl(f.as_raw_fd(), FASTIO_UNREGISTER_FILE, 3, 1),
        Err(libc::EINVAL),
        "UNREGISTER_FILE flags must be 0"
    );
}

#[test]
fn install_fd_of_an_empty_slot_is_ebadf() {
    let Some(f) = ready_device("install_empty") else {
        return;
    };
    assert_eq!(install(&f, 0).err(), Some(libc::EBADF));
    assert_eq!(install(&f, 7).err(), Some(libc::EBADF), "last slot");
    assert_eq!(install(&f, 8).err(), Some(libc::EBADF), "beyond max_files");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(register(&f, &[l.as_raw_fd()], &[0]), Ok(0));
    assert_eq!(
        kmod::slot_ioctl(f.as_raw_fd(), FASTIO_INSTALL_FD, 0, 1 << 3),
        Err(libc::EINVAL),
        "unknown INSTALL_FD flag"
    );
}

/// A child after fork() inherits the descriptor but not the context: its ioctls (ENTER,
/// and on ABI 2 RUN_LANE, RUN_HELPER and SHUTDOWN) fail with EPERM, and the parent's
/// context is unharmed by the child's exit.
#[test]
fn a_forked_child_cannot_use_the_context() {
    let Some(f) = ready_device("fork") else {
        return;
    };
    let fd = f.as_raw_fd();
    let args = EnterArgs {
        flags: ENTER_SQ_WAKEUP,
        lane: 0,
        ..EnterArgs::default()
    };
    type Call = Box<dyn Fn() -> Result<i32, i32>>;
    let mut calls: Vec<(&str, Call)> = vec![("ENTER", Box::new(move || kmod::enter(fd, args)))];
    if !kmod::is_v1() {
        calls.push(("RUN_LANE", Box::new(move || kmod::run_lane(fd, 0, 0))));
        calls.push(("RUN_HELPER", Box::new(move || kmod::run_helper(fd, 0, 0))));
        calls.push(("SHUTDOWN", Box::new(move || kmod::shutdown(fd))));
    }
    for (what, call) in &calls {
        // The child only makes the call and exits with the errno (200: accepted).
        let pid = kmod::fork_fn(|| match call() {
            Ok(_) => 200,
            Err(e) => e.min(199),
        });
        let status = kmod::wait_child(pid, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the child's {what} did not return"));
        assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
        match libc::WEXITSTATUS(status) {
            200 => panic!("the child's {what} was accepted: a context serves only its creator"),
            e => assert_eq!(e, libc::EPERM, "child's {what}: errno {e}"),
        }
    }
    assert_eq!(
        enter(&f, args),
        Ok(0),
        "the parent's context after the child exited"
    );
}

/// RUN_LANE and RUN_HELPER refuse what they must: before SETUP (EINVAL), a lane or helper
/// index out of range or nonzero flags (EINVAL); helpers 0 means the default 2.
#[test]
fn run_lane_and_run_helper_check_their_arguments() {
    let Some(f) = device("run_args") else {
        return;
    };
    if !abi2("run_args") {
        return;
    }
    let fd = f.as_raw_fd();
    assert_eq!(
        kmod::run_lane(fd, 0, 0),
        Err(libc::EINVAL),
        "RUN_LANE before SETUP"
    );
    assert_eq!(
        kmod::run_helper(fd, 0, 0),
        Err(libc::EINVAL),
        "RUN_HELPER before SETUP"
    );
    setup(&f, &mut params(2, 8, 16)).unwrap();
    let bad = [
        ("RUN_LANE index = workers", FASTIO_RUN_LANE, 2, 0),
        ("RUN_LANE index u32::MAX", FASTIO_RUN_LANE, u32::MAX, 0),
        ("RUN_LANE flags 1", FASTIO_RUN_LANE, 0, 1),
        ("RUN_LANE flags 1<<31", FASTIO_RUN_LANE, 0, 1 << 31),
        (
            "RUN_HELPER index = default helpers",
            FASTIO_RUN_HELPER,
            kmod::DEFAULT_HELPERS,
            0,
        ),
        ("RUN_HELPER flags 1", FASTIO_RUN_HELPER, 0, 1),
    ];
    for (what, cmd, index, flags) in bad {
        let r = if cmd == FASTIO_RUN_LANE {
            kmod::run_lane(fd, index, flags)
        } else {
            kmod::run_helper(fd, index, flags)
        };
        assert_eq!(r, Err(libc::EINVAL), "{what}");
    }
}

/// A lane or helper that has a thread refuses a second one (EBUSY); SHUTDOWN makes
/// every thread return 0, waiting requests complete with -ECANCELED, and RUN_* after it
/// are ESHUTDOWN.
#[test]
fn run_busy_and_shutdown() {
    if !common::have_module("kmod_abi::run_busy_and_shutdown") || !abi2("run_busy_and_shutdown") {
        return;
    }
    let mut ctx = Ctx::started(SetupParams {
        helpers: 1,
        ..params(1, 8, 16)
    });
    let fd = ctx.fd();
    // A NOP completes: lane 0's thread is in the kernel.
    assert_eq!(ctx.call(0, kmod::nop(1), Duration::from_secs(10)), Some(0));
    assert_eq!(
        kmod::run_lane(fd, 0, 0),
        Err(libc::EBUSY),
        "second RUN_LANE of lane 0"
    );
    // A READ of a tmpfs file is blocking work: it completes once helper 0 is attached.
    let path = std::path::PathBuf::from(format!("/tmp/fastio-abi-run-{}", std::process::id()));
    std::fs::write(&path, b"hello").unwrap();
    let file = File::open(&path).unwrap();
    ctx.register(file.as_raw_fd(), 0).unwrap();
    let mut buf = [0u8; 16];
    let r = ctx.call(
        0,
        kmod::read(0, buf.as_mut_ptr(), 16, 0, 2),
        Duration::from_secs(10),
    );
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r, Some(5), "READ of a tmpfs file (helper work)");
    assert_eq!(
        kmod::run_helper(fd, 0, 0),
        Err(libc::EBUSY),
        "second RUN_HELPER of helper 0"
    );
    // A RECV waits for readiness; SHUTDOWN cancels it and ends the threads.
    let (_peer, sock) = std::os::unix::net::UnixStream::pair().unwrap();
    ctx.register(sock.as_raw_fd(), 1).unwrap();
    ctx.submit(0, kmod::recv(1, buf.as_mut_ptr(), 16, 3));
    assert!(ctx.wait_stats(Duration::from_secs(10), |s| s.parked >= 1));
    let results = ctx.shutdown_and_join();
    assert_eq!(
        results,
        vec![
            ("fastio-lane-0".to_string(), Ok(())),
            ("fastio-help-0".to_string(), Ok(()))
        ],
        "RUN_LANE and RUN_HELPER return 0 after SHUTDOWN"
    );
    let c = ctx.wait_for(3, Duration::from_secs(10));
    assert_eq!(
        c.map(|c| c.res),
        Some(-libc::ECANCELED),
        "the waiting RECV after SHUTDOWN"
    );
    assert_eq!(
        kmod::run_lane(fd, 0, 0),
        Err(libc::ESHUTDOWN),
        "RUN_LANE after SHUTDOWN"
    );
    assert_eq!(
        kmod::run_helper(fd, 0, 0),
        Err(libc::ESHUTDOWN),
        "RUN_HELPER after SHUTDOWN"
    );
}

/// No-op handler: a signal that interrupts a thread in the kernel without killing it.
extern "C" fn ignore_signal(_: libc::c_int) {}

/// A signal to a lane thread makes RUN_LANE return EINTR (no SA_RESTART); called again,
/// the thread serves its lane as before.
#[test]
fn a_signal_interrupts_run_lane_and_it_is_called_again() {
    if !common::have_module("kmod_abi::run_eintr") || !abi2("run_eintr") {
        return;
    }
    // SAFETY: a no-op handler without SA_RESTART for SIGUSR2 (nothing else in the test
    // process uses it).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let mut ctx = Ctx::started(params(1, 8, 16));
    ctx.wait_threads_running(Duration::from_secs(10));
    assert_eq!(ctx.call(0, kmod::nop(1), Duration::from_secs(10)), Some(0));
    let tid = ctx
        .thread_tids()
        .into_iter()
        .find(|(n, _)| n == "fastio-lane-0")
        .unwrap()
        .1;
    let before = ctx.eintr_count();
    // SAFETY: tgkill of our own thread with a handled signal.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGUSR2) };
    common::wait_until(
        "RUN_LANE interrupted (EINTR)",
        Duration::from_secs(10),
        || ctx.eintr_count() > before,
    );
    assert_eq!(
        ctx.call(0, kmod::nop(2), Duration::from_secs(10)),
        Some(0),
        "NOP after the lane thread called RUN_LANE again"
    );
}
