//! Helpers shared by the runtime's integration tests.

use fastio::BackendKind;

/// Whether tests should exercise `kind`: all backends unless `FASTIO_TEST_BACKENDS`
/// (a comma-separated list such as `kmod` — set by `make vm-test` inside the VM, where the
/// host run already covered the others) says otherwise. Prints a SKIP line when not.
pub fn backend_selected(test: &str, kind: BackendKind) -> bool {
    let Ok(list) = std::env::var("FASTIO_TEST_BACKENDS") else {
        return true;
    };
    let chosen = list.split(',').any(|b| b.trim() == kind.as_str());
    if !chosen {
        println!("SKIP {test} [{kind}]: not in FASTIO_TEST_BACKENDS={list}");
    }
    chosen
}
