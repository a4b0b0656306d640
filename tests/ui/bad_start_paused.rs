#[aioctx::test(start_paused = 1)]
async fn bad_start_paused() {}

fn main() {}
