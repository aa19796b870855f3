//! ultradict against its peers, measured side by side in one run on one machine.
//!
//! `cargo run --release -p ultradict-bench --features lmdb,redis -- [--smoke] [--only N] [--out DIR]`
//! (or `bench/run.sh`, which installs the peers first). Prints a table, and writes
//! `results.json` and `ops.svg` into DIR (default `bench/results`). A peer that is not
//! installed is skipped with a printed note.
//!
//! Scenarios:
//! 1. one process, small values: reads with no news, writes (distinct keys, one hot key),
//!    `update`, against std's `HashMap`, ultradict's map and derived struct, LMDB, Redis,
//!    Python UltraDict and `multiprocessing.Manager`;
//! 2. two and four processes: N writers with the lock (exact total checked); one writer and N
//!    readers (reader throughput, share of reads served with no catch-up);
//! 3. propagation: commit-to-visible latency for a busy-polling reader, ping-pong round trips,
//!    and a cache-line hand-off between two processes as the physical floor;
//! 4. dumps: time to dump and to switch to a dump at 10k, 100k, 1M entries; own memory
//!    (`RssAnon`) of 4 readers of a large dict;
//! 5. bulk load: `extend` of 100k entries against Python UltraDict built from a dict, and
//!    of 1M entries (keys in order and spread) alone;
//! 6. a derived state against Cloudflare's `mmap-sync`: a field's write against a whole-state
//!    write, a getter against a read of the archived state.

#[cfg(feature = "mmap-sync")]
mod mmap_sync;
mod multi;
mod peers;
mod python;
mod svg;

use std::path::PathBuf;

use serde_json::{Value, json};

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub peer: String,
    pub value: f64,
    pub unit: &'static str,
    /// Value relative to the scenario's baseline (for ops/s: baseline / value, i.e. how many
    /// times slower), when there is one.
    pub ratio: Option<f64>,
}

/// How big the run is.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub smoke: bool,
    pub ops: u64,
    pub keys: u64,
}

impl Size {
    pub fn scaled(&self, full: u64, smoke: u64) -> u64 {
        if self.smoke { smoke } else { full }
    }
}

/// Collects rows and prints them as they come.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn section(&self, title: &str) {
        println!("\n== {title}");
        println!(
            "{:<44} {:<34} {:>16} {:>10}",
            "scenario", "peer", "value", "ratio"
        );
    }

    /// Records an ops/s figure; the ratio is to `baseline` (ops/s of the in-process baseline).
    pub fn ops(&mut self, scenario: &str, peer: &str, ops_per_sec: f64, baseline: Option<f64>) {
        let ratio = baseline.map(|b| b / ops_per_sec);
        self.push(Row {
            scenario: scenario.into(),
            peer: peer.into(),
            value: ops_per_sec,
            unit: "ops/s",
            ratio,
        });
    }

    /// Records a figure of another unit.
    pub fn value(&mut self, scenario: &str, peer: &str, value: f64, unit: &'static str) {
        self.push(Row {
            scenario: scenario.into(),
            peer: peer.into(),
            value,
            unit,
            ratio: None,
        });
    }

    fn push(&mut self, row: Row) {
        let ratio = row.ratio.map_or(String::new(), |r| format!("{r:.2}x"));
        let value = if row.value >= 100.0 {
            format!("{:.0}", row.value)
        } else {
            format!("{:.2}", row.value)
        };
        println!(
            "{:<44} {:<34} {:>10} {:<6} {:>9}",
            row.scenario, row.peer, value, row.unit, ratio
        );
        self.rows.push(row);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("note: {note}");
        self.notes.push(note);
    }

    fn to_json(&self) -> Value {
        json!({
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario, "peer": r.peer, "value": r.value, "unit": r.unit, "ratio": r.ratio,
            })).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut smoke = false;
    let mut only: Option<String> = None;
    let mut out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results"));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            // Runs one scenario (its number) instead of all.
            "--only" => only = Some(args.next().ok_or("--only needs a scenario number")?),
            "--out" => out = PathBuf::from(args.next().ok_or("--out needs a directory")?),
            // Redraws ops.svg from a results.json, without measuring again.
            "--replot" => {
                let json = PathBuf::from(args.next().ok_or("--replot needs a results.json")?);
                let rows = rows_from_json(&serde_json::from_str(&std::fs::read_to_string(&json)?)?);
                let svg = json.with_file_name("ops.svg");
                std::fs::write(&svg, svg::single_process_chart(&rows))?;
                println!("wrote {}", svg.display());
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let size = if smoke {
        Size {
            smoke,
            ops: 2_000,
            keys: 100,
        }
    } else {
        Size {
            smoke,
            ops: 200_000,
            keys: 1_000,
        }
    };
    let mut report = Report::default();
    println!(
        "ultradict-bench: {} run on {} cores",
        if smoke { "smoke" } else { "full" },
        cores()
    );

    let runs = |scenario: &str| only.as_deref().is_none_or(|only| only == scenario);
    if runs("1") {
        peers::single_process(size, &mut report)?;
    }
    if runs("2") {
        multi::writers_and_readers(size, &mut report)?;
    }
    if runs("3") {
        multi::propagation(size, &mut report)?;
    }
    if runs("4") {
        multi::dumps_and_memory(size, &mut report)?;
    }
    if runs("5") {
        multi::bulk_load(size, &mut report)?;
    }
    if runs("6") {
        #[cfg(feature = "mmap-sync")]
        mmap_sync::derived_state(size, &mut report)?;
        #[cfg(not(feature = "mmap-sync"))]
        report.note("mmap-sync skipped: built without the `mmap-sync` feature");
    }

    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report.to_json())?,
    )?;
    std::fs::write(out.join("ops.svg"), svg::single_process_chart(&report.rows))?;
    println!(
        "\nwrote {} and {}",
        out.join("results.json").display(),
        out.join("ops.svg").display()
    );
    Ok(())
}

fn rows_from_json(json: &Value) -> Vec<Row> {
    let units = ["ops/s", "ns", "us", "ms", "s", "%", "x", "KiB"];
    json["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    let unit = units.iter().find(|&&u| r["unit"].as_str() == Some(u))?;
                    Some(Row {
                        scenario: r["scenario"].as_str()?.to_owned(),
                        peer: r["peer"].as_str()?.to_owned(),
                        value: r["value"].as_f64()?,
                        unit,
                        ratio: r["ratio"].as_f64(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
