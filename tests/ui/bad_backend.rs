#[aioctx::test(backend = "kqueue")]
async fn bad_backend() {}

fn main() {}
