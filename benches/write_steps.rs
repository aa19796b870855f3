//! Where an `insert`'s time goes: each step of the shared-memory write path alone, beside the
//! whole `insert`, in one run: of one hot `u64` key, then of 16-byte `String`s over 1,000 keys
//! in turn (as `map_ops` inserts them). Run with `cargo bench --bench write_steps`.
//!
//! Every figure is the best of several rounds (the minimum filters out the machine's other
//! tenants), in ns per operation. The dump's share is one full dump of the bench's 1,000-entry
//! dict divided by the records a default stream holds between two dumps.
//!
//! Then the reader's side: a read with no news, and the catch-up of one record by another
//! handle of the same dict (in this process, so no cache line moves between cores: this is
//! the catch-up's own work, which a reader in another process pays on top of two misses).

use std::hint::black_box;
use std::time::Instant;

use ultradict::internals::WriteSteps;
use ultradict::{Create, UltraDict};

const KEYS: u64 = 1_000;
const ROUNDS: usize = 7;
const OPS: usize = 200_000;

fn measure(mut op: impl FnMut(u64)) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..OPS as u64 {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / OPS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // One hot key, as the first round measured it.
    steps(
        "u64 -> u64, one hot key",
        (0..KEYS).map(|k| (k, k)),
        |_| 7,
        |i| i,
    );
    // Keys in turn with their clones, as `map_ops` measures a `String` insert.
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i:012}")).collect();
    let values: Vec<String> = (0..KEYS).map(|i| format!("val-{i:012}")).collect();
    steps(
        "String -> String (16 bytes each), 1,000 keys in turn",
        keys.iter().cloned().zip(values.iter().cloned()),
        |i| keys[i as usize % keys.len()].clone(),
        |i| values[(i as usize + 1) % values.len()].clone(),
    );
}

/// The step table of inserting `key(i)`, `value(i)` into a dict of `entries`.
fn steps<K, V>(
    label: &str,
    entries: impl IntoIterator<Item = (K, V)>,
    key: impl Fn(u64) -> K,
    value: impl Fn(u64) -> V,
) where
    K: ultradict::Key + std::borrow::Borrow<K>,
    V: ultradict::Value,
    K::Stored: PartialEq<K>,
{
    let mut steps = WriteSteps::new(entries).expect("open");
    let insert = measure(|i| {
        black_box(steps.dict().insert(key(i), value(i)).expect("insert"));
    });
    let lock = measure(|_| steps.lock_unlock().expect("lock"));
    let view = measure(|_| {
        black_box(steps.view_current());
    });
    let record_len = steps.serialize(0);
    let serialize = measure(|i| {
        black_box(steps.serialize(i as usize));
    });
    let publish = measure(|_| steps.publish());
    let apply = measure(|i| steps.apply(key(i), value(i)));
    let dump_ms = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            steps.dict().dump().expect("dump");
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min);
    let per_epoch = steps.dict().status().buffer_size / record_len;
    let dump = dump_ms * 1e6 / per_epoch as f64;
    let sum = lock + view + serialize + publish + apply + dump;

    println!("\nwrite_steps: best of {ROUNDS} rounds x {OPS} ops; {label}, {KEYS} entries");
    println!("{:<58} {:>8} {:>9}", "step", "ns", "of insert");
    let row = |what: &str, ns: f64| {
        println!("{what:<58} {ns:>8.1} {:>8.0}%", 100.0 * ns / insert);
    };
    row("lock + unlock (the writers' cross-process lock)", lock);
    row("view for writing + check it is current", view);
    row(
        &format!("serialize + frame the record ({record_len} bytes)"),
        serialize,
    );
    row("publish (Release store, fence, change sequence)", publish);
    row("apply to the overlay (with the caller's clones)", apply);
    row(
        &format!("full dump ({dump_ms:.2} ms) / {per_epoch} records per stream"),
        dump,
    );
    row("sum of the steps", sum);
    row("insert, whole", insert);
    row(
        "  not in any step (calls, checks, the handle layer)",
        insert - sum,
    );

    let reader: UltraDict<K, V> = UltraDict::builder()
        .name(steps.dict().name())
        .create(Create::Open)
        .open()
        .expect("a second handle");
    let read = measure(|i| {
        black_box(reader.get(&key(i)).expect("get"));
    });
    let insert_then_read = measure(|i| {
        steps.dict().insert(key(i), value(i)).expect("insert");
        black_box(reader.get(&key(i)).expect("get"));
    });
    println!("{:<58} {:>8}", "reader's side", "ns");
    let row = |what: &str, ns: f64| println!("{what:<58} {ns:>8.1}");
    row("read with no news (with the key's clone)", read);
    row("insert, then another handle's read", insert_then_read);
    row(
        "  catch-up of one record (less the insert and a read)",
        insert_then_read - insert - read,
    );
    drop(reader);
    drop(steps); // the private dict goes with its last handle
}
