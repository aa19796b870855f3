//! Arbitrary bytes as a whole dump segment: every outcome is Ok or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (epoch, dump) = data.split_first().map_or((0, data), |(e, rest)| (u32::from(*e), rest));
    let _ = ultradict::fuzzing::load_dump(dump, epoch);
});
