//! fastio.ko context lifecycle at scale and across processes, with raw system calls:
//! 1,000 contexts opened and closed in a loop (the module is loaded with
//! `max_contexts=64`, so one context that outlived its descriptor and mapping would
//! exhaust the limit long before the end), a context descriptor passed to another process
//! by SCM_RIGHTS is refused there, and a process killed with SIGKILL in the middle of a
//! NOP flood leaves no worker behind.
//!
//! Runs where /dev/fastio exists (inside the VM: `make vm-test`); elsewhere each test
//! prints SKIP and returns.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fastio::backend::DEVICE_PATH;
use fastio::uapi::{
    EnterArgs, FilesUpdate, SetupParams, ABI_VERSION, ENTER_SQ_WAKEUP, FASTIO_ENTER,
    FASTIO_REGISTER_FILES, FASTIO_SETUP,
};
use fastio::{BackendKind, Config, Proactor};

mod common;

/// Set (to the role) when this binary is re-run as a helper child.
const ROLE_VAR: &str = "FASTIO_CONTEXTS_CHILD";

fn open_device() -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEVICE_PATH)
        .unwrap_or_else(|e| panic!("{DEVICE_PATH}: {e}"))
}

/// One ioctl on `fd`; `Ok(result)` or `Err(errno)`.
fn ioctl<T>(fd: RawFd, cmd: u32, arg: &mut T) -> Result<i32, i32> {
    // SAFETY: every caller passes the argument type that `cmd` encodes; the addresses
    // inside point to live arrays.
    let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

/// SETUP of a one-lane context (8/16 entries, 4 file slots); returns the mmap size.
fn setup_small(f: &File) -> Result<usize, i32> {
    let mut p = SetupParams {
        abi_version: ABI_VERSION,
        workers: 1,
        sq_entries: 8,
        cq_entries: 16,
        idle_ms: 1,
        max_files: 4,
        ..SetupParams::default()
    };
    ioctl(f.as_raw_fd(), FASTIO_SETUP, &mut p)?;
    Ok(p.mmap_size as usize)
}

/// Maps the whole ring area of the context behind `file`; `Err(errno)` on refusal.
fn map_rings(file: &File, len: usize) -> Result<memmap2::MmapRaw, i32> {
    memmap2::MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// 1,000 contexts, each set up (one worker thread), mapped and released, alternating the
/// order of munmap and close (the mapping holds the file: the context must end at
/// whichever comes last). With `max_contexts=64` a leaked context would make SETUP fail
/// with EMFILE; at the end no worker of this process remains and vmalloc usage is back.
#[test]
fn thousand_contexts_open_and_close() {
    if !common::have_module("thousand_contexts_open_and_close") {
        return;
    }
    let me = std::process::id();
    let vmalloc_before = common::meminfo_kib("VmallocUsed");
    let t0 = Instant::now();
    for i in 0..1000 {
        let f = open_device();
        let len = setup_small(&f).unwrap_or_else(|e| panic!("context {i}: SETUP: errno {e}"));
        let ring = map_rings(&f, len).unwrap_or_else(|e| panic!("context {i}: mmap: errno {e}"));
        if i % 2 == 0 {
            drop(ring);
            drop(f);
        } else {
            drop(f);
            drop(ring);
        }
    }
    let elapsed = t0.elapsed();
    common::wait_until(
        "all workers of this process gone",
        Duration::from_secs(10),
        || common::workers_of(me).is_empty(),
    );
    let vmalloc_after = common::meminfo_kib("VmallocUsed");
    println!(
        "1000 contexts set up, mapped and released in {:.2} s ({:.2} ms each); \
         VmallocUsed {vmalloc_before} KiB -> {vmalloc_after} KiB",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    // Each context's rings are at least 3 pages; 1000 leaked would be > 12 MiB.
    assert!(
        vmalloc_after < vmalloc_before + 2048,
        "vmalloc grew by {} KiB over 1000 released contexts",
        vmalloc_after.saturating_sub(vmalloc_before)
    );
    // And the module still hands out contexts.
    let f = open_device();
    setup_small(&f).expect("SETUP after the loop");
}

/// A one-byte message with room for one control message: `iov` and `space` are the
/// byte and the control buffer it points to, which must outlive its use.
fn one_byte_msg(byte: &mut [u8; 1], iov: &mut libc::iovec, space: &mut [u64; 8]) -> libc::msghdr {
    iov.iov_base = byte.as_mut_ptr().cast();
    iov.iov_len = 1;
    // SAFETY: msghdr is plain data; zero is a valid start.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(space);
    msg
}

/// Receives one descriptor by SCM_RIGHTS on `sock`.
fn recv_fd(sock: &UnixStream) -> OwnedFd {
    let (mut byte, mut space) = ([0u8; 1], [0u64; 8]);
    // SAFETY: iovec is plain data; one_byte_msg fills it.
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    let mut msg = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: `msg` points to live buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    assert_eq!(n, 1, "recvmsg: {}", io::Error::last_os_error());
    // SAFETY: recvmsg filled the control buffer; CMSG_FIRSTHDR stays inside it.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    assert!(!cmsg.is_null(), "no control message");
    // SAFETY: `cmsg` points to a header inside `space`, checked non-null above.
    let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
    assert_eq!((level, kind), (libc::SOL_SOCKET, libc::SCM_RIGHTS));
    // SAFETY: an SCM_RIGHTS message carries ints; the first is the descriptor, which
    // now belongs to this process.
    unsafe { OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast())) }
}

/// Sends `fd` by SCM_RIGHTS on `sock`.
fn send_fd(sock: &UnixStream, fd: RawFd) {
    let (mut byte, mut space) = ([0u8; 1], [0u64; 8]);
    // SAFETY: iovec is plain data; one_byte_msg fills it.
    let mut iov: libc::iovec = unsafe { std::mem::zeroed() };
    let mut msg = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as _;
    // SAFETY: the control buffer is large enough for one header with one int (checked
    // by CMSG_SPACE above against `space`); every pointer stays inside it.
    unsafe {
        assert!(msg.msg_controllen <= std::mem::size_of::<[u64; 8]>());
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), fd);
    }
    // SAFETY: `msg` points to live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    assert_eq!(n, 1, "sendmsg: {}", io::Error::last_os_error());
}

