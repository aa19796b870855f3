//! A dump's hash table, in rkyv's swiss-table layout: writing it fast, and the check of a mapped
//! one that rkyv's validation leaves out, so that lookups of missing keys always end.
//!
//! The layout, pinned by the rkyv version in Cargo.toml and by the tests below: the map is 12
//! bytes (a 32-bit relative pointer to the control bytes, then the length and the capacity as
//! 32-bit little-endian numbers). The buckets lie just before the control bytes, bucket `i` at
//! `i + 1` entries before them. There is a control byte per bucket, then more up to the
//! capacity rounded up to 16, plus 15: byte `capacity + i` repeats byte `i` (as far as there is
//! a byte `i`; past that, in tables of under 16 buckets, they stay empty). A full bucket's
//! control byte is the top 7 bits of its key's hash (below 0x80), an empty one's 0xFF.

use std::hash::Hash;

use rkyv::RawRelPtr;
use rkyv::collections::swiss_table::ArchivedHashMap;
use rkyv::collections::util::{Entry, EntryAdapter};
use rkyv::hash::{FxHasher64, hash_value};
use rkyv::primitive::ArchivedUsize;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer, WriterExt};
use rkyv::util::SerVec;
use rkyv::{Archive, Place, Serialize};

/// Load factor of archived maps (rkyv's default for `HashMap`).
const LOAD_FACTOR: (usize, usize) = (7, 8);

/// rkyv's `MAX_GROUP_WIDTH`: a probe reads this many control bytes.
const GROUP: usize = 16;

/// The control byte of an empty bucket.
const EMPTY: u8 = 0xFF;

/// No entry in this bucket (in the bucket-to-entry table the builder keeps).
const VACANT: u32 = u32::MAX;

/// rkyv's capacity for a table of `len` entries.
fn capacity_for(len: usize) -> usize {
    (len * LOAD_FACTOR.1 / LOAD_FACTOR.0).max(len + 1)
}

/// The capacity of our table of `len` entries: rkyv's, rounded up to keep only its 7 leading
/// bits (at most 1/64 more buckets), so that a dict that grows or shrinks a little keeps its
/// capacity from one dump to the next. An entry's first bucket is its hash modulo the
/// capacity: with the same capacity, the entries a dump reads from the last one, in bucket
/// order, land in bucket order again, and the builder writes and reads its tables
/// sequentially. With another capacity they land anywhere: at a million entries the build
/// took 28 ms instead of 10. rkyv reads any capacity above the length.
pub(super) fn table_capacity(len: usize) -> usize {
    let least = capacity_for(len);
    if least <= 128 {
        return least;
    }
    let step = 1 << (usize::BITS - least.leading_zeros() - 7);
    least.next_multiple_of(step)
}

/// The bytes [`serialize`] writes for `len` entries of archived types `K` and `V`, less what
/// they keep out of line (a string's bytes): the buckets and the control bytes.
pub(super) fn inline_len<K, V>(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let capacity = table_capacity(len);
    let control_count = capacity.next_multiple_of(GROUP) + GROUP - 1;
    capacity * std::mem::size_of::<Entry<K, V>>() + control_count
}

/// Where [`serialize`] wrote the control bytes, how many entries the table holds, and its
/// capacity.
pub(super) struct TableResolver {
    pos: usize,
    len: usize,
    capacity: usize,
}

