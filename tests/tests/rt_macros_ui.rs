//! Compile errors of misused `#[aioctx::main]` / `#[aioctx::test]`: each case in `tests/ui/` must fail to
//! compile with the message in its `.stderr` (regenerate with `TRYBUILD=overwrite`, then read them).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
