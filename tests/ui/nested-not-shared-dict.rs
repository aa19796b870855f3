use ultradict::SharedDict;

struct Plain {
    hits: u64,
}

#[derive(SharedDict)]
struct State {
    #[ultradict(nested)]
    plain: Plain,
}

fn main() {}
