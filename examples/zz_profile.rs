use std::hint::black_box;
use ultradict::{Create, UltraDict};
fn main() {
    let w: UltraDict<u64, u64> = UltraDict::builder().create(Create::New).open().unwrap();
    w.extend((0..1000).map(|k| (k, k))).unwrap();
    w.dump().unwrap();
    for i in 0..30_000_000u64 {
        black_box(w.insert(7, i).unwrap());
    }
}
