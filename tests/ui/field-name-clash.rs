use ultradict::SharedDict;

#[derive(SharedDict)]
struct Job {
    name: String,
    status: u8,
    count: u64,
    set_count: u64,
}

fn main() {}
