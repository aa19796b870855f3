//! Scenario 1: one process, small values, every peer.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use ultradict::{SharedDict, UltraDict};

use crate::{Report, Size, python};

/// A derived state with one field of each kind the scenario uses.
#[derive(SharedDict, Default)]
pub struct Bench {
    counter: u64,
    label: String,
}

/// Operations per second of `ops` calls of `op(i)`: the best of three rounds.
pub fn rate(ops: u64, mut op: impl FnMut(u64)) -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for i in 0..ops {
                op(i);
            }
            ops as f64 / start.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn key_u64(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9)
}

/// Writes to "distinct keys" cycle through this many keys, for every peer alike, so that the
/// dict keeps its size (a growing dict would measure its growth, not the write).
pub const DISTINCT_KEYS: u64 = 10_000;

fn distinct_key(i: u64, keys: u64) -> u64 {
    key_u64(keys + i % DISTINCT_KEYS)
}

fn key_str(i: u64) -> String {
    format!("key-{i:012}") // 16 bytes
}

/// The scenario names, shared with the Python peers (bench/peers.py) and the plot.
pub const READ_U64: &str = "1. read u64, no news";
pub const READ_STR: &str = "1. read String(16), no news";
pub const WRITE_DISTINCT: &str = "1. write u64, distinct keys";
pub const WRITE_HOT: &str = "1. write u64, one hot key";
pub const UPDATE: &str = "1. update (read-modify-write) u64";

pub fn single_process(size: Size, report: &mut Report) -> Result<(), Box<dyn std::error::Error>> {
    report.section("1. one process, small values (ratio = times slower than HashMap)");
    let (ops, keys) = (size.ops, size.keys);

    // Baseline: std HashMap.
    let mut map_u64: HashMap<u64, u64> = (0..keys).map(|i| (key_u64(i), i)).collect();
    let map_str: HashMap<String, String> =
        (0..keys).map(|i| (key_str(i), key_str(i + 1))).collect();
    let base_read_u64 = rate(ops, |i| {
        black_box(map_u64.get(&key_u64(i % keys)).copied());
    });
    let str_keys: Vec<String> = (0..keys).map(key_str).collect();
    let base_read_str = rate(ops, |i| {
        drop(black_box(
            map_str.get(&str_keys[(i % keys) as usize]).cloned(),
        ))
    });
    let base_write = rate(ops, |i| {
        black_box(map_u64.insert(distinct_key(i, keys), i));
    });
    let base_hot = rate(ops, |i| {
        black_box(map_u64.insert(7, i));
    });
    let base_update = rate(ops, |_| *map_u64.entry(7).or_insert(0) += 1);
    let baselines = [
        (READ_U64, base_read_u64),
        (READ_STR, base_read_str),
        (WRITE_DISTINCT, base_write),
        (WRITE_HOT, base_hot),
        (UPDATE, base_update),
    ];
    for (scenario, ops_per_sec) in baselines {
        report.ops(
            scenario,
            "std HashMap (in process)",
            ops_per_sec,
            Some(ops_per_sec),
        );
    }
    let baseline = |scenario: &str| {
        baselines
            .iter()
            .find(|(s, _)| *s == scenario)
            .map(|(_, v)| *v)
    };

    // ultradict map.
    let d_u64: UltraDict<u64, u64> = UltraDict::builder().open()?;
    d_u64.extend((0..keys).map(|i| (key_u64(i), i)))?;
    let d_str: UltraDict<String, String> = UltraDict::builder().open()?;
    d_str.extend((0..keys).map(|i| (key_str(i), key_str(i + 1))))?;
    report.ops(
        READ_U64,
        "ultradict map",
        rate(ops, |i| drop(black_box(d_u64.get(&key_u64(i % keys))))),
        baseline(READ_U64),
    );
    report.ops(
        READ_STR,
        "ultradict map",
        rate(ops, |i| {
            drop(black_box(d_str.get(&str_keys[(i % keys) as usize])))
        }),
        baseline(READ_STR),
    );
    report.ops(
        WRITE_DISTINCT,
        "ultradict map",
        rate(ops, |i| drop(d_u64.insert(distinct_key(i, keys), i))),
        baseline(WRITE_DISTINCT),
    );
    report.ops(
        WRITE_HOT,
        "ultradict map",
        rate(ops, |i| drop(d_u64.insert(7, i))),
        baseline(WRITE_HOT),
    );
    report.ops(
        UPDATE,
        "ultradict map",
        rate(ops, |_| drop(d_u64.update(&7, |v| v.unwrap_or(0) + 1))),
        baseline(UPDATE),
    );
    drop((d_u64, d_str));

    // ultradict derived struct: a field is a key.
    let state = Bench::builder().open()?;
    state.set_label(key_str(1))?;
    state.dump()?;
    report.ops(
        READ_U64,
        "ultradict derived struct",
        rate(ops, |_| drop(black_box(state.counter()))),
        baseline(READ_U64),
    );
    report.ops(
        READ_STR,
        "ultradict derived struct",
        rate(ops, |_| drop(black_box(state.label()))),
        baseline(READ_STR),
    );
    report.ops(
        WRITE_HOT,
        "ultradict derived struct",
        rate(ops, |i| drop(state.set_counter(i))),
        baseline(WRITE_HOT),
    );
    report.ops(
        UPDATE,
        "ultradict derived struct",
        rate(ops, |_| drop(state.update_counter(|c| c + 1))),
        baseline(UPDATE),
    );
    drop(state);

    lmdb(size, report, &baseline);
    redis(size, report, &baseline);
    python::single_process(size, report, &baseline);
    Ok(())
}

