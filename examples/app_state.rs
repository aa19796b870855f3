//! Two processes update one derived application state, nested counters included.
//! Run with `cargo run --example app_state`.
//!
//! `#[derive(SharedDict)]` turns `AppState` into a typed handle: every field has a getter, a
//! setter and an atomic `update_` method, checked by the compiler; `stats` is a nested struct
//! with a dict of its own, and `workers` a nested map.

use std::collections::HashMap;
use std::process::Command;

use ultradict::rkyv::{Archive, Deserialize, Serialize};
use ultradict::{Create, SharedDict};

/// Per-worker information, stored as one value.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default)]
#[rkyv(crate = ultradict::rkyv)]
struct Worker {
    pid: u32,
    rounds: u32,
}

#[derive(SharedDict, Debug, Default)]
struct Stats {
    requests: u64,
    errors: u64,
}

#[derive(SharedDict, Debug, Default)]
struct AppState {
    phase: String,
    total: u64,
    #[ultradict(nested)]
    stats: Stats,
    #[ultradict(nested)]
    workers: HashMap<u32, Worker>,
}

const ROUNDS: u32 = 1_000;
const NAME_VAR: &str = "APP_STATE_NAME";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(name) = std::env::var(NAME_VAR) {
        let state = AppState::builder().name(name).create(Create::Open).open()?;
        return work(&state);
    }
    let name = format!("app-state-{}", std::process::id());
    let state = AppState::open(&name)?;
    state.set_phase("running".into())?;
    let mut other = Command::new(std::env::current_exe()?)
        .env(NAME_VAR, &name)
        .spawn()?;
    work(&state)?;
    if !other.wait()?.success() {
        return Err("the second process failed".into());
    }
    state.set_phase("done".into())?;

    let snapshot: AppState = state.snapshot()?;
    println!("phase    {}", snapshot.phase);
    println!(
        "total    {} (2 processes x {ROUNDS} rounds of +3)",
        snapshot.total
    );
    println!(
        "requests {}, errors {}",
        snapshot.stats.requests, snapshot.stats.errors
    );
    let mut workers: Vec<_> = snapshot.workers.values().collect();
    workers.sort_by_key(|w| w.pid);
    for worker in workers {
        println!("worker   pid {} did {} rounds", worker.pid, worker.rounds);
    }
    if snapshot.total != u64::from(2 * ROUNDS) * 3
        || snapshot.stats.requests != u64::from(2 * ROUNDS)
    {
        return Err("lost updates".into());
    }
    // The last handle to close removes the state and its nested dicts.
    state.close()?;
    Ok(())
}

/// One process's share: typed, atomic updates of plain and nested fields.
fn work(state: &SharedAppState) -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    for round in 1..=ROUNDS {
        state.update_total(|t| t + 3)?;
        state.stats().update_requests(|r| r + 1)?;
        if round % 100 == 0 {
            state.stats().update_errors(|e| e + 1)?;
            state.workers().insert(pid, Worker { pid, rounds: round })?;
        }
    }
    Ok(())
}
