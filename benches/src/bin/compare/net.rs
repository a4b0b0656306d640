//! Socket scenarios: fd-monitor scaling with idle registered sockets, and TCP echo servers.
//!
//! The TCP client is one plain thread driving non-blocking std sockets with `ppoll(2)`, the same for
//! every server, so only the server side differs. Each server runs its runtime's idiomatic code:
//! readiness with borrowed buffers (aioctx, tokio, smol, glommio) or completions with owned buffers
//! (compio, monoio). Besides throughput, every row reports the CPU time the server side spent per
//! request: the whole process's CPU minus the client thread's, over the measured window.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::{UnixDatagram as StdUnixDatagram, UnixStream as StdUnixStream};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cpu;
use crate::harness::{
    aioctx_context, ns_per, per_second, tokio_current_thread, Config, Metric, Scenario, Side, Table,
};
use crate::runtimes::{Compio, Executor, Glommio, Monoio, Smol};

pub const IDLE_COUNTS: [usize; 3] = [10, 1_000, 10_000];

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "idle_fds",
        table: Table::Peers,
        metrics: &[
            Metric::lower("round trip, 10 idle fds", "us"),
            Metric::lower("round trip, 1000 idle fds", "us"),
            Metric::lower("round trip, 10000 idle fds", "us"),
            Metric::lower("CPU per round trip, 10 idle fds", "us"),
            Metric::lower("CPU per round trip, 1000 idle fds", "us"),
            Metric::lower("CPU per round trip, 10000 idle fds", "us"),
        ],
        run: idle_fds,
    },
    Scenario {
        name: "tcp_echo",
        table: Table::Peers,
        metrics: &[
            Metric::higher("64 conns x 64 B", "req/s"),
            Metric::lower("server CPU per request, 64 conns", "us"),
        ],
        run: |side, config| tcp_echo(side, config, 64, None),
    },
    Scenario {
        name: "tcp_echo_1000",
        table: Table::Peers,
        metrics: &[
            Metric::higher("1000 conns x 64 B", "req/s"),
            Metric::lower("server CPU per request, 1000 conns", "us"),
        ],
        run: |side, config| tcp_echo(side, config, 1_000, None),
    },
    Scenario {
        name: "tcp_echo_paced",
        table: Table::Peers,
        metrics: &[
            Metric::higher("64 conns, 20k req/s offered", "req/s"),
            Metric::lower("server CPU per request, paced", "us"),
        ],
        run: |side, config| tcp_echo(side, config, 64, Some(PACED_RATE)),
    },
];

/// The offered load of `tcp_echo_paced`: well under what any server here sustains, so every
/// server does the same work and only its CPU per request differs.
const PACED_RATE: f64 = 20_000.0;

/// Spawns (with `$spawn`) a task per idle socket that waits for it to become readable (the future
/// `$wait_idle` makes of it) or for the returned sender to drop: `(stop, tasks)`.
macro_rules! idle_waiters {
    ($spawn:path, $wait_idle:expr, $idle:ident) => {{
        let (stop, stopped) = futures::channel::oneshot::channel::<()>();
        let stopped = futures::FutureExt::shared(stopped);
        let mut waiting = Vec::with_capacity($idle.len());
        for socket in $idle {
            let idle = $wait_idle(socket)?;
            let stopped = stopped.clone();
            waiting.push($spawn(async move {
                futures::future::select(std::pin::pin!(idle), stopped).await;
            }));
        }
        (stop, waiting)
    }};
}

/// Ends every idle task, so that no runtime keeps (or leaks) the sockets after the run.
async fn end_idle_waiters<T: std::future::Future>(
    stop: futures::channel::oneshot::Sender<()>,
    waiting: Vec<T>,
) {
    drop(stop);
    for task in waiting {
        let _ = task.await;
    }
}

