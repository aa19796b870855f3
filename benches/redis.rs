//! The Redis backend against its floors, every figure from one run on a server this bench
//! starts itself (127.0.0.1, no persistence): `cargo bench --bench redis`.
//!
//! - a write (`insert`, one hot `u64` key) against one raw redis-rs round trip (`SET`);
//! - a read with no news against the same read on shared memory;
//! - propagation from a writer process to a reader process sleeping in `wait_for_change`,
//!   against one `XADD` -> blocking `XREAD` hand-off between two processes (both as ping-pong
//!   rounds; each round is two hand-offs, halved);
//! - 2 and 4 writer processes running `update` on one key: aggregate rate, exact totals;
//! - `extend` of 100k entries, and a reader attaching to a 1M-entry dict (to its first read).

use std::hint::black_box;
use std::time::{Duration, Instant};

use redis::Commands;
use ultradict::{Create, UltraDict};
use ultradict_test_kit::redis::Server;
use ultradict_test_kit::{Spawn, arg, report, role};

const ROUNDS: usize = 2_000;

fn per_op(started: Instant, ops: usize) -> f64 {
    started.elapsed().as_nanos() as f64 / ops as f64
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn open(url: &str, name: &str, create: Create) -> UltraDict<String, u64> {
    UltraDict::builder()
        .name(name)
        .create(create)
        .redis(url)
        .open()
        .expect("open")
}

/// Child roles: the far end of the ping-pongs, and the `update` writers.
fn child() {
    let url = arg("URL");
    let name = arg("NAME");
    match role().as_deref() {
        Some("pong") => {
            let d = open(&url, &name, Create::Open);
            report("ready");
            for round in 0..ROUNDS as u64 {
                let key = format!("ping-{round}");
                while d.get(&key).expect("get").is_none() {
                    d.wait_for_change(Duration::from_secs(5)).expect("wait");
                }
                d.insert(format!("pong-{round}"), round).expect("pong");
            }
        }
        Some("raw_pong") => {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            let (ping, pong) = (format!("{name}-ping"), format!("{name}-pong"));
            report("ready");
            let mut last = "0".to_owned();
            for _ in 0..ROUNDS {
                let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(5000)
                    .arg("STREAMS")
                    .arg(&ping)
                    .arg(&last)
                    .query(&mut con)
                    .expect("xread");
                last = reply.keys[0].ids[0].id.clone();
                let _: String = con.xadd(&pong, "*", &[("v", 1)]).expect("xadd");
            }
        }
        Some("update") => {
            let d = open(&url, &name, Create::Open);
            let ops: u64 = arg("OPS").parse().unwrap();
            report("ready");
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            for _ in 0..ops {
                d.update("n", |n| n.unwrap_or(0) + 1).expect("update");
            }
            report("done");
        }
        other => panic!("unknown role {other:?}"),
    }
}

fn main() {
    if role().is_some() {
        return child();
    }
    let server = Server::start();
    let url = server.url();
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();

    // A write against one SET, interleaved op by op so that both see the same noise; the
    // medians of the single operations.
    let d = open(&url, "bench-write", Create::New);
    let (mut sets, mut writes) = (
        Vec::with_capacity(ROUNDS * 5),
        Vec::with_capacity(ROUNDS * 5),
    );
    for i in 0..ROUNDS as u64 * 5 {
        let started = Instant::now();
        let _: () = con.set("raw-key", i).unwrap();
        sets.push(started.elapsed().as_nanos() as f64);
        let started = Instant::now();
        d.insert("hot".into(), i).unwrap();
        writes.push(started.elapsed().as_nanos() as f64);
    }
    let (set, write) = (median(sets), median(writes));
    println!(
        "write (insert, hot key)       {:>9.1} us   raw SET round trip {:>7.1} us   ratio {:.2}",
        write / 1e3,
        set / 1e3,
        write / set
    );

    // A read with no news, against shared memory.
    let shm: UltraDict<String, u64> = UltraDict::builder().open().unwrap();
    shm.insert("hot".into(), 1).unwrap();
    let reads = 1_000_000;
    let read_ns = |d: &UltraDict<String, u64>| {
        median(
            (0..5)
                .map(|_| {
                    let started = Instant::now();
                    for _ in 0..reads {
                        black_box(d.get(black_box("hot")).unwrap());
                    }
                    per_op(started, reads)
                })
                .collect(),
        )
    };
    let (remote_read, shm_read) = (read_ns(&d), read_ns(&shm));
    println!(
        "read, no news                 {:>9.1} ns   shared memory      {:>7.1} ns   ratio {:.2}",
        remote_read,
        shm_read,
        remote_read / shm_read
    );

    // Propagation, as ping-pong rounds between two processes.
    let pong_name = "bench-pong";
    let pinger = open(&url, pong_name, Create::New);
    let mut child = Spawn::current("pong")
        .env("URL", &url)
        .env("NAME", pong_name)
        .start();
    child.wait_for_report("ready", Duration::from_secs(30));
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS as u64 {
        let started = Instant::now();
        pinger.insert(format!("ping-{round}"), round).unwrap();
        let key = format!("pong-{round}");
        while pinger.get(&key).unwrap().is_none() {
            pinger.wait_for_change(Duration::from_secs(5)).unwrap();
        }
        rounds.push(started.elapsed().as_nanos() as f64 / 2.0);
    }
    child.wait(Duration::from_secs(30));
    let ours = median(rounds);
    let mut raw_child = Spawn::current("raw_pong")
        .env("URL", &url)
        .env("NAME", "raw")
        .start();
    raw_child.wait_for_report("ready", Duration::from_secs(30));
    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut last = "0".to_owned();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let _: String = con.xadd("raw-ping", "*", &[("v", 1)]).unwrap();
        let reply: redis::streams::StreamReadReply = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(5000)
            .arg("STREAMS")
            .arg("raw-pong")
            .arg(&last)
            .query(&mut con)
            .unwrap();
        last = reply.keys[0].ids[0].id.clone();
        rounds.push(started.elapsed().as_nanos() as f64 / 2.0);
    }
    raw_child.wait(Duration::from_secs(30));
    let raw = median(rounds);
    println!(
        "propagation p50 (one way)     {:>9.1} us   XADD -> XREAD      {:>7.1} us   ratio {:.2}",
        ours / 1e3,
        raw / 1e3,
        ours / raw
    );

    // Writers running `update` on one key.
    for writers in [1u64, 2, 4] {
        let name = format!("bench-update-{writers}");
        let counter = open(&url, &name, Create::New);
        let ops = 2_000 / writers;
        let mut children: Vec<_> = (0..writers)
            .map(|_| {
                let mut child = Spawn::current("update")
                    .env("URL", &url)
                    .env("NAME", &name)
                    .env("OPS", ops)
                    .start();
                child.wait_for_report("ready", Duration::from_secs(30));
                child
            })
            .collect();
        let started = Instant::now();
        for child in &mut children {
            child.send("go");
        }
        for child in children {
            child.wait(Duration::from_secs(300));
        }
        let elapsed = started.elapsed().as_secs_f64();
        counter.sync().unwrap();
        let total = counter.get("n").unwrap().unwrap_or(0);
        assert_eq!(total, ops * writers, "a lost update");
        println!(
            "update, {writers} writer process(es)  {:>9.0} ops/s aggregate   total {total} (exact)",
            total as f64 / elapsed
        );
    }

    // extend of 100k entries; a reader attaching to 1M entries.
    let big: UltraDict<u64, u64> = UltraDict::builder()
        .name("bench-big")
        .redis(&url)
        .open()
        .unwrap();
    let started = Instant::now();
    big.extend((0..100_000).map(|i| (i, i))).unwrap();
    println!(
        "extend 100k entries           {:>9.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    big.extend((100_000..1_000_000).map(|i| (i, i))).unwrap();
    let started = Instant::now();
    let reader: UltraDict<u64, u64> = UltraDict::builder()
        .name("bench-big")
        .create(Create::Open)
        .redis(&url)
        .open()
        .unwrap();
    assert_eq!(reader.get(&999_999).unwrap(), Some(999_999));
    println!(
        "attach to 1M entries, first read {:>6.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
}
