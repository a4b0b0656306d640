//! The vhost-user-blk benchmark against QEMU's own backends (run by `benches/vhost-user-blk-vs-qemu.sh`,
//! which builds the daemon and sets `VHOST_USER_BLK_BIN`): the same guest, the same fio jobs (4 KiB
//! randread at depth 1 and 32, randwrite at depth 32, randread at depth 32 with 4 jobs on 4 queues),
//! against
//! - the aioctx daemon (the release example binary, its own process, `--direct`), busy polling on and off;
//! - qemu-storage-daemon's vhost-user-blk export on one IOThread (10.0 cannot spread an export's queues);
//! - QEMU's built-in virtio-blk on an IOThread;
//!
//! alternating backends, `BENCH_RUNS` rounds (default 3), medians. Each row reports the guest's IOPS
//! and mean latency and the backend's CPU time per I/O: the backend process's utime+stime (the
//! built-in device: its IOThread's) between fio's start and end, over the I/Os fio did in that time
//! (its ramp second included, at the rate it measured). Ignored in `cargo test`: a measurement, about
//! 15 minutes.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use tests::guest::{self, Disk, Export, Guest, Job, Scratch, StorageDaemon};

const MIB: u64 = 1 << 20;
const RUNTIME_S: u32 = 5;
const RAMP_S: u32 = 1;

/// CPU seconds a process (all its threads) or one of its threads has used.
fn cpu_seconds(stat: &Path) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) / hz
}

/// The stat file of thread `name` of process `pid`.
fn thread_stat(pid: u32, name: &str) -> std::path::PathBuf {
    let tasks = format!("/proc/{pid}/task");
    for entry in std::fs::read_dir(&tasks).unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return entry.path().join("stat");
        }
    }
    panic!("no thread {name:?} in {tasks}");
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    AioctxPoll,
    AioctxNoPoll,
    Qsd,
    BuiltIn,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::AioctxPoll => "aioctx daemon, polling on",
            Backend::AioctxNoPoll => "aioctx daemon, polling off",
            Backend::Qsd => "qemu-storage-daemon (1 IOThread)",
            Backend::BuiltIn => "QEMU built-in virtio-blk + IOThread",
        }
    }
}

/// The aioctx daemon as its own process.
struct AioctxDaemon(Child);

impl AioctxDaemon {
    fn start(image: &Path, socket: &Path, queues: u16, poll: bool) -> AioctxDaemon {
        let bin = std::env::var("VHOST_USER_BLK_BIN").expect(
            "VHOST_USER_BLK_BIN: the vhost-user-blk example binary (benches/vhost-user-blk-vs-qemu.sh sets it)",
        );
        let mut cmd = Command::new(bin);
        cmd.arg(image)
            .arg("--socket")
            .arg(socket)
            .args(["--num-queues", &queues.to_string(), "--direct"])
            .args(["--iothreads", &queues.clamp(1, 2).to_string()])
            .stdout(Stdio::piped());
        if !poll {
            cmd.args(["--poll-max-ns", "0"]);
        }
        let mut child = cmd.spawn().expect("starting the vhost-user-blk daemon");
        // It prints "listening on ..." once the socket is bound.
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert!(line.contains("listening"), "the daemon said {line:?}");
        AioctxDaemon(child)
    }

    fn stop(mut self) {
        // SAFETY: kill takes a pid and a signal number; the pid is our unreaped child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.0.wait().unwrap();
        assert!(status.success(), "the daemon exited with {status}");
    }
}

