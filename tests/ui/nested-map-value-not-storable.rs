// A nested map whose value type lacks rkyv's derives: one error, on that type.
use std::collections::HashMap;

use ultradict::SharedDict;

#[derive(Clone)]
struct Job {
    id: u64,
}

#[derive(SharedDict)]
struct State {
    counter: u64,
    #[ultradict(nested)]
    jobs: HashMap<String, Job>,
}

fn main() {}
