//! Sharing between real processes: re-executed children (independent programs) and forked
//! ones. Each child runs this same test binary with a role (see `child_entry`).

use std::time::{Duration, Instant};

use ultradict::{Create, UltraDict};
use ultradict_test_kit::{
    Spawn, arg, assert_no_segments, fork, report, role, run_all, unique_name, wait_forked,
};

const WATCHDOG: Duration = Duration::from_secs(120);

/// Polls `f` until it returns `Some`, failing after `timeout`.
fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A value that proves it is whole: `len` copies of `seq`, `len` derived from `seq`.
fn checked_value(seq: u64) -> (u64, Vec<u64>) {
    (seq, vec![seq; (seq % 37 + 1) as usize])
}

fn is_whole(value: &(u64, Vec<u64>)) -> bool {
    value.1.len() == (value.0 % 37 + 1) as usize && value.1.iter().all(|&x| x == value.0)
}

/// The children's side of every scenario below.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let name = arg("NAME");
    match role.as_str() {
        "echo" => {
            let d: UltraDict<String, u64> = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            let seen = eventually(Duration::from_secs(30), || d.get("from_parent").unwrap());
            report(format!("saw {seen}"));
            d.insert("from_child".into(), seen + 1).unwrap();
            // Stay attached until the parent saw our write.
            eventually(Duration::from_secs(30), || d.get("parent_done").unwrap());
        }
        "insert_distinct" => {
            let d: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
            let me: u64 = arg("INDEX").parse().unwrap();
            let count: u64 = arg("COUNT").parse().unwrap();
            for n in 0..count {
                d.insert(format!("w{me}-{n}"), me * 1_000_000 + n).unwrap();
            }
        }
        "increment" => {
            let d: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
            let count: u64 = arg("COUNT").parse().unwrap();
            for _ in 0..count {
                d.update("counter", |n| n.unwrap_or(0) + 1).unwrap();
            }
        }
        "read_big" => {
            let d: UltraDict<u32, Vec<u8>> = UltraDict::builder()
                .name(&name)
                .create(Create::Open)
                .open()
                .unwrap();
            let big = d.get(&1).unwrap().expect("big value visible");
            report(format!(
                "len {} sum {}",
                big.len(),
                big.iter().map(|&b| u64::from(b)).sum::<u64>()
            ));
            report(format!("epoch {}", d.status().epoch));
        }
        "write_sequence" => {
            let d: UltraDict<u32, (u64, Vec<u64>)> = UltraDict::open(&name).unwrap();
            let count: u64 = arg("COUNT").parse().unwrap();
            for seq in 1..=count {
                d.insert((seq % 16) as u32, checked_value(seq)).unwrap();
            }
            d.insert(u32::MAX, (0, vec![])).unwrap(); // done marker
            report(format!("epoch {}", d.status().epoch));
        }
        "check_sequence" => {
            let d: UltraDict<u32, (u64, Vec<u64>)> = UltraDict::open(&name).unwrap();
            report("ready");
            let mut last = [0u64; 16];
            let mut reads = 0u64;
            let mut changes = 0u64;
            loop {
                for key in 0..16u32 {
                    reads += 1;
                    if let Some(value) = d.get(&key).unwrap() {
                        assert!(is_whole(&value), "torn value {value:?}");
                        assert_eq!(value.0 % 16, u64::from(key), "value of another key");
                        assert!(
                            value.0 >= last[key as usize],
                            "went back from {} to {}",
                            last[key as usize],
                            value.0
                        );
                        if value.0 > last[key as usize] {
                            changes += 1;
                        }
                        last[key as usize] = value.0;
                    }
                }
                if d.contains_key(&u32::MAX).unwrap() {
                    break;
                }
            }
            report(format!(
                "reads {reads} changes {changes} epoch {}",
                d.status().epoch
            ));
        }
        "watch_grown" => {
            // Watches the keys from 1,000,000 on until the marker key u32::MAX arrives, and
            // reports how many distinct ones it saw named, and the epoch.
            let d: UltraDict<u32, u64> = UltraDict::open(&name).unwrap();
            let mut watcher = d.watch();
            report("ready");
            let count: u32 = arg("COUNT").parse().unwrap();
            let mut named = std::collections::BTreeSet::new();
            let mut everything = 0;
            let mut told = false;
            loop {
                match watcher.wait(Duration::from_secs(30)).unwrap() {
                    Some(ultradict::Change::Keys(keys)) => named.extend(keys),
                    Some(ultradict::Change::Everything) => everything += 1,
                    None => panic!("no change within 30 s"),
                }
                if !told && named.range(1_000_000..1_000_000 + count).count() == count as usize {
                    // The parent switches epochs only after this.
                    report(format!("seen everything {everything}"));
                    told = true;
                }
                if named.contains(&u32::MAX) || d.contains_key(&u32::MAX).unwrap() {
                    break;
                }
            }
            let written = (1_000_000..1_000_000 + count)
                .filter(|k| d.get(k).unwrap() == Some(u64::from(*k) * 3))
                .count();
            report(format!(
                "named {} everything {everything} written {written} epoch {}",
                named.len(),
                d.status().epoch
            ));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn spawned_processes_see_each_others_writes() {
    let name = unique_name("spawned");
    let d: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
    let mut child = Spawn::test("child_entry", "echo")
        .env("NAME", &name)
        .start();
    d.insert("from_parent".into(), 41).unwrap();
    assert_eq!(child.wait_for_report("saw", WATCHDOG), "saw 41");
    let from_child = eventually(Duration::from_secs(30), || d.get("from_child").unwrap());
    assert_eq!(from_child, 42);
    d.insert("parent_done".into(), 1).unwrap();
    child.wait(WATCHDOG);
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn forked_processes_see_each_others_writes() {
    let name = unique_name("forked");
    let d: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
    d.insert("before_fork".into(), 1).unwrap();
    let pid = fork(|| {
        // The inherited handle works in the child.
        assert_eq!(d.get("before_fork").unwrap(), Some(1));
        d.insert("from_child".into(), 7).unwrap();
        eventually(Duration::from_secs(30), || d.get("from_parent").unwrap());
        // And so does a handle opened afresh in the child.
        let fresh: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
        assert_eq!(fresh.get("from_parent").unwrap(), Some(8));
        0
    });
    d.insert("from_parent".into(), 8).unwrap();
    assert_eq!(
        eventually(Duration::from_secs(30), || d.get("from_child").unwrap()),
        7
    );
    assert_eq!(wait_forked(pid, WATCHDOG), 0);
    drop(d);
    assert_no_segments(&name);
}

/// `writers` processes insert `count` distinct keys each, at once, into a dict with a stream
/// of `buffer` bytes; every key must be there with its value.
fn distinct_writers(tag: &str, writers: u64, count: u64, buffer: usize) -> UltraDict<String, u64> {
    let name = unique_name(tag);
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .buffer_size(buffer)
        .open()
        .unwrap();
    run_all(
        (0..writers).map(|i| {
            Spawn::test("child_entry", "insert_distinct")
                .env("NAME", &name)
                .env("INDEX", i)
                .env("COUNT", count)
        }),
        WATCHDOG,
    );
    let all = d.to_hashmap().unwrap();
    assert_eq!(all.len(), (writers * count) as usize);
    for i in 0..writers {
        for n in 0..count {
            assert_eq!(all.get(&format!("w{i}-{n}")), Some(&(i * 1_000_000 + n)));
        }
    }
    d
}

#[test]
fn concurrent_writers_lose_nothing() {
    // A small stream, so the writers go through many dumps while they race.
    let d = distinct_writers("writers", 3, 10_000, 64 << 10);
    assert!(
        d.status().epoch > 1,
        "the test meant to cross epochs: {}",
        d.status()
    );
    let name = d.name().to_owned();
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn eight_processes_insert_ten_thousand_keys_at_once() {
    let d = distinct_writers("eight", 8, 1_250, 16 << 10);
    let name = d.name().to_owned();
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn concurrent_updates_give_the_exact_total() {
    const WORKERS: u64 = 3;
    const COUNT: u64 = 10_000;
    let name = unique_name("increments");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .buffer_size(32 << 10)
        .open()
        .unwrap();
    run_all(
        (0..WORKERS).map(|_| {
            Spawn::test("child_entry", "increment")
                .env("NAME", &name)
                .env("COUNT", COUNT)
        }),
        WATCHDOG,
    );
    assert_eq!(d.get("counter").unwrap(), Some(WORKERS * COUNT));
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn value_larger_than_the_stream_goes_through_a_dump() {
    let name = unique_name("big");
    let d: UltraDict<u32, Vec<u8>> = UltraDict::builder()
        .name(&name)
        .buffer_size(4096)
        .open()
        .unwrap();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = big.iter().map(|&b| u64::from(b)).sum();
    d.insert(1, big).unwrap();
    assert_eq!(
        d.status().epoch,
        1,
        "the value cannot fit the stream: it must have made a dump"
    );
    let reports = Spawn::test("child_entry", "read_big")
        .env("NAME", &name)
        .start()
        .wait(WATCHDOG);
    assert_eq!(
        reports,
        vec![format!("len 100000 sum {sum}"), "epoch 1".to_owned()]
    );
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn readers_never_see_torn_or_stale_epoch_values() {
    let name = unique_name("torn");
    // 2 KiB of stream: a dump every few dozen writes.
    let d: UltraDict<u32, (u64, Vec<u64>)> = UltraDict::builder()
        .name(&name)
        .buffer_size(2048)
        .open()
        .unwrap();
    let mut reader = Spawn::test("child_entry", "check_sequence")
        .env("NAME", &name)
        .start();
    reader.wait_for_report("ready", WATCHDOG);
    let writer = Spawn::test("child_entry", "write_sequence")
        .env("NAME", &name)
        .env("COUNT", 5_000)
        .start();
    let writer_reports = writer.wait(WATCHDOG);
    let reader_reports = reader.wait(WATCHDOG);
    let epochs: u32 = writer_reports[0]
        .trim_start_matches("epoch ")
        .parse()
        .unwrap();
    assert!(epochs > 50, "expected many epochs, got {epochs}");
    let summary = reader_reports.last().expect("reader summary");
    assert!(summary.starts_with("reads "), "{reader_reports:?}");
    for key in 0..16u32 {
        let value = d.get(&key).unwrap().unwrap();
        assert!(is_whole(&value));
        assert!(value.0 > 5_000 - 16);
    }
    drop(d);
    assert_no_segments(&name);
}

#[test]
fn a_dict_larger_than_its_buffer_streams_into_its_dump_segment() {
    // A 4 KiB buffer and a dict whose dump is ~10x that: the epochs after its first dump get
    // a stream as large as the dump, in the dump's segment, so that dumps stay rare.
    const COUNT: u32 = 600;
    let name = unique_name("grown");
    let d: UltraDict<u32, u64> = UltraDict::builder()
        .name(&name)
        .buffer_size(4096)
        .open()
        .unwrap();
    d.extend((0..2_000).map(|k| (k, u64::from(k)))).unwrap();
    d.dump().unwrap();
    let status = d.status();
    assert!(status.dump_bytes > 16_384, "{status}");
    assert!(
        status.buffer_size as u64 >= status.dump_bytes,
        "the epoch's stream is as large as its dump: {status}"
    );
    let epoch = status.epoch;
    let mut watcher = Spawn::test("child_entry", "watch_grown")
        .env("NAME", &name)
        .env("COUNT", COUNT)
        .start();
    watcher.wait_for_report("ready", WATCHDOG);
    // Many times the 4 KiB buffer of records, each a little apart so the watcher reads them
    // from the dump segment's stream, key by key.
    for k in 1_000_000..1_000_000 + COUNT {
        d.insert(k, u64::from(k) * 3).unwrap();
        if k % 64 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let status = d.status();
    assert_eq!(status.epoch, epoch, "no dump was needed: {status}");
    assert!(status.buffer_used > 4 * 4096, "{status}");
    // The watcher named every key, one by one, from the grown stream, with no reset.
    let seen = watcher.wait_for_report("seen", WATCHDOG);
    assert_eq!(seen, "seen everything 0");
    // Then past its end: the next dump, and its own larger stream.
    let mut k = 2_000_000u32;
    while d.status().epoch == epoch {
        d.insert(k, 0).unwrap();
        k += 1;
    }
    d.insert(u32::MAX, 0).unwrap();
    let reports = watcher.wait(WATCHDOG);
    let summary = reports.last().expect("a summary");
    let fields: Vec<&str> = summary.split(' ').collect();
    assert_eq!(fields[0], "named", "{reports:?}");
    assert_eq!(
        fields[5],
        COUNT.to_string(),
        "every write visible: {summary}"
    );
    assert!(fields[7].parse::<u32>().unwrap() > epoch, "{summary}");
    drop(d);
    assert_no_segments(&name);
}
