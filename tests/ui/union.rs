use ultradict::SharedDict;

#[derive(SharedDict)]
union Bits {
    int: u64,
    float: f64,
}

fn main() {}
