use ultradict::SharedDict;

#[derive(SharedDict)]
struct State {
    #[ultradict(nestd)]
    counter: u64,
}

fn main() {}
