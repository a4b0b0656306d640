//! The QMP monitor (`examples::qmp`) driven by the real client `qemu.qmp` from PyPI
//! (`app_qmp/client.py`), and the same script against qemu-storage-daemon to prove the shapes of
//! the replies match; bad input from a raw socket, compared with qemu-storage-daemon's replies
//! where QEMU's wording is the contract; a client that disconnects mid-command.
//!
//! The monitor runs in this process: a thread runs an `aioctx::MainLoop` with two IoThreads (`io0`,
//! `io1`) and the monitor, until `quit`. The test blocks that main thread on purpose (a BH that waits
//! for a channel) to show that `exec-oob` commands are answered without it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use aioctx::{glib, IoThread, MainLoop, Remote, Stopped};
use examples::qmp::{BlockExport, Monitor};
use serde_json::{json, Value};

/// How long any one reply may take before the test fails (a hung monitor fails, never hangs).
const REPLY_BOUND: Duration = Duration::from_secs(30);

/// The aioctx monitor on its main-loop thread.
struct AioctxMonitor {
    socket: PathBuf,
    /// The main loop's aio context, to block the main thread from the test.
    main: Remote,
    thread: Option<JoinHandle<(Stopped, u64, usize)>>,
}

impl AioctxMonitor {
    fn start(dir: &Path) -> AioctxMonitor {
        let socket = dir.join("aioctx-qmp.sock");
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn({
            let socket = socket.clone();
            move || {
                let ml = MainLoop::builder()
                    .context(glib::MainContext::new())
                    .handle_signals(false)
                    .build()
                    .expect("main loop");
                let io0 = Arc::new(IoThread::spawn("io0").expect("io0"));
                let io1 = Arc::new(IoThread::spawn("io1").expect("io1"));
                let monitor = Monitor::builder()
                    .main_loop(&ml)
                    .iothread(Arc::clone(&io0))
                    .iothread(Arc::clone(&io1))
                    .block_exports(|| {
                        vec![BlockExport {
                            id: "exp0".into(),
                            kind: "nbd".into(),
                            node_name: "file0".into(),
                            shutting_down: false,
                        }]
                    })
                    .bind(&socket)
                    .expect("bind the monitor");
                tx.send(ml.aio_context().remote()).unwrap();
                let stopped = ml.run();
                monitor.shutdown();
                let io1_max_ns = io1.poll_params().expect("io1 params").max_ns;
                let io1_max_batch = io1.max_batch().expect("io1 max_batch");
                (stopped, io1_max_ns, io1_max_batch)
            }
        });
        let main = rx.recv().expect("the monitor thread failed to start");
        AioctxMonitor {
            socket,
            main,
            thread: Some(thread),
        }
    }

    /// Blocks the main thread until the returned sender is dropped or sent to; returns once it is
    /// blocked.
    fn block_main_thread(&self) -> mpsc::Sender<()> {
        let (blocked_tx, blocked_rx) = mpsc::channel();
        let (unblock_tx, unblock_rx) = mpsc::channel::<()>();
        self.main.schedule_oneshot(move || {
            blocked_tx.send(()).unwrap();
            let _ = unblock_rx.recv();
        });
        blocked_rx
            .recv_timeout(REPLY_BOUND)
            .expect("the main thread never ran the blocking BH");
        unblock_tx
    }

    /// Waits for the main loop to stop (after `quit`); returns why, and io1's final poll-max-ns
    /// and aio-max-batch as the runtime reports them.
    fn join(mut self) -> (Stopped, u64, usize) {
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("main loop thread panicked")
    }
}

/// qemu-storage-daemon with a QMP monitor, IOThreads io0 and io1 and an NBD export `exp0` of node
/// `file0`, started with `--daemonize`: it returns once the monitor listens.
struct StorageDaemon {
    pidfile: PathBuf,
    socket: PathBuf,
}

