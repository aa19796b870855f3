#[derive(SharedDict, Default)]
pub struct AppState {
    counter: u64,
    label: String,
    #[ultradict(nested)]
    stats: Stats,
    #[ultradict(nested, rename = "by-id")]
    workers: HashMap<u32, Worker>,
}
