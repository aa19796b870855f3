//! A check of a mapped dump's hash table that rkyv's validation leaves out, so that lookups of
//! missing keys always end.

use rkyv::collections::swiss_table::ArchivedHashMap;

/// rkyv's validation of a swiss table counts its full buckets, but lets through control bytes
/// that are neither full nor empty, and leaves most of the wrap-around copy of the control
/// bytes unchecked; a lookup of a missing key can then probe forever (found by fuzzing).
/// rkyv writes every byte as full or empty, with the copy equal to the start, so a dump
/// otherwise is corrupt. A table of that shape with fewer full buckets than buckets (which
/// validation ensures) ends every probe, as rkyv's own insertion relies on.
///
/// Reads the control bytes from `archive` (the bytes `map` lies in) by rkyv's layout, pinned
/// by the version in Cargo.toml and checked by the tests below: the map is the table, whose
/// first field is the 32-bit little-endian relative pointer to `capacity` control bytes
/// rounded up to 16 plus 15 more (the copy).
pub(super) fn lookups_terminate<K, V>(
    map: &ArchivedHashMap<K, V>,
    archive: &[u8],
) -> std::result::Result<(), String> {
    const EMPTY: u8 = 0xFF;
    let Some(controls) = control_bytes(map, archive)? else {
        return Ok(());
    };
    let capacity = map.capacity();
    let (buckets, copy) = controls.split_at(capacity);
    if buckets.iter().any(|&byte| byte >= 0x80 && byte != EMPTY) {
        return Err("a hash table control byte is neither full nor empty".into());
    }
    if !buckets.contains(&EMPTY) {
        return Err("a hash table has no empty bucket: lookups would not end".into());
    }
    let copy_is_faithful = copy
        .iter()
        .enumerate()
        .all(|(i, &byte)| byte == buckets.get(i).copied().unwrap_or(EMPTY));
    if !copy_is_faithful {
        return Err("a hash table's wrap-around control bytes differ from its first ones".into());
    }
    Ok(())
}

/// All control bytes of `map`'s table, found in `archive`; `None` for a table without
/// buckets.
fn control_bytes<'a, K, V>(
    map: &ArchivedHashMap<K, V>,
    archive: &'a [u8],
) -> std::result::Result<Option<&'a [u8]>, String> {
    const _: () = assert!(std::mem::size_of::<ArchivedHashMap<u8, u8>>() == 12);
    /// rkyv's `MAX_GROUP_WIDTH`: control bytes come in groups of this many.
    const GROUP: usize = 16;
    let capacity = map.capacity();
    if capacity == 0 {
        return Ok(None);
    }
    let count = capacity
        .checked_next_multiple_of(GROUP)
        .and_then(|probe_cap| probe_cap.checked_add(GROUP - 1))
        .ok_or("a hash table's capacity overflows")?;
    let at = (map as *const ArchivedHashMap<K, V>)
        .cast::<u8>()
        .addr()
        .checked_sub(archive.as_ptr().addr())
        .filter(|&at| at < archive.len())
        .ok_or("the map lies outside its archive")?;
    let pointer = archive
        .get(at..at + 4)
        .ok_or("the map's table is cut short")?;
    let offset = i32::from_le_bytes([pointer[0], pointer[1], pointer[2], pointer[3]]);
    let start = at
        .checked_add_signed(offset as isize)
        .ok_or("the table's control bytes lie before the archive")?;
    let controls = start
        .checked_add(count)
        .and_then(|end| archive.get(start..end))
        .ok_or("the table's control bytes lie outside the archive")?;
    Ok(Some(controls))
}

#[cfg(test)]
mod tests {
    use rkyv::rancor;

    use super::*;
    use crate::map::schema::{ArchivedMap, MapSchema};
    use crate::schema::{self, Schema};

    fn archive_of(entries: Vec<(String, u64)>) -> rkyv::util::AlignedVec<16> {
        let built = schema::archive_to_vec(64 << 10, |out| {
            MapSchema::<String, u64>::archive(&entries, out)
        })
        .unwrap();
        let mut archive = rkyv::util::AlignedVec::<16>::new();
        archive.extend_from_slice(built.bytes());
        archive
    }

    #[test]
    fn control_bytes_are_found_where_rkyv_puts_them() {
        let entries: Vec<_> = (0..50u64).map(|i| (format!("key-{i}"), i)).collect();
        let archive = archive_of(entries);
        let map = rkyv::access::<ArchivedMap<String, u64>, rancor::Error>(&archive).unwrap();
        let controls = control_bytes(map, &archive).unwrap().unwrap();
        let capacity = map.capacity();
        assert_eq!(controls.len(), capacity.next_multiple_of(16) + 15);
        let buckets = &controls[..capacity];
        assert_eq!(
            buckets.iter().filter(|&&b| b < 0x80).count(),
            50,
            "one full byte per entry"
        );
        assert!(lookups_terminate(map, &archive).is_ok());

        // Empty buckets turned into bytes that are neither full nor empty: rkyv still
        // validates the archive, but a lookup of a missing key would never end.
        let start = controls.as_ptr().addr() - archive.as_ptr().addr();
        let mut corrupt = rkyv::util::AlignedVec::<16>::new();
        corrupt.extend_from_slice(&archive);
        for byte in &mut corrupt[start..start + capacity] {
            if *byte == 0xFF {
                *byte = 0xFE;
            }
        }
        let map = rkyv::access::<ArchivedMap<String, u64>, rancor::Error>(&corrupt)
            .expect("rkyv lets this through");
        assert!(lookups_terminate(map, &corrupt).is_err());

        // The unchecked tail of the wrap-around copy, scribbled over: also refused.
        let mut corrupt = rkyv::util::AlignedVec::<16>::new();
        corrupt.extend_from_slice(&archive);
        let last = start + controls.len() - 1;
        corrupt[last] = 0x11;
        let map = rkyv::access::<ArchivedMap<String, u64>, rancor::Error>(&corrupt)
            .expect("rkyv lets this through");
        assert!(lookups_terminate(map, &corrupt).is_err());
    }
}
