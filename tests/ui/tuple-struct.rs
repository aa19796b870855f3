use ultradict::SharedDict;

#[derive(SharedDict)]
struct Pair(u64, u64);

fn main() {}
