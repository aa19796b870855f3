//! A reader of a large dict maps the dump and reads it in place: its own memory does not grow
//! with the dict (invariant 5). Measured as `RssAnon`, which leaves out shared pages. And the
//! stream that follows a large dict's dump takes /dev/shm space as records fill it, whichever
//! process writes them.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use ultradict::{Create, UltraDict};
use ultradict_test_kit::{
    Spawn, arg, assert_no_segments, fork, report, role, rss_anon_kib, unique_name, wait_forked,
};

const ENTRIES: u64 = 1_000_000;

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    if role == "write_stream" {
        let d: UltraDict<u64, u64> = UltraDict::builder()
            .name(arg("NAME"))
            .create(Create::Open)
            .open()
            .unwrap();
        let from: u64 = arg("FROM").parse().unwrap();
        for key in from..from + STREAM_WRITES {
            d.insert(key, key + 1).unwrap();
        }
        report(format!("epoch {}", d.status().epoch));
        return;
    }
    if role == "fork_while_reserving_ahead" {
        return fork_while_reserving_ahead(&arg("NAME"));
    }
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

/// Inserts each process makes into the stream in `a_dumps_stream_is_reserved_as_it_fills`:
/// over a megabyte of records (the unit a writer reserves), well under the stream.
const STREAM_WRITES: u64 = 30_000;

/// Bytes of /dev/shm the object `file` (a name in /dev/shm) takes, and its length.
fn allocated_and_len(file: &str) -> (u64, u64) {
    let meta = std::fs::metadata(format!("/dev/shm/{file}")).unwrap();
    (meta.blocks() * 512, meta.len())
}

#[test]
fn a_dumps_stream_is_reserved_as_it_fills() {
    let name = unique_name("stream-space");
    let d: UltraDict<u64, u64> = UltraDict::open(&name).unwrap();
    d.extend((0..300_000).map(|k| (k, k))).unwrap();
    d.dump().unwrap();
    let status = d.status();
    let dump = status.dump_segment.clone().unwrap();
    let (archive, stream) = (status.dump_bytes, status.buffer_size as u64);
    assert!(
        stream > 4 << 20,
        "a stream of its own after the archive: {stream} bytes"
    );
    let (taken, len) = allocated_and_len(&dump);
    assert!(
        len >= archive + stream,
        "{len} bytes for {archive} + {stream}"
    );
    assert!(
        taken < archive + (64 << 10),
        "an empty stream takes no space: {taken} bytes taken for a {archive}-byte archive"
    );

    // Three writers in turn, this process, another, this one again, each over a megabyte of
    // records into the same stream: each writes where it reserved, or reserves first.
    let epoch = status.epoch;
    for key in 1_000_000..1_000_000 + STREAM_WRITES {
        d.insert(key, key + 1).unwrap();
    }
    let reports = Spawn::test("child_entry", "write_stream")
        .env("NAME", &name)
        .env("FROM", (2_000_000).to_string())
        .start()
        .wait(Duration::from_secs(120));
    assert_eq!(reports[0], format!("epoch {epoch}"), "the same stream");
    for key in 3_000_000..3_000_000 + STREAM_WRITES {
        d.insert(key, key + 1).unwrap();
    }
    let status = d.status();
    assert_eq!(status.epoch, epoch, "all of it in one stream");
    let used = status.buffer_used as u64;
    let (taken, _) = allocated_and_len(&dump);
    assert!(
        taken >= archive + used && taken <= archive + used + (3 << 20),
        "{taken} bytes taken for {archive} of archive and {used} of records"
    );
    for from in [1_000_000, 2_000_000, 3_000_000] {
        for key in (from..from + STREAM_WRITES).step_by(97) {
            assert_eq!(d.get(&key).unwrap(), Some(key + 1));
        }
    }
    let fresh: UltraDict<u64, u64> = UltraDict::open(&name).unwrap();
    assert_eq!(fresh.len().unwrap(), 300_000 + 3 * STREAM_WRITES as usize);
    drop(fresh);
    drop(d);
    assert_no_segments(&name);
}

/// This process's mappings of `name`'s dumps that were unlinked (superseded).
fn superseded_mappings(name: &str) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let object = format!("/dev/shm/ultradict.{name}~");
    maps.lines()
        .filter(|line| line.contains(&object) && line.ends_with("(deleted)"))
        .count()
}