struct Row {
    backend: Backend,
    run: String,
    iops: f64,
    lat_us: f64,
    cpu_us_per_io: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement (about 15 minutes): benches/vhost-user-blk-vs-qemu.sh runs it"]
fn bench_vhost_user_blk_against_qemu_backends() {
    let _alone = guest::one_at_a_time();
    let rounds: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    type Runs = &'static [(&'static str, u32, u32)];
    // (vCPUs and queues, runs as (rw, iodepth, numjobs)): one boot each.
    let boots: [(u16, Runs); 2] = [
        (
            1,
            &[
                ("randread", 1, 1),
                ("randread", 32, 1),
                ("randwrite", 32, 1),
            ],
        ),
        (4, &[("randread", 32, 4)]),
    ];
    let backends = [
        Backend::AioctxPoll,
        Backend::Qsd,
        Backend::AioctxNoPoll,
        Backend::BuiltIn,
    ];
    let mut rows = Vec::new();
    for round in 0..rounds {
        for (cpus, runs) in boots {
            for backend in backends {
                let scratch = Scratch::new("bench");
                let image = scratch.raw_image("disk.img", 256 * MIB);
                let socket = scratch.socket("vhost.sock");
                let mut aioctx = None;
                let mut qsd = None;
                let disk = match backend {
                    Backend::AioctxPoll | Backend::AioctxNoPoll => {
                        let poll = backend == Backend::AioctxPoll;
                        aioctx = Some(AioctxDaemon::start(&image, &socket, cpus, poll));
                        Disk::vhost_user(&socket, cpus)
                    }
                    Backend::Qsd => {
                        let export = Export {
                            num_queues: cpus,
                            ..Export::default()
                        };
                        let daemon = StorageDaemon::start(&image, &socket, export);
                        let disk = daemon.disk();
                        qsd = Some(daemon);
                        disk
                    }
                    Backend::BuiltIn => Disk::VirtioBlk {
                        image: image.clone(),
                        num_queues: cpus,
                        read_only: false,
                    },
                };
                // The measurement wants the guest's vCPUs in parallel, as QEMU runs them by default.
                let mut running = Guest::new(Job::bench(runs, RUNTIME_S))
                    .cpus(cpus.into())
                    .multi_threaded_tcg(true)
                    .disk(disk)
                    .start();
                let mut cpu = Vec::new();
                for &(rw, qd, jobs) in runs {
                    let section = format!("bench.{rw}.qd{qd}.j{jobs}");
                    // fio starts after the mark and its JSON section is printed once it ends.
                    running.wait_for_mark(&format!("{section}.started"), guest::TIMEOUT);
                    // Looked up once the guest runs: QEMU's IOThread exists by then.
                    let stat = match backend {
                        Backend::AioctxPoll | Backend::AioctxNoPoll => {
                            format!("/proc/{}/stat", aioctx.as_ref().unwrap().0.id()).into()
                        }
                        Backend::Qsd => {
                            format!("/proc/{}/stat", qsd.as_ref().unwrap().pid()).into()
                        }
                        Backend::BuiltIn => thread_stat(running.pid(), "IO io0"),
                    };
                    let before = cpu_seconds(&stat);
                    running.wait_for(&format!("@@aioctx begin {section}"), guest::TIMEOUT);
                    cpu.push(cpu_seconds(&stat) - before);
                }
                let out = running.wait();
                out.assert_ok();
                for (&(rw, qd, jobs), cpu) in runs.iter().zip(cpu) {
                    let fio = out.fio(&format!("bench.{rw}.qd{qd}.j{jobs}"));
                    let d = if rw.contains("write") {
                        fio.write
                    } else {
                        fio.read
                    };
                    let ios = d.iops * f64::from(RUNTIME_S + RAMP_S);
                    let row = Row {
                        backend,
                        run: format!("{rw} qd{qd} x{jobs} ({cpus} vCPU, {cpus} queue(s))"),
                        iops: d.iops,
                        lat_us: d.lat_mean_us,
                        cpu_us_per_io: cpu * 1e6 / ios.max(1.0),
                    };
                    eprintln!(
                        "round {round}: {} | {} | {:.0} IOPS | {:.0} us | {:.1} us CPU/IO",
                        row.backend.name(),
                        row.run,
                        row.iops,
                        row.lat_us,
                        row.cpu_us_per_io
                    );
                    rows.push(row);
                }
                if let Some(d) = aioctx {
                    d.stop();
                }
                if let Some(d) = qsd {
                    d.stop();
                }
            }
        }
    }
    // Medians per (run, backend), ratios against qemu-storage-daemon.
    let mut runs: Vec<String> = Vec::new();
    for r in &rows {
        if !runs.contains(&r.run) {
            runs.push(r.run.clone());
        }
    }
    println!("\n| fio job | backend | IOPS | vs qsd | mean latency (us) | backend CPU/IO (us) | vs qsd |");
    println!("|---|---|---|---|---|---|---|");
    for run in &runs {
        let stat = |b: Backend, f: fn(&Row) -> f64| {
            median(
                rows.iter()
                    .filter(|r| &r.run == run && r.backend == b)
                    .map(f)
                    .collect(),
            )
        };
        let (qsd_iops, qsd_cpu) = (
            stat(Backend::Qsd, |r| r.iops),
            stat(Backend::Qsd, |r| r.cpu_us_per_io),
        );
        for b in backends {
            let (iops, lat, cpu) = (
                stat(b, |r| r.iops),
                stat(b, |r| r.lat_us),
                stat(b, |r| r.cpu_us_per_io),
            );
            println!(
                "| {run} | {} | {iops:.0} | {:.2}x | {lat:.0} | {cpu:.1} | {:.2}x |",
                b.name(),
                iops / qsd_iops,
                cpu / qsd_cpu
            );
        }
    }
}