/// Writes `entries` as rkyv's `ArchivedHashMap` writes them with `serialize_from_iter`, byte
/// for byte when their keys are distinct (the tests compare the two, with the load factor that
/// gives rkyv our [`table_capacity`]), in about half the time for a large map (a million
/// `u64` entries: README, "Cost as the dict grows"). With `repeats`, a key may come more
/// than once and its last entry wins, as in `HashMap::extend`: the placement compares keys
/// where control bytes match, which a bulk `extend` or `replace_all` needs instead of a
/// `HashMap` of a million entries built first (that took two thirds of the extend).
///
/// rkyv's builder keeps a 16-byte slot per bucket while it places the entries, reads it back
/// in a second and third pass, and divides twice per entry; at a million entries the slots
/// alone are 18 MB of scattered writes. This one places the same entries in the same buckets
/// (same hash, same probe sequence, same order) but keeps a 4-byte entry index per bucket,
/// and divides once per entry.
pub(super) fn serialize<K, V, S>(
    entries: &[(K, V)],
    repeats: bool,
    serializer: &mut S,
) -> Result<TableResolver, S::Error>
where
    K: Serialize<S> + Hash + Eq,
    V: Serialize<S>,
    S: Fallible + Writer + Allocator + ?Sized,
    S::Error: Source,
{
    if entries.is_empty() {
        return Ok(TableResolver {
            pos: 0,
            len: 0,
            capacity: 0,
        });
    }
    if u32::try_from(entries.len()).is_err() {
        rkyv::rancor::fail!(TooManyEntries(entries.len()));
    }
    let most = Table::new(table_capacity(entries.len()));
    let words = most.occupancy_words();
    SerVec::<u32>::with_capacity(serializer, most.capacity, |slots, serializer| {
        SerVec::<u8>::with_capacity(serializer, most.control_count, |controls, serializer| {
            SerVec::<u64>::with_capacity(serializer, words, |occupied, serializer| {
                // SAFETY: `with_capacity` gave room for this many slots, control bytes and
                // occupancy words, all set here (slots VACANT, whose bytes are all 0xFF, controls
                // EMPTY, words 0) before they count as initialized.
                unsafe {
                    slots.as_mut_ptr().write_bytes(0xFF, most.capacity);
                    slots.set_len(most.capacity);
                    controls.as_mut_ptr().write_bytes(EMPTY, most.control_count);
                    controls.set_len(most.control_count);
                    occupied.as_mut_ptr().write_bytes(0, words);
                    occupied.set_len(words);
                }
                let (slots, controls) = (slots.as_mut_slice(), controls.as_mut_slice());
                let occupied = occupied.as_mut_slice();
                let mut table = most;
                let mut len = table.place(
                    entries,
                    0..entries.len() as u32,
                    repeats,
                    Placing {
                        slots,
                        controls,
                        occupied,
                    },
                );
                if table_capacity(len) != table.capacity {
                    // Repeated keys: the table for the distinct ones is smaller. Place the winners
                    // again, in the order their buckets hold them.
                    let winners: Vec<u32> =
                        slots.iter().copied().filter(|&s| s != VACANT).collect();
                    table = Table::new(table_capacity(len));
                    slots[..table.capacity].fill(VACANT);
                    controls[..table.control_count].fill(EMPTY);
                    occupied.fill(0);
                    len = table.place(
                        entries,
                        winners.into_iter(),
                        false,
                        Placing {
                            slots,
                            controls,
                            occupied,
                        },
                    );
                }
                let (slots, controls) =
                    (&slots[..table.capacity], &controls[..table.control_count]);
                let entry = |slot: u32| {
                    let (key, value) = &entries[slot as usize];
                    EntryAdapter::<&K, &V, K, V>::new(key, value)
                };
                let full = || slots.iter().copied().filter(|&slot| slot != VACANT);
                // Out-of-line parts (a string's bytes) in bucket order, then the buckets from the
                // last to the first, then the control bytes: rkyv's order.
                SerVec::with_capacity(serializer, len, |resolvers, serializer| {
                    for slot in full() {
                        resolvers.push(entry(slot).serialize(serializer)?);
                    }
                    serializer.align_for::<Entry<K::Archived, V::Archived>>()?;
                    let zeros = [0u8; 64];
                    let size = std::mem::size_of::<Entry<K::Archived, V::Archived>>();
                    for &slot in slots.iter().rev() {
                        if slot == VACANT {
                            let mut left = size;
                            while left > 0 {
                                let chunk = left.min(zeros.len());
                                serializer.write(&zeros[..chunk])?;
                                left -= chunk;
                            }
                        } else {
                            let resolver = resolvers.pop().expect("one resolver per full bucket");
                            // SAFETY: `resolver` came from serializing this same entry (resolvers
                            // are pushed in bucket order and popped in reverse), and the writer
                            // was aligned for an entry above, each entry keeping it aligned.
                            unsafe { serializer.resolve_aligned(&entry(slot), resolver)? };
                        }
                    }
                    let pos = serializer.pos();
                    serializer.write(controls)?;
                    Ok(TableResolver {
                        pos,
                        len,
                        capacity: table.capacity,
                    })
                })?
            })?
        })?
    })?
}

