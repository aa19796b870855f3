use ultradict::SharedDict;

#[derive(SharedDict)]
struct Empty {}

fn main() {}
