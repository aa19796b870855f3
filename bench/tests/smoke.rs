//! A tiny run of the whole harness, so it cannot rot: every scenario runs (peers that are
//! not installed are skipped with a note), and the table, JSON and plot are produced.

use std::process::Command;

#[test]
fn the_harness_runs_end_to_end() {
    let out = std::env::temp_dir().join(format!("ultradict-bench-smoke-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_peers"))
        .args(["--smoke", "--out"])
        .arg(&out)
        .output()
        .expect("run the harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "1. read u64, no news",
        "2. 4 writers",
        "3. commit to visible, p50",
        "4. 1000 entries: dump",
        "5. bulk load",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing:\n{stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(json["rows"].as_array().unwrap().len() >= 20);
    let svg = std::fs::read_to_string(out.join("ops.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("ultradict map"));
    std::fs::remove_dir_all(&out).unwrap();
}