/// Remainders of division by one divisor, without a division instruction (Barrett
/// reduction). The builder takes an entry's hash modulo the table's capacity, which is no
/// power of two: a 64-bit division per entry took a quarter of placing a million entries.
#[derive(Clone, Copy)]
struct Remainder {
    divisor: u64,
    /// `floor((2^64 - 1) / divisor)`.
    reciprocal: u64,
}

impl Remainder {
    fn new(divisor: usize) -> Self {
        let divisor = divisor.max(1) as u64;
        Remainder {
            divisor,
            reciprocal: u64::MAX / divisor,
        }
    }

    /// `x % divisor`. The quotient estimate `x * reciprocal / 2^64` lies in
    /// `(x / divisor - 1, x / divisor]`, so it is the quotient or one less, and one
    /// subtraction corrects the remainder.
    #[inline]
    fn of(self, x: u64) -> usize {
        let quotient = ((u128::from(x) * u128::from(self.reciprocal)) >> 64) as u64;
        let mut rest = x - quotient * self.divisor;
        if rest >= self.divisor {
            rest -= self.divisor;
        }
        rest as usize
    }
}

/// The shape of a table of `capacity` buckets, as rkyv lays it out and probes it.
#[derive(Clone, Copy)]
struct Table {
    capacity: usize,
    probe_cap: usize,
    control_count: usize,
    bucket_mask: usize,
    modulo: Remainder,
}

impl Table {
    fn new(capacity: usize) -> Self {
        let probe_cap = capacity.next_multiple_of(GROUP);
        let control_count = probe_cap + GROUP - 1;
        Table {
            capacity,
            probe_cap,
            control_count,
            bucket_mask: control_count.next_power_of_two() - 1,
            modulo: Remainder::new(capacity),
        }
    }

    /// `bucket % capacity` for a bucket found in a group: one past the probe's start, which
    /// lies below `capacity + GROUP`, so nearly always below twice the capacity.
    #[inline]
    fn wrap(&self, bucket: usize) -> usize {
        match bucket.checked_sub(self.capacity) {
            None => bucket,
            Some(over) if over < self.capacity => over,
            Some(_) => bucket % self.capacity,
        }
    }

    /// How many 64-bit words [`Placing::occupied`] takes: a bit per control byte, and a word
    /// more, so that a group's bits can be read as two whole words.
    fn occupancy_words(&self) -> usize {
        self.control_count.div_ceil(64) + 1
    }

