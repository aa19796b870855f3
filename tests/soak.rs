//! The soak binary's 5-second version: 4 processes of mixed operations, SIGKILLed and
//! restarted at random, and no committed update lost. The 60-second, 8-process run is
//! `cargo run --release --bin soak`.

use std::process::Command;

#[test]
fn five_second_soak_loses_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args([
            "--processes",
            "4",
            "--seconds",
            "5",
            "--kill-every-ms",
            "200",
        ])
        .output()
        .expect("run soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("lost 0"), "{stdout}");
    assert!(
        stdout.contains("dicts left after the last close 0"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(" 0 SIGKILLs"),
        "the soak should have killed workers: {stdout}"
    );
}
