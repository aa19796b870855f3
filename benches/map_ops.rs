//! Single-process costs of the map against `HashMap`, measured in one run so the ratios are
//! comparable on a noisy machine. Run with `cargo bench --bench map_ops`.
//!
//! Every figure is the best of several rounds of many operations (the minimum filters out
//! the other tenants of a shared machine), reported in ns per operation. The ratio is to a
//! `HashMap` with the dict's own hasher (foldhash), the honest floor; std's default
//! (SipHash) `HashMap` is shown beside it.

use std::collections::HashMap;

type FoldMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::hint::black_box;
use std::time::Instant;

use ultradict::UltraDict;

const KEYS: usize = 1_000;
const ROUNDS: usize = 7;
const OPS_PER_ROUND: usize = 200_000;

/// Best (lowest) ns per operation of `ROUNDS` rounds of `OPS_PER_ROUND` calls of `op(i)`.
fn measure(mut op: impl FnMut(usize)) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..OPS_PER_ROUND {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / OPS_PER_ROUND as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// A table row: std's `HashMap`, the same-hasher `HashMap` (the baseline), ultradict, ratio.
fn row(what: &str, std: f64, baseline: f64, ours: f64, goal: &str) {
    println!(
        "{what:<34} {std:>9.1} {baseline:>9.1} {ours:>11.1} {:>8.2}x   {goal}",
        ours / baseline
    );
}

fn bench<K, V>(label: &str, key: impl Fn(usize) -> K, value: impl Fn(usize) -> V)
where
    K: ultradict::Key + std::borrow::Borrow<K>,
    V: ultradict::Value,
    K::Stored: PartialEq<K>,
{
    let keys: Vec<K> = (0..KEYS).map(&key).collect();
    let values: Vec<V> = (0..KEYS).map(&value).collect();

    let mut std_map: HashMap<K, V> = HashMap::new();
    let mut fold_map: FoldMap<K, V> = FoldMap::default();
    for (k, v) in keys.iter().zip(&values) {
        std_map.insert(k.clone(), v.clone());
        fold_map.insert(k.clone(), v.clone());
    }
    let dict: UltraDict<K, V> = UltraDict::builder().open().expect("open");
    dict.extend(keys.iter().cloned().zip(values.iter().cloned()))
        .expect("extend");

    // Reads with no news, entries in the stream overlay (no dump yet).
    let std_get = measure(|i| {
        black_box(std_map.get(&keys[i % KEYS]).cloned());
    });
    let fold_get = measure(|i| {
        black_box(fold_map.get(&keys[i % KEYS]).cloned());
    });
    let overlay_get = measure(|i| {
        black_box(dict.get(&keys[i % KEYS]).expect("get"));
    });
    // The same after a full dump: lookups go to the mapped, archived map.
    dict.dump().expect("dump");
    let dump_get = measure(|i| {
        black_box(dict.get(&keys[i % KEYS]).expect("get"));
    });

    // Inserts overwriting existing keys, uncontended. Include the amortized cost of the full
    // dumps the stream forces every ~20k small records.
    let std_insert = measure(|i| {
        black_box(std_map.insert(keys[i % KEYS].clone(), values[(i + 1) % KEYS].clone()));
    });
    let fold_insert = measure(|i| {
        black_box(fold_map.insert(keys[i % KEYS].clone(), values[(i + 1) % KEYS].clone()));
    });
    let dict_insert = measure(|i| {
        black_box(
            dict.insert(keys[i % KEYS].clone(), values[(i + 1) % KEYS].clone())
                .expect("insert"),
        );
    });
    let dict_update = measure(|i| {
        black_box(
            dict.update(&keys[i % KEYS], |_| values[(i + 1) % KEYS].clone())
                .expect("update"),
        );
    });

    println!(
        "\n{label}: {KEYS} keys{:>12}{:>10}{:>13}",
        "std ns", "fold ns", "ultradict ns"
    );
    row(
        "get, no news (stream overlay)",
        std_get,
        fold_get,
        overlay_get,
        "goal: within 1.3x",
    );
    row(
        "get, no news (mapped dump)",
        std_get,
        fold_get,
        dump_get,
        "goal: within 1.3x",
    );
    row(
        "insert, overwrite",
        std_insert,
        fold_insert,
        dict_insert,
        "goal: within 10x",
    );
    row(
        "update (read-modify-write)",
        std_insert,
        fold_insert,
        dict_update,
        "",
    );
    let status = dict.status();
    println!(
        "  (the insert rounds went through {} full dumps)",
        status.dumps
    );
    dict.close().expect("close");
}

fn main() {
    println!(
        "map_ops: best of {ROUNDS} rounds x {OPS_PER_ROUND} ops; ratio = ultradict / HashMap with \
         the dict's hasher (foldhash)"
    );
    bench("u64 -> u64", |i| i as u64 * 7919, |i| i as u64);
    bench(
        "String -> String (16-byte strings)",
        |i| format!("key-{i:012}"),
        |i| format!("val-{i:012}"),
    );
}
