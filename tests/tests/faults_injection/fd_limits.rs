//! EMFILE (RLIMIT_NOFILE lowered, in a child process): running out of fds is an error for the call that
//! needed one (accept, connect, open) and nothing else; the listener keeps accepting once fds are freed,
//! a poll monitor that cannot upgrade to epoll stays on poll and keeps serving every fd, and the context
//! serves throughout. (Creating a context without fds is checked in monitor_selection.rs.)

use std::io::{Read, Write};

use aioctx::fs::File;
use aioctx::net::{TcpListener, TcpStream};
use aioctx::{Backend, EventNotifier};
use futures::{AsyncReadExt, AsyncWriteExt};
use tests::{child_expectation, counting_notifier, os_error, per_backend, run_in_child, Guard};

use crate::common::assert_context_serves;
use tests::{FdHoard, TempPath};

async fn echo_once(server: &mut TcpStream, client: &mut std::net::TcpStream, msg: &[u8]) {
    client.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    server.read_exact(&mut got).await.unwrap();
    server.write_all(&got).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    client.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn accept_and_connect_on(backend: Backend) {
    let ctx = tests::context(backend);
    let path = TempPath::new("emfile");
    std::fs::write(&path.0, b"still here").unwrap();
    ctx.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Two clients whose connections complete in the kernel's backlog, then no fd left for us.
        let mut clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut hoard = FdHoard::exhaust(32);

        let err = listener.accept().await.unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EMFILE), "accept: {err}");
        let err = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EMFILE), "connect: {err}");
        let err = File::open(&path.0).await.unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EMFILE), "open: {err}");

        // One fd back: the connection that waited in the backlog is accepted and served.
        hoard.free(1);
        let (mut server, _) = listener.accept().await.unwrap();
        echo_once(&mut server, &mut clients[0], b"first").await;
        // The next accept fails again, and again only that call.
        let err = listener.accept().await.unwrap_err();
        assert_eq!(os_error(&err), Some(libc::EMFILE), "accept: {err}");
        echo_once(&mut server, &mut clients[0], b"still served").await;

        drop(hoard);
        let (mut second, _) = listener.accept().await.unwrap();
        echo_once(&mut second, &mut clients[1], b"second").await;
        let f = File::open(&path.0).await.unwrap();
        let (res, buf) = f.read_at(Vec::with_capacity(16), 0).await;
        res.unwrap();
        assert_eq!(buf, b"still here");
    });
    assert_context_serves(&ctx);
}

per_backend! {
    fn emfile_fails_accept_connect_and_open_only(backend) {
        let name = tests::per_backend_test_name(module_path!(), backend);
        if child_expectation(&name).is_none() {
            // A child: lowering RLIMIT_NOFILE would break every other test in this process.
            return run_in_child(&name, &[]);
        }
        accept_and_connect_on(backend);
    }
}

#[test]
fn poll_monitor_that_cannot_upgrade_keeps_serving() {
    const NAME: &str = "fd_limits::poll_monitor_that_cannot_upgrade_keeps_serving";
    if child_expectation(NAME).is_none() {
        return run_in_child(NAME, &[]);
    }
    let ctx = tests::context(Backend::Poll);
    let guard = Guard::new(&ctx);
    // Enough registered fds to make the poll monitor want epoll (at 64), created while fds are free.
    let notifiers: Vec<EventNotifier> = (0..70).map(|_| EventNotifier::new().unwrap()).collect();
    let mut hoard = FdHoard::exhaust(32);
    let hits = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let regs: Vec<_> = notifiers
        .iter()
        .map(|n| {
            let (n2, h) = (n.clone(), hits.clone());
            ctx.set_event_notifier(
                n,
                move || {
                    n2.test_and_clear().unwrap();
                    h.set(h.get() + 1);
                },
                None,
            )
            .expect("registering needs no fd on poll, even when the upgrade cannot get one")
        })
        .collect();
    assert_eq!(ctx.backend(), Backend::Poll, "no fd for an epoll instance");
    notifiers.iter().for_each(|n| n.set().unwrap());
    guard.poll_until(&ctx, "every fd on the poll monitor", || hits.get() == 70);

    // With fds back, the next registration upgrades, and every fd moves over.
    hoard.free(4);
    let (extra, _extra_reg, extra_hits) = counting_notifier(&ctx);
    assert_eq!(
        ctx.backend(),
        Backend::Epoll,
        "upgraded once an fd was free"
    );
    notifiers.iter().for_each(|n| n.set().unwrap());
    extra.set().unwrap();
    guard.poll_until(&ctx, "every fd after the upgrade", || {
        hits.get() == 140 && extra_hits.get() == 1
    });
    drop(regs);
    drop(notifiers);
    drop(hoard);
    assert_context_serves(&ctx);
}
