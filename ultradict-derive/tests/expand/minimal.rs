#[derive(SharedDict)]
#[ultradict(crate = "::my_ultradict")]
struct Minimal {
    r#type: u8,
}
