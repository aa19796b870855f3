//! Bytes from shared memory are validated (invariant 9): random corruptions of a real stream
//! and a real dump, truncations, garbage control blocks and newer format versions give Ok or
//! a typed error, never a panic, a hang or undefined behaviour.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use proptest::prelude::*;
use ultradict::fuzzing::{STREAM_OFFSET, decode_stream, load_dump};
use ultradict::{Create, Error, Lifetime, UltraDict};
use ultradict_test_kit::{assert_no_segments, unique_name};

/// A real stream range and a real dump of an `UltraDict<String, u64>`, and their epochs.
struct Sample {
    stream: Vec<u8>,
    stream_epoch: u32,
    dump: Vec<u8>,
    dump_epoch: u32,
}

fn sample() -> &'static Sample {
    static SAMPLE: OnceLock<Sample> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let name = unique_name("sample");
        let d: UltraDict<String, u64> = UltraDict::open(&name).unwrap();
        d.extend((0..50).map(|i| (format!("key-{i}"), i))).unwrap();
        d.dump().unwrap();
        let status = d.status();
        let dump_epoch = status.epoch;
        let dump = std::fs::read(format!("/dev/shm/{}", status.dump_segment.unwrap())).unwrap();
        for i in 0..20u64 {
            d.insert(format!("key-{i}"), i * 100).unwrap();
            d.remove(&format!("key-{}", 40 + i % 5)).unwrap();
        }
        d.extend([("a".to_string(), 1), ("b".to_string(), 2)])
            .unwrap();
        let status = d.status();
        let control = std::fs::read(format!("/dev/shm/ultradict.{name}")).unwrap();
        let stream = control[STREAM_OFFSET..STREAM_OFFSET + status.committed_offset].to_vec();
        drop(d);
        assert_no_segments(&name);
        Sample {
            stream,
            stream_epoch: status.epoch,
            dump,
            dump_epoch,
        }
    })
}

