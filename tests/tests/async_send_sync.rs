//! Pins, at compile time, whether each public type of `aioctx` and each future its public functions
//! return is `Send`, `Sync` and `Unpin`, so that a change to any of them is a deliberate, visible one
//! (the technique is tokio's tests/async_send_sync.rs). A positive claim calls a function with that
//! bound; a negative one calls a method that two blanket impls provide when the type has the trait,
//! which is then ambiguous and does not compile. Nothing here runs: the file only has to build.
//!
//! What the assertions say, and why:
//!
//! - Home-thread types are `!Send + !Sync`: `AioContext` (the loop's state, in an `Rc` on the thread
//!   that created it; other threads reach it through a `Remote`), `EnterGuard` (it pops the thread's
//!   current-context stack when dropped), `FdHandlers` (its callbacks are not `Send`: they run on the
//!   home thread), `FdRegistration`, `time::Timer` and `time::TimerHandle` (a weak reference to the
//!   home thread's state), and everything registered with the current context's fd monitor:
//!   `io::Async`, `io::NotifierWaiter` and the socket types, streams and datagram sockets alike (on
//!   an IOThread, create them inside `Remote::spawn_local_with`). The futures of their async methods
//!   borrow them, or build one (`TcpStream::connect`, `EventNotifier::wait`), so they are
//!   `!Send + !Sync` too: `UdpSocket::send_to` with a host name as well, although the lookup runs on
//!   the pool.
//! - Cross-thread handles and plain values are `Send + Sync`: `Remote`, `RemoteBh`,
//!   `time::VirtualClock`, `EventNotifier` (an eventfd behind an `Arc`), `IoThread`, the builders, the
//!   parameters and statistics, `JoinError` and `PanicPayload` (whose `Send` payload sits behind a
//!   mutex so that it is `Sync` as well). `Remote::call` is a plain blocking call, not a future.
//! - `Bh` is `Send + Sync` although it is made for the home thread: it is a handle on an atomic node
//!   (schedule, cancel and delete-on-drop are lock-free, like QEMU's `qemu_bh_*`, which any thread
//!   may call), while the callback itself stays in the home thread's slab.
//! - `JoinHandle<T>` is `Send + Sync` when `T: Send`, whatever the task's future is (shared access only
//!   reads atomics): a `spawn_local` task's handle can be awaited on another thread.
//! - The time futures (`Sleep`, `Timeout<F>` with `F`'s traits, `Interval`, `YieldNow`) are plain data
//!   (a deadline, a clock, a registration by id), `Send + Sync` so that `aioctx::spawn`ed tasks can
//!   sleep, and `Unpin`; so is `sync::Lock` (the mutex's lock future).
//! - `sync::Mutex<T>` is `Send + Sync` when `T: Send` (as `std::sync::Mutex`); `Lock<'_, T>` is too;
//!   `MutexGuard<'_, T>` is `Send` when `T: Send + Sync` and `Sync` when `T: Sync`.
//! - `fs::File` is `Send + Sync` (an `Arc`'d fd) and so are the futures of its methods and of
//!   `OpenOptions::open`, so that `Send` tasks can do block I/O and `reschedule` between contexts
//!   (`readv_at`, `writev_at`, `read_to_memory` and `write_from_memory` included: their iovec arrays
//!   travel in a `Send + Sync` wrapper); except the `unsafe` raw functions, which take raw pointers.
//!   `MemoryBuf` and `MemRange` are `Send + Sync`.
//! - `task::JoinSet<T>` follows `JoinHandle<T>`. `signal::Signal` is `!Send + !Sync`, like the other
//!   types registered with the current context; `net::Incoming` borrows a listener and
//!   `net::IntoStdError<S>` holds a stream, so they are `!Send + !Sync` too. `net::lookup_host`'s
//!   future is `Send + Sync` (the lookup runs on the pool; the future only waits for it).
//! - `reschedule`'s future is `Send + Sync`: it is awaited inside the `Send` task it moves.
//! - Feature `glib`: `MainLoop` is `!Send + !Sync` (it owns home-thread contexts and glib's context,
//!   acquired by its thread); `MainLoopHandle` (wake or quit it from anywhere), `MainLoopBuilder` and
//!   `Stopped` are `Send + Sync`.
//! - Futures of `async fn`s are `!Unpin`; the named future types above are `Unpin`.

#![allow(clippy::type_complexity, clippy::diverging_sub_expression)]

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

