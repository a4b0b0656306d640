//! `aioctx::signal`: a signal sent to the process reaches every listener for it, each on the context
//! (and thread) that created it, with no helper thread; deliveries coalesce; bad signal numbers are
//! `InvalidInput`. Each test uses its own signal numbers, since the tests of this binary run in
//! parallel in one process.

use std::time::Duration;

use aioctx::signal::{signal, Signal};
use aioctx::time::timeout;
use aioctx::IoThread;
use tests::per_backend;

/// Raises `signum` on this thread: its handler has run when this returns, so a burst of these is
/// complete before the next line.
fn raise_here(signum: i32) {
    // SAFETY: raise(3) with a signal this test has a handler for.
    let ret = unsafe { libc::raise(signum) };
    assert_eq!(ret, 0, "raise: {}", std::io::Error::last_os_error());
}

fn send_to_process(signum: i32) {
    // SAFETY: kill(2) with our own pid and a signal this test has a handler for.
    let ret = unsafe { libc::kill(libc::getpid(), signum) };
    assert_eq!(ret, 0, "kill: {}", std::io::Error::last_os_error());
}

/// Waits for a delivery, failing after the tests' bound instead of hanging.
async fn recv_bounded(sig: &mut Signal, what: &str) {
    timeout(tests::BOUND, sig.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: no delivery within {:?}", tests::BOUND))
        .expect("a Signal never ends");
}

per_backend! {
    /// Two IoThreads listen for the same signal and one of them for a second one: each delivery
    /// reaches every listener of its number, on the listener's own thread, and no other.
    fn each_listener_sees_its_signal_on_its_own_thread(backend) {
        let (usr, rt) = match backend {
            aioctx::Backend::Poll => (libc::SIGRTMIN(), libc::SIGRTMIN() + 1),
            aioctx::Backend::Epoll => (libc::SIGRTMIN() + 2, libc::SIGRTMIN() + 3),
            _ => (libc::SIGRTMIN() + 4, libc::SIGRTMIN() + 5),
        };
        let spawn = |name: &str| IoThread::builder().name(name).backend(backend).spawn().unwrap();
        let (a, b) = (spawn("sig-a"), spawn("sig-b"));
        let (a_tid, b_tid) = (a.thread_id(), b.thread_id());
        // Both listen for `usr`; only `a` also listens for `rt`. Each reports the thread it ran on and
        // how many deliveries of `rt` it saw after its `usr` one.
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let listen = |io: &IoThread, also_rt: bool| {
            let ready_tx = ready_tx.clone();
            io.remote().spawn_local_with(move || async move {
                let mut first = signal(usr).unwrap();
                let mut second = if also_rt { Some(signal(rt).unwrap()) } else { None };
                ready_tx.send(()).unwrap();
                recv_bounded(&mut first, "usr").await;
                if let Some(second) = &mut second {
                    recv_bounded(second, "rt").await;
                }
                // SAFETY: gettid takes no arguments and cannot fail.
                unsafe { libc::gettid() }
            })
        };
        let on_a = listen(&a, true);
        let on_b = listen(&b, false);
        for _ in 0..2 {
            ready.recv_timeout(tests::BOUND).expect("both listeners registered");
        }
        send_to_process(usr);
        assert_eq!(on_b.join_blocking().unwrap(), b_tid, "b got usr on its own thread");
        send_to_process(rt);
        assert_eq!(on_a.join_blocking().unwrap(), a_tid, "a got usr and rt on its own thread");
    }

    /// Several listeners on one context each see a delivery; deliveries before a recv coalesce.
    fn every_listener_on_one_context_sees_each_delivery_and_bursts_coalesce(backend) {
        let signum = match backend {
            aioctx::Backend::Poll => libc::SIGRTMIN() + 6,
            aioctx::Backend::Epoll => libc::SIGRTMIN() + 7,
            _ => libc::SIGRTMIN() + 8,
        };
        tests::context(backend).block_on(async {
            let mut first = signal(signum).unwrap();
            let mut second = signal(signum).unwrap();
            for _ in 0..5 {
                raise_here(signum);
            }
            recv_bounded(&mut first, "first").await;
            recv_bounded(&mut second, "second").await;
            // The five deliveries coalesced: nothing more is pending.
            let more = timeout(Duration::from_millis(20), first.recv()).await;
            assert!(more.is_err(), "five deliveries before one recv count as one");
            raise_here(signum);
            recv_bounded(&mut first, "first, again").await;
            recv_bounded(&mut second, "second, again").await;
        });
    }
}

#[test]
fn signals_that_cannot_be_caught_or_do_not_exist_are_invalid_input() {
    let ctx = aioctx::AioContext::new().unwrap();
    let _guard = ctx.enter();
    for signum in [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGSEGV,
        0,
        -1,
        libc::SIGRTMAX() + 1,
    ] {
        let err = signal(signum).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::InvalidInput,
            "{signum}: {err}"
        );
    }
}

#[test]
fn outside_a_context_signal_is_an_error() {
    let err = signal(libc::SIGUSR1).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
}
