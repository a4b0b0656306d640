#[aioctx::main]
fn main() {}
