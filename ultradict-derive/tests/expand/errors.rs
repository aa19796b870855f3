#[derive(SharedDict)]
struct Broken {
    #[ultradict(unknown)]
    a: u8,
    #[ultradict(nested)]
    b: (u8, u8),
}
