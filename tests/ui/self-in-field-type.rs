// `Self` in a field's type would name the derive's generated types, not the struct: one error
// that says to name the struct.
use ultradict::SharedDict;

#[derive(SharedDict)]
struct State {
    counter: u64,
    history: Vec<Option<Box<Self>>>,
}

fn main() {}
