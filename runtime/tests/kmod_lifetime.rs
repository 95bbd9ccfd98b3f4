//! fastio.ko context lifetime: workers are kernel threads named `fastio-<pid>-<lane>`;
//! they go away when the context's process exits, is killed with SIGKILL while its
//! workers spin, or closes the device. Runs where /dev/fastio exists (inside the VM:
//! `make vm-test`); elsewhere each test prints SKIP and returns.

use std::time::Duration;

use fastio::{BackendKind, Config, Proactor};

mod common;

fn kmod_config(lanes: u32, idle_ms: u32) -> Config {
    Config {
        backend: BackendKind::Kmod,
        max_ker_worker: lanes,
        idle_ms,
        ..Config::default()
    }
}

/// How the helper child ends (see `child_helper`).
const MODE_VAR: &str = "FASTIO_LIFETIME_CHILD";

/// Not a test by itself: when run with FASTIO_LIFETIME_CHILD set (by the tests below,
/// re-running this binary), opens a 3-lane context whose workers spin for a minute,
/// says "ready", then sleeps until killed ("sleep") or exits without closing ("exit").
#[test]
fn child_helper() {
    let Ok(mode) = std::env::var(MODE_VAR) else {
        return;
    };
    let mut p = Proactor::new(&kmod_config(3, 60_000)).expect("open kmod context");
    // Make the workers busy once, so they are spinning when the end comes.
    for i in 0..64 {
        p.nop(i).unwrap();
    }
    assert_eq!(p.wait(64, Some(Duration::from_secs(5))).unwrap(), 64);
    println!("ready");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    match mode.as_str() {
        "sleep" => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
        // Leak the context: mapping and descriptor stay until the process ends.
        _ => {
            std::mem::forget(p);
            std::process::exit(0)
        }
    }
}

/// Starts `child_helper` in `mode` and waits for its "ready".
fn spawn_child(mode: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_helper", "--nocapture", "--test-threads=1"])
        .env(MODE_VAR, mode)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let ready = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("ready"));
    assert!(ready, "child could not open a kmod context");
    child
}

#[test]
fn workers_are_named_and_stop_on_close() {
    if !common::have_module("workers_are_named_and_stop_on_close") {
        return;
    }
    let me = std::process::id() as i32;
    let p = Proactor::new(&kmod_config(2, 50)).unwrap();
    assert_eq!(
        common::workers_of(me as u32),
        vec![format!("fastio-{me}-0"), format!("fastio-{me}-1")]
    );
    drop(p);
    common::wait_until("workers gone after close", Duration::from_secs(5), || {
        common::workers_of(me as u32).is_empty()
    });
}

#[test]
fn sigkill_while_workers_spin_frees_the_context() {
    if !common::have_module("sigkill_while_workers_spin") {
        return;
    }
    let mut child = spawn_child("sleep");
    let pid = child.id() as i32;
    assert_eq!(
        common::workers_of(pid as u32).len(),
        3,
        "3 workers while the child lives"
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    common::wait_until(
        "workers of a killed process gone",
        Duration::from_secs(5),
        || common::workers_of(pid as u32).is_empty(),
    );
}

#[test]
fn exit_without_close_frees_the_context() {
    if !common::have_module("exit_without_close") {
        return;
    }
    // The child leaks its proactor (mapping and descriptor stay) and exits.
    let mut child = spawn_child("exit");
    let pid = child.id() as i32;
    assert!(child.wait().unwrap().success());
    common::wait_until(
        "workers of an exited process gone",
        Duration::from_secs(5),
        || common::workers_of(pid as u32).is_empty(),
    );
}
