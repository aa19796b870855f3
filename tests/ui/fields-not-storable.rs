// Two plain fields whose types fall short, one without rkyv's derives and one without
// `Clone`: one error for each, on its type, and none from the generated code.
use ultradict::SharedDict;

struct Endpoint {
    host: String,
    port: u16,
}

#[derive(ultradict::rkyv::Archive, ultradict::rkyv::Serialize, ultradict::rkyv::Deserialize)]
#[rkyv(crate = ultradict::rkyv)]
struct Limits {
    max: u32,
}

#[derive(SharedDict)]
struct State {
    counter: u64,
    endpoint: Endpoint,
    limits: Limits,
    label: String,
}

fn main() {}
