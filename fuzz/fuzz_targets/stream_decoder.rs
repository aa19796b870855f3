//! Arbitrary bytes as a committed stream range: every outcome is Ok or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the epoch the reader expects, so frames of "its" epoch are reachable.
    let (epoch, stream) = data.split_first().map_or((0, data), |(e, rest)| (u32::from(*e), rest));
    let _ = ultradict::fuzzing::decode_stream(stream, epoch);
});
