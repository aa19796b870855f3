use ultradict::SharedDict;

#[derive(SharedDict)]
struct Holder<T> {
    value: T,
}

fn main() {}
