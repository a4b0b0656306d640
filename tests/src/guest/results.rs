//! What a guest printed: the marked lines of its console (`tests/guest/init.sh` writes them), parsed.

use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::time::Duration;

use super::boot::report;

const MARKER: &str = "@@aioctx ";

/// A guest's run: its console and what the job reported on it.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// What the guest was ([`super::Guest::label`]).
    pub label: String,
    /// The QEMU command line.
    pub command: String,
    /// The serial console (carriage returns removed).
    pub console: String,
    pub qemu_stderr: String,
    /// QEMU's exit status (0 after a power-off; killed: a signal).
    pub status: Option<ExitStatus>,
    /// From QEMU's start to its exit.
    pub elapsed: Duration,
    /// QEMU was killed (on purpose, at its timeout, or because it did not exit).
    pub killed: bool,
    /// The guest ran past its timeout (and was killed).
    pub timed_out: bool,
    /// `kv KEY=VALUE` lines.
    pub values: BTreeMap<String, String>,
    /// `begin NAME` ... `end NAME rc=N` sections, in order.
    pub sections: Vec<Section>,
    /// `mark NAME` lines, in order.
    pub marks: Vec<String>,
    /// `done job=JOB rc=N`: the job and its exit code.
    pub done: Option<(String, i32)>,
    /// For a guest that stopped making progress: its vCPUs as QEMU's monitor saw them, and the host's
    /// threads (QEMU's and this process's), taken before QEMU was killed.
    pub diagnosis: String,
}

/// One section of the console: a program's output and how it exited.
#[derive(Debug, Default, Clone)]
pub struct Section {
    pub name: String,
    pub body: String,
    /// `None` if the section never ended (the guest was killed in it).
    pub rc: Option<i32>,
}

/// Parses the marked lines of `console`. A marker may follow other bytes on its line (the firmware's
/// escape sequences, a line fio left unfinished): everything from it on counts.
pub(crate) fn parse(console: &str) -> Outcome {
    let mut out = Outcome::default();
    let mut open: Option<Section> = None;
    for line in console.lines() {
        let Some(at) = line.find(MARKER) else {
            if let Some(section) = open.as_mut() {
                section.body.push_str(line);
                section.body.push('\n');
            }
            continue;
        };
        let rest = &line[at + MARKER.len()..];
        let (kind, arg) = rest.split_once(' ').unwrap_or((rest, ""));
        match kind {
            "kv" => {
                if let Some((k, v)) = arg.split_once('=') {
                    out.values.insert(k.to_string(), v.to_string());
                }
            }
            "mark" => out.marks.push(arg.to_string()),
            "begin" => {
                if let Some(unfinished) = open.take() {
                    out.sections.push(unfinished);
                }
                open = Some(Section {
                    name: arg.to_string(),
                    ..Section::default()
                });
            }
            "end" => {
                let (name, rc) = arg.split_once(" rc=").unwrap_or((arg, ""));
                match open.take() {
                    Some(mut section) if section.name == name => {
                        section.rc = rc.trim().parse().ok();
                        out.sections.push(section);
                    }
                    other => open = other,
                }
            }
            "done" => {
                let job = arg
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("job="))
                    .unwrap_or("");
                let rc = arg
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("rc="))
                    .and_then(|rc| rc.parse().ok())
                    .unwrap_or(-1);
                out.done = Some((job.to_string(), rc));
            }
            _ => {}
        }
    }
    out.sections.extend(open);
    out
}

impl Outcome {
    /// The job's exit code, if it finished.
    pub fn rc(&self) -> Option<i32> {
        self.done.as_ref().map(|(_, rc)| *rc)
    }

    /// Panics, with the console's tail, unless the job finished with exit code 0.
    pub fn assert_ok(&self) -> &Outcome {
        assert!(
            self.rc() == Some(0),
            "{}: the job did not succeed (done: {:?}, QEMU: {:?})\n{}",
            self.label,
            self.done,
            self.status,
            self.report()
        );
        self
    }

    /// The value `key` (`kv KEY=VALUE`); panics, with the console's tail, if the job did not print it.
    pub fn value(&self, key: &str) -> &str {
        self.values.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "{}: the guest printed no value {key:?}\n{}",
                self.label,
                self.report()
            )
        })
    }

    /// The section `name`; panics, with the console's tail, if there is none.
    pub fn section(&self, name: &str) -> &Section {
        self.sections
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "{}: the guest printed no section {name:?}\n{}",
                    self.label,
                    self.report()
                )
            })
    }

    /// fio's JSON in section `name`, summarised; panics if it is not there or not JSON.
    pub fn fio(&self, name: &str) -> Fio {
        let section = self.section(name);
        Fio::parse(&section.body).unwrap_or_else(|e| {
            panic!(
                "{}: section {name} holds no fio JSON ({e}):\n{}",
                self.label,
                super::tail(&section.body, 40)
            )
        })
    }

    /// Checks a [`Job::randrw`](super::Job::randrw) run on `queues` virtqueues: the guest drove that
    /// many (blk-mq: one hardware queue per vCPU) and fio wrote, then read back and verified, every
    /// written block without an error. Prints the IOPS, labelled with `backend`.
    pub fn assert_randrw_verified(&self, queues: u16, backend: &str) {
        assert_eq!(self.value("vda.hw_queues"), queues.to_string());
        let fio = self.fio("randrw");
        assert_eq!(fio.error, 0);
        assert!(
            fio.write.total_ios > 0 && fio.read.total_ios > fio.write.total_ios,
            "fio wrote and read back every written block: {fio:?}"
        );
        eprintln!(
            "randrw {queues}q on {backend}: {:.0} read + {:.0} write IOPS, {:.1} s",
            fio.read.iops,
            fio.write.iops,
            self.elapsed.as_secs_f64()
        );
    }

    /// The console's tail, QEMU's stderr and command, for failure messages.
    pub fn report(&self) -> String {
        let report = report(&self.console, &self.qemu_stderr, &self.command);
        if self.diagnosis.is_empty() {
            report
        } else {
            format!("{report}\n{}", self.diagnosis)
        }
    }
}

