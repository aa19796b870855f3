//! Scenario 6: a derived state against Cloudflare's `mmap-sync`, the closest Rust peer (rkyv
//! archives in memory-mapped files, one writer, wait-free readers). One process.
//!
//! The two share differently: `mmap-sync` writes the whole state (serialize, validate, write a
//! new data file, switch readers to it) on every change; a derived state appends one field's
//! record. Reads: `mmap-sync` hands out the archived state in place (with rkyv's validation,
//! or without it, as its `read(check_bytes)` allows); a getter returns the field's value.

use std::hint::black_box;
use std::time::Duration;

use ultradict::SharedDict;

use crate::peers::rate;
use crate::{Report, Size};

/// The state both sides share: a counter and a 16-byte label.
#[derive(SharedDict, Default)]
pub struct Shared {
    counter: u64,
    label: String,
}

/// The same state for `mmap-sync`, which archives with rkyv 0.7.
// rkyv 0.7's derive calls unsafe functions inside the unsafe functions it generates, which
// the workspace's `unsafe_op_in_unsafe_fn = "deny"` would refuse; that lint is for our code.
#[allow(unsafe_op_in_unsafe_fn)]
mod whole {
    #[derive(rkyv07::Archive, rkyv07::Serialize, Debug)]
    #[archive(crate = "rkyv07", check_bytes)]
    pub(super) struct Whole {
        pub(super) counter: u64,
        pub(super) label: String,
    }
}
use whole::Whole;

pub const WRITE: &str = "6. derived state: write the counter";
pub const READ: &str = "6. derived state: read the counter";

pub fn derived_state(size: Size, report: &mut Report) -> Result<(), Box<dyn std::error::Error>> {
    report.section("6. a derived state against mmap-sync (ratio = times slower than ultradict)");
    let ops = size.ops;
    let label = "a label of 16 b.".to_owned();

    let state = Shared::builder().open()?;
    state.set_label(label.clone())?;
    let ours_write = rate(ops, |i| state.set_counter(i).expect("set"));
    let ours_read = rate(ops, |_| {
        black_box(state.counter().expect("get"));
    });

    let dir =
        std::env::temp_dir().join(format!("ultradict-bench-mmap-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let prefix = dir.join("state");
    let mut writer = mmap_sync::synchronizer::Synchronizer::new(prefix.as_os_str());
    let mut reader = mmap_sync::synchronizer::Synchronizer::new(prefix.as_os_str());
    let grace = Duration::from_secs(1);
    let mut write = |counter: u64| {
        writer
            .write(
                &Whole {
                    counter,
                    label: label.clone(),
                },
                grace,
            )
            .expect("mmap-sync write");
    };
    write(0);
    // Its writes take about 0.1 ms each: a hundredth of the operations gives the same rate.
    let theirs_write = rate((ops / 100).max(10), write);
    let mut read = |check: bool| {
        // SAFETY: each guard is dropped at once, long before the writer's 1 s grace period
        // (no write happens meanwhile anyway).
        let guard = unsafe { reader.read::<Whole>(check) }.expect("mmap-sync read");
        black_box(guard.counter);
    };
    let theirs_read_checked = rate(ops, |_| read(true));
    let theirs_read_unchecked = rate(ops, |_| read(false));
    drop(reader);
    let _ = std::fs::remove_dir_all(&dir);

    report.ops(
        WRITE,
        "ultradict derived setter",
        ours_write,
        Some(ours_write),
    );
    report.ops(
        WRITE,
        "mmap-sync write (whole state)",
        theirs_write,
        Some(ours_write),
    );
    report.ops(READ, "ultradict derived getter", ours_read, Some(ours_read));
    report.ops(
        READ,
        "mmap-sync read, validated",
        theirs_read_checked,
        Some(ours_read),
    );
    report.ops(
        READ,
        "mmap-sync read, unvalidated (unsafe)",
        theirs_read_unchecked,
        Some(ours_read),
    );
    Ok(())
}
