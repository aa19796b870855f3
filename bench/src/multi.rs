//! Scenarios 2 to 5: several processes, propagation, dumps and memory, bulk load.
//! Children are forked; they report through a small anonymous shared mapping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ultradict::{Create, UltraDict};

use crate::{Report, Size, python};

/// Slots children write their results into, shared across `fork`.
struct Board {
    slots: &'static [AtomicU64],
}

impl Board {
    fn new(len: usize) -> Board {
        // SAFETY: a fresh anonymous shared mapping, zero-filled, never unmapped (a bench
        // process makes a handful); AtomicU64 is valid for any bit pattern.
        let slots = unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED, "mmap");
            std::slice::from_raw_parts(map.cast::<AtomicU64>(), len)
        };
        Board { slots }
    }

    fn get(&self, i: usize) -> u64 {
        self.slots[i].load(Ordering::SeqCst)
    }

    fn set(&self, i: usize, value: u64) {
        self.slots[i].store(value, Ordering::SeqCst);
    }
}

/// Forks `count` children running `work(index)`; they start together when all are ready.
/// Returns the seconds from the start signal until the last one finished.
fn fork_all(count: usize, work: impl Fn(usize)) -> f64 {
    let board = Board::new(2);
    let pids: Vec<libc::pid_t> = (0..count)
        .map(|index| {
            // SAFETY: the harness is single-threaded here; the child runs `work` and exits
            // with `_exit`, never returning into the parent's state.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                board.slots[0].fetch_add(1, Ordering::SeqCst);
                while board.get(1) == 0 {
                    std::hint::spin_loop();
                }
                work(index);
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            pid
        })
        .collect();
    while board.get(0) < count as u64 {
        std::thread::yield_now();
    }
    let start = Instant::now();
    board.set(1, 1);
    for pid in pids {
        let mut status = 0;
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "a child failed"
        );
    }
    start.elapsed().as_secs_f64()
}

fn attach<K: ultradict::Key, V: ultradict::Value>(name: &str) -> UltraDict<K, V> {
    UltraDict::builder()
        .name(name)
        .create(Create::Open)
        .open()
        .expect("attach")
}

pub fn writers_and_readers(
    size: Size,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    report.section("2. several processes");
    let ops = size.scaled(100_000, 1_000);
    for processes in [2usize, 4] {
        let d: UltraDict<u32, u64> = UltraDict::builder().buffer_size(4 << 20).open()?;
        let name = d.name().to_owned();
        let secs = fork_all(processes, |_| {
            let d: UltraDict<u32, u64> = attach(&name);
            for _ in 0..ops {
                d.update(&0, |v| v.unwrap_or(0) + 1).expect("update");
            }
        });
        let total = d.get(&0)?.unwrap_or(0);
        assert_eq!(total, processes as u64 * ops, "lost updates");
        let scenario = format!("2. {processes} writers, locked increments (aggregate)");
        report.ops(
            &scenario,
            "ultradict map (update)",
            (processes as u64 * ops) as f64 / secs,
            None,
        );
    }
    for processes in [2usize, 4] {
        python::run(
            &[
                "writers".into(),
                processes.to_string(),
                size.scaled(5_000, 100).to_string(),
            ],
            report,
            &|_| None,
        );
    }

    // One writer, N readers: reader throughput while writes stream, and how many reads found
    // no news (served without a catch-up); beside it the same readers while the writer is
    // idle, and for one reader the floor of a reader that sees a writer's changes.
    let run_for = Duration::from_millis(size.scaled(1_000, 50));
    for readers in [1usize, 3] {
        let idle = one_writer(readers, false, run_for)?;
        let busy = one_writer(readers, true, run_for)?;
        let secs = run_for.as_secs_f64();
        let scenario = format!("2. 1 writer + {readers} readers");
        report.ops(
            &format!("{scenario}: reads (aggregate), writer idle"),
            "ultradict map",
            idle.reads as f64 / secs,
            None,
        );
        report.ops(
            &format!("{scenario}: reads (aggregate)"),
            "ultradict map",
            busy.reads as f64 / secs,
            Some(idle.reads as f64 / secs),
        );
        report.ops(
            &format!("{scenario}: writes"),
            "ultradict map",
            busy.writes as f64 / secs,
            None,
        );
        let fast = 100.0 * (1.0 - busy.catch_ups as f64 / busy.reads.max(1) as f64);
        report.value(
            &format!("{scenario}: reads with no news"),
            "ultradict map",
            fast,
            "%",
        );
        if readers == 1 {
            let writes_per_sec = busy.writes as f64 / secs;
            let alone = changing_word(false, writes_per_sec, run_for);
            let changing = changing_word(true, writes_per_sec, run_for);
            report.ops(
                &format!("{scenario}: reads (aggregate), writer idle"),
                "floor: one shared word",
                alone as f64 / secs,
                None,
            );
            report.ops(
                &format!("{scenario}: reads (aggregate)"),
                "floor: one shared word",
                changing as f64 / secs,
                Some(alone as f64 / secs),
            );
        }
    }
    Ok(())
}

