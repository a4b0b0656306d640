#[aioctx::test]
fn not_async() {}

fn main() {}
