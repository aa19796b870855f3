//! Commit-to-visible latency between two processes: a reader sleeping in `wait_for_change`
//! (futex wake-up) against a reader busy-polling `get`, and the floor under the first: two
//! processes ping-ponging on a raw shared futex word. Run with `cargo bench --bench notify`.
//!
//! The writer stores the CLOCK_MONOTONIC time of each commit in the value; the reader, on
//! seeing it, records now - then. Ping-pong: the writer waits for the reader's answer before
//! the next round, so every round measures one hand-off.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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

/// Two futex words and a time stamp in a page both processes map, and the reader's results.
#[repr(C)]
struct Raw {
    ping: AtomicU32,
    pong: AtomicU32,
    sent: AtomicU64,
    p50: AtomicU64,
    p99: AtomicU64,
    max: AtomicU64,
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: a shared (not private) FUTEX_WAIT on a live, aligned word; no timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: a shared FUTEX_WAKE of one waiter on a live, aligned word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// The floor for `wait_for_change`: the same ping-pong on a raw shared futex word.
fn raw_futex() -> (u64, u64, u64, f64) {
    // SAFETY: a fresh anonymous shared mapping, zero-filled (every field's valid zero), alive
    // until the process exits (and in the forked child).
    let raw: &Raw = unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            std::mem::size_of::<Raw>(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        &*map.cast::<Raw>()
    };
    // SAFETY: the bench is single-threaded here; the child only uses `raw` and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut latencies = Vec::with_capacity(ROUNDS as usize);
        for round in 0..ROUNDS as u32 {
            while raw.ping.load(Ordering::Acquire) == round {
                futex_wait(&raw.ping, round);
            }
            latencies.push(now_ns().saturating_sub(raw.sent.load(Ordering::Relaxed)));
            raw.pong.store(round + 1, Ordering::Release);
            futex_wake(&raw.pong);
        }
        latencies.sort_unstable();
        let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        raw.p50.store(pick(0.5), Ordering::Relaxed);
        raw.p99.store(pick(0.99), Ordering::Relaxed);
        raw.max
            .store(*latencies.last().expect("rounds"), Ordering::Relaxed);
        // SAFETY: end the child without the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let started = now_ns();
    for round in 0..ROUNDS as u32 {
        raw.sent.store(now_ns(), Ordering::Relaxed);
        raw.ping.store(round + 1, Ordering::Release);
        futex_wake(&raw.ping);
        while raw.pong.load(Ordering::Acquire) == round {
            futex_wait(&raw.pong, round);
        }
    }
    let round_trip_us = (now_ns() - started) as f64 / ROUNDS as f64 / 1e3;
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let load = |word: &AtomicU64| word.load(Ordering::Relaxed);
    (
        load(&raw.p50),
        load(&raw.p99),
        load(&raw.max),
        round_trip_us,
    )
}

fn main() {
    println!("notify: commit-to-visible latency between two processes, {ROUNDS} ping-pong rounds");
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>14}",
        "reader", "p50 ns", "p99 ns", "max ns", "round trip us"
    );
    let (floor, p99, max, rtt) = raw_futex();
    println!(
        "{:<36} {floor:>10} {p99:>10} {max:>10} {rtt:>14.1}",
        "raw shared futex (the floor)"
    );
    for (label, sleep) in [
        ("wait_for_change (futex sleep)", true),
        ("busy-polling get", false),
    ] {
        let (p50, p99, max, rtt) = run(sleep);
        println!(
            "{label:<36} {p50:>10} {p99:>10} {max:>10} {rtt:>14.1}{}",
            if sleep {
                format!("   p50 {:.2}x the floor", p50 as f64 / floor.max(1) as f64)
            } else {
                String::new()
            }
        );
    }
}