    /// Places the entries of `entries` that `order` names, in that order, in the first
    /// `capacity` of `slots`, the first `control_count` of `controls` and the bits of
    /// `occupied` ([`Placing`]), which must be empty (VACANT, EMPTY and 0): each in the first
    /// empty bucket of the first group on its probe sequence that has one (rkyv's insertion).
    /// With `repeats`, an entry whose key a bucket on its way already holds takes that bucket
    /// over instead. Returns how many buckets it filled.
    fn place<K: Hash + Eq, V>(
        &self,
        entries: &[(K, V)],
        order: impl Iterator<Item = u32>,
        repeats: bool,
        placing: Placing<'_>,
    ) -> usize {
        let Table {
            capacity,
            probe_cap,
            control_count,
            bucket_mask,
            modulo,
        } = *self;
        let Placing {
            slots,
            controls,
            occupied,
        } = placing;
        let (slots, controls) = (&mut slots[..capacity], &mut controls[..control_count]);
        let mirrored = control_count - capacity;
        let mut filled = 0;
        'entries: for i in order {
            let key = &entries[i as usize].0;
            let hash = hash_value::<K, FxHasher64>(key);
            let h2 = (hash >> 57) as u8;
            let mut pos = modulo.of(hash);
            let mut stride = 0;
            let bucket = loop {
                if repeats {
                    let group = &controls[pos..pos + GROUP];
                    let mut matches = matching(group, h2);
                    while matches != 0 {
                        let at = self.wrap(pos + matches.trailing_zeros() as usize / 8);
                        matches &= matches - 1;
                        if entries[slots[at] as usize].0 == *key {
                            slots[at] = i;
                            continue 'entries;
                        }
                    }
                }
                let empty = !group_bits(occupied, pos);
                if empty != 0 {
                    break self.wrap(pos + empty.trailing_zeros() as usize);
                }
                loop {
                    stride += GROUP;
                    pos = (pos + stride) & bucket_mask;
                    if pos < probe_cap {
                        break;
                    }
                }
            };
            controls[bucket] = h2;
            occupied[bucket / 64] |= 1 << (bucket % 64);
            if bucket < mirrored {
                let mirror = capacity + bucket;
                controls[mirror] = h2;
                occupied[mirror / 64] |= 1 << (mirror % 64);
            }
            slots[bucket] = i;
            filled += 1;
        }
        filled
    }
}

/// What [`Table::place`] fills: the entry index of each bucket, the control bytes, and a bit
/// per control byte that is full.
///
/// The bits are what finds a group's first empty bucket. Reading the control bytes for that
/// instead made nearly every entry wait: entries come in bucket order (a dump reads the last
/// one's table in order), so each group read overlaps the byte the entry before had just
/// written, and a 16-byte load cannot take its data from a 1-byte store still on its way to
/// memory. A whole word read back after a whole word written can.
struct Placing<'a> {
    slots: &'a mut [u32],
    controls: &'a mut [u8],
    occupied: &'a mut [u64],
}

/// The full bits of the group of control bytes starting at `pos`, bit `i` for byte `pos + i`.
#[inline]
fn group_bits(occupied: &[u64], pos: usize) -> u16 {
    let (word, shift) = (pos / 64, pos % 64);
    let low = occupied[word] >> shift;
    // `shift` is below 64; shifting by 64 would overflow, and there is nothing to add then.
    let high = if shift == 0 {
        0
    } else {
        occupied[word + 1] << (64 - shift)
    };
    (low | high) as u16
}

/// The top bit of each byte of `group` (16 control bytes) that equals `h2` (a full bucket's
/// control byte: its top bit is clear, so an empty bucket never matches).
#[inline]
fn matching(group: &[u8], h2: u8) -> u128 {
    const LOW: u128 = u128::from_le_bytes([0x7F; GROUP]);
    let bytes: [u8; GROUP] = group.try_into().expect("a group is 16 bytes");
    let x = u128::from_le_bytes(bytes) ^ u128::from_le_bytes([h2; GROUP]);
    // A byte's top bit ends up set exactly when the byte is zero: no carry crosses a byte.
    !(((x & LOW) + LOW) | x | LOW)
}

/// Writes the map's 12 bytes at `out`: the relative pointer to the control bytes, the length
/// and the capacity that `resolver` gives (what rkyv's `ArchivedHashMap::resolve_from_len`
/// writes for that capacity).
pub(super) fn resolve<K, V>(resolver: TableResolver, out: Place<ArchivedHashMap<K, V>>) {
    const _: () = assert!(std::mem::size_of::<ArchivedHashMap<u8, u8>>() == 12);
    let (at, len) = (out.pos(), resolver.len);
    // SAFETY: the map is 12 bytes (asserted) that `out` lets us write, laid out as the module
    // says (the tests compare whole archives with rkyv's): a relative pointer at offset 0,
    // the length at 4, the capacity at 8, each 4-byte aligned like the map. Only the places
    // below write through the pointer, and they write initialized bytes.
    unsafe {
        let base = out.ptr().cast::<u8>();
        let pointer = Place::new_unchecked(at, base.cast::<RawRelPtr>());
        if len == 0 {
            RawRelPtr::emplace_invalid(pointer);
        } else {
            RawRelPtr::emplace(resolver.pos, pointer);
        }
        for (offset, number) in [(4, len), (8, resolver.capacity)] {
            let place = Place::new_unchecked(at + offset, base.add(offset).cast::<ArchivedUsize>());
            number.resolve((), place);
        }
    }
}