/// How many reads a reader makes between two readings of the clock.
const CLOCK_EVERY: u64 = 64;

/// What a run of one writer and some readers counted.
struct Counts {
    reads: u64,
    writes: u64,
    catch_ups: u64,
}

/// One writer (inserting over 1,000 keys as fast as it can, or idle) and `readers` readers
/// (`get` over the same keys), each in its own process, for `run_for`.
fn one_writer(
    readers: usize,
    writing: bool,
    run_for: Duration,
) -> Result<Counts, Box<dyn std::error::Error>> {
    let d: UltraDict<u32, u64> = UltraDict::builder().buffer_size(4 << 20).open()?;
    d.extend((0..1_000).map(|k| (k, 0)))?;
    let name = d.name().to_owned();
    let board = Board::new(2 * readers + 2);
    fork_all(readers + 1, |index| {
        let d: UltraDict<u32, u64> = attach(&name);
        let start = Instant::now();
        let mut n = 0u64;
        if index == 0 {
            while writing && start.elapsed() < run_for {
                d.insert((n % 1_000) as u32, n).expect("insert");
                n += 1;
            }
            board.set(0, n);
        } else {
            let before = d.status().catch_ups;
            // The clock is read once every `CLOCK_EVERY` reads: reading it costs more than a
            // read with no news.
            while start.elapsed() < run_for {
                for _ in 0..CLOCK_EVERY {
                    std::hint::black_box(d.get(&((n % 1_000) as u32)).expect("get"));
                    n += 1;
                }
            }
            board.set(2 * index, n);
            board.set(2 * index + 1, d.status().catch_ups - before);
        }
    });
    Ok(Counts {
        reads: (1..=readers).map(|i| board.get(2 * i)).sum(),
        writes: board.get(0),
        catch_ups: (1..=readers).map(|i| board.get(2 * i + 1)).sum(),
    })
}

/// The floor of a reader that keeps up with a writer in another process: the writer stores a
/// payload and then a counter, `writes_per_sec` times a second (or not at all); the reader, in
/// the loop our readers run, loads the counter and, when it changed, the payload (a record's
/// bytes on a line of their own). Returns the reader's loads in `run_for`.
fn changing_word(writing: bool, writes_per_sec: f64, run_for: Duration) -> u64 {
    const WORD: usize = 0;
    const PAYLOAD: usize = 8;
    const READS: usize = 16;
    let board = Board::new(READS + 1);
    let interval = Duration::from_secs_f64(1.0 / writes_per_sec.max(1.0));
    fork_all(2, |index| {
        let start = Instant::now();
        if index == 0 {
            let mut next = start;
            let mut n = 0u64;
            while writing && start.elapsed() < run_for {
                n += 1;
                board.slots[PAYLOAD].store(n, Ordering::Relaxed);
                board.slots[WORD].store(n, Ordering::Release);
                next += interval;
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
            }
        } else {
            let mut seen = 0u64;
            let mut reads = 0u64;
            while start.elapsed() < run_for {
                for _ in 0..CLOCK_EVERY {
                    let word = board.slots[WORD].load(Ordering::Acquire);
                    if word != seen {
                        seen = word;
                        std::hint::black_box(board.slots[PAYLOAD].load(Ordering::Relaxed));
                    }
                    reads += 1;
                }
            }
            board.set(READS, reads);
        }
    });
    board.get(READS)
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC is one clock for every process.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize] as f64
}