/// One body for the runtimes with futures-style borrowed-buffer streams: `$wrap` turns a std
/// `UnixStream` into the runtime's, `$spawn` spawns a task, `$wait_idle` turns an idle socket into a
/// future that waits for it to become readable. Tasks wait on every idle socket while `ping` and
/// `pong` bounce a byte. Returns the ns per round trip and the CPU per round trip.
macro_rules! idle_round_trips {
    ($wrap:expr, $spawn:path, $wait_idle:expr, $idle:ident, $ping:ident, $pong:ident, $trips:ident) => {
        async move {
            let (stop, waiting) = idle_waiters!($spawn, $wait_idle, $idle);
            let mut pong = $wrap($pong)?;
            let _echo = $spawn(async move {
                let mut byte = [0u8; 1];
                while pong.read(&mut byte).await? == 1 {
                    pong.write_all(&byte).await?;
                }
                io::Result::Ok(())
            });
            let mut ping = $wrap($ping)?;
            let mut byte = [0u8; 1];
            // Warm-up trips: the idle tasks run (and register their sockets) before the clock starts.
            for _ in 0..100 {
                ping.write_all(&byte).await?;
                ping.read_exact(&mut byte).await?;
            }
            let cpu = cpu::process()?;
            let start = Instant::now();
            for _ in 0..$trips {
                ping.write_all(&byte).await?;
                ping.read_exact(&mut byte).await?;
            }
            let (elapsed, cpu) = (start.elapsed(), cpu::process()? - cpu);
            end_idle_waiters(stop, waiting).await;
            io::Result::Ok((ns_per(elapsed, $trips) / 1e3, cpu::us_per(cpu, $trips)))
        }
    };
}

/// The same for the runtimes with owned-buffer (completion) streams, compio and monoio:
/// `$read(stream, buf)` and `$write(stream, buf)` return the byte count and the buffer back.
macro_rules! idle_round_trips_owned {
    ($wrap:expr, $spawn:path, $wait_idle:expr, $read:expr, $write:expr,
     $idle:ident, $ping:ident, $pong:ident, $trips:ident) => {
        async move {
            let (stop, waiting) = idle_waiters!($spawn, $wait_idle, $idle);
            let mut pong = $wrap($pong)?;
            let _echo = $spawn(async move {
                let mut byte = Vec::with_capacity(1);
                loop {
                    let (n, back) = $read(&mut pong, byte).await;
                    if n? != 1 {
                        return io::Result::Ok(());
                    }
                    let (n, mut back) = $write(&mut pong, back).await;
                    n?;
                    back.clear();
                    byte = back;
                }
            });
            let mut ping = $wrap($ping)?;
            let mut byte = vec![0u8];
            let trip = async |ping: &mut _, byte: Vec<u8>| -> io::Result<Vec<u8>> {
                let (n, mut back) = $write(ping, byte).await;
                n?;
                back.clear();
                let (n, back) = $read(ping, back).await;
                match n? {
                    1 => Ok(back),
                    _ => Err(io::Error::other("the echo task closed its socket")),
                }
            };
            for _ in 0..100 {
                byte = trip(&mut ping, byte).await?;
            }
            let cpu = cpu::process()?;
            let start = Instant::now();
            for _ in 0..$trips {
                byte = trip(&mut ping, byte).await?;
            }
            let (elapsed, cpu) = (start.elapsed(), cpu::process()? - cpu);
            end_idle_waiters(stop, waiting).await;
            io::Result::Ok((ns_per(elapsed, $trips) / 1e3, cpu::us_per(cpu, $trips)))
        }
    };
}

fn idle_fds(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    let trips = config.pick(20_000, 300);
    let mut times = Vec::new();
    let mut cpus = Vec::new();
    for idle in IDLE_COUNTS {
        let (time, cpu) = idle_fds_round_trip(side, idle, trips)?;
        times.push(time);
        cpus.push(cpu);
    }
    times.extend(cpus);
    Ok(times)
}

