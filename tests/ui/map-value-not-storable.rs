// A map value type without rkyv's derives: the error says what to add.
#[derive(Clone, Debug)]
struct Endpoint {
    host: String,
    port: u16,
}

fn main() {
    let _ = ultradict::UltraDict::<String, Endpoint>::builder().open();
}
