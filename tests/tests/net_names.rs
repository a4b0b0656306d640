//! Host names are resolved on the context's blocking pool, never on the loop; literal addresses never
//! touch the pool; a name that does not resolve is a `NotFound` error naming it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aioctx::net::{lookup_host, TcpListener, TcpStream};
use aioctx::time::Clock;
use aioctx::AioContext;
use tests::per_backend;

/// A context whose blocking pool has one worker, and a job that holds that worker until `release`
/// is sent (or dropped).
fn context_with_busy_pool(backend: aioctx::Backend) -> (AioContext, mpsc::Sender<()>) {
    let ctx = AioContext::builder()
        .backend(backend)
        .thread_pool(0, 1)
        .build()
        .unwrap();
    let (release, wait) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    drop(ctx.spawn_blocking(move || {
        let _ = started_tx.send(());
        let _ = wait.recv();
    }));
    started
        .recv_timeout(tests::BOUND)
        .expect("the pool's worker took the blocking job");
    (ctx, release)
}

per_backend! {
    /// With the pool's only worker busy, connecting by name waits for the pool while a 100 us timer on
    /// the same loop fires (the loop runs on); a literal address connects at once. Releasing the
    /// worker lets the name resolve.
    fn a_name_waits_for_the_pool_while_the_loop_runs_and_a_literal_needs_no_pool(backend) {
        let (ctx, release) = context_with_busy_pool(backend);
        let fired_at = Rc::new(Cell::new(None));
        let timer = ctx.timer(Clock::Realtime, {
            let f = fired_at.clone();
            move || f.set(Some(Instant::now()))
        });
        ctx.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let by_name = aioctx::spawn_local(TcpStream::connect(("localhost", port)));
            aioctx::yield_now().await; // the lookup is queued on the pool now
            let armed = Instant::now();
            timer.arm_after(Duration::from_micros(100));
            // A literal address connects while the pool is still busy.
            let literal = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            assert_eq!(literal.peer_addr().unwrap().port(), port);
            while fired_at.get().is_none() {
                aioctx::yield_now().await;
            }
            let lateness = fired_at.get().unwrap() - armed - Duration::from_micros(100);
            println!("100 us timer fired {lateness:?} late while a lookup waited for the pool");
            assert!(!by_name.is_finished(), "the name waited for the pool's only worker");
            release.send(()).unwrap();
            let by_name = by_name.await.unwrap().unwrap();
            assert_eq!(by_name.peer_addr().unwrap().port(), port);
        });
    }

    fn lookup_host_resolves_names_and_passes_literals_through(backend) {
        tests::context(backend).block_on(async {
            let literal = lookup_host("10.1.2.3:99").await.unwrap();
            assert_eq!(literal, ["10.1.2.3:99".parse().unwrap()]);
            let local = lookup_host(("localhost", 8080)).await.unwrap();
            assert!(!local.is_empty());
            assert!(local.iter().all(|a| a.ip().is_loopback() && a.port() == 8080), "{local:?}");
        });
    }

    fn a_name_that_does_not_resolve_is_not_found_with_the_name_in_the_message(backend) {
        tests::context(backend).block_on(async {
            for err in [
                lookup_host("no-such-host.invalid:80").await.unwrap_err(),
                TcpStream::connect("no-such-host.invalid:80").await.unwrap_err(),
            ] {
                assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
                assert!(err.to_string().contains("no-such-host.invalid"), "{err}");
            }
            let no_port = TcpStream::connect("localhost").await.unwrap_err();
            assert_eq!(no_port.kind(), std::io::ErrorKind::InvalidInput, "{no_port}");
        });
    }

    fn bind_accepts_a_name(backend) {
        let ctx = tests::context(backend);
        let _guard = ctx.enter();
        let listener = TcpListener::bind("localhost:0").unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }
}