pub fn propagation(size: Size, report: &mut Report) -> Result<(), Box<dyn std::error::Error>> {
    report.section("3. propagation between two processes (busy-polling reader)");
    let rounds = size.scaled(20_000, 200) as usize;

    // The floor: a timestamp handed over through one cache line, then handed back.
    let board = Board::new(1 + rounds);
    fork_all(2, |index| {
        for round in 0..rounds as u64 {
            if index == 0 {
                board.slots[1 + round as usize].store(now_ns(), Ordering::SeqCst);
                board.set(0, 2 * round + 1);
                while board.get(0) != 2 * round + 2 {
                    std::hint::spin_loop();
                }
            } else {
                while board.get(0) != 2 * round + 1 {
                    std::hint::spin_loop();
                }
                let sent = board.get(1 + round as usize);
                board.slots[1 + round as usize].store(now_ns() - sent, Ordering::SeqCst);
                board.set(0, 2 * round + 2);
            }
        }
    });
    let mut line: Vec<u64> = (0..rounds).map(|r| board.get(1 + r)).collect();
    line.sort_unstable();

    // ultradict: the writer commits its clock reading; the reader polls `get` until it sees it.
    let d: UltraDict<u64, u64> = UltraDict::builder().buffer_size(8 << 20).open()?;
    let name = d.name().to_owned();
    let board = Board::new(1 + rounds);
    let secs = fork_all(2, |index| {
        let d: UltraDict<u64, u64> = attach(&name);
        for round in 0..rounds as u64 {
            if index == 0 {
                d.insert(2 * round, now_ns()).expect("ping");
                while d.get(&(2 * round + 1)).expect("get").is_none() {
                    std::hint::spin_loop();
                }
            } else {
                let sent = loop {
                    if let Some(sent) = d.get(&(2 * round)).expect("get") {
                        break sent;
                    }
                    std::hint::spin_loop();
                };
                board.set(1 + round as usize, now_ns() - sent);
                d.insert(2 * round + 1, 0).expect("pong");
            }
        }
    });
    let mut ours: Vec<u64> = (0..rounds).map(|r| board.get(1 + r)).collect();
    ours.sort_unstable();
    for (peer, sorted) in [
        ("cache-line hand-off (floor)", &line),
        ("ultradict map", &ours),
    ] {
        report.value(
            "3. commit to visible, p50",
            peer,
            percentile(sorted, 0.5),
            "ns",
        );
        report.value(
            "3. commit to visible, p99",
            peer,
            percentile(sorted, 0.99),
            "ns",
        );
        report.value(
            "3. commit to visible, max",
            peer,
            *sorted.last().unwrap_or(&0) as f64,
            "ns",
        );
    }
    report.value(
        "3. ping-pong round trip",
        "ultradict map",
        secs * 1e6 / rounds as f64,
        "us",
    );
    let ratio = percentile(&ours, 0.5) / percentile(&line, 0.5).max(1.0);
    report.value("3. p50 / cache-line p50", "ultradict map", ratio, "x");
    Ok(())
}

fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn dumps_and_memory(size: Size, report: &mut Report) -> Result<(), Box<dyn std::error::Error>> {
    report.section("4. full dumps and memory");
    let sizes: &[u64] = if size.smoke {
        &[1_000, 10_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    // Keys in order at every size, and spread keys (a multiplicative mix) at the largest: a
    // hash table's layout, and so the dump's cost, depends on the keys.
    let largest = *sizes.last().unwrap_or(&1_000);
    let spread = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let runs = sizes
        .iter()
        .map(|&entries| (entries, "", (|k| k) as fn(u64) -> u64))
        .chain([(largest, " (spread keys)", spread as fn(u64) -> u64)]);
    for (entries, keys, key) in runs {
        let writer: UltraDict<u64, u64> = UltraDict::builder().open()?;
        writer.extend((0..entries).map(|k| (key(k), k)))?;
        let reader: UltraDict<u64, u64> = attach(writer.name());
        reader.apply_update()?;
        writer.insert(u64::MAX, 0)?; // something in the stream, so the dump has work to fold
        let start = Instant::now();
        writer.dump()?;
        let dump_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        reader.apply_update()?; // map and validate the new dump
        let switch_secs = start.elapsed().as_secs_f64();
        let scenario = format!("4. {entries} entries{keys}");
        report.value(
            &format!("{scenario}: dump"),
            "ultradict map",
            dump_secs * 1e3,
            "ms",
        );
        report.value(
            &format!("{scenario}: switch to the dump"),
            "ultradict map",
            switch_secs * 1e3,
            "ms",
        );
    }

    // Own memory of 4 readers of one large dict: the dump is mapped and shared, not copied.
    let entries = *sizes.last().unwrap_or(&1_000);
    let d: UltraDict<u64, u64> = UltraDict::builder().open()?;
    d.extend((0..entries).map(|k| (k, k)))?;
    d.dump()?;
    let dict_kib = d.status().dump_bytes / 1024;
    let name = d.name().to_owned();
    let readers = 4;
    let board = Board::new(readers);
    fork_all(readers, |index| {
        let before = rss_anon_kib();
        let d: UltraDict<u64, u64> = attach(&name);
        let mut sum = 0u64;
        for k in 0..entries {
            sum = sum.wrapping_add(d.get(&k).expect("get").unwrap_or(0));
        }
        std::hint::black_box(sum);
        board.set(index, rss_anon_kib().saturating_sub(before));
    });
    let worst = (0..readers).map(|i| board.get(i)).max().unwrap_or(0);
    let scenario = format!("4. {readers} readers of {entries} entries ({dict_kib} KiB dump)");
    report.value(
        &format!("{scenario}: own memory growth, worst reader"),
        "ultradict map",
        worst as f64,
        "KiB",
    );
    Ok(())
}

pub fn bulk_load(size: Size, report: &mut Report) -> Result<(), Box<dyn std::error::Error>> {
    report.section("5. bulk load");
    let entries = size.scaled(100_000, 1_000);
    let start = Instant::now();
    let d: UltraDict<u64, u64> = UltraDict::builder().open()?;
    d.extend((0..entries).map(|k| (k, k)))?;
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(d.len()?, entries as usize);
    report.value(
        &format!("5. bulk load {entries} entries"),
        "ultradict extend",
        secs,
        "s",
    );
    python::run(&["bulk".into(), entries.to_string()], report, &|_| None);

    // A million entries, ours alone (in ms: the seconds above round it away), spread keys and
    // keys in order: a fresh dict, so the extend is one full dump.
    let entries = size.scaled(1_000_000, 10_000);
    let spread = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (keys, key) in [
        ("keys in order", (|k| k) as fn(u64) -> u64),
        ("spread keys", spread),
    ] {
        let start = Instant::now();
        let d: UltraDict<u64, u64> = UltraDict::builder().open()?;
        d.extend((0..entries).map(|k| (key(k), k)))?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        assert_eq!(d.len()?, entries as usize);
        report.value(
            &format!("5. bulk load {entries} entries, {keys}"),
            "ultradict extend",
            ms,
            "ms",
        );
    }
    Ok(())
}
