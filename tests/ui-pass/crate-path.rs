extern crate ultradict as renamed;

use renamed::SharedDict;

#[derive(SharedDict, Default)]
#[ultradict(crate = "::renamed")]
struct State {
    counter: u64,
}

fn main() -> renamed::Result<()> {
    let state = State::builder().open()?;
    state.set_counter(3)?;
    assert_eq!(state.counter()?, 3);
    Ok(())
}
