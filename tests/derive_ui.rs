//! The derive's compile-time errors (one `tests/ui/` case per mistake, with its expected
//! message in the `.stderr` next to it) and cases that must compile and run
//! (`tests/ui-pass/`). Regenerate the `.stderr` files with `TRYBUILD=overwrite` after a
//! deliberate change, and review the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui-pass/*.rs");
}
