//! QEMU's human monitor on a Unix socket, asked what a stuck guest's vCPUs are doing: where each one
//! is and whether it halted, and its local APIC's in-service and pending vectors. A guest whose every
//! vCPU halted with an interrupt pending below a vector left in service (QEMU's multi-threaded TCG
//! did that here) is told apart from one that waits for a device that never answered.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::lines_starting_with;

/// How long one monitor command may take.
const REPLY_BOUND: Duration = Duration::from_secs(5);

/// The vCPUs' registers (where each is, whether it halted) and their local APICs, for a failure
/// message; what went wrong instead if the monitor did not answer.
pub(crate) fn vcpus(socket: &Path, cpus: u32) -> String {
    let mut out = String::from("--- QEMU's monitor: vCPUs and their local APICs ---\n");
    let answer = Monitor::connect(socket).and_then(|mut monitor| {
        // The line with the instruction pointer: RIP in long mode, EIP before it.
        let mut lines = monitor.lines("info registers -a", &["CPU#", "RIP=", "EIP="])?;
        for cpu in 0..cpus {
            monitor.command(&format!("cpu {cpu}"))?;
            lines += &monitor.lines("info lapic", &["dumping", "ISR", "IRR", "APR"])?;
        }
        Ok(lines)
    });
    match answer {
        Ok(lines) => out += &lines,
        Err(e) => out += &format!("(the monitor did not answer: {e})\n"),
    }
    out
}

struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    fn connect(socket: &Path) -> io::Result<Monitor> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(REPLY_BOUND))?;
        let mut monitor = Monitor { stream };
        monitor.read_to_prompt()?;
        Ok(monitor)
    }

    /// Runs `command` and returns its output.
    fn command(&mut self, command: &str) -> io::Result<String> {
        self.stream.write_all(format!("{command}\n").as_bytes())?;
        self.read_to_prompt()
    }

    /// Runs `command` and keeps the lines that start with one of `keep` (the monitor echoes the
    /// command with terminal escapes, which no kept line starts with).
    fn lines(&mut self, command: &str, keep: &[&str]) -> io::Result<String> {
        Ok(lines_starting_with(
            &self.command(command)?,
            keep,
            usize::MAX,
        ))
    }

    fn read_to_prompt(&mut self) -> io::Result<String> {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while !text.ends_with(b"(qemu) ") {
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the monitor closed the connection",
                ));
            }
            text.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&text).replace('\r', ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{require, QEMU_PACKAGES};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    #[test]
    fn a_paused_qemu_reports_each_vcpu_and_its_apic() {
        require("qemu-system-x86_64", QEMU_PACKAGES);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor.sock");
        // Paused before the first instruction (-S): the monitor answers, no guest needed.
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-S", "-nodefaults", "-display", "none"])
            .args(["-smp", "2", "-monitor"])
            .arg(format!("unix:{},server=on,wait=on", socket.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // With wait=on QEMU listens, says so on stderr, and waits for a client before it goes on.
        let stderr = BufReader::new(qemu.stderr.take().unwrap());
        let said: Vec<String> = stderr
            .lines()
            .map_while(Result::ok)
            .take_while(|line| !line.contains("waiting for connection"))
            .collect();
        let report = vcpus(&socket, 2);
        let _ = qemu.kill();
        let _ = qemu.wait();
        assert!(
            !report.contains("did not answer"),
            "QEMU said: {said:?}\n{report}"
        );
        for needle in [
            "CPU#0\n",
            "CPU#1\n",
            // A vCPU that never ran sits at the reset vector.
            "EIP=0000fff0",
            "dumping local APIC state for CPU 0",
            "dumping local APIC state for CPU 1",
            "ISR",
            "IRR",
        ] {
            assert!(
                report.contains(needle),
                "{needle:?} missing from:\n{report}"
            );
        }
    }

    #[test]
    fn no_monitor_is_reported_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let report = vcpus(&dir.path().join("nothing.sock"), 1);
        assert!(report.contains("the monitor did not answer"), "{report}");
    }
}