/// Waits until this process maps none of `name`'s superseded dumps; false after `within`.
fn superseded_dumps_freed(name: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while superseded_mappings(name) > 0 {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Dumps of a dict this large are freed by a helper thread (see `reaper.rs`).
fn large_dict(name: &str) -> UltraDict<u64, u64> {
    let d: UltraDict<u64, u64> = UltraDict::open(name).unwrap();
    d.extend((0..300_000).map(|k| (k, k))).unwrap();
    assert!(d.status().dump_bytes > 4 << 20);
    d
}

/// A writer reserves its stream a chunk at a time and hands the next chunk to its helper
/// thread meanwhile. A child forked while that runs has no helper: it reserves in place, and
/// its handle closes without waiting for a job that will never end there. Run in a process
/// of its own whose helper holds every such job back for 50 ms, so that each fork certainly
/// finds one pending.
#[test]
fn a_child_forked_while_the_next_chunk_is_reserved_writes_and_closes() {
    let name = unique_name("ahead");
    let reports = Spawn::test("child_entry", "fork_while_reserving_ahead")
        .env("NAME", &name)
        .env("ULTRADICT_AHEAD_DELAY_MS", "50")
        .start()
        .wait(Duration::from_secs(120));
    assert_eq!(reports, ["done"]);
    assert_no_segments(&name);
}

/// The body of `a_child_forked_while_the_next_chunk_is_reserved_writes_and_closes`.
fn fork_while_reserving_ahead(name: &str) {
    let d: UltraDict<u64, u64> = UltraDict::open(name).unwrap();
    d.extend((0..300_000).map(|k| (k, k))).unwrap();
    // The handle in a slot, so that the child can take its copy and close it.
    let slot = std::cell::Cell::new(Some(d));
    for round in 0..4u64 {
        let from = 1_000_000 * (round + 1);
        let d = slot.take().unwrap();
        // A new epoch's empty stream: its first record reserves a chunk and hands the next
        // to the helper, which holds it back. Fork at once.
        d.dump().unwrap();
        d.insert(from, from + 1).unwrap();
        slot.set(Some(d));
        let child = fork(|| {
            let Some(d) = slot.take() else { return 9 };
            // More than a chunk of records: past the one reserved, into the pending one.
            for key in from + 1..from + STREAM_WRITES {
                if d.insert(key, key + 1).is_err() {
                    return 1;
                }
            }
            let code = match d.get(&(from + STREAM_WRITES - 1)) {
                Ok(Some(value)) if value == from + STREAM_WRITES => 0,
                _ => 2,
            };
            drop(d);
            code
        });
        assert_eq!(
            wait_forked(child, Duration::from_secs(60)),
            0,
            "round {round}"
        );
        // The parent goes on where the child stopped, in space either of them reserved.
        let d = slot.take().unwrap();
        for key in from + STREAM_WRITES..from + 2 * STREAM_WRITES {
            d.insert(key, key + 1).unwrap();
        }
        for key in (from..from + 2 * STREAM_WRITES).step_by(101) {
            assert_eq!(d.get(&key).unwrap(), Some(key + 1), "round {round}");
        }
        slot.set(Some(d));
    }
    drop(slot.take());
    report("done");
}

#[test]
fn superseded_dumps_are_unmapped_here_and_in_a_forked_child() {
    let name = unique_name("reaper");
    let writer = large_dict(&name);
    let reader: UltraDict<u64, u64> = UltraDict::open(&name).unwrap();
    for round in 0..4 {
        writer.insert(round, round + 7).unwrap();
        writer.dump().unwrap();
        // The reader switches to the new dump, and lets go of the one before.
        assert_eq!(reader.get(&round).unwrap(), Some(round + 7));
    }
    assert!(
        superseded_dumps_freed(&name, Duration::from_secs(10)),
        "{} mappings of superseded dumps left",
        superseded_mappings(&name)
    );

    // A forked child has no helper thread (threads do not survive fork): it starts its own.
    let child = fork(|| {
        for round in 10..13 {
            writer.insert(round, round).unwrap();
            writer.dump().unwrap();
        }
        // The child's copy of the reader handle switches too.
        if !matches!(reader.get(&12), Ok(Some(12))) {
            return 3;
        }
        if !superseded_dumps_freed(&name, Duration::from_secs(10)) {
            return 1;
        }
        match writer.get(&12) {
            Ok(Some(12)) => 0,
            _ => 2,
        }
    });
    assert_eq!(wait_forked(child, Duration::from_secs(60)), 0);
    // Each handle lets go of a superseded dump when it next catches up.
    assert_eq!(reader.get(&12).unwrap(), Some(12));
    assert_eq!(writer.get(&12).unwrap(), Some(12));
    assert!(superseded_dumps_freed(&name, Duration::from_secs(10)));
    drop((reader, writer));
    assert_no_segments(&name);
}
