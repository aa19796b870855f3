//! The long linearizability run: four processes of random get, insert, remove and add on three
//! keys of one dict with a 2 KiB stream, some SIGKILLed half way through their work, the whole
//! history checked against a register per key. Prints the figures the README quotes.
//!
//! `cargo run --release --bin lincheck -- [OPS_PER_PROCESS] [KILLS] [redis://HOST:PORT/]` (default
//! 50000 and 10, on shared memory; with a URL, on that Redis server).

use std::time::Instant;

use ultradict_test_kit::linearizability;
use ultradict_test_kit::redis::{BACKEND_VAR, Backend};
use ultradict_test_kit::{Spawn, arg, role};

fn main() {
    if role().as_deref() == Some("worker") {
        linearizability::worker(
            &arg("NAME"),
            arg("SEED").parse().expect("seed"),
            arg("OPS").parse().expect("ops"),
            &Backend::from_env(),
        );
        return;
    }
    let mut args = std::env::args().skip(1);
    let ops: u64 = args
        .next()
        .map_or(50_000, |a| a.parse().expect("OPS_PER_PROCESS"));
    let kills: u64 = args.next().map_or(10, |a| a.parse().expect("KILLS"));
    let backend = args.next().map_or(Backend::Shm, Backend::Redis);
    let name = format!("lincheck-{}", std::process::id());
    let started = Instant::now();
    let recorded = linearizability::record(&name, ops, kills, &backend, |seed, ops| {
        Spawn::current("worker")
            .raw_env(BACKEND_VAR, backend.to_env())
            .env("NAME", &name)
            .env("SEED", seed)
            .env("OPS", ops)
            .start()
    });
    let ran = started.elapsed();
    let started = Instant::now();
    let verdict = linearizability::check(&recorded.history);
    let checked = started.elapsed();
    let pending = recorded
        .history
        .iter()
        .filter(|e| e.answer.is_none())
        .count();
    println!(
        "{} operations ({} pending, from {} SIGKILLs), {} epochs, in {:.1?}; checked in {:.1?}: {}",
        recorded.history.len(),
        pending,
        recorded.kills,
        recorded.epochs,
        ran,
        checked,
        match &verdict {
            Ok(()) => "linearizable".to_owned(),
            Err(why) => format!("NOT linearizable: {why}"),
        }
    );
    if verdict.is_err() {
        std::process::exit(1);
    }
}
