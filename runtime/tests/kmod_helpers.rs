//! Helper threads are woken one per job: with 16 idle helpers, 200 blocking READs issued
//! one after the other (a FIFO: no FMODE_NOWAIT, so every READ goes to a helper) wake
//! about one helper each, not all sixteen (a thundering herd measured 16 helpers slower
//! than 2 at depth 1 in the block I/O benchmark). Counted with the helpers' voluntary
//! context switches (/proc/self/task/*/status): each wakeup of a sleeping helper is one.
//!
//! Runs where /dev/fastio exists (inside the VM: `make vm-test`); elsewhere SKIP.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use fastio::{BackendKind, Config, Proactor};

mod common;

const HELPERS: u32 = 16;
const JOBS: u64 = 200;

/// Sum of the voluntary context switches of this process's helper threads.
fn helper_switches() -> u64 {
    let mut sum = 0;
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fastio-help-") {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("voluntary_ctxt_switches:"))
            .unwrap();
        sum += line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap();
    }
    sum
}

#[test]
fn one_job_wakes_one_helper() {
    if !common::have_module("one_job_wakes_one_helper") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("fastio-helpers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    // Read end first, non-blocking, so that opening the write end does not block.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();

    let cfg = Config {
        backend: BackendKind::Kmod,
        wq_max_active: HELPERS,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).unwrap();
    let slot = p.register(&reader).unwrap();
    // Every helper has started and gone to sleep once.
    common::wait_until("16 helper threads", Duration::from_secs(10), || {
        common::helpers_of(std::process::id()).len() == HELPERS as usize
    });
    let before = helper_switches();
    for i in 0..JOBS {
        writer.write_all(&[i as u8]).unwrap();
        p.read(slot, vec![0; 1], 0..1, None, i).unwrap();
        assert_eq!(p.wait(1, Some(Duration::from_secs(10))).unwrap(), 1);
        let c = p.completions().next().unwrap();
        assert_eq!((c.user_data, c.result), (i, 1));
        assert_eq!(c.buf.unwrap()[0], i as u8);
    }
    let woken = helper_switches() - before;
    println!("{JOBS} blocking READs, {HELPERS} helpers: {woken} helper wakeups");
    assert!(
        woken <= 3 * JOBS,
        "{woken} helper wakeups for {JOBS} jobs: more than one helper woken per job"
    );
    drop(p);
    std::fs::remove_dir_all(&dir).unwrap();
}
