//! Entry points for fuzzers and corruption tests: the two places where bytes from shared
//! memory enter, the record decoder and the dump loader, over arbitrary input. Not a stable
//! API; `fuzz/` and `tests/corruption.rs` use it.

use crate::control::HEADER_SIZE;
use crate::dump::{self, AlignedBuf};
use crate::error::Result;
use crate::map::{MapSchema, MapUpdate};
use crate::naming::Place;
use crate::schema::Schema;
use crate::stream;

/// The schema the entry points decode: `UltraDict<String, u64>`.
type Sample = MapSchema<String, u64>;

/// Bytes at offset 0 of a 16-byte aligned buffer (shared memory is page aligned; fuzzer input
/// is not).
fn aligned(bytes: &[u8]) -> AlignedBuf {
    let mut buf = AlignedBuf::with_capacity(bytes.len());
    buf.zeroed_mut(bytes.len()).copy_from_slice(bytes);
    buf
}

/// Decodes `bytes` as a committed stream range of epoch `epoch` of an
/// `UltraDict<String, u64>` with the readers' own decoder, and applies every record to an
/// empty state, as a reader catching up does. Returns the number of entries afterwards.
///
/// # Errors
/// [`Error::Corrupt`](crate::Error::Corrupt) for anything that is not a valid record.
pub fn decode_stream(bytes: &[u8], epoch: u32) -> Result<usize> {
    let buf = aligned(bytes);
    // SAFETY: `aligned` initialized all `bytes.len()` bytes.
    let bytes = unsafe { buf.initialized(bytes.len()) };
    let mut updates = Vec::new();
    stream::decode_into::<MapUpdate<String, u64>>(bytes, 0, epoch, &mut updates).map_err(|e| {
        crate::Error::corrupt(
            "fuzz stream",
            match e {
                stream::DecodeError::Overwritten => "a record of another epoch".to_owned(),
                stream::DecodeError::Corrupt(detail) => detail,
            },
        )
    })?;
    let mut overlay = Sample::overlay_for(None);
    for update in updates {
        Sample::apply(None, &mut overlay, update);
    }
    Ok(crate::map::overlay_len(&overlay))
}

/// Loads `bytes` as a whole dump segment (header and archive) of epoch `epoch` of an
/// `UltraDict<String, u64>`, then reads every entry as lookups would. Returns the number of
/// entries.
///
/// # Errors
/// [`Error::Corrupt`](crate::Error::Corrupt), [`Error::Foreign`](crate::Error::Foreign) or
/// [`Error::VersionMismatch`](crate::Error::VersionMismatch).
pub fn load_dump(bytes: &[u8], epoch: u32) -> Result<usize> {
    // Dumps come from dicts of any instance: take the one the header names, which the check
    // then compares with itself (it is a plain equality, nothing to fuzz).
    let instance = bytes
        .get(32..40)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let place = sample_place();
    let id = dump::DumpId {
        instance,
        ..sample_id(&place)
    };
    let mut buf = AlignedBuf::with_capacity(bytes.len());
    buf.zeroed_mut(bytes.len()).copy_from_slice(bytes);
    let loaded = dump::Dump::<<Sample as Schema>::Dump>::from_heap(
        dump::AlignedBytes::new(buf, bytes.len()),
        "fuzz dump",
        id,
        epoch,
    )?;
    // What a reader runs on a dump it maps: the schema's own checks, then lookups.
    Sample::check_dump(loaded.root(), loaded.archive())
        .map_err(|e| crate::Error::corrupt("fuzz dump", e))?;
    let map = loaded.root();
    // A key no dump holds: the lookup must end (probing stops at an empty bucket).
    let _absent = map.get_with("\u{0}absent", |q, k| k.as_str() == q);
    let mut entries = 0;
    for (key, value) in map.iter() {
        let key: String = crate::schema::deserialize(key)
            .map_err(|e| crate::Error::corrupt("fuzz dump", e.to_string()))?;
        // A valid archive may still place entries where a lookup does not find them: that
        // is a wrong answer for corrupt data, never a crash.
        let _found = map.get_with(key.as_str(), |q, k| k.as_str() == q);
        let _value: u64 = crate::schema::deserialize(value)
            .map_err(|e| crate::Error::corrupt("fuzz dump", e.to_string()))?;
        entries += 1;
    }
    Ok(entries)
}

/// The dict the sample dumps belong to (instance 0).
fn sample_id(place: &Place) -> dump::DumpId<'_> {
    dump::DumpId {
        place,
        instance: 0,
        fingerprint: Sample::fingerprint().hash,
    }
}

/// Where the sample dict would live (nothing is created there).
fn sample_place() -> Place {
    Place::in_shm("fuzz")
}

/// Where the stream starts in a control segment.
pub const STREAM_OFFSET: usize = HEADER_SIZE;

/// A well-formed stream range (with its epoch) of an `UltraDict<String, u64>`: inserts,
/// removes, an extend and a clear. Seeds for fuzzers.
pub fn sample_stream() -> (Vec<u8>, u32) {
    const EPOCH: u32 = 3;
    let updates = [
        MapUpdate::Insert("alpha".to_string(), 1),
        MapUpdate::Insert("a key longer than eight bytes".to_string(), u64::MAX),
        MapUpdate::Remove("alpha".to_string()),
        MapUpdate::Extend(vec![("x".to_string(), 7), ("y".to_string(), 8)]),
        MapUpdate::Clear,
        MapUpdate::Insert("after clear".to_string(), 42),
    ];
    let mut buf = AlignedBuf::with_capacity(4096);
    let stream = buf.zeroed_mut(4096);
    let mut end = 0;
    for update in &updates {
        // SAFETY: a local, 16-byte aligned buffer of 4096 bytes that nothing else touches.
        end = unsafe { stream::append(stream.as_mut_ptr(), stream.len(), end, EPOCH, update) }
            .expect("the sample fits");
    }
    (stream[..end].to_vec(), EPOCH)
}

/// A well-formed dump segment (with its epoch) of an `UltraDict<String, u64>` of 20 entries.
pub fn sample_dump() -> (Vec<u8>, u32) {
    const EPOCH: u32 = 5;
    let mut overlay = Sample::overlay_for(None);
    let entries = (0..20u64).map(|i| (format!("key-{i}"), i * 3)).collect();
    Sample::apply(None, &mut overlay, MapUpdate::Extend(entries));
    let snapshot = Sample::snapshot(None, &overlay, None).expect("an owned state");
    let built = crate::schema::archive_to_vec(16 << 10, |out| Sample::archive(&snapshot, out))
        .expect("the sample serializes");
    let archive = built.bytes();
    let place = sample_place();
    let mut segment = dump::header(sample_id(&place), EPOCH, archive.len()).to_vec();
    segment.extend_from_slice(archive);
    (segment, EPOCH)
}
