use ultradict::SharedDict;

#[derive(SharedDict)]
#[ultradict(nested)]
struct State {
    #[ultradict(crate = "::ultradict")]
    counter: u64,
}

fn main() {}
