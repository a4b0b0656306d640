//! `#[aioctx::test]` used for real: a fresh context per test, the options (`backend`, `backend = "all"`,
//! `start_paused`, `poll_max_ns`), kept attributes (`#[should_panic]`, doc comments), and `Result`
//! returns. The compile errors of misuse are in `rt_macros_ui.rs`.

use std::time::Duration;

use aioctx::time::Instant;

/// A helper from this module, to check that `backend = "all"` bodies see the enclosing module's items.
fn one() -> i32 {
    1
}

#[aioctx::test]
async fn plain() {
    assert_eq!(aioctx::spawn_local(async { 1 }).await.unwrap(), 1);
    aioctx::yield_now().await;
}

#[aioctx::test(backend = "epoll")]
async fn epoll_spawn_and_time() {
    let start = Instant::now();
    let handle = aioctx::spawn(async {
        aioctx::time::sleep(Duration::from_millis(2)).await;
        2
    });
    assert_eq!(aioctx::spawn_local(async { 1 }).await.unwrap(), 1);
    assert_eq!(handle.await.unwrap(), 2);
    assert!(start.elapsed() >= Duration::from_millis(2));
    let timed_out = aioctx::time::timeout(
        Duration::from_millis(1),
        aioctx::time::sleep(Duration::from_secs(60)),
    )
    .await;
    assert!(timed_out.is_err());
}

/// Expands to `all_backends::io_uring`, `all_backends::epoll` and `all_backends::poll`.
#[aioctx::test(backend = "all")]
async fn all_backends() {
    assert_eq!(aioctx::spawn_local(async { one() }).await.unwrap(), 1);
    aioctx::time::sleep(Duration::from_micros(100)).await;
}

#[aioctx::test(backend = "all", poll_max_ns = 32768)]
async fn all_backends_polling() {
    let n = aioctx::spawn(async { one() + 1 }).await.unwrap();
    assert_eq!(n, 2);
}

#[aioctx::test(start_paused = true)]
async fn start_paused_hour_is_instant() {
    let real = std::time::Instant::now();
    let start = Instant::now();
    aioctx::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        Instant::now().duration_since(start),
        Duration::from_secs(3600)
    );
    assert!(
        real.elapsed() < Duration::from_secs(5),
        "virtual time did not auto-advance: {:?}",
        real.elapsed()
    );
}

#[aioctx::test(start_paused = false, poll_max_ns = 1_000)]
async fn not_paused_real_time() {
    let real = std::time::Instant::now();
    aioctx::time::sleep(Duration::from_millis(5)).await;
    assert!(real.elapsed() >= Duration::from_millis(5));
}

#[aioctx::test]
#[should_panic(expected = "boom from the async body")]
async fn should_panic_is_kept() {
    aioctx::yield_now().await;
    panic!("boom from the async body");
}

#[aioctx::test(backend = "all")]
#[should_panic(expected = "boom on every backend")]
async fn should_panic_on_all_backends() {
    aioctx::yield_now().await;
    panic!("boom on every backend");
}

#[aioctx::test]
#[ignore = "checks that #[ignore] is kept: this test must never run"]
async fn ignore_is_kept() {
    panic!("an #[ignore]d test ran");
}

#[aioctx::test(backend = "poll")]
async fn returns_result() -> Result<(), Box<dyn std::error::Error>> {
    // `?` converts a JoinError into the boxed error: the body's type comes from the signature.
    let n = aioctx::spawn_local(async { 3 }).await?;
    assert_eq!(n, 3);
    Ok(())
}

#[aioctx::test]
async fn early_return_and_locals() {
    // `return` leaves the body (an async block), as it would leave the async fn.
    let v: Vec<i32> = (0..3).collect();
    let sum = aioctx::spawn_local(async move { v.iter().sum::<i32>() })
        .await
        .unwrap();
    if sum == 3 {
        return;
    }
    unreachable!("sum was {sum}");
}

mod nested {
    use super::one;

    #[aioctx::test(backend = "all", start_paused = true)]
    async fn paused_everywhere() {
        let start = aioctx::time::Instant::now();
        aioctx::time::sleep(std::time::Duration::from_secs(60)).await;
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(60));
        assert_eq!(one(), 1);
    }
}

/// Inner attributes of the body go on the generated function.
#[aioctx::test]
async fn inner_attributes_are_kept() {
    #![allow(clippy::let_unit_value)]
    let unit = aioctx::yield_now().await;
    assert_eq!(unit, ());
}
