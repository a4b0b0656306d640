//! Booting a guest: the QEMU command line, the console reader, the timeout, killing on purpose.

use std::fmt::Display;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::results::{parse, Outcome};
use super::{image, require, tail, QEMU_PACKAGES};
use super::{monitor, stacks};

/// How long a guest may run (boot, job, power-off) before it is killed and its test fails.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// A disk of the guest; the first is `/dev/vda`, the second `/dev/vdb` (PCI slots follow the order).
#[derive(Debug, Clone)]
pub enum Disk {
    /// `vhost-user-blk-pci` connected to a backend listening on `socket`. The guest's RAM becomes a
    /// shared memfd (`-object memory-backend-memfd,share=on -numa node,memdev=mem`) that the backend
    /// maps. `num_queues` virtqueues; the guest uses min(`num_queues`, vCPUs) of them.
    VhostUser { socket: PathBuf, num_queues: u16 },
    /// QEMU's built-in `virtio-blk-pci` on its own IOThread, on a raw image opened with `cache=none`
    /// and `aio=io_uring`.
    VirtioBlk {
        image: PathBuf,
        num_queues: u16,
        read_only: bool,
    },
}

impl Disk {
    /// A vhost-user-blk front end on `socket` with `num_queues` queues.
    pub fn vhost_user(socket: impl Into<PathBuf>, num_queues: u16) -> Disk {
        Disk::VhostUser {
            socket: socket.into(),
            num_queues,
        }
    }

    /// QEMU's virtio-blk on an IOThread, one queue, writable.
    pub fn virtio_blk(image: impl Into<PathBuf>) -> Disk {
        Disk::VirtioBlk {
            image: image.into(),
            num_queues: 1,
            read_only: false,
        }
    }

    fn describe(&self) -> String {
        match self {
            Disk::VhostUser { socket, num_queues } => {
                format!("vhost-user-blk({}, {num_queues}q)", socket.display())
            }
            Disk::VirtioBlk {
                image,
                num_queues,
                read_only,
            } => format!(
                "virtio-blk+iothread({}, {num_queues}q{})",
                image.display(),
                if *read_only { ", ro" } else { "" }
            ),
        }
    }
}

/// What the guest runs: `aioctx.job=NAME` and its `aioctx.KEY=VALUE` parameters (the module doc lists
/// them).
#[derive(Debug, Clone)]
pub struct Job {
    name: String,
    params: Vec<(String, String)>,
}

impl Job {
    /// The job `name` with no parameters (each has defaults).
    pub fn new(name: &str) -> Job {
        Job {
            name: name.to_string(),
            params: Vec::new(),
        }
    }

    /// Sets `aioctx.KEY=VALUE` (no spaces: the kernel splits its command line on them).
    pub fn param(mut self, key: &str, value: impl Display) -> Job {
        let value = value.to_string();
        assert!(
            !key.contains([' ', '=']) && !value.contains(' ') && !value.is_empty(),
            "job parameter {key}={value:?}: no spaces, not empty"
        );
        self.params.retain(|(k, _)| k != key);
        self.params.push((key.to_string(), value));
        self
    }

    /// Boot, print the disks' facts, power off.
    pub fn none() -> Job {
        Job::new("none")
    }

    /// fio randrw with crc32c verification: `numjobs` jobs (each in its own region, spread over the
    /// vCPUs) at `iodepth`.
    pub fn randrw(numjobs: u32, iodepth: u32) -> Job {
        Job::new("randrw")
            .param("numjobs", numjobs)
            .param("iodepth", iodepth)
    }

    /// A sequential write of the disk, then a read-back verifying every block.
    pub fn seqverify() -> Job {
        Job::new("seqverify")
    }

    /// Discard and write-zeroes on MiB 0..3 of a disk filled with 0xaa, reporting what happened.
    pub fn discard() -> Job {
        Job::new("discard")
    }

    /// The pattern job: `phase` is `write`, `verify` or `both`; add `hold`, `offset`, `size`, `bs`.
    pub fn pattern(phase: &str) -> Job {
        Job::new("pattern").param("phase", phase)
    }

    /// A write that must fail (a read-only disk), reporting the errno.
    pub fn readonly() -> Job {
        Job::new("readonly")
    }

    /// Benchmarks: `runs` as `(rw, iodepth, numjobs)`, each `runtime_s` seconds, fio's JSON each.
    pub fn bench(runs: &[(&str, u32, u32)], runtime_s: u32) -> Job {
        let runs: Vec<String> = runs
            .iter()
            .map(|(rw, qd, jobs)| format!("{rw}:{qd}:{jobs}"))
            .collect();
        Job::new("bench")
            .param("runs", runs.join(","))
            .param("runtime", runtime_s)
    }

    fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }
}

/// A guest to boot: a [`Job`], [`Disk`]s, vCPUs, memory, a timeout.
#[derive(Debug, Clone)]
pub struct Guest {
    job: Job,
    disks: Vec<Disk>,
    cpus: u32,
    memory_mib: u32,
    timeout: Duration,
    append: Vec<String>,
    multi_threaded_tcg: bool,
}

impl Guest {
    /// One vCPU, 512 MiB, [`TIMEOUT`], no disk yet.
    pub fn new(job: Job) -> Guest {
        Guest {
            job,
            disks: Vec::new(),
            cpus: 1,
            memory_mib: 512,
            timeout: TIMEOUT,
            append: Vec::new(),
            multi_threaded_tcg: false,
        }
    }

    /// Adds a disk (`vda`, then `vdb`, ...). Unless the job names `dev`, it runs on all of them.
    pub fn disk(mut self, disk: Disk) -> Guest {
        self.disks.push(disk);
        self
    }

    /// vCPUs (`-smp`): the guest uses one virtqueue per vCPU at most, so a multi-queue test needs as
    /// many vCPUs as queues.
    pub fn cpus(mut self, cpus: u32) -> Guest {
        self.cpus = cpus;
        self
    }

    /// Runs the vCPUs on a host thread each (TCG's default, `-accel tcg`) rather than in turns on
    /// one (`-accel tcg,thread=single`, the default here). Multi-threaded TCG with 4 vCPUs on this
    /// 2-core machine has wedged a guest's local APIC (a timer vector left in service, everything
    /// below it pending, every vCPU halted: the guest waited forever for an interrupt, with every
    /// virtqueue completed), about once in 50 boots under load, and aborted on an assertion of its
    /// own (see [`Guest::run`]). Tests run single-threaded; a benchmark that needs the guest's
    /// vCPUs in parallel opts in.
    pub fn multi_threaded_tcg(mut self, on: bool) -> Guest {
        self.multi_threaded_tcg = on;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Guest {
        self.memory_mib = mib;
        self
    }

    /// How long the guest may run before it is killed and the test fails.
    pub fn timeout(mut self, timeout: Duration) -> Guest {
        self.timeout = timeout;
        self
    }

    /// An extra kernel command-line argument.
    pub fn append(mut self, arg: &str) -> Guest {
        self.append.push(arg.to_string());
        self
    }

    /// The kernel command line.
    pub fn kernel_args(&self) -> String {
        let mut args = vec![
            "console=ttyS0".to_string(),
            "quiet".to_string(),
            // A guest whose init dies panics; reboot at once, which -no-reboot turns into an exit.
            "panic=-1".to_string(),
            format!("aioctx.job={}", self.job.name),
        ];
        if !self.job.has("dev") && self.disks.len() > 1 {
            let devs: Vec<String> = (0..self.disks.len())
                .map(|i| format!("vd{}", char::from(b'a' + i as u8)))
                .collect();
            args.push(format!("aioctx.dev={}", devs.join(":")));
        }
        args.extend(
            self.job
                .params
                .iter()
                .map(|(k, v)| format!("aioctx.{k}={v}")),
        );
        args.extend(self.append.iter().cloned());
        args.join(" ")
    }

    /// The QEMU command (building the image first if needed).
    pub fn command(&self) -> Command {
        require("qemu-system-x86_64", QEMU_PACKAGES);
        let image = image();
        let mut cmd = Command::new("qemu-system-x86_64");
        let accel = if self.multi_threaded_tcg {
            "tcg"
        } else {
            "tcg,thread=single"
        };
        cmd.args(["-accel", accel, "-nographic", "-no-reboot", "-nic", "none"])
            // Threads named after their role ("IO io0" for an IOThread), so their CPU time can be read.
            .args(["-name", "guest,debug-threads=on"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-kernel")
            .arg(&image.vmlinuz)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &self.kernel_args()]);
        if self
            .disks
            .iter()
            .any(|d| matches!(d, Disk::VhostUser { .. }))
        {
            cmd.args([
                "-object",
                &format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ),
                "-numa",
                "node,memdev=mem",
            ]);
        }
        for (i, disk) in self.disks.iter().enumerate() {
            match disk {
                Disk::VhostUser { socket, num_queues } => {
                    cmd.args([
                        "-chardev",
                        &format!("socket,id=c{i},path={}", qemu_path(socket)),
                        "-device",
                        &format!("vhost-user-blk-pci,chardev=c{i},num-queues={num_queues}"),
                    ]);
                }
                Disk::VirtioBlk {
                    image,
                    num_queues,
                    read_only,
                } => {
                    let ro = if *read_only { ",readonly=on" } else { "" };
                    cmd.args([
                        "-object",
                        &format!("iothread,id=io{i}"),
                        "-drive",
                        &format!(
                            "file={},if=none,id=d{i},format=raw,cache=none,aio=io_uring{ro}",
                            qemu_path(image)
                        ),
                        "-device",
                        &format!(
                            "virtio-blk-pci,drive=d{i},iothread=io{i},num-queues={num_queues}"
                        ),
                    ]);
                }
            }
        }
        cmd
    }

