#[aioctx::test]
async fn generic_fn<T: Default>() {
    let _ = T::default();
}

fn main() {}