/// Not a test by itself: with FASTIO_CONTEXTS_CHILD=receiver (set by
/// `a_context_passed_by_scm_rights_is_refused`), receives a context descriptor on stdin
/// (a Unix socket) and prints the errno of each thing it tries with it.
#[test]
fn child_receiver() {
    if std::env::var(ROLE_VAR).as_deref() != Ok("receiver") {
        return;
    }
    // SAFETY: the parent made stdin a Unix stream socket for this child; it is owned
    // here from now on.
    let sock = unsafe { UnixStream::from_raw_fd(0) };
    let ctx = File::from(recv_fd(&sock));
    let fd = ctx.as_raw_fd();
    let code = |r: Result<i32, i32>| match r {
        Ok(_) => "accepted".to_string(),
        Err(e) => e.to_string(),
    };
    let mut enter = EnterArgs {
        flags: ENTER_SQ_WAKEUP,
        ..EnterArgs::default()
    };
    // The test harness prints "test child_receiver ... " without a newline first.
    println!();
    println!("enter={}", code(ioctl(fd, FASTIO_ENTER, &mut enter)));
    let fds = [0 as RawFd];
    let slots = [0u32];
    let mut upd = FilesUpdate {
        fds: fds.as_ptr() as u64,
        slots: slots.as_ptr() as u64,
        count: 1,
        resv: 0,
    };
    println!(
        "register={}",
        code(ioctl(fd, FASTIO_REGISTER_FILES, &mut upd))
    );
    let len: usize = std::env::var("FASTIO_CONTEXTS_LEN")
        .unwrap()
        .parse()
        .unwrap();
    println!("mmap={}", code(map_rings(&ctx, len).map(|_| 0)));
    println!("done");
}

/// A context descriptor sent to another process by SCM_RIGHTS gives that process no
/// access: ENTER, REGISTER_FILES and mmap all fail with EPERM there, and the owner's
/// context keeps working.
#[test]
fn a_context_passed_by_scm_rights_is_refused() {
    if !common::have_module("a_context_passed_by_scm_rights_is_refused") {
        return;
    }
    let f = open_device();
    let len = setup_small(&f).expect("SETUP");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_receiver",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, "receiver")
        .env("FASTIO_CONTEXTS_LEN", len.to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    send_fd(&ours, f.as_raw_fd());
    let out = BufReader::new(child.stdout.take().unwrap());
    let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
    assert!(child.wait().unwrap().success(), "child failed: {lines:?}");
    let eperm = libc::EPERM.to_string();
    for what in ["enter", "register", "mmap"] {
        let got = lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{what}=")))
            .unwrap_or_else(|| panic!("child did not report {what}: {lines:?}"));
        assert_eq!(got, eperm, "{what} by the receiving process: {lines:?}");
    }
    let mut enter = EnterArgs {
        flags: ENTER_SQ_WAKEUP,
        ..EnterArgs::default()
    };
    assert_eq!(
        ioctl(f.as_raw_fd(), FASTIO_ENTER, &mut enter),
        Ok(0),
        "the owner's context after the receiver tried"
    );
}

/// Not a test by itself: with FASTIO_CONTEXTS_CHILD=flood, submits NOPs on two lanes
/// without pause until killed, after saying "flooding".
#[test]
fn child_flooder() {
    if std::env::var(ROLE_VAR).as_deref() != Ok("flood") {
        return;
    }
    let cfg = Config {
        backend: BackendKind::Kmod,
        max_ker_worker: 2,
        idle_ms: 1000,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).expect("open kmod context");
    let mut next = 0u64;
    let mut said = false;
    loop {
        while p.nop(next).is_ok() {
            next += 1;
        }
        p.submit().unwrap();
        p.wait(1, Some(Duration::from_secs(5))).unwrap();
        p.completions().for_each(drop);
        if !said && next > 10_000 {
            println!("flooding");
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            said = true;
        }
    }
}

/// SIGKILL of a process in the middle of a NOP flood (requests in the rings, workers
/// busy): its workers are gone shortly after, and the module still serves new contexts.
#[test]
fn sigkill_mid_flood_frees_the_context() {
    if !common::have_module("sigkill_mid_flood_frees_the_context") {
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_flooder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_VAR, "flood")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = BufReader::new(child.stdout.take().unwrap());
    assert!(
        out.lines()
            .map_while(Result::ok)
            .any(|l| l.contains("flooding")),
        "the child never started flooding"
    );
    assert_eq!(common::workers_of(pid).len(), 2, "2 workers while flooding");
    child.kill().unwrap();
    child.wait().unwrap();
    let t0 = Instant::now();
    common::wait_until(
        "the killed flooder's workers gone",
        Duration::from_secs(10),
        || common::workers_of(pid).is_empty(),
    );
    println!(
        "workers gone {:.1} ms after the killed process was reaped",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let f = open_device();
    setup_small(&f).expect("SETUP after the kill");
}
