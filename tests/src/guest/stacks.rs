//! What the host was doing when a guest stopped making progress: every thread of QEMU and of the test
//! process (the backend under test runs in it), with its scheduler state, the kernel function it
//! sleeps in, and, through gdb, its stack. A guest that times out can hang in its own kernel, in
//! QEMU (a vCPU waiting for the big lock while the main thread waits for a vhost-user reply), or in
//! the backend (a loop asleep with work queued): the stacks say which.

use std::path::Path;
use std::process::Command;

use super::lines_starting_with;

/// Frames per thread in the gdb part.
const FRAMES: u32 = 14;
/// Characters kept of a frame's line (Rust frames spell out every generic argument).
const LINE: usize = 180;

/// The threads of QEMU (`qemu`, its pid) and of this process, for a failure message.
pub(crate) fn snapshot(qemu: u32) -> String {
    let mut out = String::new();
    for (who, pid) in [("QEMU", qemu), ("the test process", std::process::id())] {
        out += &format!("--- threads of {who} (pid {pid}): tid, name, state, kernel wait ---\n");
        out += &threads(pid);
        out += &format!("--- stacks of {who} (gdb) ---\n");
        out += &stacks(pid);
    }
    out
}

/// One line per thread, from /proc.
fn threads(pid: u32) -> String {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(the process is gone)\n".into();
    };
    let mut lines: Vec<String> = dir
        .flatten()
        .map(|entry| {
            let task = entry.path();
            let tid = entry.file_name().to_string_lossy().into_owned();
            format!(
                "{tid:>8} {:<16} {} {}\n",
                read(&task, "comm").trim(),
                state(&read(&task, "stat")),
                read(&task, "wchan")
            )
        })
        .collect();
    lines.sort();
    lines.concat()
}

fn read(task: &Path, file: &str) -> String {
    std::fs::read_to_string(task.join(file)).unwrap_or_default()
}

/// The state letter of a `stat` line: the field after the `)` that closes the thread's name.
fn state(stat: &str) -> &str {
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.get(..1))
        .unwrap_or("?")
}

/// Every thread's innermost frames, from gdb attached for a moment (bounded to 60 s).
fn stacks(pid: u32) -> String {
    let output = Command::new("timeout")
        .args(["60", "gdb", "-batch", "-nx", "-p", &pid.to_string()])
        .args(["-ex", &format!("thread apply all bt {FRAMES}")])
        .output();
    match output {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let frames = lines_starting_with(&text, &["Thread ", "#"], LINE);
            if frames.is_empty() {
                format!(
                    "(gdb printed no stack: {})\n",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            } else {
                frames
            }
        }
        Err(e) => format!("(gdb could not run: {e}; scripts/test installs it)\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_name_even_when_the_name_has_parentheses() {
        assert_eq!(state("42 (a) b) S 1 2 3"), "S");
        assert_eq!(state("garbage"), "?");
    }

    #[test]
    fn this_process_lists_the_calling_thread() {
        let listing = threads(std::process::id());
        let tid = calling_tid();
        assert!(
            listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(tid.as_str())),
            "{listing}"
        );
    }

    fn calling_tid() -> String {
        // /proc/thread-self names the calling thread's task directory.
        std::fs::read_link("/proc/thread-self")
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}
