//! Commit-to-visible latency between two processes: a reader sleeping in `wait_for_change`
//! (futex wake-up) against a reader busy-polling `get`. Run with `cargo bench --bench notify`.
//!
//! The writer stores the CLOCK_MONOTONIC time of each commit in the value; the reader, on
//! seeing it, records now - then. Ping-pong: the writer waits for the reader's answer before
//! the next round, so every round measures one hand-off.

use std::time::Duration;

use ultradict::{Create, UltraDict};

const ROUNDS: u64 = 2_000;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC is the same clock in every process.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until `key` holds a value, either sleeping on the change futex or spinning.
fn wait_value(d: &UltraDict<String, u64>, key: &str, sleep: bool) -> u64 {
    loop {
        if let Some(value) = d.get(key).expect("get") {
            return value;
        }
        if sleep {
            d.wait_for_change(Duration::from_secs(5)).expect("wait");
        } else {
            std::hint::spin_loop();
        }
    }
}

fn reader(name: &str, sleep: bool) {
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(name)
        .create(Create::Open)
        .open()
        .expect("attach");
    let mut latencies = Vec::with_capacity(ROUNDS as usize);
    for round in 0..ROUNDS {
        let key = format!("ping-{round}");
        let sent = wait_value(&d, &key, sleep);
        latencies.push(now_ns().saturating_sub(sent));
        d.insert(format!("pong-{round}"), 1).expect("pong");
    }
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    d.insert("p50".into(), pick(0.5)).expect("p50");
    d.insert("p99".into(), pick(0.99)).expect("p99");
    d.insert("max".into(), *latencies.last().expect("rounds"))
        .expect("max");
}

fn run(sleep: bool) -> (u64, u64, u64, f64) {
    let name = format!("bench-notify-{}-{sleep}", std::process::id());
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .buffer_size(4 << 20)
        .open()
        .expect("open");
    // SAFETY: the bench is single-threaded here; the child runs `reader` and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        reader(&name, sleep);
        // SAFETY: end the child without the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let started = now_ns();
    for round in 0..ROUNDS {
        d.insert(format!("ping-{round}"), now_ns()).expect("ping");
        wait_value(&d, &format!("pong-{round}"), sleep);
    }
    let round_trip_us = (now_ns() - started) as f64 / ROUNDS as f64 / 1e3;
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let get = |k: &str| d.get(k).expect("get").expect("reported");
    let result = (get("p50"), get("p99"), get("max"), round_trip_us);
    d.close().expect("close");
    result
}

fn main() {
    println!("notify: commit-to-visible latency between two processes, {ROUNDS} ping-pong rounds");
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>14}",
        "reader", "p50 ns", "p99 ns", "max ns", "round trip us"
    );
    for (label, sleep) in [
        ("wait_for_change (futex sleep)", true),
        ("busy-polling get", false),
    ] {
        let (p50, p99, max, rtt) = run(sleep);
        println!("{label:<36} {p50:>10} {p99:>10} {max:>10} {rtt:>14.1}");
    }
}
