use ultradict::SharedDict;

#[derive(SharedDict)]
struct State {
    #[ultradict(nested)]
    pair: (u32, u32),
}

fn main() {}
