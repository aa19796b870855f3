// A crate that denies lints rustc leaves off by default still compiles the derive's code,
// its `for<'__ud>` bounds included.
#![deny(
    warnings,
    unused_lifetimes,
    single_use_lifetimes,
    unused_qualifications,
    trivial_casts,
    trivial_numeric_casts
)]

use std::collections::HashMap;

use ultradict::SharedDict;

#[derive(SharedDict, Debug, Default)]
struct State {
    counter: u64,
    label: String,
    #[ultradict(nested)]
    jobs: HashMap<String, u64>,
}

fn main() -> ultradict::Result<()> {
    let state = State::builder().open()?;
    state.set_counter(3)?;
    state.jobs().insert("a".into(), 1)?;
    assert_eq!(state.counter()?, 3);
    Ok(())
}