// Send: yes, Sync: yes.
#[allow(unused)]
struct YY {}

// Send: yes, Sync: no.
#[allow(unused)]
struct YN {
    _value: Cell<u8>,
}

// Send: no, Sync: no.
#[allow(unused)]
struct NN {
    _value: Rc<u8>,
}

#[allow(dead_code)]
type BoxFutureSync<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + Sync>>;
#[allow(dead_code)]
type BoxFutureSend<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
#[allow(dead_code)]
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

#[allow(dead_code)]
fn require_send<T: Send>(_t: &T) {}
#[allow(dead_code)]
fn require_sync<T: Sync>(_t: &T) {}
#[allow(dead_code)]
fn require_unpin<T: Unpin>(_t: &T) {}

#[allow(dead_code)]
struct Invalid;

#[allow(unused)]
trait AmbiguousIfSend<A> {
    fn some_item(&self) {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<Invalid> for T {}

#[allow(unused)]
trait AmbiguousIfSync<A> {
    fn some_item(&self) {}
}
impl<T: ?Sized> AmbiguousIfSync<()> for T {}
impl<T: ?Sized + Sync> AmbiguousIfSync<Invalid> for T {}

#[allow(unused)]
trait AmbiguousIfUnpin<A> {
    fn some_item(&self) {}
}
impl<T: ?Sized> AmbiguousIfUnpin<()> for T {}
impl<T: ?Sized + Unpin> AmbiguousIfUnpin<Invalid> for T {}

macro_rules! into_todo {
    ($typ:ty) => {{
        let x: $typ = todo!();
        x
    }};
}

macro_rules! async_assert_fn_send {
    (Send & $(!)?Sync & $(!)?Unpin, $value:expr) => {
        require_send(&$value);
    };
    (!Send & $(!)?Sync & $(!)?Unpin, $value:expr) => {
        AmbiguousIfSend::some_item(&$value);
    };
}
macro_rules! async_assert_fn_sync {
    ($(!)?Send & Sync & $(!)?Unpin, $value:expr) => {
        require_sync(&$value);
    };
    ($(!)?Send & !Sync & $(!)?Unpin, $value:expr) => {
        AmbiguousIfSync::some_item(&$value);
    };
}
macro_rules! async_assert_fn_unpin {
    ($(!)?Send & $(!)?Sync & Unpin, $value:expr) => {
        require_unpin(&$value);
    };
    ($(!)?Send & $(!)?Sync & !Unpin, $value:expr) => {
        AmbiguousIfUnpin::some_item(&$value);
    };
}

/// `async_assert_fn!(path::to::f(ArgType, ..): Send & !Sync & Unpin)`: what `f` returns. `_` stands
/// for an argument whose type is inferred (a method's receiver).
macro_rules! async_assert_fn {
    ($($f:ident $(< $($generic:ty),* > )? )::+($($arg:ty),*): $($tok:tt)*) => {
        #[allow(unreachable_code)]
        #[allow(unused_variables)]
        const _: fn() = || {
            let f = $($f $(::<$($generic),*>)? )::+( $( into_todo!($arg) ),* );
            async_assert_fn_send!($($tok)*, f);
            async_assert_fn_sync!($($tok)*, f);
            async_assert_fn_unpin!($($tok)*, f);
        };
    };
}

/// `assert_value!(Type: Send & !Sync & Unpin)`.
macro_rules! assert_value {
    ($type:ty: $($tok:tt)*) => {
        #[allow(unreachable_code)]
        #[allow(unused_variables)]
        const _: fn() = || {
            let f: $type = todo!();
            async_assert_fn_send!($($tok)*, f);
            async_assert_fn_sync!($($tok)*, f);
            async_assert_fn_unpin!($($tok)*, f);
        };
    };
}

mod context {
    use super::*;
    use aioctx::*;

    assert_value!(AioContext: !Send & !Sync & Unpin);
    assert_value!(EnterGuard<'_>: !Send & !Sync & Unpin);
    assert_value!(FdHandlers: !Send & !Sync & Unpin);
    assert_value!(FdRegistration: !Send & !Sync & Unpin);

    assert_value!(Backend: Send & Sync & Unpin);
    assert_value!(Bh: Send & Sync & Unpin);
    assert_value!(Builder: Send & Sync & Unpin);
    assert_value!(EventNotifier: Send & Sync & Unpin);
    assert_value!(IoThread: Send & Sync & Unpin);
    assert_value!(IoThreadBuilder: Send & Sync & Unpin);
    assert_value!(PollParams: Send & Sync & Unpin);
    assert_value!(Remote: Send & Sync & Unpin);
    assert_value!(RemoteBh: Send & Sync & Unpin);
    assert_value!(SqeCompletion: Send & Sync & Unpin);
    assert_value!(Stats: Send & Sync & Unpin);
}

mod main_loop {
    use super::*;
    use aioctx::*;

    assert_value!(MainLoop: !Send & !Sync & Unpin);
    assert_value!(MainLoopBuilder: Send & Sync & Unpin);
    assert_value!(MainLoopHandle: Send & Sync & Unpin);
    assert_value!(Stopped: Send & Sync & Unpin);
}

mod task {
    use super::*;
    use aioctx::*;

    assert_value!(JoinError: Send & Sync & Unpin);
    assert_value!(PanicPayload: Send & Sync & Unpin);
    assert_value!(YieldNow: Send & Sync & Unpin);
    assert_value!(JoinHandle<YY>: Send & Sync & Unpin);
    assert_value!(JoinHandle<YN>: Send & Sync & Unpin);
    assert_value!(JoinHandle<NN>: !Send & !Sync & Unpin);
    assert_value!(aioctx::task::JoinSet<YY>: Send & Sync & Unpin);
    assert_value!(aioctx::task::JoinSet<NN>: !Send & !Sync & Unpin);
    async_assert_fn!(aioctx::task::JoinSet<YY>::join_next(_): Send & Sync & !Unpin);

    async_assert_fn!(aioctx::yield_now(): Send & Sync & Unpin);
    async_assert_fn!(aioctx::reschedule(&Remote): Send & Sync & !Unpin);
    // The handle's traits follow the output's, not the future's.
    async_assert_fn!(aioctx::spawn(BoxFutureSend<YY>): Send & Sync & Unpin);
    async_assert_fn!(aioctx::spawn_local(BoxFuture<YY>): Send & Sync & Unpin);
    async_assert_fn!(aioctx::spawn_local(BoxFuture<NN>): !Send & !Sync & Unpin);
    async_assert_fn!(aioctx::spawn_blocking(fn() -> YY): Send & Sync & Unpin);
    async_assert_fn!(aioctx::AioContext::spawn_local(_, BoxFuture<YY>): Send & Sync & Unpin);
    async_assert_fn!(aioctx::AioContext::spawn_blocking(_, fn() -> YY): Send & Sync & Unpin);
    async_assert_fn!(aioctx::Remote::spawn(_, BoxFutureSend<YY>): Send & Sync & Unpin);
    async_assert_fn!(
        aioctx::Remote::spawn_local_with(_, fn() -> BoxFuture<YY>): Send & Sync & Unpin
    );
}

mod time {
    use super::*;
    use aioctx::time::*;

    assert_value!(Clock: Send & Sync & Unpin);
    assert_value!(Elapsed: Send & Sync & Unpin);
    assert_value!(Instant: Send & Sync & Unpin);
    assert_value!(Interval: Send & Sync & Unpin);
    assert_value!(MissedTickBehavior: Send & Sync & Unpin);
    assert_value!(Sleep: Send & Sync & Unpin);
    assert_value!(Timer: !Send & !Sync & Unpin);
    assert_value!(TimerHandle: !Send & !Sync & Unpin);
    assert_value!(VirtualClock: Send & Sync & Unpin);
    assert_value!(Timeout<Sleep>: Send & Sync & Unpin);
    assert_value!(Timeout<BoxFutureSync<()>>: Send & Sync & Unpin);
    assert_value!(Timeout<BoxFutureSend<()>>: Send & !Sync & Unpin);
    assert_value!(Timeout<BoxFuture<()>>: !Send & !Sync & Unpin);

    async_assert_fn!(aioctx::time::sleep(Duration): Send & Sync & Unpin);
    async_assert_fn!(aioctx::time::sleep_until(Instant): Send & Sync & Unpin);
    async_assert_fn!(aioctx::time::sleep_on(Clock, Duration): Send & Sync & Unpin);
    async_assert_fn!(aioctx::time::timeout(Duration, Sleep): Send & Sync & Unpin);
    async_assert_fn!(aioctx::time::timeout_at(Instant, Sleep): Send & Sync & Unpin);
    async_assert_fn!(aioctx::time::interval(Duration): Send & Sync & Unpin);
    async_assert_fn!(aioctx::time::interval_at(Instant, Duration): Send & Sync & Unpin);
    async_assert_fn!(aioctx::time::Interval::tick(_): Send & Sync & !Unpin);

    // A timeout is Unpin only if its future is.
    #[allow(unreachable_code)]
    const _: fn() = || {
        let f = aioctx::time::timeout(Duration::ZERO, async {});
        require_send(&f);
        require_sync(&f);
        AmbiguousIfUnpin::some_item(&f);
    };
}

mod sync {
    use super::*;
    use aioctx::sync::*;

    assert_value!(Mutex<YY>: Send & Sync & Unpin);
    assert_value!(Mutex<YN>: Send & Sync & Unpin);
    assert_value!(Mutex<NN>: !Send & !Sync & Unpin);
    assert_value!(MutexGuard<'_, YY>: Send & Sync & Unpin);
    assert_value!(MutexGuard<'_, YN>: !Send & !Sync & Unpin);
    assert_value!(MutexGuard<'_, NN>: !Send & !Sync & Unpin);
    assert_value!(Lock<'_, YY>: Send & Sync & Unpin);
    assert_value!(Lock<'_, YN>: Send & Sync & Unpin);
    assert_value!(Lock<'_, NN>: !Send & !Sync & Unpin);

    async_assert_fn!(aioctx::sync::Mutex<YY>::lock(_): Send & Sync & Unpin);
}

mod io {
    use super::*;
    use aioctx::io::*;
    use aioctx::EventNotifier;

    type Stream = std::net::TcpStream;

    assert_value!(Async<Stream>: !Send & !Sync & Unpin);
    assert_value!(NotifierWaiter: !Send & !Sync & Unpin);

    async_assert_fn!(aioctx::io::Async<Stream>::readable(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::io::Async<Stream>::writable(_): !Send & !Sync & !Unpin);
    async_assert_fn!(
        aioctx::io::Async<Stream>::read_with(_, fn(&Stream) -> std::io::Result<usize>): !Send & !Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::io::Async<Stream>::read_with_mut(_, fn(&mut Stream) -> std::io::Result<usize>): !Send & !Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::io::Async<Stream>::write_with(_, fn(&Stream) -> std::io::Result<usize>): !Send & !Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::io::Async<Stream>::write_with_mut(_, fn(&mut Stream) -> std::io::Result<usize>): !Send & !Sync & !Unpin
    );
    async_assert_fn!(aioctx::io::NotifierWaiter::wait(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::EventNotifier::wait(&EventNotifier): !Send & !Sync & !Unpin);
    async_assert_fn!(
        aioctx::EventNotifier::wait_polling(&EventNotifier, fn() -> bool): !Send & !Sync & !Unpin
    );
}

mod net {
    use super::*;
    use aioctx::net::*;

    assert_value!(TcpListener: !Send & !Sync & Unpin);
    assert_value!(TcpStream: !Send & !Sync & Unpin);
    assert_value!(UnixListener: !Send & !Sync & Unpin);
    assert_value!(UnixStream: !Send & !Sync & Unpin);

    async_assert_fn!(aioctx::net::TcpListener::accept(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::TcpStream::connect(SocketAddr): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::TcpStream::readable(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::TcpStream::writable(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixListener::accept(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixStream::connect(&str): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixStream::readable(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixStream::writable(_): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::TcpStream::peek(_, &mut [u8]): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixStream::peek(_, &mut [u8]): !Send & !Sync & !Unpin);
    assert_value!(Incoming<'_, TcpListener>: !Send & !Sync & Unpin);
    assert_value!(Incoming<'_, UnixListener>: !Send & !Sync & Unpin);
    assert_value!(IntoStdError<TcpStream>: !Send & !Sync & Unpin);
    async_assert_fn!(aioctx::net::lookup_host(&str): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::net::TcpStream::connect(&str): !Send & !Sync & !Unpin);

    assert_value!(UdpSocket: !Send & !Sync & Unpin);
    assert_value!(UnixDatagram: !Send & !Sync & Unpin);
    assert_value!(IntoStdError<UdpSocket>: !Send & !Sync & Unpin);
    assert_value!(IntoStdError<UnixDatagram>: !Send & !Sync & Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::send_to(_, &[u8], SocketAddr): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::send_to(_, &[u8], &str): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::recv_from(_, &mut [u8]): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::peek_from(_, &mut [u8]): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::connect(_, SocketAddr): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::connect(_, &str): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::send(_, &[u8]): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UdpSocket::recv(_, &mut [u8]): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixDatagram::send_to(_, &[u8], &str): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixDatagram::recv_from(_, &mut [u8]): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixDatagram::send(_, &[u8]): !Send & !Sync & !Unpin);
    async_assert_fn!(aioctx::net::UnixDatagram::recv(_, &mut [u8]): !Send & !Sync & !Unpin);
}

mod signal {
    use super::*;
    use aioctx::signal::*;

    assert_value!(Signal: !Send & !Sync & Unpin);
    async_assert_fn!(aioctx::signal::Signal::recv(_): !Send & !Sync & !Unpin);
}

mod fs {
    use super::*;
    use aioctx::fs::*;

    assert_value!(AlignedBuf: Send & Sync & Unpin);
    assert_value!(MemoryBuf: Send & Sync & Unpin);
    assert_value!(MemRange: Send & Sync & Unpin);
    async_assert_fn!(
        aioctx::fs::File::read_to_memory<MemoryBuf>(_, &std::sync::Arc<MemoryBuf>, &[MemRange], u64): Send & Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::fs::File::write_from_memory<MemoryBuf>(_, &std::sync::Arc<MemoryBuf>, &[MemRange], u64): Send & Sync & !Unpin
    );
    assert_value!(File: Send & Sync & Unpin);
    assert_value!(IoEngine: Send & Sync & Unpin);
    assert_value!(OpenOptions: Send & Sync & Unpin);

    async_assert_fn!(aioctx::fs::File::open(&str): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::fs::File::create(&str): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::fs::OpenOptions::open(_, &str): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::fs::File::set_len(_, u64): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::fs::File::read_at<Vec<u8>>(_, Vec<u8>, u64): Send & Sync & !Unpin);
    async_assert_fn!(
        aioctx::fs::File::read_at<AlignedBuf>(_, AlignedBuf, u64): Send & Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::fs::File::read_exact_at<Vec<u8>>(_, Vec<u8>, u64): Send & Sync & !Unpin
    );
    async_assert_fn!(aioctx::fs::File::write_at<Vec<u8>>(_, Vec<u8>, u64): Send & Sync & !Unpin);
    async_assert_fn!(
        aioctx::fs::File::write_at_fua<Vec<u8>>(_, Vec<u8>, u64): Send & Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::fs::File::write_all_at<Vec<u8>>(_, Vec<u8>, u64): Send & Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::fs::File::readv_at<Vec<u8>>(_, Vec<Vec<u8>>, u64): Send & Sync & !Unpin
    );
    async_assert_fn!(
        aioctx::fs::File::writev_at<Vec<u8>>(_, Vec<Vec<u8>>, u64): Send & Sync & !Unpin
    );
    async_assert_fn!(aioctx::fs::File::sync_all(_): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::fs::File::sync_data(_): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::fs::File::write_zeroes(_, u64, u64): Send & Sync & !Unpin);
    async_assert_fn!(aioctx::fs::File::discard(_, u64, u64): Send & Sync & !Unpin);

    // The raw functions are `unsafe`, which the macro cannot call; each is spelled out.
    #[allow(unreachable_code, unused_variables)]
    const _: fn() = || {
        let file: &File = todo!();
        // SAFETY: never runs; only the futures' types matter.
        let (read, write, readv, writev) = unsafe {
            (
                file.read_at_raw(todo!(), 0, 0),
                file.write_at_raw(todo!(), 0, 0),
                file.readv_at_raw(todo!(), 0, 0),
                file.writev_at_raw(todo!(), 0, 0),
            )
        };
        AmbiguousIfSend::some_item(&read);
        AmbiguousIfSync::some_item(&read);
        AmbiguousIfUnpin::some_item(&read);
        AmbiguousIfSend::some_item(&write);
        AmbiguousIfSync::some_item(&write);
        AmbiguousIfUnpin::some_item(&write);
        AmbiguousIfSend::some_item(&readv);
        AmbiguousIfSync::some_item(&readv);
        AmbiguousIfUnpin::some_item(&readv);
        AmbiguousIfSend::some_item(&writev);
        AmbiguousIfSync::some_item(&writev);
        AmbiguousIfUnpin::some_item(&writev);
    };
}
