//! qemu-storage-daemon as the reference vhost-user-blk backend.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::boot::Disk;
use super::{require, tail, QEMU_PACKAGES};
use crate::BOUND;

/// How an image is exported.
#[derive(Debug, Clone, Copy)]
pub struct Export {
    /// Virtqueues (`num-queues`); all of them are served by the export's one IOThread
    /// (qemu-storage-daemon 10 refuses a list of IOThreads for one export).
    pub num_queues: u16,
    /// `writable=on`; off, the device offers VIRTIO_BLK_F_RO.
    pub writable: bool,
}

impl Default for Export {
    fn default() -> Export {
        Export {
            num_queues: 1,
            writable: true,
        }
    }
}

/// A running `qemu-storage-daemon` exporting one raw image as vhost-user-blk on a Unix socket, from an
/// IOThread, with `cache.direct=on,aio=io_uring`. Dropping it kills the daemon; [`StorageDaemon::stop`]
/// ends it cleanly and checks that it exited well.
pub struct StorageDaemon {
    child: Option<Child>,
    socket: PathBuf,
    export: Export,
    log: PathBuf,
}

impl StorageDaemon {
    /// Exports `image` on `socket` (which must not exist) and waits until the socket listens.
    pub fn start(image: &Path, socket: &Path, export: Export) -> StorageDaemon {
        require("qemu-storage-daemon", QEMU_PACKAGES);
        let _ = std::fs::remove_file(socket);
        let log = socket.with_extension("qsd.log");
        let log_file = std::fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let path = |p: &Path| p.to_str().expect("UTF-8 path").replace(',', ",,");
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.args([
            "--blockdev",
            &format!(
                "driver=file,node-name=f0,filename={},cache.direct=on,aio=io_uring",
                path(image)
            ),
            "--object",
            "iothread,id=io0",
            "--export",
            &format!(
                "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable={},\
                 iothread=io0,num-queues={}",
                path(socket),
                if export.writable { "on" } else { "off" },
                export.num_queues
            ),
        ])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut daemon = StorageDaemon {
            child: Some(child),
            socket: socket.to_path_buf(),
            export,
            log,
        };
        daemon.wait_listening(&format!("{cmd:?}"));
        daemon
    }

    /// Until the socket is in the listening state (`/proc/net/unix`): a front end started then
    /// connects at once. Panics with the daemon's output if it exits or [`BOUND`] passes.
    fn wait_listening(&mut self, command: &str) {
        let give_up = Instant::now() + BOUND;
        loop {
            if listening(&self.socket) {
                return;
            }
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!(
                    "qemu-storage-daemon exited ({status}) before listening on {}:\n{}\n{command}",
                    self.socket.display(),
                    self.output()
                );
            }
            assert!(
                Instant::now() < give_up,
                "qemu-storage-daemon did not listen on {} within {BOUND:?}:\n{}\n{command}",
                self.socket.display(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The guest's disk for this export: a vhost-user-blk front end with the export's queues.
    pub fn disk(&self) -> Disk {
        Disk::vhost_user(&self.socket, self.export.num_queues)
    }

    /// What the daemon printed so far.
    pub fn output(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 40)
    }

    /// The daemon's process id (for its CPU time in /proc).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the daemon still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Ends the daemon with SIGTERM (it closes the export and removes its socket) and checks that it
    /// exited with status 0 within [`BOUND`]; returns its output.
    pub fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill takes a pid and a signal number; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let give_up = Instant::now() + BOUND;
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait().expect("waiting for qemu-storage-daemon") {
                break status;
            }
            if Instant::now() > give_up {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "qemu-storage-daemon did not exit within {BOUND:?} of SIGTERM:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = self.output();
        assert!(
            status.success(),
            "qemu-storage-daemon exited with {status}:\n{output}"
        );
        output
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether a Unix socket bound to `path` is listening (`/proc/net/unix`: flag `__SO_ACCEPTCON`).
fn listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path
        fields.len() >= 8
            && fields[7] == want
            && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & 0x0001_0000 != 0)
    })
}