/// fio's JSON output (`--output-format=json`), with the numbers tests look at summed over its jobs
/// (one with `--group_reporting`, which the guest's fio jobs use).
#[derive(Debug, Clone)]
pub struct Fio {
    pub json: serde_json::Value,
    /// fio's `error` (an errno; 0 if none), the first non-zero over the jobs.
    pub error: i64,
    pub read: FioDirection,
    pub write: FioDirection,
    pub trim: FioDirection,
}

/// One direction of a fio run.
#[derive(Debug, Clone, Default)]
pub struct FioDirection {
    pub iops: f64,
    pub bw_kib_s: f64,
    pub io_bytes: u64,
    pub total_ios: u64,
    /// Mean total latency (submission to completion), microseconds.
    pub lat_mean_us: f64,
    /// 99th percentile of completion latency, microseconds (the largest over the jobs).
    pub clat_p99_us: f64,
}

impl Fio {
    /// Parses the first JSON object in `text` (fio may print warnings before it).
    pub fn parse(text: &str) -> Result<Fio, String> {
        let start = text.find('{').ok_or("no '{'")?;
        let json: serde_json::Value = serde_json::Deserializer::from_str(&text[start..])
            .into_iter()
            .next()
            .ok_or("empty")?
            .map_err(|e| e.to_string())?;
        let jobs = json["jobs"].as_array().ok_or("no \"jobs\" array")?;
        let error = jobs
            .iter()
            .map(|j| j["error"].as_i64().unwrap_or(-1))
            .find(|&e| e != 0)
            .unwrap_or(0);
        let direction = |name: &str| {
            let mut d = FioDirection::default();
            let mut weighted_lat = 0.0;
            for job in jobs {
                let j = &job[name];
                let ios = j["total_ios"].as_u64().unwrap_or(0);
                d.iops += j["iops"].as_f64().unwrap_or(0.0);
                d.bw_kib_s += j["bw"].as_f64().unwrap_or(0.0);
                d.io_bytes += j["io_bytes"].as_u64().unwrap_or(0);
                d.total_ios += ios;
                weighted_lat += j["lat_ns"]["mean"].as_f64().unwrap_or(0.0) * ios as f64;
                let p99 = j["clat_ns"]["percentile"]["99.000000"]
                    .as_f64()
                    .unwrap_or(0.0);
                d.clat_p99_us = d.clat_p99_us.max(p99 / 1000.0);
            }
            if d.total_ios > 0 {
                d.lat_mean_us = weighted_lat / d.total_ios as f64 / 1000.0;
            }
            d
        };
        Ok(Fio {
            error,
            read: direction("read"),
            write: direction("write"),
            trim: direction("trim"),
            json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_after_escape_sequences_and_unfinished_sections() {
        let console = "SeaBIOS\r\n\x1bc\x1b[?7l\x1b[2J@@aioctx kv kernel=6.1.0\r\n\
            @@aioctx kv write.msg=dd: can't open '/dev/vda': Read-only file system\n\
            @@aioctx begin randrw\nfio: a warning\n{\"jobs\": [{\"error\": 0, \"read\": \
            {\"iops\": 10.5, \"total_ios\": 4, \"lat_ns\": {\"mean\": 2000.0}}, \"write\": {}}]}\n\
            @@aioctx end randrw rc=0\n@@aioctx mark written\n@@aioctx begin pattern.verify\nhalf";
        let out = parse(&console.replace('\r', ""));
        assert_eq!(out.values["kernel"], "6.1.0");
        assert_eq!(
            out.values["write.msg"],
            "dd: can't open '/dev/vda': Read-only file system"
        );
        assert_eq!(out.marks, ["written"]);
        assert_eq!(out.sections.len(), 2);
        assert_eq!(out.sections[0].rc, Some(0));
        assert_eq!(out.sections[1].rc, None);
        assert_eq!(out.sections[1].body, "half\n");
        assert_eq!(out.done, None);
        let fio = Fio::parse(&out.sections[0].body).unwrap();
        assert_eq!(
            (fio.error, fio.read.iops, fio.read.lat_mean_us),
            (0, 10.5, 2.0)
        );
    }
}
