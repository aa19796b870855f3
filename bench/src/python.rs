//! The Python peers, run as a subprocess (bench/peers.py), their figures merged into the
//! report. Missing Python or packages: a printed note, no failure.

use std::process::Command;

use serde_json::Value;

use crate::{Report, Size};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers.py");

/// Runs `peers.py ARGS` and reports each figure it prints. `baseline` gives the ratio base
/// of an ops/s scenario.
pub fn run(args: &[String], report: &mut Report, baseline: &dyn Fn(&str) -> Option<f64>) {
    let output = match Command::new("python3").arg(SCRIPT).args(args).output() {
        Ok(output) => output,
        Err(err) => {
            report.note(format!("Python peers skipped: cannot run python3: {err}"));
            return;
        }
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let Some(skip) = value["skip"].as_str() {
            report.note(format!("skipped: {skip}"));
            continue;
        }
        let (Some(scenario), Some(peer), Some(figure), Some(unit)) = (
            value["scenario"].as_str(),
            value["peer"].as_str(),
            value["value"].as_f64(),
            value["unit"].as_str(),
        ) else {
            continue;
        };
        if unit == "ops/s" {
            report.ops(scenario, peer, figure, baseline(scenario));
        } else {
            report.value(scenario, peer, figure, if unit == "s" { "s" } else { "?" });
        }
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("no output");
        report.note(format!("Python peers ({}) failed: {last}", args.join(" ")));
    }
}

pub fn single_process(size: Size, report: &mut Report, baseline: &dyn Fn(&str) -> Option<f64>) {
    let ops = size.scaled(20_000, 200);
    run(
        &["single".into(), ops.to_string(), size.keys.to_string()],
        report,
        baseline,
    );
}
