//! Every example runs here, so none can rot.

use std::process::Command;

fn run_example(name: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO"))
        .args(["run", "--quiet", "--example", name, "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn quickstart_shows_both_processes_seeing_each_other() {
    let out = run_example("quickstart", &[]);
    assert!(
        out.contains("attached; the greeting says: Some(\"hello from process"),
        "{out}"
    );
    assert!(
        out.contains("sees the reply: \"hi back from process"),
        "{out}"
    );
    assert!(
        out.contains("sees the acknowledgement: \"got it\""),
        "{out}"
    );
    assert!(out.contains("visits = 1"), "{out}");
}

#[test]
fn parallel_tally_adds_up_exactly() {
    let out = run_example("parallel_tally", &["3", "30000"]);
    assert!(
        out.contains("numbers tallied: 30000 of 30000, by 3 processes"),
        "{out}"
    );
    assert!(out.contains("primes below 30000: 3245"), "{out}");
}

#[test]
fn app_state_counts_every_update_of_both_processes() {
    let out = run_example("app_state", &[]);
    assert!(out.contains("phase    done"), "{out}");
    assert!(out.contains("total    6000"), "{out}");
    assert!(out.contains("requests 2000, errors 20"), "{out}");
    assert_eq!(out.matches("did 1000 rounds").count(), 2, "{out}");
}

#[test]
fn shared_config_reaches_every_reader() {
    let out = run_example("shared_config", &[]);
    assert_eq!(
        out.matches(
            "billing v2: hosts [\"10.0.0.1\", \"10.0.0.2\"], max 512 connections, timeout 2500 ms"
        )
        .count(),
        3,
        "{out}"
    );
}

#[test]
fn config_reload_reaches_every_async_worker() {
    let out = run_example("config_reload", &[]);
    assert_eq!(
        out.matches("applied v3: log level warn, rate limit 50/s")
            .count(),
        3,
        "{out}"
    );
    assert!(out.contains("published v3"), "{out}");
}
