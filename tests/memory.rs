//! A reader of a large dict maps the dump and reads it in place: its own memory does not grow
//! with the dict (invariant 5). Measured as `RssAnon`, which leaves out shared pages.

use std::time::Duration;

use ultradict::{Create, UltraDict};
use ultradict_test_kit::{Spawn, arg, assert_no_segments, report, role, rss_anon_kib, unique_name};

const ENTRIES: u64 = 1_000_000;

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    assert_eq!(role, "read_everything");
    let before = rss_anon_kib();
    let d: UltraDict<u64, u64> = UltraDict::builder()
        .name(arg("NAME"))
        .create(Create::Open)
        .open()
        .unwrap();
    let mut sum = 0u64;
    for key in 0..ENTRIES {
        sum += d.get(&key).unwrap().expect("every key present");
    }
    let after = rss_anon_kib();
    report(format!("sum {sum}"));
    report(format!("grew_kib {}", after.saturating_sub(before)));
}

#[test]
fn a_reader_does_not_copy_the_dict() {
    let name = unique_name("memory");
    let d: UltraDict<u64, u64> = UltraDict::open(&name).unwrap();
    d.extend((0..ENTRIES).map(|k| (k, k * 3))).unwrap();
    let dict_kib = d.status().dump_bytes / 1024;
    assert!(
        dict_kib > 15_000,
        "a dict of 1M entries should take well over 15 MB: {dict_kib} KiB"
    );
    let reports = Spawn::test("child_entry", "read_everything")
        .env("NAME", &name)
        .start()
        .wait(Duration::from_secs(120));
    assert_eq!(
        reports[0],
        format!("sum {}", 3 * ENTRIES * (ENTRIES - 1) / 2)
    );
    let grew: u64 = reports[1].trim_start_matches("grew_kib ").parse().unwrap();
    println!("reader's own memory grew by {grew} KiB for a dict of {dict_kib} KiB");
    assert!(
        grew < dict_kib / 10,
        "the reader grew by {grew} KiB, the dict is {dict_kib} KiB"
    );
    drop(d);
    assert_no_segments(&name);
}
