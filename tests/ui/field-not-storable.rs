// A plain field whose type lacks rkyv's derives: among the errors, one on the field's type
// that says what to add.
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
