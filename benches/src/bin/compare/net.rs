//! Socket scenarios: fd-monitor scaling with idle registered sockets, and a TCP echo server.
//!
//! The TCP client is one plain thread driving 64 non-blocking std sockets with `poll(2)`, the
//! same for both servers, so only the server side differs.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram as StdUnixDatagram, UnixStream as StdUnixStream};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::{
    aioctx_context, ns_per, per_second, tokio_current_thread, Config, Metric, Scenario, Side,
    VS_TOKIO,
};

pub const IDLE_COUNTS: [usize; 3] = [10, 1_000, 10_000];

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "idle_fds",
        sides: VS_TOKIO,
        metrics: &[
            Metric::lower("round trip, 10 idle fds", "us"),
            Metric::lower("round trip, 1000 idle fds", "us"),
            Metric::lower("round trip, 10000 idle fds", "us"),
        ],
        run: idle_fds,
    },
    Scenario {
        name: "tcp_echo",
        sides: VS_TOKIO,
        metrics: &[Metric::higher("64 conns x 64 B", "req/s")],
        run: tcp_echo,
    },
];

/// One body for both runtimes, so that they run the same code: `$stream` is the runtime's
/// `UnixStream`, `$spawn` its spawn function, `$register` turns an idle std datagram socket into one
/// registered with the runtime. Tasks wait on every idle socket while `ping` and `pong` bounce a byte.
macro_rules! idle_round_trips {
    ($stream:ty, $spawn:path, $register:path, $idle:ident, $ping:ident, $pong:ident, $trips:ident) => {
        async move {
            // The tasks end with the runtime, after the measurement.
            let mut waiting = Vec::with_capacity($idle.len());
            for socket in $idle {
                let socket = $register(socket)?;
                waiting.push($spawn(async move { socket.readable().await }));
            }
            let mut pong = <$stream>::from_std($pong)?;
            let _echo = $spawn(async move {
                let mut byte = [0u8; 1];
                while pong.read(&mut byte).await? == 1 {
                    pong.write_all(&byte).await?;
                }
                io::Result::Ok(())
            });
            let mut ping = <$stream>::from_std($ping)?;
            let mut byte = [0u8; 1];
            // Warm-up trips: the idle tasks run (and register their sockets) before the clock starts.
            for _ in 0..100 {
                ping.write_all(&byte).await?;
                ping.read_exact(&mut byte).await?;
            }
            let start = Instant::now();
            for _ in 0..$trips {
                ping.write_all(&byte).await?;
                ping.read_exact(&mut byte).await?;
            }
            Ok(ns_per(start.elapsed(), $trips))
        }
    };
}

fn idle_fds(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    let trips = config.pick(20_000, 300);
    IDLE_COUNTS
        .iter()
        .map(|&idle| idle_fds_round_trip(side, idle, trips).map(|ns| ns / 1e3))
        .collect()
}

/// ns per round trip over one socket pair while tasks wait on `idle` registered sockets that never
/// become readable.
fn idle_fds_round_trip(side: Side, idle: usize, trips: u64) -> io::Result<f64> {
    // Unbound datagram sockets: one descriptor each, and nothing can ever make them readable.
    let idle_sockets = (0..idle)
        .map(|_| {
            let socket = StdUnixDatagram::unbound()?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let (ping, pong) = StdUnixStream::pair()?;
    ping.set_nonblocking(true)?;
    pong.set_nonblocking(true)?;
    match side {
        Side::Aioctx => aioctx_context()?.block_on(idle_round_trips!(
            aioctx::net::UnixStream,
            aioctx::spawn_local,
            aioctx::io::Async::new,
            idle_sockets,
            ping,
            pong,
            trips
        )),
        Side::Tokio => tokio_current_thread()?.block_on(idle_round_trips!(
            tokio::net::UnixStream,
            tokio::spawn,
            tokio::net::UnixDatagram::from_std,
            idle_sockets,
            ping,
            pong,
            trips
        )),
    }
}

const CONNECTIONS: usize = 64;
const MESSAGE: usize = 64;

/// The echo server, one body for both runtimes: `$listener` is the runtime's `TcpListener`, `$spawn`
/// its spawn function. It serves `CONNECTIONS` connections on `std_listener` until each closes.
macro_rules! echo_server {
    ($listener:ty, $spawn:path, $std_listener:ident) => {
        async move {
            let listener = <$listener>::from_std($std_listener)?;
            let mut conns = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                let (mut stream, _) = listener.accept().await?;
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
            for conn in conns {
                conn.await??;
            }
            io::Result::Ok(())
        }
    };
}

fn tcp_echo(side: Side, config: &Config) -> io::Result<Vec<f64>> {
    // The same listening socket for both servers; the client may connect before the server runs.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let server = std::thread::spawn(move || match side {
        Side::Aioctx => aioctx_context()?.block_on(echo_server!(
            aioctx::net::TcpListener,
            aioctx::spawn_local,
            std_listener
        )),
        Side::Tokio => tokio_current_thread()?.block_on(echo_server!(
            tokio::net::TcpListener,
            tokio::spawn,
            std_listener
        )),
    });
    let requests = echo_client(addr, config.window())?;
    server
        .join()
        .map_err(|_| io::Error::other("echo server panicked"))??;
    Ok(vec![per_second(requests.0, requests.1)])
}

/// One connection of the client: a request is in flight until all its bytes came back.
struct Conn {
    stream: StdTcpStream,
    echoed: usize,
}

/// Drives every connection with one outstanding 64-byte request for `window`, verifying each echo.
/// Returns the completed requests and the time they took.
fn echo_client(addr: SocketAddr, window: Duration) -> io::Result<(u64, Duration)> {
    let payload: [u8; MESSAGE] = std::array::from_fn(|i| i as u8);
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let stream = StdTcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut conn = Conn { stream, echoed: 0 };
        conn.stream.write_all(&payload)?;
        conn.stream.set_nonblocking(true)?;
        conns.push(conn);
    }
    let mut pollfds: Vec<libc::pollfd> = conns
        .iter()
        .map(|c| libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let start = Instant::now();
    let mut completed = 0u64;
    let mut buf = [0u8; MESSAGE];
    while start.elapsed() < window {
        // SAFETY: `pollfds` is a live, correctly sized array of pollfd for the whole call.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for (pfd, conn) in pollfds.iter_mut().zip(&mut conns) {
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
            if buf[..got] != payload[conn.echoed..conn.echoed + got] {
                return Err(io::Error::other("echo server returned wrong bytes"));
            }
            conn.echoed += got;
            if conn.echoed == MESSAGE {
                conn.echoed = 0;
                completed += 1;
                // 64 bytes always fit an empty socket buffer: the previous echo was fully read.
                conn.stream.write_all(&payload)?;
            }
        }
    }
    let elapsed = start.elapsed();
    // Collect the echo of every request still in flight, so the server sees a clean EOF.
    for conn in &mut conns {
        conn.stream.set_nonblocking(false)?;
        let mut rest = [0u8; MESSAGE];
        conn.stream.read_exact(&mut rest[conn.echoed..])?;
    }
    Ok((completed, elapsed))
}