/// Sockets that never become readable: unbound datagram sockets (one descriptor each).
fn idle_sockets(idle: usize) -> io::Result<Vec<StdUnixDatagram>> {
    (0..idle)
        .map(|_| {
            let socket = StdUnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect()
}

/// (us per round trip, CPU us per round trip) over one socket pair while tasks wait on `idle`
/// registered sockets that never become readable.
fn idle_fds_round_trip(side: Side, idle: usize, trips: u64) -> io::Result<(f64, f64)> {
    let idle_sockets = idle_sockets(idle)?;
    let (ping, pong) = StdUnixStream::pair()?;
    ping.set_nonblocking(true)?;
    pong.set_nonblocking(true)?;
    match side {
        Side::Aioctx => aioctx_context()?.block_on(idle_round_trips!(
            aioctx::net::UnixStream::from_std,
            aioctx::spawn_local,
            |s| aioctx::io::Async::new(s).map(|s| async move { s.readable().await }),
            idle_sockets,
            ping,
            pong,
            trips
        )),
        Side::Tokio => tokio_current_thread()?.block_on(idle_round_trips!(
            tokio::net::UnixStream::from_std,
            tokio::spawn,
            |s| tokio::net::UnixDatagram::from_std(s).map(|s| async move { s.readable().await }),
            idle_sockets,
            ping,
            pong,
            trips
        )),
        Side::Smol => Smol::block_on(idle_round_trips!(
            async_io::Async::new,
            Smol::spawn_local,
            |s| async_io::Async::new(s).map(|s| async move { s.readable().await }),
            idle_sockets,
            ping,
            pong,
            trips
        ))?,
        Side::Glommio => Glommio::block_on_spinning(
            None,
            idle_round_trips!(
                |s: StdUnixStream| glommio_socket(s.into()),
                glommio::spawn_local,
                |s: StdUnixDatagram| glommio_socket(s.into()).map(|mut s| async move {
                    let mut byte = [0u8; 1];
                    s.read(&mut byte).await
                }),
                idle_sockets,
                ping,
                pong,
                trips
            ),
        )?,
        Side::Compio => Compio::runtime()?.block_on(idle_round_trips_owned!(
            compio::net::UnixStream::from_std,
            compio::runtime::spawn,
            |s: StdUnixDatagram| compio::runtime::fd::PollFd::new(s)
                .map(|s| async move { s.read_ready().await }),
            async |s: &mut compio::net::UnixStream, b: Vec<u8>| {
                let compio::BufResult(n, b) = compio::io::AsyncRead::read(s, b).await;
                (n, b)
            },
            async |s: &mut compio::net::UnixStream, b: Vec<u8>| {
                let compio::BufResult(n, b) = compio::io::AsyncWriteExt::write_all(s, b).await;
                (n, b)
            },
            idle_sockets,
            ping,
            pong,
            trips
        )),
        Side::Monoio => Monoio::runtime()?.block_on(async move {
            let open_before = open_descriptors()?.saturating_sub(idle + 2);
            let result = idle_round_trips_owned!(
                monoio::net::UnixStream::from_std,
                monoio::spawn,
                |s| monoio::net::UnixDatagram::from_std(s)
                    .map(|s| async move { s.readable(false).await }),
                async |s: &mut monoio::net::UnixStream, b: Vec<u8>| {
                    monoio::io::AsyncReadRent::read(s, b).await
                },
                async |s: &mut monoio::net::UnixStream, b: Vec<u8>| {
                    monoio::io::AsyncWriteRentExt::write_all(s, b).await
                },
                idle_sockets,
                ping,
                pong,
                trips
            )
            .await;
            // monoio closes descriptors with io_uring operations that its next park submits: let
            // it park once, or the dropped sockets would stay open after the runtime is gone.
            // monoio closes descriptors with io_uring operations, a few hundred per park of its
            // loop (seen here: 10,000 dropped sockets stay open past the runtime's end otherwise):
            // park until they are closed, so the next run has the descriptors it needs.
            for _ in 0..10_000 {
                if open_descriptors()? <= open_before {
                    break;
                }
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            result
        }),
    }
}

/// How many descriptors this process has open.
fn open_descriptors() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// A Unix socket as glommio's `UnixStream`. glommio has no readiness wait and no datagram type
/// made from a descriptor, so an idle datagram socket waits as a stream's pending 1-byte read (a
/// `recv` on the socket, which no datagram ever satisfies).
fn glommio_socket(socket: std::os::fd::OwnedFd) -> io::Result<glommio::net::UnixStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: `into_raw_fd` hands over sole ownership of an open Unix socket descriptor.
    Ok(unsafe { glommio::net::UnixStream::from_raw_fd(socket.into_raw_fd()) })
}

const MESSAGE: usize = 64;

/// The echo server for the runtimes with futures-style streams: `$listener` is the runtime's
/// listener made from `$std_listener`, `$spawn` its spawn function, `$accepted` maps what `accept`
/// returns to the stream. It serves `$conns` connections until each closes.
macro_rules! echo_server {
    ($listener:expr, $spawn:path, $accepted:expr, $conns:ident) => {
        async move {
            let listener = $listener?;
            let mut conns = Vec::with_capacity($conns);
            for _ in 0..$conns {
                let mut stream = $accepted(listener.accept().await?);
                conns.push($spawn(async move {
                    let mut buf = [0u8; MESSAGE];
                    loop {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            return io::Result::Ok(());
                        }
                        stream.write_all(&buf[..n]).await?;
                    }
                }));
            }
            io::Result::Ok(conns)
        }
    };
}

/// The echo server for compio and monoio: `$read`/`$write` as in `idle_round_trips_owned!`.
macro_rules! echo_server_owned {
    ($listener:expr, $spawn:path, $accepted:expr, $read:expr, $write:expr, $conns:ident) => {
        async move {
            let listener = $listener?;
            let mut conns = Vec::with_capacity($conns);
            for _ in 0..$conns {
                let mut stream = $accepted(listener.accept().await?);
                conns.push($spawn(async move {
                    let mut buf = Vec::with_capacity(MESSAGE);
                    loop {
                        let (n, back) = $read(&mut stream, buf).await;
                        if n? == 0 {
                            return io::Result::Ok(());
                        }
                        let (n, mut back) = $write(&mut stream, back).await;
                        n?;
                        back.clear();
                        buf = back;
                    }
                }));
            }
            io::Result::Ok(conns)
        }
    };
}

/// Runs the echo server of `side` on this thread until every connection closed.
fn serve_echo(side: Side, std_listener: StdTcpListener, conns: usize) -> io::Result<()> {
    match side {
        Side::Aioctx => aioctx_context()?.block_on(async move {
            let tasks = echo_server!(
                aioctx::net::TcpListener::from_std(std_listener),
                aioctx::spawn_local,
                |(s, _)| s,
                conns
            )
            .await?;
            for task in tasks {
                task.await.map_err(io::Error::other)??;
            }
            Ok(())
        }),
        Side::Tokio => tokio_current_thread()?.block_on(async move {
            let tasks = echo_server!(
                tokio::net::TcpListener::from_std(std_listener),
                tokio::spawn,
                |(s, _)| s,
                conns
            )
            .await?;
            for task in tasks {
                task.await??;
            }
            Ok(())
        }),
        Side::Smol => Smol::block_on(async move {
            let tasks = echo_server!(
                async_io::Async::new(std_listener),
                Smol::spawn_local,
                |(s, _)| s,
                conns
            )
            .await?;
            for task in tasks {
                task.await?;
            }
            Ok(())
        })?,
        Side::Glommio => Glommio::block_on_spinning(None, async move {
            use std::os::fd::FromRawFd;
            // SAFETY: `into_raw_fd` hands over sole ownership of an open listening socket.
            let listener =
                unsafe { glommio::net::TcpListener::from_raw_fd(std_listener.into_raw_fd()) };
            let tasks =
                echo_server!(io::Result::Ok(listener), glommio::spawn_local, |s| s, conns).await?;
            for task in tasks {
                task.await?;
            }
            Ok(())
        })?,
        Side::Compio => Compio::runtime()?.block_on(async move {
            let tasks = echo_server_owned!(
                compio::net::TcpListener::from_std(std_listener),
                compio::runtime::spawn,
                |(s, _)| s,
                async |s: &mut compio::net::TcpStream, b: Vec<u8>| {
                    let compio::BufResult(n, b) = compio::io::AsyncRead::read(s, b).await;
                    (n, b)
                },
                async |s: &mut compio::net::TcpStream, b: Vec<u8>| {
                    let compio::BufResult(n, b) = compio::io::AsyncWriteExt::write_all(s, b).await;
                    (n, b)
                },
                conns
            )
            .await?;
            for task in tasks {
                task.await
                    .map_err(|e| io::Error::other(format!("{e:?}")))??;
            }
            Ok(())
        }),
        Side::Monoio => Monoio::runtime()?.block_on(async move {
            let tasks = echo_server_owned!(
                monoio::net::TcpListener::from_std(std_listener),
                monoio::spawn,
                |(s, _)| s,
                async |s: &mut monoio::net::TcpStream, b: Vec<u8>| monoio::io::AsyncReadRent::read(
                    s, b
                )
                .await,
                async |s: &mut monoio::net::TcpStream, b: Vec<u8>| {
                    monoio::io::AsyncWriteRentExt::write_all(s, b).await
                },
                conns
            )
            .await?;
            for task in tasks {
                task.await?;
            }
            Ok(())
        }),
    }
}

/// Echo throughput and the server side's CPU per request with `conns` connections, each with one
/// 64-byte request in flight; `paced` offers that many requests per second in all instead of as
/// many as the client can send.
fn tcp_echo(side: Side, config: &Config, conns: usize, paced: Option<f64>) -> io::Result<Vec<f64>> {
    // The client may connect before the server runs: the listening socket queues it.
    let std_listener = StdTcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let server = std::thread::Builder::new()
        .name(format!("echo-{}", side.name()))
        .spawn(move || serve_echo(side, std_listener, conns))?;
    let window = config.window();
    let result = echo_client(addr, window, conns, paced);
    let served = server
        .join()
        .map_err(|_| io::Error::other("echo server panicked"))?;
    let run = result?;
    served?;
    Ok(vec![
        per_second(run.completed, run.elapsed),
        cpu::us_per(run.server_cpu, run.completed),
    ])
}

/// One connection of the client: a request is in flight until all its bytes came back.
struct Conn {
    stream: StdTcpStream,
    echoed: usize,
    in_flight: bool,
}

/// What the client measured over its window.
struct EchoRun {
    completed: u64,
    elapsed: Duration,
    /// CPU time of the rest of the process (the server, its helper threads and the kernel's
    /// io_uring workers) over the window.
    server_cpu: Duration,
}

/// Drives `conns` connections for `window`, each with at most one 64-byte request in flight, and
/// verifies every echo. Unpaced, every connection sends again as soon as its echo is back; paced,
/// requests are due at `rate` per second in all and go out on connections that are free.
fn echo_client(
    addr: SocketAddr,
    window: Duration,
    conns: usize,
    rate: Option<f64>,
) -> io::Result<EchoRun> {
    let payload: [u8; MESSAGE] = std::array::from_fn(|i| i as u8);
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        let stream = StdTcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        sockets.push(Conn {
            stream,
            echoed: 0,
            in_flight: false,
        });
    }
    let mut pollfds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // One verified trip on every connection before the clock starts: the server has built its
    // runtime (glommio's takes milliseconds) and accepted every connection.
    for conn in &mut sockets {
        conn.stream.write_all(&payload)?;
    }
    for conn in &mut sockets {
        conn.stream.set_nonblocking(false)?;
        let mut echo = [0u8; MESSAGE];
        conn.stream.read_exact(&mut echo)?;
        conn.stream.set_nonblocking(true)?;
        if echo != payload {
            return Err(io::Error::other("echo server returned wrong bytes"));
        }
    }
    let mut free: Vec<usize> = (0..conns).rev().collect();
    let meter = cpu::OthersMeter::start()?;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut completed = 0u64;
    let mut buf = [0u8; MESSAGE];
    loop {
        let now = start.elapsed();
        if now >= window {
            break;
        }
        // Send what is due: everything unpaced, the schedule's share paced.
        let due = rate.map_or(u64::MAX, |rate| (now.as_secs_f64() * rate) as u64 + 1);
        while sent < due {
            let Some(i) = free.pop() else { break };
            // 64 bytes always fit an empty socket buffer: the previous echo was fully read.
            sockets[i].stream.write_all(&payload)?;
            sockets[i].in_flight = true;
            sent += 1;
        }
        let wait = match rate {
            Some(rate) if !free.is_empty() => {
                Duration::from_secs_f64(sent as f64 / rate).saturating_sub(now)
            }
            _ => window - now,
        };
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pollfds` is a live, correctly sized array of pollfd and `timeout` a valid
        // timespec for the whole call; a null signal mask keeps the thread's mask.
        let n = unsafe {
            libc::ppoll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                &timeout,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for (i, (pfd, conn)) in pollfds.iter_mut().zip(&mut sockets).enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            pfd.revents = 0;
            let got = match conn.stream.read(&mut buf[..MESSAGE - conn.echoed]) {
                Ok(0) => return Err(io::Error::other("echo server closed a connection")),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            if !conn.in_flight || buf[..got] != payload[conn.echoed..conn.echoed + got] {
                return Err(io::Error::other("echo server returned wrong bytes"));
            }
            conn.echoed += got;
            if conn.echoed == MESSAGE {
                conn.echoed = 0;
                conn.in_flight = false;
                completed += 1;
                free.push(i);
            }
        }
    }
    let elapsed = start.elapsed();
    let server_cpu = meter.others()?;
    // Collect the echo of every request still in flight, so the server sees a clean EOF.
    for conn in sockets.iter_mut().filter(|c| c.in_flight) {
        conn.stream.set_nonblocking(false)?;
        let mut rest = [0u8; MESSAGE];
        conn.stream.read_exact(&mut rest[conn.echoed..])?;
    }
    Ok(EchoRun {
        completed,
        elapsed,
        server_cpu,
    })
}
