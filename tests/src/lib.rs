//! Integration tests for aioctx, against its public API only. The tests live in `tests/tests/`; this
//! library holds what they share.

use aioctx::{AioContext, Backend};

/// The backends every loop-level test runs on.
pub const BACKENDS: [Backend; 3] = [Backend::IoUring, Backend::Poll, Backend::Epoll];

/// A context forced onto `backend`, panicking with a clear message if it cannot be created.
pub fn context(backend: Backend) -> AioContext {
    let ctx = AioContext::builder()
        .backend(backend)
        .build()
        .unwrap_or_else(|e| panic!("cannot create a {backend:?} context: {e}"));
    assert_eq!(ctx.backend(), backend);
    ctx
}

/// Defines one `#[test]` per backend for each function taking a `Backend`:
///
/// ```ignore
/// per_backend! { fn bh_runs_once(backend) { let ctx = tests::context(backend); ... } }
/// ```
/// expands to a module `bh_runs_once` with tests `poll`, `epoll` and `io_uring`.
#[macro_export]
macro_rules! per_backend {
    ($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block $($rest:tt)*) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($backend: aioctx::Backend) $body

            #[test]
            fn poll() {
                run(aioctx::Backend::Poll)
            }

            #[test]
            fn epoll() {
                run(aioctx::Backend::Epoll)
            }

            #[test]
            fn io_uring() {
                run(aioctx::Backend::IoUring)
            }
        }
        $crate::per_backend! { $($rest)* }
    };
    () => {};
}
