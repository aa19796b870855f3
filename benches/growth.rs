//! What a write costs as the dict grows, full dumps amortized, with default settings.
//! Run with `cargo bench --bench growth` (about a minute).
//!
//! For each size (1k to 1M `u64 -> u64` entries), a fresh dict is filled, dumped, and then
//! overwritten by `insert` for at least three of the full dumps the stream forces, and at
//! least `MIN_OPS` writes: the time per write includes its share of those dumps. Two key
//! patterns: a hot set of 1,000 keys, and keys spread over the whole dict. Beside each, the
//! same pattern on a `HashMap` of the same size and hasher: spread keys miss the caches at
//! any size past them, which no dict can avoid. The last columns time one full dump right after
//! the spread writes (its overlay holds every key they changed since the last dump), then the
//! median of `AGAIN` more (an empty overlay), and of a reader's switch to each (map and
//! validate) at that size.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use ultradict::UltraDict;

const SIZES: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];
const MIN_OPS: u64 = 200_000;
const MIN_DUMPS: u64 = 3;
/// How many dumps with an empty overlay, and switches to them, the median is taken of.
const AGAIN: usize = 7;
/// Enough for a million writes between dumps and then some; the loop stops earlier.
const MAX_OPS: u64 = 8_000_000;

/// Amortized ns per `insert` over keys `key(i)`: runs until `MIN_DUMPS` dumps and `MIN_OPS`
/// writes. Returns (ns per write, writes, dumps).
fn amortized(dict: &UltraDict<u64, u64>, key: impl Fn(u64) -> u64) -> (f64, u64, u64) {
    let dumps_before = dict.status().dumps;
    let start = Instant::now();
    let mut ops = 0;
    while ops < MAX_OPS {
        for _ in 0..1_000 {
            black_box(dict.insert(key(ops), ops).expect("insert"));
            ops += 1;
        }
        if ops >= MIN_OPS && dict.status().dumps - dumps_before >= MIN_DUMPS {
            break;
        }
    }
    let elapsed = start.elapsed();
    (
        elapsed.as_nanos() as f64 / ops as f64,
        ops,
        dict.status().dumps - dumps_before,
    )
}

/// ns per `HashMap::insert` (same hasher as the dict) over keys `key(i)` in a map of `n`.
fn floor(n: u64, key: impl Fn(u64) -> u64) -> f64 {
    let mut map: HashMap<u64, u64, foldhash::fast::RandomState> = HashMap::default();
    map.extend((0..n).map(|k| (k, k)));
    let ops = 2_000_000;
    let start = Instant::now();
    for i in 0..ops {
        black_box(map.insert(key(i), i));
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    println!(
        "growth: u64 -> u64, default buffer_size; ns per insert with dumps amortized \
         (each row: >= {MIN_DUMPS} dumps and >= {MIN_OPS} writes)"
    );
    println!(
        "{:>9} {:>10} {:>8} {:>8} {:>6} {:>10} {:>8} {:>8} {:>6} {:>8} {:>8} {:>9} {:>10}",
        "entries",
        "hot ns",
        "floor",
        "writes",
        "dumps",
        "spread ns",
        "floor",
        "writes",
        "dumps",
        "dump ms",
        "again ms",
        "switch ms",
        "stream KiB"
    );
    let mut first = None;
    for n in SIZES {
        let dict: UltraDict<u64, u64> = UltraDict::builder().open().expect("open");
        dict.extend((0..n).map(|k| (k, k))).expect("extend");
        dict.dump().expect("dump");
        let hot_key = |i: u64| (i * 7919) % n.min(1_000);
        let spread_key = |i: u64| (i * 7919) % n;
        let (hot, hot_ops, hot_dumps) = amortized(&dict, hot_key);
        let (spread, spread_ops, spread_dumps) = amortized(&dict, spread_key);
        let (hot_floor, spread_floor) = (floor(n, hot_key), floor(n, spread_key));
        // A full dump right after the spread writes, timed alone; then more dumps, each
        // followed by a second handle's switch to it: the medians of those.
        let reader: UltraDict<u64, u64> = UltraDict::open(dict.name()).expect("open reader");
        reader.get(&0).expect("get");
        let start = Instant::now();
        dict.dump().expect("dump");
        let dump = start.elapsed();
        reader.get(&0).expect("get");
        let (mut agains, mut switches) = (Vec::new(), Vec::new());
        for _ in 0..AGAIN {
            let start = Instant::now();
            dict.dump().expect("dump");
            agains.push(start.elapsed());
            let start = Instant::now();
            reader.get(&0).expect("get");
            switches.push(start.elapsed());
        }
        let (again, switch) = (median(&mut agains), median(&mut switches));
        let stream = dict.status().buffer_size / 1024;
        println!(
            "{n:>9} {hot:>10.1} {hot_floor:>8.1} {hot_ops:>8} {hot_dumps:>6} {spread:>10.1} \
             {spread_floor:>8.1} {spread_ops:>8} {spread_dumps:>6} {:>8.2} {:>8.2} {:>9.2} \
             {stream:>10}",
            ms(dump),
            ms(again),
            ms(switch),
        );
        let (hot_1k, spread_1k, spread_floor_1k) =
            *first.get_or_insert((hot, spread, spread_floor));
        if n == *SIZES.last().expect("sizes") {
            println!(
                "ratio {n} / {} entries: hot {:.2}x, spread {:.2}x (target: at most 2x); \
                 the HashMap floor's spread ratio: {:.2}x",
                SIZES[0],
                hot / hot_1k,
                spread / spread_1k,
                spread_floor / spread_floor_1k,
            );
        }
        reader.close().expect("close");
        dict.close().expect("close");
    }
}
