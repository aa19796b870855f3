//! A derived state's typed accessors against the alternatives, in one run.
//! Run with `cargo bench --bench derive_ops`.
//!
//! - getter with no news vs reading a field of a plain struct behind an `RwLock` (the
//!   in-process way to share state between threads);
//! - setter (one field's record) vs `UltraDict::insert` of one key.

use std::hint::black_box;
use std::sync::RwLock;
use std::time::Instant;

use ultradict::{SharedDict, UltraDict};

#[derive(SharedDict, Default, Clone)]
struct State {
    counter: u64,
    label: String,
    ratio: f64,
}

const ROUNDS: usize = 7;
const OPS: usize = 200_000;

fn measure(mut op: impl FnMut(usize)) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..OPS {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / OPS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let plain = RwLock::new(State {
        counter: 1,
        label: "a label of 16 b.".into(),
        ratio: 0.5,
    });
    let shared = State::builder().open().expect("open");
    shared.set_label("a label of 16 b.".into()).expect("set");
    shared.dump().expect("dump"); // fields read in place from the mapped dump
    let map: UltraDict<u32, u64> = UltraDict::builder().open().expect("open");

    let rwlock_u64 = measure(|_| {
        black_box(plain.read().expect("read").counter);
    });
    let getter_u64 = measure(|_| {
        black_box(shared.counter().expect("get"));
    });
    let rwlock_string = measure(|_| {
        black_box(plain.read().expect("read").label.clone());
    });
    let getter_string = measure(|_| {
        black_box(shared.label().expect("get"));
    });
    let map_insert = measure(|i| {
        black_box(map.insert(0, i as u64).expect("insert"));
    });
    let setter = measure(|i| {
        shared.set_counter(black_box(i as u64)).expect("set");
    });

    println!("derive_ops: best of {ROUNDS} rounds x {OPS} ops");
    println!(
        "{:<40} {:>10} {:>12} {:>8}",
        "", "baseline", "derived", "ratio"
    );
    let row = |what: &str, base: f64, ours: f64| {
        println!(
            "{what:<40} {base:>7.1} ns {ours:>9.1} ns {:>7.2}x",
            ours / base
        );
    };
    row("get u64 field vs RwLock<struct>", rwlock_u64, getter_u64);
    row(
        "get String field vs RwLock<struct>",
        rwlock_string,
        getter_string,
    );
    row("set u64 field vs UltraDict::insert", map_insert, setter);
    let name = shared.name().to_owned();
    drop(shared);
    drop(map);
    assert!(UltraDict::<u8, u8>::unlink_by_name(&name).is_ok());
}
