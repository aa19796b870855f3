// A plain field whose type lacks rkyv's derives: one error, on the field's type, that says
// what to add, and none from the code the derive generates around it.
use ultradict::SharedDict;

struct Endpoint {
    host: String,
    port: u16,
}

#[derive(SharedDict)]
struct State {
    counter: u64,
    endpoint: Endpoint,
}

fn main() {}