/// Which bucket of a map's table an entry lies in, found from the entry's address (an entry
/// a lookup or an iteration of that map gave): bucket `i` lies `i + 1` entries before the
/// control bytes.
pub(super) struct Buckets {
    controls: usize,
    entry_size: usize,
    capacity: usize,
}

impl Buckets {
    pub(super) fn of<K, V>(map: &ArchivedHashMap<K, V>) -> Self {
        // SAFETY: `map` is a valid reference to an archived map, which starts with the
        // relative pointer to its control bytes (see the module's comment; the tests check
        // the layout), a `RawRelPtr` read in place, aligned like the map.
        let pointer = unsafe { &*(map as *const ArchivedHashMap<K, V>).cast::<RawRelPtr>() };
        Buckets {
            controls: pointer.as_ptr_wrapping().addr(),
            entry_size: std::mem::size_of::<Entry<K, V>>(),
            capacity: map.capacity(),
        }
    }

    /// The bucket of the entry whose key is `key`; `None` if `key` is not where an entry of
    /// this table would be (which a validated table's entries always are).
    pub(super) fn of_key<K>(&self, key: &K) -> Option<usize> {
        // An entry starts with its key (`Entry` is `repr(C)`, key first).
        let behind = self.controls.checked_sub((key as *const K).addr())?;
        let bucket = (behind / self.entry_size.max(1)).checked_sub(1)?;
        (behind.is_multiple_of(self.entry_size.max(1)) && bucket < self.capacity).then_some(bucket)
    }

    /// A set of this table's buckets, empty.
    pub(super) fn none(&self) -> BucketSet {
        BucketSet(vec![0; self.capacity.div_ceil(64)])
    }
}

/// A set of buckets of one table, a bit each.
pub(super) struct BucketSet(Vec<u64>);

impl BucketSet {
    pub(super) fn insert(&mut self, bucket: usize) {
        if let Some(word) = self.0.get_mut(bucket / 64) {
            *word |= 1 << (bucket % 64);
        }
    }

    pub(super) fn contains(&self, bucket: usize) -> bool {
        self.0
            .get(bucket / 64)
            .is_some_and(|word| word & (1 << (bucket % 64)) != 0)
    }
}

/// A map with more entries than rkyv's 32-bit lengths hold.
#[derive(Debug)]
struct TooManyEntries(usize);

impl std::fmt::Display for TooManyEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} entries: more than a dump holds", self.0)
    }
}