fn corrupt(bytes: &[u8], flips: &[(usize, u8)], truncate: Option<usize>) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    for &(at, mask) in flips {
        let len = bytes.len();
        bytes[at % len] ^= mask | 1;
    }
    if let Some(cut) = truncate {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

#[test]
fn the_fuzz_seeds_decode() {
    let (stream, epoch) = ultradict::fuzzing::sample_stream();
    assert_eq!(
        decode_stream(&stream, epoch).unwrap(),
        1,
        "only the insert after the clear stays"
    );
    let (dump, epoch) = ultradict::fuzzing::sample_dump();
    assert_eq!(load_dump(&dump, epoch).unwrap(), 20);
}

#[test]
fn the_samples_decode_when_intact() {
    let sample = sample();
    assert_eq!(
        decode_stream(&sample.stream, sample.stream_epoch).unwrap(),
        22
    );
    assert_eq!(load_dump(&sample.dump, sample.dump_epoch).unwrap(), 50);
    assert!(
        decode_stream(&sample.stream, sample.stream_epoch + 1).is_err(),
        "another epoch"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_streams_are_ok_or_typed_errors(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        truncate in proptest::option::of(any::<usize>()),
    ) {
        let sample = sample();
        let bytes = corrupt(&sample.stream, &flips, truncate);
        match decode_stream(&bytes, sample.stream_epoch) {
            Ok(_) | Err(Error::Corrupt { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
        }
    }

    #[test]
    fn corrupted_dumps_are_ok_or_typed_errors(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        truncate in proptest::option::of(any::<usize>()),
    ) {
        let sample = sample();
        let bytes = corrupt(&sample.dump, &flips, truncate);
        match load_dump(&bytes, sample.dump_epoch) {
            Ok(_) | Err(Error::Corrupt { .. } | Error::Foreign { .. } | Error::VersionMismatch { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
        }
    }
}

/// Overwrites bytes of an object in /dev/shm.
fn poke(object: &str, at: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{object}"))
        .unwrap();
    file.write_all_at(bytes, at).unwrap();
}

fn persistent(name: &str) -> UltraDict<String, u64> {
    UltraDict::builder()
        .name(name)
        .lifetime(Lifetime::Persistent)
        .open()
        .unwrap()
}

fn attach(name: &str) -> ultradict::Result<UltraDict<String, u64>> {
    UltraDict::builder().name(name).create(Create::Open).open()
}

#[test]
fn a_corrupted_dump_in_shared_memory_is_an_error_for_new_readers() {
    let name = unique_name("bad-dump");
    let d = persistent(&name);
    d.extend((0..100).map(|i| (format!("k{i}"), i))).unwrap();
    d.dump().unwrap();
    let dump = d.status().dump_segment.unwrap();
    drop(d);
    let len = std::fs::metadata(format!("/dev/shm/{dump}")).unwrap().len();
    let original = std::fs::read(format!("/dev/shm/{dump}")).unwrap();
    // Scribbles anywhere: a new reader either validates what it finds or refuses it.
    for at in (64..len).step_by(97) {
        poke(&dump, at, &[0xFF; 16]);
        if let Ok(reader) = attach(&name) {
            for i in 0..100 {
                let _ = reader.get(&format!("k{i}"));
            }
            let _ = reader.to_hashmap();
        }
        poke(&dump, 0, &original);
    }
    // The archive's root (at its end) pointing out of bounds.
    poke(&dump, len - 16, &[0xFF; 16]);
    match attach(&name) {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("validation"), "{detail}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A truncated dump is caught too (the header promises more than there is).
    let file = OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{dump}"))
        .unwrap();
    file.set_len(100).unwrap();
    assert!(matches!(attach(&name), Err(Error::Corrupt { .. })));
    // And so is a current dump that is not there at all (it was an `Io` error).
    std::fs::remove_file(format!("/dev/shm/{dump}")).unwrap();
    match attach(&name) {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("missing"), "{detail}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    UltraDict::<u8, u8>::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}

#[test]
fn a_corrupted_stream_in_a_dump_segment_or_its_bounds_are_errors() {
    // A dict larger than its 4 KiB buffer: its epoch streams into its dump's segment.
    let name = unique_name("bad-grown");
    let d: UltraDict<String, u64> = UltraDict::builder()
        .name(&name)
        .lifetime(Lifetime::Persistent)
        .buffer_size(4096)
        .open()
        .unwrap();
    d.extend((0..1_000).map(|i| (format!("k{i}"), i))).unwrap();
    d.dump().unwrap();
    let dump = d.status().dump_segment.unwrap();
    let path = format!("/dev/shm/{dump}");
    let stream_len = d.status().buffer_size as u64;
    let stream_at = std::fs::metadata(&path).unwrap().len() - stream_len;
    assert!(
        stream_len > 4096 && stream_at.is_multiple_of(4096),
        "{}",
        d.status()
    );
    // This process maps the dump once (its handle's view): the header and archive read-only,
    // the stream after them writable.
    let modes: Vec<String> = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| line.ends_with(&path))
        .map(|line| line.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(modes, ["r--s", "rw-s"], "mappings of {path}");
    d.insert("first".into(), 1).unwrap();
    let reader = attach(&name).unwrap();
    assert_eq!(reader.get("first").unwrap(), Some(1));
    d.insert("second".into(), 2).unwrap();
    // Break the frame of "second" in the dump segment's stream.
    let second = stream_at + d.status().committed_offset as u64 / 2;
    poke(&dump, second, &[0xAB; 8]);
    assert!(matches!(reader.get("second"), Err(Error::Corrupt { .. })));
    drop((d, reader));
    // A header whose stream does not fit the segment, or does not follow the archive.
    let header = std::fs::read(&path).unwrap()[..64].to_vec();
    for (at, bytes) in [
        (48, (stream_len + 16).to_le_bytes()),
        (40, (stream_at - 4096).to_le_bytes()),
        (48, 8u64.to_le_bytes()),
    ] {
        poke(&dump, at, &bytes);
        match attach(&name) {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("expected Corrupt for header bytes {at}, got {other:?}"),
        }
        poke(&dump, 0, &header);
    }
    UltraDict::<u8, u8>::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}

#[test]
fn a_corrupted_stream_is_an_error_and_applies_nothing() {
    let name = unique_name("bad-stream");
    let d = persistent(&name);
    d.insert("first".into(), 1).unwrap();
    let reader = attach(&name).unwrap();
    assert_eq!(reader.get("first").unwrap(), Some(1));
    d.insert("second".into(), 2).unwrap();
    d.insert("third".into(), 3).unwrap();
    // Break the frame of "second": the reader must apply neither it nor "third".
    let at = (STREAM_OFFSET + d.status().committed_offset / 2) as u64;
    poke(&format!("ultradict.{name}"), at, &[0xAB; 8]);
    assert!(matches!(reader.get("third"), Err(Error::Corrupt { .. })));
    assert!(
        matches!(reader.get("first"), Err(Error::Corrupt { .. })),
        "it keeps failing, no partial state"
    );
    drop((d, reader));
    UltraDict::<u8, u8>::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}

#[test]
fn garbage_control_blocks_and_newer_versions_are_refused() {
    let name = unique_name("bad-control");
    drop(persistent(&name));
    let control = format!("ultradict.{name}");
    // A newer format version (bytes 8..12 after the magic) than this build's.
    let ours = u32::from_le_bytes(
        std::fs::read(format!("/dev/shm/{control}")).unwrap()[8..12]
            .try_into()
            .unwrap(),
    );
    poke(&control, 8, &(ours + 1).to_le_bytes());
    match attach(&name) {
        Err(Error::VersionMismatch {
            found, expected, ..
        }) if found == ours + 1 && expected == ours => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    poke(&control, 8, &ours.to_le_bytes());
    assert!(attach(&name).is_ok());
    // Our magic, then garbage where the sizes are.
    poke(&control, 16, &[0x5A; 24]);
    assert!(matches!(attach(&name), Err(Error::Corrupt { .. })));
    // Truncated below its own header.
    let file = OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{control}"))
        .unwrap();
    file.set_len(4096).unwrap();
    let result = UltraDict::<String, u64>::builder()
        .name(&name)
        .create(Create::Open)
        .open_timeout(std::time::Duration::from_millis(50))
        .open();
    assert!(matches!(result, Err(Error::Foreign { .. })), "{result:?}");
    UltraDict::<u8, u8>::unlink_by_name(&name).unwrap();
    assert_no_segments(&name);
}

/// Inputs the fuzzers found (`tests/fuzz-regressions/<target>-<what>.bin`, first byte the
/// epoch): each must end, with Ok or a typed error, within a watchdog.
#[test]
fn fuzzer_findings_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (sender, receiver) = std::sync::mpsc::channel();
        let target = name.clone();
        std::thread::spawn(move || {
            let (epoch, bytes) = input
                .split_first()
                .map_or((0, &input[..]), |(e, rest)| (u32::from(*e), rest));
            let outcome = if target.starts_with("dump_loader") {
                load_dump(bytes, epoch).map(|_| ())
            } else {
                decode_stream(bytes, epoch).map(|_| ())
            };
            let _ = sender.send(format!("{outcome:?}"));
        });
        let outcome = receiver.recv_timeout(std::time::Duration::from_secs(20));
        assert!(outcome.is_ok(), "{name} did not finish: a hang is back");
        found += 1;
    }
    assert!(found > 0);
}
