#[aioctx::main(backend = "all")]
async fn main() {}