impl std::error::Error for TooManyEntries {}

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
    let Some(controls) = control_bytes(map, archive)? else {
        return Ok(());
    };
    let capacity = map.capacity();
    let (buckets, copy) = controls.split_at(capacity);
    // One pass, a block at a time, without a branch per byte (so that it vectorizes: a 1M-entry
    // table's check took 0.4-0.8 ms of a reader's switch byte by byte).
    let (mut odd, mut empty) = (false, false);
    for block in buckets.chunks(256) {
        let (block_odd, block_empty) = block.iter().fold((false, false), |(odd, empty), &byte| {
            (
                odd | (byte >= 0x80 && byte != EMPTY),
                empty | (byte == EMPTY),
            )
        });
        if block_odd {
            odd = true;
            break;
        }
        empty |= block_empty;
    }
    if odd {
        return Err("a hash table control byte is neither full nor empty".into());
    }
    if !empty {
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
    use std::collections::HashMap;

    use rkyv::rancor;

    use super::*;
    use crate::map::schema::{ArchivedMap, MapSchema, Snapshot};
    use crate::map::{Key, Value};
    use crate::schema::{self, Schema};

    /// rkyv's own builder, which `serialize` must match byte for byte.
    struct RkyvBuilt<'a, K, V>(&'a [(K, V)]);

    /// The load factor that makes rkyv's capacity for `len` entries ours.
    fn load_factor(len: usize) -> (usize, usize) {
        match len {
            0 => LOAD_FACTOR,
            len => (len, table_capacity(len)),
        }
    }

    impl<K: Archive, V: Archive> Archive for RkyvBuilt<'_, K, V> {
        type Archived = ArchivedHashMap<K::Archived, V::Archived>;
        type Resolver = rkyv::collections::swiss_table::HashMapResolver;

        fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
            let len = self.0.len();
            ArchivedHashMap::resolve_from_len(len, load_factor(len), resolver, out);
        }
    }

    impl<K, V, S> Serialize<S> for RkyvBuilt<'_, K, V>
    where
        K: Serialize<S> + Hash + Eq,
        V: Serialize<S>,
        S: Fallible + Writer + Allocator + ?Sized,
        S::Error: Source,
    {
        fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
            ArchivedHashMap::<K::Archived, V::Archived>::serialize_from_iter::<_, _, _, K, V, _>(
                self.0.iter().map(|(key, value)| (key, value)),
                load_factor(self.0.len()),
                serializer,
            )
        }
    }

    /// Our archive of `entries` and rkyv's.
    fn both<K: Key, V: Value>(entries: &[(K, V)]) -> (Vec<u8>, Vec<u8>) {
        let ours = schema::archive_to_vec(1 << 10, |out| {
            MapSchema::<K, V>::archive(&Snapshot::distinct(entries.to_vec()), out)
        })
        .unwrap();
        let rkyvs = schema::archive_to_vec(1 << 10, |out| {
            schema::archive_into(&RkyvBuilt(entries), out)
        })
        .unwrap();
        (ours.bytes().to_vec(), rkyvs.bytes().to_vec())
    }

    const SIZES: [u64; 16] = [
        0, 1, 2, 3, 7, 8, 14, 15, 16, 17, 33, 100, 111, 112, 1_000, 20_000,
    ];

    #[test]
    fn remainders_without_division_are_exact() {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let divisors = (1..300)
            .chain((1..64).map(|bit| 1usize << bit))
            .chain((1..64).map(|bit| (1usize << bit) - 1))
            .chain((1..64).map(|bit| (1usize << bit) + 1))
            .chain([1_000_000, 1_142_784, u32::MAX as usize, usize::MAX]);
        for divisor in divisors {
            let modulo = Remainder::new(divisor);
            let edges = [
                0,
                1,
                divisor as u64 - 1,
                divisor as u64,
                u64::MAX,
                u64::MAX - 1,
            ];
            for value in edges.into_iter().chain((0..2_000).map(|_| next())) {
                assert_eq!(
                    modulo.of(value),
                    (value % divisor as u64) as usize,
                    "{value} % {divisor}"
                );
            }
        }
        for capacity in 1..200 {
            let table = Table::new(capacity);
            for bucket in 0..capacity + 2 * GROUP {
                assert_eq!(
                    table.wrap(bucket),
                    bucket % capacity,
                    "{bucket} % {capacity}"
                );
            }
        }
    }

    #[test]
    fn a_tables_capacity_exceeds_its_length_by_at_most_a_64th_more_than_rkyvs() {
        let mut last = 0;
        for len in (0..5_000).chain([65_535, 1 << 20, 1_000_000, 1_000_001, u32::MAX as usize]) {
            let (ours, rkyvs) = (table_capacity(len), capacity_for(len));
            assert!(ours > len && ours >= rkyvs, "{len}: {ours} against {rkyvs}");
            assert!(ours - rkyvs <= rkyvs / 64, "{len}: {ours} against {rkyvs}");
            if len < 5_000 {
                assert!(ours >= last, "grows with the length");
                last = ours;
            }
        }
        // A dict that grows by a little keeps its capacity.
        assert_eq!(table_capacity(1_000_000), table_capacity(1_000_001));
        assert_eq!(table_capacity(1_000_000), table_capacity(1_002_000));
    }

    #[test]
    fn the_builder_writes_what_rkyv_writes() {
        for n in SIZES {
            // Spread keys, and keys whose hashes crowd (multiples of a large power of two).
            let spread: Vec<(u64, u64)> = (0..n).map(|i| (i.wrapping_mul(0x9E37), !i)).collect();
            let (ours, rkyvs) = both(&spread);
            assert_eq!(ours, rkyvs, "u64 -> u64, {n} entries");
            let crowded: Vec<(u64, u32)> = (0..n).map(|i| (i << 40, i as u32)).collect();
            let (ours, rkyvs) = both(&crowded);
            assert_eq!(ours, rkyvs, "crowded u64 -> u32, {n} entries");
            // Strings: short ones lie inline, longer ones out of line, in bucket order.
            let strings: Vec<(String, String)> = (0..n)
                .map(|i| (format!("k{i}"), "v".repeat(i as usize % 40)))
                .collect();
            let (ours, rkyvs) = both(&strings);
            assert_eq!(ours, rkyvs, "String -> String, {n} entries");
        }
    }

    #[test]
    fn every_key_is_found_and_no_other() {
        for n in SIZES {
            let entries: Vec<(String, u64)> = (0..n).map(|i| (format!("key-{i}"), i)).collect();
            let archive = archive_of(entries);
            let map = rkyv::access::<ArchivedMap<String, u64>, rancor::Error>(&archive).unwrap();
            assert!(lookups_terminate(map, &archive).is_ok());
            assert_eq!(map.len(), n as usize);
            for i in 0..n {
                let found = map.get_with(format!("key-{i}").as_str(), |q, k| k == q);
                assert_eq!(found.map(|v| v.to_native()), Some(i), "key-{i} of {n}");
            }
            for i in n..n + 50 {
                assert!(
                    map.get_with(format!("key-{i}").as_str(), |q, k| k == q)
                        .is_none()
                );
            }
        }
    }

    #[test]
    fn an_entrys_bucket_is_found_from_its_address() {
        for n in SIZES {
            let entries: Vec<(String, u64)> = (0..n).map(|i| (format!("key-{i}"), i)).collect();
            let archive = archive_of(entries);
            let map = rkyv::access::<ArchivedMap<String, u64>, rancor::Error>(&archive).unwrap();
            let buckets = Buckets::of(map);
            let Some(controls) = control_bytes(map, &archive).unwrap() else {
                assert_eq!(n, 0);
                continue;
            };
            let mut seen = buckets.none();
            for (key, _) in map.iter() {
                let bucket = buckets.of_key(key).expect("an entry's bucket");
                assert!(!seen.contains(bucket), "one entry per bucket");
                seen.insert(bucket);
                let hash = hash_value::<str, FxHasher64>(key.as_str());
                assert_eq!(controls[bucket], (hash >> 57) as u8, "its control byte");
                let (found, _) = map.get_key_value_with(key.as_str(), |q, k| k == q).unwrap();
                assert_eq!(
                    buckets.of_key(found),
                    Some(bucket),
                    "a lookup finds the same"
                );
            }
            // Addresses that are not an entry's.
            let stray = 0u32;
            assert_eq!(buckets.of_key(&stray), None);
            assert_eq!(
                buckets.of_key(map),
                None,
                "the map itself lies after its controls"
            );
        }
    }

    /// The archive of `snapshot`, in an aligned buffer.
    fn archived<K: Key, V: Value>(snapshot: &Snapshot<K, V>) -> rkyv::util::AlignedVec<16> {
        let built =
            schema::archive_to_vec(1 << 10, |out| MapSchema::<K, V>::archive(snapshot, out))
                .unwrap();
        let mut archive = rkyv::util::AlignedVec::<16>::new();
        archive.extend_from_slice(built.bytes());
        archive
    }

    #[test]
    fn with_repeated_keys_the_last_entry_of_each_wins() {
        for n in SIZES {
            // Distinct keys: the same bytes as without the comparisons (and so as rkyv's).
            let spread: Vec<(u64, u64)> = (0..n).map(|i| (i.wrapping_mul(0x9E37), !i)).collect();
            assert_eq!(
                archived(&Snapshot::repeating(spread.clone())).as_slice(),
                archived(&Snapshot::distinct(spread)).as_slice(),
                "{n} distinct entries"
            );
            // A few repeats keep the capacity: the bytes of the distinct keys in the order they
            // first came, each with its last value. Many repeats make the table smaller.
            for distinct in [n, n - n / 50, n / 3, 1] {
                let keys = distinct.max(1);
                let entries: Vec<(String, String)> = (0..n)
                    .map(|i| (format!("key-{}", i % keys), format!("value-{i}")))
                    .collect();
                let mut last: HashMap<&str, &str> = HashMap::new();
                for (key, value) in &entries {
                    last.insert(key, value);
                }
                let archive = archived(&Snapshot::repeating(entries.clone()));
                let map =
                    rkyv::access::<ArchivedMap<String, String>, rancor::Error>(&archive).unwrap();
                assert!(lookups_terminate(map, &archive).is_ok());
                assert_eq!(map.len(), last.len(), "{n} entries of {keys} keys");
                for (key, value) in &last {
                    let found = map.get_with(*key, |q, k| k == q).map(|v| v.as_str());
                    assert_eq!(found, Some(*value), "{key} of {n} entries of {keys} keys");
                }
                let mut firsts: Vec<(String, String)> = Vec::new();
                for (key, _) in &entries {
                    if !firsts.iter().any(|(first, _)| first == key) {
                        firsts.push((key.clone(), last[key.as_str()].to_owned()));
                    }
                }
                let (ours, rkyvs) = both(&firsts);
                assert_eq!(ours, rkyvs);
                if table_capacity(n as usize) == table_capacity(last.len()) {
                    assert_eq!(
                        archive.as_slice(),
                        ours.as_slice(),
                        "{n} entries, {keys} keys"
                    );
                } else {
                    assert!(archive.len() < archived(&Snapshot::distinct(entries)).len());
                }
            }
        }
    }

    fn archive_of(entries: Vec<(String, u64)>) -> rkyv::util::AlignedVec<16> {
        archived(&Snapshot::distinct(entries))
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

    #[test]
    fn one_odd_control_byte_anywhere_is_refused() {
        let entries: Vec<_> = (0..2_000u64).map(|i| (format!("key-{i}"), i)).collect();
        let archive = archive_of(entries);
        let map = rkyv::access::<ArchivedMap<String, u64>, rancor::Error>(&archive).unwrap();
        let controls = control_bytes(map, &archive).unwrap().unwrap();
        let start = controls.as_ptr().addr() - archive.as_ptr().addr();
        let capacity = map.capacity();
        let empties: Vec<usize> = (0..capacity).filter(|&i| controls[i] == EMPTY).collect();
        assert!(capacity > 256 * 4 && empties.len() > 10);
        // The first, a middle and the last empty bucket, each alone turned odd (and its
        // wrap-around copy with it, so that only the odd byte is wrong).
        for &bucket in [
            empties[0],
            empties[empties.len() / 2],
            *empties.last().unwrap(),
        ]
        .iter()
        {
            let mut corrupt = rkyv::util::AlignedVec::<16>::new();
            corrupt.extend_from_slice(&archive);
            corrupt[start + bucket] = 0xFE;
            if capacity + bucket < controls.len() {
                corrupt[start + capacity + bucket] = 0xFE;
            }
            let map = rkyv::access::<ArchivedMap<String, u64>, rancor::Error>(&corrupt)
                .expect("rkyv lets this through");
            let error = lookups_terminate(map, &corrupt).unwrap_err();
            assert!(
                error.contains("neither full nor empty"),
                "bucket {bucket}: {error}"
            );
        }
    }
}