impl StorageDaemon {
    fn start(dir: &Path) -> StorageDaemon {
        let socket = dir.join("qsd-qmp.sock");
        let pidfile = dir.join("qsd.pid");
        let image = dir.join("file0.raw");
        std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
        let p = |p: &Path| p.to_str().unwrap().replace(',', ",,");
        let out = Command::new("timeout")
            .arg("60")
            .arg("qemu-storage-daemon")
            .args([
                "--chardev",
                &format!("socket,path={},server=on,wait=off,id=m", p(&socket)),
                "--monitor",
                "chardev=m",
                "--object",
                "iothread,id=io0",
                "--object",
                "iothread,id=io1",
                "--blockdev",
                &format!("driver=file,filename={},node-name=file0", p(&image)),
                "--nbd-server",
                &format!("addr.type=unix,addr.path={}", p(&dir.join("qsd-nbd.sock"))),
                "--export",
                "type=nbd,id=exp0,node-name=file0",
                "--daemonize",
                "--pidfile",
                &p(&pidfile),
            ])
            .output()
            .expect("qemu-storage-daemon is not installed (qemu-utils): this test needs it");
        assert!(
            out.status.success(),
            "qemu-storage-daemon failed to start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        StorageDaemon { pidfile, socket }
    }

    fn pid(&self) -> Option<libc::pid_t> {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill takes a pid and a signal; the daemon may have exited already (ESRCH).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// Runs client.py against `socket`; answers its handshakes with `on_line`; returns its SHAPE lines.
fn run_client(
    socket: &Path,
    mode: &str,
    mut on_line: impl FnMut(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app_qmp/client.py");
    let mut child = Command::new("timeout")
        .args(["120", "python3"])
        .arg(&script)
        .arg(socket)
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is not installed: this test needs it");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut shapes = Vec::new();
    let mut done = false;
    for line in stdout.lines() {
        let line = line.expect("reading the client's output");
        if let Some(rest) = line.strip_prefix("SHAPE ") {
            // "SHAPE <name> <json>": the name may contain spaces, the JSON starts at the first brace
            // or bracket or quote after it.
            let at = rest
                .find([' '].as_slice())
                .map(|_| {
                    rest.char_indices()
                        .find(|&(i, c)| matches!(c, '{' | '[' | '"') && rest[..i].ends_with(' '))
                        .map_or(rest.len(), |(i, _)| i)
                })
                .unwrap_or(rest.len());
            shapes.push((rest[..at].trim().to_owned(), rest[at..].to_owned()));
        } else if line == "done" {
            done = true;
        } else if let Some(answer) = on_line(&line) {
            writeln!(stdin, "{answer}").expect("answering the client");
        } else {
            panic!("unexpected line from the client: {line}");
        }
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success() && done,
        "client.py {mode} failed ({status}):\n{stderr}"
    );
    shapes
}

#[test]
fn qemu_qmp_client_on_aioctx_and_qemu_storage_daemon_sees_the_same_shapes() {
    let dir = tempfile::tempdir().unwrap();

    let qsd = StorageDaemon::start(dir.path());
    let qsd_shapes = run_client(&qsd.socket, "qsd", |line| panic!("qsd mode said {line}"));

    let monitor = AioctxMonitor::start(dir.path());
    let mut unblock = None;
    let aioctx_shapes = run_client(&monitor.socket, "aioctx", |line| match line {
        "block?" => {
            unblock = Some(monitor.block_main_thread());
            Some("blocked".into())
        }
        "oob-answered" => {
            unblock.take().expect("blocked first").send(()).unwrap();
            Some("unblocked".into())
        }
        _ => None,
    });
    let (stopped, io1_max_ns, io1_max_batch) = monitor.join();
    assert_eq!(stopped, Stopped::Quit, "quit stops the main loop");
    assert_eq!(io1_max_ns, 0, "qom-set reached the running IOThread");
    assert_eq!(io1_max_batch, 16, "qom-set reached the running IOThread");

    assert!(qsd_shapes.len() >= 20, "{qsd_shapes:?}");
    assert_eq!(
        qsd_shapes.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        aioctx_shapes.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, qsd), (_, ours)) in qsd_shapes.iter().zip(&aioctx_shapes) {
        assert_eq!(
            ours, qsd,
            "{name}: aioctx's reply has another shape than QEMU's"
        );
    }
}

/// A raw QMP connection: one line per reply.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).expect("connect to the monitor");
        stream.set_read_timeout(Some(REPLY_BOUND)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut raw = Raw { stream, reader };
        let greeting = raw.read();
        assert!(
            greeting["QMP"]["capabilities"] == json!(["oob"]),
            "{greeting}"
        );
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .expect("sending to the monitor");
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("no reply within the bound");
        assert!(line.ends_with("\r\n"), "one object per CRLF line: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn call(&mut self, request: &[u8]) -> Value {
        self.send(request);
        self.read()
    }
}

/// Bad requests and what QEMU answers; compared with qemu-storage-daemon's replies below.
const BAD_BEFORE_NEGOTIATION: &[&str] = &[
    r#"{"execute":"query-version"}"#,
    r#"{"execute":"no-such-command","id":7}"#,
    r#"{"execute":"qmp_capabilities","arguments":{"enable":["foo"]}}"#,
    r#"{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}"#,
    r#"{"exec-oob":"qmp_capabilities"}"#,
];

const BAD_AFTER_NEGOTIATION: &[&str] = &[
    "[1,2]",
    "42\n",
    r#""str""#,
    r#"{"execute":}"#,
    r#"{"execute" "x"}"#,
    "}",
    r#"{"a":tru}"#,
    "\u{1}",
    r#"{"execute":5}"#,
    r#"{"foo":1}"#,
    "{}",
    r#"{"execute":"query-version","foo":1}"#,
    r#"{"execute":"query-version","exec-oob":"query-version"}"#,
    r#"{"execute":"query-version","arguments":[]}"#,
    r#"{"execute":"query-version","arguments":null}"#,
    r#"{"exec-oob":"query-version","id":"o"}"#,
    r#"{"exec-oob":"migrate-pause"}"#,
    r#"{"execute":"nope","id":{"a":[1,"x",null]}}"#,
    r#"{"execute":"qom-get","arguments":{"path":"/objects/io0"}}"#,
    r#"{"execute":"qom-get","arguments":{"path":true,"property":"x"}}"#,
    r#"{"execute":"qom-set","arguments":{"path":"/objects/io0","property":"poll-max-ns","value":"1"}}"#,
    r#"{"execute":"qom-set","arguments":{"path":"/objects/io0","property":"poll-grow","value":-3}}"#,
    r#"{"execute":"qom-set","arguments":{"path":"/objects/io0","property":"poll-shrink","value":1e3}}"#,
    r#"{"execute":"qom-set","arguments":{"path":"/objects/io0","property":"aio-max-batch","value":9223372036854775808}}"#,
    r#"{"execute":"qom-set","arguments":{"path":"/objects/io0","property":"nope","value":1}}"#,
    r#"{"execute":"qom-set","arguments":{"path":"/objects/io0","property":"type","value":"x"}}"#,
    r#"{"execute":"qom-list","arguments":{"path":"/nope"}}"#,
    r#"{"execute":"qmp_capabilities","id":"again"}"#,
    r#"{"execute":"quit","arguments":{"now":true}}"#,
];

/// The replies of one server to the bad requests, then a good one (it serves on).
fn bad_input_replies(socket: &Path) -> Vec<Value> {
    let mut raw = Raw::connect(socket);
    let mut replies = Vec::new();
    for request in BAD_BEFORE_NEGOTIATION {
        replies.push(raw.call(request.as_bytes()));
    }
    let ok = raw.call(br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#);
    assert_eq!(ok, json!({"return": {}}));
    for request in BAD_AFTER_NEGOTIATION {
        replies.push(raw.call(request.as_bytes()));
    }
    // Two requests back to back, no newline: two replies, ids echoed.
    raw.send(br#"{"execute":"query-version","id":1}{"execute":"query-version","id":2}"#);
    for id in [1, 2] {
        let reply = raw.read();
        assert_eq!(reply["id"], json!(id), "{reply}");
        assert!(reply["return"]["qemu"]["major"].is_u64(), "{reply}");
    }
    replies
}

/// JSON parse errors are QEMU's class and prefix with serde_json's words after it.
fn normalized(reply: &Value) -> Value {
    let mut reply = reply.clone();
    if let Some(desc) = reply["error"]["desc"].as_str() {
        if desc.starts_with("JSON parse error, ") {
            reply["error"]["desc"] = json!("JSON parse error, ...");
        }
    }
    reply
}

#[test]
fn bad_input_gets_the_replies_qemu_storage_daemon_gives_and_the_monitor_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let qsd = StorageDaemon::start(dir.path());
    let expected = bad_input_replies(&qsd.socket);
    let monitor = AioctxMonitor::start(dir.path());
    let got = bad_input_replies(&monitor.socket);
    let requests = BAD_BEFORE_NEGOTIATION
        .iter()
        .chain(BAD_AFTER_NEGOTIATION)
        .collect::<Vec<_>>();
    assert_eq!(got.len(), requests.len());
    for ((request, ours), qemu) in requests.iter().zip(&got).zip(&expected) {
        assert!(ours["error"]["class"].is_string(), "{request}: {ours}");
        assert_eq!(normalized(ours), normalized(qemu), "{request}");
    }
    quit(&monitor.socket);
    assert_eq!(monitor.join().0, Stopped::Quit);
}

fn quit(socket: &Path) {
    let mut raw = Raw::connect(socket);
    raw.call(br#"{"execute":"qmp_capabilities"}"#);
    assert_eq!(raw.call(br#"{"execute":"quit"}"#), json!({"return": {}}));
}

#[test]
fn huge_and_deep_input_get_one_error_each_with_a_bounded_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let monitor = AioctxMonitor::start(dir.path());
    let mut raw = Raw::connect(&monitor.socket);
    raw.call(br#"{"execute":"qmp_capabilities"}"#);

    // 16 MiB of one string, 16 times the monitor's bound: one error, memory stays bounded.
    let writer = {
        let mut stream = raw.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            stream
                .write_all(br#"{"execute":"query-version","id":""#)
                .unwrap();
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..16 {
                stream.write_all(&chunk).unwrap();
            }
            stream
                .write_all(br#""}{"execute":"query-version","id":"after"}"#)
                .unwrap();
        })
    };
    assert_eq!(
        raw.read(),
        json!({"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}})
    );
    let after = raw.read();
    assert_eq!(after["id"], json!("after"), "{after}");
    writer.join().unwrap();

    // 100 000 levels of nesting: one error (no stack overflow), then the monitor serves on.
    let mut deep = vec![b'['; 100_000];
    deep.extend(vec![b']'; 100_000]);
    let reply = raw.call(&deep);
    assert_eq!(reply["error"]["class"], json!("GenericError"), "{reply}");
    let ok = raw.call(br#"{"execute":"query-version","id":"still"}"#);
    assert_eq!(ok["id"], json!("still"));

    quit(&monitor.socket);
    assert_eq!(monitor.join().0, Stopped::Quit);
}

#[test]
fn a_client_that_leaves_mid_command_costs_the_others_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let monitor = AioctxMonitor::start(dir.path());
    let mut stays = Raw::connect(&monitor.socket);
    stays.call(br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#);

    // With the main thread blocked, one client queues commands and leaves before any reply; the
    // other queues one too.
    let mut leaves = Raw::connect(&monitor.socket);
    leaves.call(br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#);
    let unblock = monitor.block_main_thread();
    {
        leaves.send(
            br#"{"execute":"query-version","id":1}{"execute":"query-block-exports","id":2}{"exec-oob":"query-iothreads","id":3}"#,
        );
        // The out-of-band reply comes while the main thread is blocked; then the client leaves.
        let oob = leaves.read();
        assert_eq!(oob["id"], json!(3), "{oob}");
        leaves.stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    stays.send(br#"{"execute":"query-version","id":"mine"}"#);
    unblock.send(()).unwrap();
    let reply = stays.read();
    assert_eq!(reply["id"], json!("mine"), "{reply}");
    // New clients are served too.
    let mut next = Raw::connect(&monitor.socket);
    next.call(br#"{"execute":"qmp_capabilities"}"#);
    let exports = next.call(br#"{"execute":"query-block-exports"}"#);
    assert_eq!(exports["return"][0]["id"], json!("exp0"), "{exports}");
    drop(next);

    quit(&monitor.socket);
    assert_eq!(monitor.join().0, Stopped::Quit);
}

#[test]
fn nbd_server_with_a_monitor_serves_on_the_main_loop_and_quits_gracefully() {
    use examples::nbd::{Config, Listen, Server};
    let dir = tempfile::tempdir().unwrap();
    let nbd_socket = dir.path().join("nbd.sock");
    let qmp_socket = dir.path().join("qmp.sock");
    let (ready_tx, ready_rx) = mpsc::channel();
    // What nbd-server's main does with --iothread io0 --iothread io1,poll-max-ns=0 --monitor.
    let main = std::thread::spawn({
        let (nbd_socket, qmp_socket) = (nbd_socket.clone(), qmp_socket.clone());
        move || {
            let ml = MainLoop::builder()
                .context(glib::MainContext::new())
                .handle_signals(false)
                .build()?;
            let server = Server::bind(Config {
                listen: Listen::Unix(nbd_socket),
                size: 1 << 20,
                named_iothreads: vec!["io0".parse().unwrap(), "io1,poll-max-ns=0".parse().unwrap()],
                ..Config::default()
            })?;
            let monitor = server.monitor(&ml, &qmp_socket)?;
            ready_tx.send(()).unwrap();
            let served = server.serve_on(&ml);
            monitor.shutdown();
            served
        }
    });
    ready_rx.recv().expect("nbd-server failed to start");

    let mut raw = Raw::connect(&qmp_socket);
    assert_eq!(
        raw.call(br#"{"execute":"qmp_capabilities"}"#),
        json!({"return": {}})
    );
    let objects = raw.call(br#"{"execute":"qom-list","arguments":{"path":"/objects"}}"#);
    for id in ["io0", "io1"] {
        assert!(
            objects["return"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": id, "type": "child<iothread>"})),
            "{objects}"
        );
    }
    let io1 = raw.call(
        br#"{"execute":"qom-get","arguments":{"path":"/objects/io1","property":"poll-max-ns"}}"#,
    );
    assert_eq!(io1, json!({"return": 0}));
    let exports = raw.call(br#"{"execute":"query-block-exports"}"#);
    assert_eq!(
        exports,
        json!({"return": [{"id": "disk", "type": "nbd", "node-name": "disk", "shutting-down": false}]})
    );

    // The NBD side serves while the monitor is up (its accept loop on the same main loop).
    let uri = format!("nbd+unix:///disk?socket={}", nbd_socket.display());
    let out = tests::tools::run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xa5 0 64k",
            "-c",
            "read -P 0xa5 0 64k",
            &uri,
        ],
        60,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("fail"),
        "qemu-io: {text}"
    );

    // quit: the reply, the SHUTDOWN event, then the server stops gracefully and closes the monitor.
    assert_eq!(
        raw.call(br#"{"execute":"quit","id":"bye"}"#),
        json!({"return": {}, "id": "bye"})
    );
    let event = raw.read();
    assert_eq!(event["event"], json!("SHUTDOWN"), "{event}");
    let mut rest = String::new();
    assert_eq!(
        raw.reader.read_line(&mut rest).unwrap(),
        0,
        "closed after quit: {rest:?}"
    );
    main.join()
        .expect("nbd-server thread panicked")
        .expect("nbd-server's serve_on returned an error");
    assert!(
        !nbd_socket.exists() && !qmp_socket.exists(),
        "both sockets removed"
    );
}

#[test]
fn a_client_that_never_reads_stops_being_read_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let monitor = AioctxMonitor::start(dir.path());
    let mut greedy = Raw::connect(&monitor.socket);
    greedy.call(br#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#);

    // 2 MiB of requests, sent without reading a reply.
    let mut requests = Vec::new();
    let mut n = 0u64;
    while requests.len() < 2 << 20 {
        requests.extend_from_slice(format!(r#"{{"execute":"query-version","id":{n}}}"#).as_bytes());
        n += 1;
    }
    greedy.stream.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < requests.len() {
        match greedy.stream.write(&requests[sent..]) {
            Ok(written) => sent += written,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Writable again within a second while the monitor reads; a monitor that stopped
                // reading leaves the socket full.
                let mut pfd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&greedy.stream),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                if unsafe { libc::poll(&mut pfd, 1, 1000) } == 0 {
                    break;
                }
            }
            Err(e) => panic!("writing requests: {e}"),
        }
    }
    assert!(
        sent < requests.len(),
        "the monitor read all 2 MiB of requests with no reply read: its output is unbounded"
    );

    // Another client is served meanwhile.
    let mut other = Raw::connect(&monitor.socket);
    other.call(br#"{"execute":"qmp_capabilities"}"#);
    let reply = other.call(br#"{"execute":"query-version","id":"other"}"#);
    assert_eq!(reply["id"], json!("other"), "{reply}");

    // The greedy client now reads: every reply comes, in order, while the rest is sent.
    greedy.stream.set_nonblocking(false).unwrap();
    let writer = {
        let mut stream = greedy.stream.try_clone().unwrap();
        let rest = requests[sent..].to_vec();
        std::thread::spawn(move || stream.write_all(&rest).unwrap())
    };
    for id in 0..n {
        let reply = greedy.read();
        assert_eq!(reply["id"], json!(id), "{reply}");
    }
    writer.join().unwrap();
    drop((greedy, other));

    quit(&monitor.socket);
    assert_eq!(monitor.join().0, Stopped::Quit);
}

#[test]
fn vhost_user_blk_daemon_with_a_monitor_quits_gracefully() {
    use examples::vhost_user_blk::{Daemon, Options};
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let vhost_socket = dir.path().join("vhost.sock");
    let qmp_socket = dir.path().join("qmp.sock");
    let (ready_tx, ready_rx) = mpsc::channel();
    // What vhost-user-blk's main does with --iothread io0,poll-max-ns=0 --monitor.
    let main = std::thread::spawn({
        let (vhost_socket, qmp_socket) = (vhost_socket.clone(), qmp_socket.clone());
        move || {
            let ml = MainLoop::builder()
                .context(glib::MainContext::new())
                .handle_signals(false)
                .build()?;
            let daemon = Daemon::bind(&Options {
                named_iothreads: vec!["io0,poll-max-ns=0".parse().unwrap()],
                ..Options::new(image, vhost_socket)
            })?;
            let (quit, quitted) = futures::channel::oneshot::channel::<()>();
            let quit = std::sync::Mutex::new(Some(quit));
            let monitor = daemon.monitor(&ml, &qmp_socket, move || {
                if let Some(quit) = quit.lock().unwrap().take() {
                    let _ = quit.send(());
                }
            })?;
            ready_tx.send(()).unwrap();
            let served = ml.block_on(daemon.serve_until(async {
                let _ = quitted.await;
            }));
            monitor.shutdown();
            served?;
            daemon.shutdown()
        }
    });
    ready_rx.recv().expect("the daemon failed to start");

    let mut raw = Raw::connect(&qmp_socket);
    raw.call(br#"{"execute":"qmp_capabilities"}"#);
    let objects = raw.call(br#"{"execute":"qom-list","arguments":{"path":"/objects"}}"#);
    assert!(
        objects["return"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "io0", "type": "child<iothread>"})),
        "{objects}"
    );
    let io0 = raw.call(
        br#"{"execute":"qom-get","arguments":{"path":"/objects/io0","property":"poll-max-ns"}}"#,
    );
    assert_eq!(io0, json!({"return": 0}));
    let exports = raw.call(br#"{"execute":"query-block-exports"}"#);
    assert_eq!(
        exports,
        json!({"return": [{"id": "vhost-user-blk0", "type": "vhost-user-blk", "node-name": "disk.raw", "shutting-down": false}]})
    );
    assert_eq!(raw.call(br#"{"execute":"quit"}"#), json!({"return": {}}));
    assert_eq!(raw.read()["event"], json!("SHUTDOWN"));
    main.join()
        .expect("daemon thread panicked")
        .expect("the daemon failed");
    assert!(
        !vhost_socket.exists() && !qmp_socket.exists(),
        "both sockets removed"
    );
}
