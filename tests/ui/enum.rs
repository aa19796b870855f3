use ultradict::SharedDict;

#[derive(SharedDict)]
enum Mode {
    Fast,
    Slow,
}

fn main() {}
