//! Streams split by reference (`&TcpStream`, `&UnixStream` implement `AsyncRead` and `AsyncWrite`): a
//! reader task and a writer task share one stream with no lock, also with completion-based RECVs on
//! io_uring; and the other everyday stream and listener methods: `peek`, `incoming`, `into_std`,
//! `AsFd`.

use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};

use aioctx::net::{TcpListener, TcpStream, UnixStream};
use tests::per_backend;

const TOTAL: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

/// The byte at `pos` of the stream `seed` sends: position-dependent, so a lost, repeated or reordered
/// chunk shows.
fn byte_at(seed: u8, pos: usize) -> u8 {
    (pos as u32)
        .wrapping_mul(2_654_435_761)
        .to_le_bytes()
        .iter()
        .fold(seed, |a, b| a.wrapping_add(*b))
}

/// Writes TOTAL bytes of pattern `seed` through `stream`, in chunks.
async fn send_pattern<S>(stream: Rc<S>, seed: u8) -> std::io::Result<()>
where
    for<'a> &'a S: futures::AsyncWrite,
{
    let mut chunk = vec![0u8; CHUNK];
    let mut pos = 0;
    while pos < TOTAL {
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = byte_at(seed, pos + i);
        }
        (&*stream).write_all(&chunk).await?;
        pos += CHUNK;
    }
    Ok(())
}

/// Reads TOTAL bytes from `stream` and checks them against pattern `seed`.
async fn check_pattern<S>(stream: Rc<S>, seed: u8) -> std::io::Result<usize>
where
    for<'a> &'a S: futures::AsyncRead,
{
    let mut buf = vec![0u8; 48 << 10]; // not a divisor of the chunk: reads straddle writes
    let mut pos = 0;
    while pos < TOTAL {
        let n = (&*stream).read(&mut buf).await?;
        assert!(n > 0, "end of stream after {pos} of {TOTAL} bytes");
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(
                b,
                byte_at(seed, pos + i),
                "byte {} of stream {seed}",
                pos + i
            );
        }
        pos += n;
    }
    Ok(pos)
}

/// Both ends run a reader and a writer task on the same (shared) stream at once.
async fn both_ways<S: 'static>(a: S, b: S)
where
    for<'a> &'a S: futures::AsyncRead + futures::AsyncWrite,
{
    let (a, b) = (Rc::new(a), Rc::new(b));
    let tasks = vec![
        aioctx::spawn_local(send_pattern(a.clone(), 1)),
        aioctx::spawn_local(send_pattern(b.clone(), 2)),
    ];
    let a_reads = aioctx::spawn_local(check_pattern(a, 2));
    let b_reads = aioctx::spawn_local(check_pattern(b, 1));
    assert_eq!(a_reads.await.unwrap().unwrap(), TOTAL);
    assert_eq!(b_reads.await.unwrap().unwrap(), TOTAL);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

per_backend! {
    fn a_tcp_stream_split_by_reference_moves_64_mib_each_way(backend) {
        tests::context(backend).block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            both_ways(client, server).await;
        });
    }

    fn a_unix_stream_split_by_reference_moves_64_mib_each_way(backend) {
        tests::context(backend).block_on(async {
            let (a, b) = UnixStream::pair().unwrap();
            both_ways(a, b).await;
        });
    }

    fn peek_shows_bytes_that_the_next_read_returns_again(backend) {
        tests::context(backend).block_on(async {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            a.write_all(b"peekaboo").await.unwrap();
            let mut seen = [0u8; 8];
            let n = b.peek(&mut seen).await.unwrap();
            assert!(n > 0);
            assert_eq!(&seen[..n], &b"peekaboo"[..n]);
            let again = b.peek(&mut seen).await.unwrap();
            assert_eq!(again, n, "a second peek sees the same bytes");
            let mut read = [0u8; 8];
            b.read_exact(&mut read).await.unwrap();
            assert_eq!(&read, b"peekaboo");
            drop(a);
            assert_eq!(b.peek(&mut seen).await.unwrap(), 0, "end of stream peeks as 0");
        });
    }

    fn incoming_yields_each_connection(backend) {
        tests::context(backend).block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut clients = Vec::new();
            for _ in 0..3 {
                clients.push(TcpStream::connect(addr).await.unwrap());
            }
            let mut incoming = listener.incoming();
            let mut peers = Vec::new();
            for _ in 0..3 {
                let conn = incoming.next().await.unwrap().unwrap();
                peers.push(conn.peer_addr().unwrap());
            }
            let mut expected: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
            peers.sort();
            expected.sort();
            assert_eq!(peers, expected);
        });
    }

    fn into_std_hands_over_the_socket_or_gives_back_a_stream_holding_data(backend) {
        tests::context(backend).block_on(async {
            let (mut a, b) = UnixStream::pair().unwrap();
            let fd = b.as_raw_fd();
            assert_eq!(b.as_fd().as_raw_fd(), fd);
            a.write_all(b"12345678").await.unwrap();
            let mut first = [0u8; 2];
            (&b).read_exact(&mut first).await.unwrap();
            // On io_uring a RECV took more than two bytes into the stream's buffer: handing the socket
            // over now would lose them, so the stream comes back; elsewhere nothing is buffered.
            let b = match b.into_std() {
                Ok(std_stream) => {
                    assert_ne!(backend, aioctx::Backend::IoUring, "a RECV buffered the rest");
                    assert_eq!(std_stream.as_raw_fd(), fd, "the same socket");
                    UnixStream::from_std(std_stream).unwrap()
                }
                Err(e) => {
                    assert_eq!(backend, aioctx::Backend::IoUring);
                    e.into_inner()
                }
            };
            let mut rest = [0u8; 6];
            (&b).read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"345678", "no byte lost either way");
            let std_stream = b.into_std().expect("nothing buffered any more");
            assert_eq!(std_stream.as_raw_fd(), fd);
        });
    }
}
