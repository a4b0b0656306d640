//! The real clients the tests drive (qemu-img, qemu-io, nbdinfo, nbdcopy, ...), run the one way: the
//! tool must be installed (`scripts/test` installs it; a missing one fails the test, naming its
//! Debian package) and runs under `timeout`, so a hung server fails the test instead of hanging it.

use std::process::{Command, Output};

/// The Debian package that brings `tool` (libnbd-bin for libnbd's tools, else qemu-utils).
fn package(tool: &str) -> &'static str {
    if tool.starts_with("nbd") {
        "libnbd-bin"
    } else {
        "qemu-utils"
    }
}

/// Runs `tool args...` under `timeout limit_secs` and returns what happened; panics if the tool is
/// not installed. A run killed by the limit exits with status 124.
pub fn run(tool: &str, args: &[&str], limit_secs: u32) -> Output {
    let version = Command::new(tool).arg("--version").output();
    assert!(
        version.is_ok_and(|o| o.status.success()),
        "{tool} is not installed (install {}): this test needs it",
        package(tool)
    );
    Command::new("timeout")
        .arg(limit_secs.to_string())
        .arg(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"))
}