#[cfg(feature = "lmdb")]
fn lmdb(size: Size, report: &mut Report, baseline: &dyn Fn(&str) -> Option<f64>) {
    use heed::types::{Str, U64};
    use heed::{EnvFlags, EnvOpenOptions};
    type Ne = heed::byteorder::NativeEndian;
    let run = |report: &mut Report| -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("ultradict-bench-lmdb-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // SAFETY: the directory is this run's own; no other process opens it.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(1 << 30)
                .max_dbs(2)
                .flags(EnvFlags::NO_SYNC)
                .open(&dir)?
        };
        let mut wtxn = env.write_txn()?;
        let numbers: heed::Database<U64<Ne>, U64<Ne>> =
            env.create_database(&mut wtxn, Some("u64"))?;
        let strings: heed::Database<Str, Str> = env.create_database(&mut wtxn, Some("str"))?;
        let (ops, keys) = (size.ops, size.keys);
        for i in 0..keys {
            numbers.put(&mut wtxn, &key_u64(i), &i)?;
            strings.put(&mut wtxn, &key_str(i), &key_str(i + 1))?;
        }
        wtxn.commit()?;
        let peer = "LMDB (heed, txn per op, no sync)";
        let read_u64 = rate(ops, |i| {
            let rtxn = env.read_txn().expect("read txn");
            black_box(numbers.get(&rtxn, &key_u64(i % keys)).expect("get"));
        });
        report.ops(READ_U64, peer, read_u64, baseline(READ_U64));
        let read_str = rate(ops, |i| {
            let rtxn = env.read_txn().expect("read txn");
            black_box(
                strings
                    .get(&rtxn, &key_str(i % keys))
                    .expect("get")
                    .map(str::to_owned),
            );
        });
        report.ops(READ_STR, peer, read_str, baseline(READ_STR));
        let put = |key: u64, value: u64| {
            let mut wtxn = env.write_txn().expect("write txn");
            numbers.put(&mut wtxn, &key, &value).expect("put");
            wtxn.commit().expect("commit");
        };
        report.ops(
            WRITE_DISTINCT,
            peer,
            rate(ops, |i| put(distinct_key(i, keys), i)),
            baseline(WRITE_DISTINCT),
        );
        report.ops(
            WRITE_HOT,
            peer,
            rate(ops, |i| put(7, i)),
            baseline(WRITE_HOT),
        );
        let update = rate(ops, |_| {
            let mut wtxn = env.write_txn().expect("write txn");
            let value = numbers.get(&wtxn, &7).expect("get").unwrap_or(0);
            numbers.put(&mut wtxn, &7, &(value + 1)).expect("put");
            wtxn.commit().expect("commit");
        });
        report.ops(UPDATE, peer, update, baseline(UPDATE));
        drop(env);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    };
    if let Err(err) = run(report) {
        report.note(format!("LMDB skipped: {err}"));
    }
}

#[cfg(not(feature = "lmdb"))]
fn lmdb(_: Size, report: &mut Report, _: &dyn Fn(&str) -> Option<f64>) {
    report.note("LMDB skipped: built without the `lmdb` feature (bench/run.sh enables it)");
}

#[cfg(feature = "redis")]
fn redis(size: Size, report: &mut Report, baseline: &dyn Fn(&str) -> Option<f64>) {
    use redis::Commands;
    let run = |report: &mut Report| -> Result<(), Box<dyn std::error::Error>> {
        let client = redis::Client::open("redis://127.0.0.1:6379/")?;
        let mut con = client.get_connection_with_timeout(std::time::Duration::from_secs(1))?;
        let ops = size.ops.min(20_000); // a round trip per operation: fewer of them
        let keys = size.keys;
        for i in 0..keys {
            let _: () = con.set(format!("b:{}", key_u64(i)), i)?;
            let _: () = con.set(format!("s:{}", key_str(i)), key_str(i + 1))?;
        }
        let peer = "Redis (redis crate, localhost)";
        let mut read = |key: String| -> Option<u64> { con.get(key).expect("get") };
        report.ops(
            READ_U64,
            peer,
            rate(ops, |i| {
                let _ = black_box(read(format!("b:{}", key_u64(i % keys))));
            }),
            baseline(READ_U64),
        );
        let mut con = client.get_connection()?;
        let read_str = rate(ops, |i| {
            let value: Option<String> = con.get(format!("s:{}", key_str(i % keys))).expect("get");
            black_box(value);
        });
        report.ops(READ_STR, peer, read_str, baseline(READ_STR));
        let distinct = rate(ops, |i| {
            let _: () = con
                .set(format!("b:{}", distinct_key(i, keys)), i)
                .expect("set");
        });
        report.ops(WRITE_DISTINCT, peer, distinct, baseline(WRITE_DISTINCT));
        let hot = rate(ops, |i| {
            let _: () = con.set("b:hot", i).expect("set");
        });
        report.ops(WRITE_HOT, peer, hot, baseline(WRITE_HOT));
        let incr = rate(ops, |_| {
            let _: u64 = con.incr("b:counter", 1).expect("incr");
        });
        report.ops(UPDATE, "Redis (INCR)", incr, baseline(UPDATE));
        let _: () = redis::cmd("FLUSHDB").query(&mut con)?;
        Ok(())
    };
    if let Err(err) = run(report) {
        report.note(format!(
            "Redis skipped: {err} (is redis-server running on 127.0.0.1:6379?)"
        ));
    }
}

#[cfg(not(feature = "redis"))]
fn redis(_: Size, report: &mut Report, _: &dyn Fn(&str) -> Option<f64>) {
    report.note("Redis skipped: built without the `redis` feature (bench/run.sh enables it)");
}
