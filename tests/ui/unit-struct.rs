use ultradict::SharedDict;

#[derive(SharedDict)]
struct Nothing;

fn main() {}