    /// What the guest is, for messages.
    pub fn label(&self) -> String {
        let disks: Vec<String> = self.disks.iter().map(Disk::describe).collect();
        format!(
            "guest job={} cpus={} on [{}]",
            self.job.name,
            self.cpus,
            disks.join(", ")
        )
    }

    /// Boots the guest; it runs until its job powers it off, [`Running::kill`], or its timeout.
    pub fn start(&self) -> Running {
        let mut cmd = self.command();
        // The human monitor, asked about the vCPUs if the guest gets stuck (see `monitor.rs`).
        let monitor = tempfile::Builder::new()
            .prefix("aioctx-qemu-")
            .tempdir()
            .unwrap_or_else(|e| panic!("a directory for QEMU's monitor socket: {e}"));
        let monitor_socket = monitor.path().join("monitor.sock");
        cmd.arg("-monitor").arg(format!(
            "unix:{},server=on,wait=off",
            qemu_path(&monitor_socket)
        ));
        let command = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let console = Arc::new(Console::default());
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let c = console.clone();
        let out_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.state.lock().unwrap().bytes.extend_from_slice(&buf[..n]);
                        c.cond.notify_all();
                    }
                }
            }
            c.state.lock().unwrap().eof = true;
            c.cond.notify_all();
        });
        let e = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = err_pipe.read_to_end(&mut all);
            e.lock().unwrap().extend_from_slice(&all);
        });
        let started = Instant::now();
        Running {
            child: Some(child),
            console,
            stderr,
            readers: vec![out_reader, err_reader],
            started,
            deadline: started + self.timeout,
            timeout: self.timeout,
            label: self.label(),
            command,
            cpus: self.cpus,
            monitor_socket,
            _monitor_dir: monitor,
        }
    }

    /// Boots the guest and waits until it powers off: [`Guest::start`] then [`Running::wait`].
    ///
    /// QEMU 10's multi-threaded TCG has been seen to abort on an assertion of its own
    /// (`iotlb_to_section`, 4 vCPUs) while the guest was still in the firmware: such a run, which
    /// never reached the guest's init, is booted once more (with a line on stderr); any other
    /// failure is the test's.
    pub fn run(&self) -> Outcome {
        let out = self.start().wait();
        if out.values.is_empty()
            && out.marks.is_empty()
            && out.sections.is_empty()
            && out.qemu_stderr.contains("Assertion")
        {
            eprintln!(
                "{}: QEMU aborted before the guest's init ran; booting once more:\n{}",
                out.label, out.qemu_stderr
            );
            return self.start().wait();
        }
        out
    }
}

/// A path in a QEMU option value (a comma is written twice).
fn qemu_path(path: &std::path::Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
        .replace(',', ",,")
}

#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    cond: Condvar,
}

#[derive(Default)]
struct ConsoleState {
    bytes: Vec<u8>,
    /// QEMU closed its stdout: it exited.
    eof: bool,
}

/// A booted guest. Dropping it kills QEMU.
pub struct Running {
    child: Option<Child>,
    console: Arc<Console>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    label: String,
    command: String,
    cpus: u32,
    monitor_socket: PathBuf,
    _monitor_dir: tempfile::TempDir,
}

