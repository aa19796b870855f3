use ultradict::SharedDict;

#[derive(SharedDict)]
struct State {
    counter: u64,
    #[ultradict(rename = "counter")]
    other: u64,
    #[ultradict(rename = "not a key")]
    third: u64,
}

fn main() {}
