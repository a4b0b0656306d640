#[aioctx::test(poll_max_ns = "32768")]
async fn bad_poll_max_ns() {}

fn main() {}