impl Running {
    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.state.lock().unwrap().bytes).replace('\r', "")
    }

    /// Waits until the job prints `mark NAME` (the pattern job's `written`), at most `bound` and
    /// never past the guest's timeout. Panics, with the console's tail, if QEMU exits first or time
    /// runs out (QEMU is killed).
    pub fn wait_for_mark(&mut self, name: &str, bound: Duration) {
        self.wait_until(&format!("mark {name}"), bound, |text| {
            parse(text).marks.iter().any(|m| m == name)
        });
    }

    /// Waits until the console contains `needle` (see [`Running::wait_for_mark`]).
    pub fn wait_for(&mut self, needle: &str, bound: Duration) {
        self.wait_until(&format!("{needle:?} on the console"), bound, |text| {
            text.contains(needle)
        });
    }

    fn wait_until(&mut self, what: &str, bound: Duration, done: impl Fn(&str) -> bool) {
        let give_up = self.deadline.min(Instant::now() + bound);
        let mut state = self.console.state.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&state.bytes).replace('\r', "");
            if done(&text) {
                return;
            }
            if state.eof {
                drop(state);
                let outcome = self.finish(false);
                panic!(
                    "{}: QEMU exited ({:?}) before {what}\n{}",
                    outcome.label,
                    outcome.status,
                    outcome.report()
                );
            }
            let now = Instant::now();
            if now >= give_up {
                drop(state);
                let outcome = self.finish_stuck();
                panic!(
                    "{}: no {what} within {:?}; QEMU killed\n{}",
                    outcome.label,
                    bound.min(self.timeout),
                    outcome.report()
                );
            }
            state = self
                .console
                .cond
                .wait_timeout(state, give_up - now)
                .unwrap()
                .0;
        }
    }

    /// Kills QEMU now (SIGKILL: the backend sees its front end vanish mid-run) and returns what the
    /// guest printed until then.
    pub fn kill(mut self) -> Outcome {
        self.finish(true)
    }

    /// Waits until the guest powers off and returns its outcome; kills QEMU and panics with the
    /// console's tail if it runs past its timeout.
    pub fn wait(self) -> Outcome {
        let timeout = self.timeout;
        self.wait_for_exit(true).unwrap_or_else(|outcome| {
            panic!(
                "{}: did not finish within {timeout:?}; QEMU killed\n{}",
                outcome.label,
                outcome.report()
            )
        })
    }

    /// Waits until the guest powers off (`Ok`) or its timeout passes (`Err`: QEMU was killed, the
    /// outcome has `timed_out` set and the console until then).
    pub fn wait_or_time_out(self) -> Result<Outcome, Box<Outcome>> {
        self.wait_for_exit(false)
    }

    /// [`Running::wait_or_time_out`]; `diagnose`: a guest that times out is a failure, whose outcome
    /// carries the host's threads.
    fn wait_for_exit(mut self, diagnose: bool) -> Result<Outcome, Box<Outcome>> {
        let mut state = self.console.state.lock().unwrap();
        while !state.eof {
            let now = Instant::now();
            if now >= self.deadline {
                drop(state);
                let mut outcome = if diagnose {
                    self.finish_stuck()
                } else {
                    self.finish(true)
                };
                outcome.timed_out = true;
                return Err(Box::new(outcome));
            }
            state = self
                .console
                .cond
                .wait_timeout(state, self.deadline - now)
                .unwrap()
                .0;
        }
        drop(state);
        Ok(self.finish(false))
    }

    /// Kills QEMU after asking its monitor about the vCPUs and taking a snapshot of the host's
    /// threads (QEMU's and this process's): a guest that stopped making progress, for a failure
    /// message.
    fn finish_stuck(&mut self) -> Outcome {
        let vcpus = monitor::vcpus(&self.monitor_socket, self.cpus);
        let threads = stacks::snapshot(self.pid());
        let mut outcome = self.finish(true);
        outcome.diagnosis = format!("{vcpus}{threads}");
        outcome
    }

    /// Reaps QEMU (killing it first if `kill`, or if it does not exit within 10 s of closing its
    /// stdout) and collects the outcome.
    fn finish(&mut self, kill: bool) -> Outcome {
        let mut child = self.child.take().expect("finished once");
        let mut killed = false;
        if kill {
            let _ = child.kill();
            killed = true;
        }
        let give_up = Instant::now() + Duration::from_secs(10);
        let status: ExitStatus = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    killed = true;
                    break child.wait().expect("reaping QEMU");
                }
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let console =
            String::from_utf8_lossy(&self.console.state.lock().unwrap().bytes).replace('\r', "");
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        let mut outcome = parse(&console);
        outcome.label = self.label.clone();
        outcome.command = self.command.clone();
        outcome.console = console;
        outcome.qemu_stderr = stderr;
        outcome.status = Some(status);
        outcome.elapsed = self.started.elapsed();
        outcome.killed = killed;
        outcome
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The console's tail and QEMU's stderr, for failure messages.
pub(crate) fn report(console: &str, stderr: &str, command: &str) -> String {
    format!(
        "--- console (last 60 lines) ---\n{}\n--- QEMU stderr ---\n{}\n--- command ---\n{command}",
        tail(console, 60),
        tail(stderr, 20)
    )
}
