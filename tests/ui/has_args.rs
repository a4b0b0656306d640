#[aioctx::test]
async fn has_args(count: u32, name: &str) {
    let _ = (count, name);
}

fn main() {}
