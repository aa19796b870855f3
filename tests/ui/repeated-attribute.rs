use ultradict::SharedDict;

#[derive(SharedDict, Default)]
struct Stats {
    hits: u64,
}

#[derive(SharedDict)]
struct State {
    #[ultradict(nested, nested)]
    stats: Stats,
    #[ultradict(rename = "a")]
    #[ultradict(rename = "b")]
    counter: u64,
}

fn main() {}
