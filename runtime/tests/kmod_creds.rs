//! Requests run with the credentials of the process that set the context up, not with
//! the kernel worker's (root) ones. Sharp check: a WRITE to a set-user-ID file clears
//! S_ISUID unless the writer has CAP_FSETID. An unprivileged process (uid/gid 65534, a
//! re-run of this binary that drops privileges before opening /dev/fastio) creates a
//! file, makes it 04777, WRITEs to it through the ring: the bit must be gone. The
//! converse: root doing the same keeps the bit, so the check tells the two apart. Both
//! on tmpfs (/tmp: no non-blocking writes, the request goes straight to the workqueue)
//! and on the ext4 scratch disk (the polling worker's non-blocking attempt must see that
//! privileges are to be removed and hand the write to the workqueue).
//!
//! Runs where /dev/fastio exists, as root (inside the VM: `make vm-test`); elsewhere it
//! prints SKIP and the reason.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastio::{BackendKind, Config, Proactor};

mod common;

/// Set (to the directories to use, `:`-separated) when this binary runs as the
/// unprivileged child.
const CHILD_VAR: &str = "FASTIO_CREDS_CHILD";
const NOBODY: u32 = 65534;
const DATA: &[u8] = b"written through the ring\n";

/// Creates `dir/name` as the caller, makes it 04777, WRITEs to it through a kmod
/// context opened by the caller; returns the mode (permission bits) before and after.
fn write_through_ring(dir: &Path, name: &str) -> (u32, u32) {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.set_permissions(Permissions::from_mode(0o4777))
        .unwrap();
    let before = file.metadata().unwrap().mode() & 0o7777;
    let cfg = Config {
        backend: BackendKind::Kmod,
        max_ker_worker: 1,
        sq_entries: 8,
        cq_entries: 8,
        max_files: 4,
        ..Config::default()
    };
    let mut p = Proactor::new(&cfg).expect("kmod proactor");
    let slot = p.register(&file).unwrap();
    p.write(slot, DATA.to_vec(), 0..DATA.len(), Some(0), 1)
        .unwrap();
    assert_eq!(p.wait(1, Some(Duration::from_secs(30))).unwrap(), 1);
    let c = p.next_completion().unwrap();
    assert_eq!(c.result, DATA.len() as i32, "WRITE to {}", path.display());
    drop(p);
    let after = file.metadata().unwrap().mode() & 0o7777;
    let mut back = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, DATA, "content of {}", path.display());
    std::fs::remove_file(&path).unwrap();
    (before, after)
}

/// Where to try: /tmp (tmpfs in the VM) and the ext4 scratch disk when there is one.
fn dirs() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/tmp")];
    if let Ok(s) = std::env::var("FASTIO_SCRATCH") {
        v.push(PathBuf::from(s));
    }
    v
}

/// A fresh 0777 directory under `base` that uid 65534 may create files in.
fn open_dir(base: &Path) -> PathBuf {
    let d = base.join(format!("fastio-creds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, Permissions::from_mode(0o777)).unwrap();
    d
}

fn fs_type(dir: &Path) -> String {
    let dir = dir.to_string_lossy();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best = ("", "?".to_string());
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && dir.starts_with(f[1]) && f[1].len() >= best.0.len() {
            best = (f[1], f[2].to_string());
        }
    }
    best.1
}

/// Not a test by itself: with FASTIO_CREDS_CHILD set (by the test below), drops to
/// uid/gid 65534 and reports the mode before/after a ring WRITE in each directory.
#[test]
fn child_helper() {
    let Ok(dirs) = std::env::var(CHILD_VAR) else {
        return;
    };
    // SAFETY: plain credential system calls; glibc applies them to every thread.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
        assert_eq!(libc::setresgid(NOBODY, NOBODY, NOBODY), 0, "setresgid");
        assert_eq!(libc::setresuid(NOBODY, NOBODY, NOBODY), 0, "setresuid");
        assert_eq!((libc::geteuid(), libc::getegid()), (NOBODY, NOBODY));
    }
    for dir in dirs.split(':') {
        let (before, after) = write_through_ring(Path::new(dir), "unprivileged");
        println!("MODE {dir} {before:o} {after:o}");
    }
}

#[test]
fn write_as_unprivileged_user_clears_setuid_and_root_keeps_it() {
    let test = "kmod_creds::setuid_cleared";
    if !common::have_module(test) || !common::have_root(test) {
        return;
    }
    let dirs: Vec<PathBuf> = dirs().iter().map(|b| open_dir(b)).collect();
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let out = common::rerun("child_helper", CHILD_VAR, &list.join(":"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "unprivileged child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for dir in &dirs {
        let fs = fs_type(dir);
        let line = stdout
            .lines()
            .find_map(|l| {
                // libtest may print "test child_helper ... " in front of the first line.
                let tag = format!("MODE {} ", dir.display());
                l.find(&tag).map(|i| &l[i + tag.len()..])
            })
            .unwrap_or_else(|| panic!("no report for {}:\n{stdout}", dir.display()));
        let modes: Vec<u32> = line
            .split_whitespace()
            .map(|m| u32::from_str_radix(m, 8).unwrap())
            .collect();
        println!(
            "uid {NOBODY} on {} ({fs}): mode {:o} -> {:o} after a ring WRITE",
            dir.display(),
            modes[0],
            modes[1]
        );
        assert_eq!(modes[0], 0o4777, "the child's file before the write");
        assert_eq!(
            modes[1], 0o777,
            "S_ISUID survived a ring WRITE by uid {NOBODY} on {fs}: the request ran with \
             the kernel worker's credentials, not the process's"
        );

        let (before, after) = write_through_ring(dir, "root");
        println!(
            "root on {} ({fs}): mode {before:o} -> {after:o} after a ring WRITE",
            dir.display()
        );
        assert_eq!(
            (before, after),
            (0o4777, 0o4777),
            "root (CAP_FSETID) keeps S_ISUID on {fs}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
