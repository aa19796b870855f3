//! The map's schema: its records (`MapUpdate`), what a process holds on top of its dump
//! (`MapOverlay`), lookups in the overlay then in place in the dump, and the full dump as an
//! rkyv `ArchivedHashMap` written straight from the state's entries.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;

use rkyv::collections::swiss_table::ArchivedHashMap;
use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::{Archive, Place, Serialize};

use super::table::Buckets;
use super::{Key, Value};
use crate::schema::{self, Data, Fingerprint, Schema};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One record of a map's stream.
#[derive(Archive, Serialize, rkyv::Deserialize, Debug)]
pub(crate) enum MapUpdate<K, V> {
    Insert(K, V),
    Remove(K),
    Extend(Vec<(K, V)>),
    Clear,
    /// Everything replaced by these entries.
    Replace(Vec<(K, V)>),
}

impl<K: Clone, V> crate::watch::Touches<K> for MapUpdate<K, V> {
    fn touched(&self, out: &mut Vec<K>) -> bool {
        match self {
            MapUpdate::Insert(key, _) | MapUpdate::Remove(key) => out.push(key.clone()),
            MapUpdate::Extend(pairs) => out.extend(pairs.iter().map(|(key, _)| key.clone())),
            MapUpdate::Clear | MapUpdate::Replace(_) => return false,
        }
        true
    }
}

/// What a map process holds on top of its mapped dump.
pub(crate) struct MapOverlay<K, V> {
    /// Keys changed since the dump: `Some` value, or `None` if removed.
    entries: FastMap<K, Option<V>>,
    /// The dump no longer counts (a `Clear` was applied).
    cleared: bool,
    /// Which of the dump's entries `entries` shadows.
    shadows: Shadows,
    /// Number of live keys (dump and overlay together).
    pub(super) len: usize,
}

/// The dump's entries an overlay shadows (its keys that the dump holds too): noted where a
/// record's key is looked up in the dump anyway, so that a full dump skips them by a bit per
/// bucket instead of looking every overlay key up again (that took 38-46 of a 1M-entry
/// dump's 60-70 ms after 400k records of spread keys). The buckets are kept as a list, at
/// most one entry per record applied, so that a process's memory grows with the stream and
/// not with the dict (invariant 5); only the writer of a dump makes a bit set of them.
///
/// An entry whose bucket is not found from its address (never, for a validated table) is not
/// noted; a full dump finds that the same way and looks its key up in the overlay instead.
#[derive(Default)]
struct Shadows {
    /// Buckets of the dump's table, in the order they were noted (with repeats).
    buckets: Vec<u32>,
}

impl Shadows {
    /// `key`'s value in `dump`, if any; if there is one, notes its bucket as shadowed.
    fn note<'d, K: Key, Stored>(
        &mut self,
        dump: Option<&'d ArchivedHashMap<K::Stored, Stored>>,
        key: &K,
    ) -> Option<&'d Stored> {
        let (stored, value) = dump?.get_key_value_with(key, |q, stored: &K::Stored| stored == q)?;
        if let Some(bucket) = Buckets::of(dump?).of_key(stored) {
            // A bucket is below the capacity, which fits 32 bits (see `table::serialize`).
            self.buckets.push(bucket as u32);
        }
        Some(value)
    }
}

/// The number of live keys an overlay (with no dump under it) holds.
#[cfg(feature = "fuzzing")]
pub(crate) fn overlay_len<K, V>(overlay: &MapOverlay<K, V>) -> usize {
    overlay.len
}

/// The largest overlay (in entries it has room for) whose table a new epoch keeps (see
/// `reset_overlay`).
const RECYCLED_CAPACITY: usize = 1 << 14;

/// The schema of `UltraDict<K, V>`.
pub(crate) struct MapSchema<K, V>(PhantomData<fn() -> (K, V)>);

pub(super) type ArchivedMap<K, V> = ArchivedHashMap<<K as Data>::Stored, <V as Data>::Stored>;

/// Where a key's current value lives.
pub(crate) enum Found<'v, K: Data, V: Data> {
    Local(&'v V),
    Mapped(&'v V::Stored),
    Missing(PhantomData<K>),
}

/// What a key held before a record changed it.
enum Previous<'d, V: Data> {
    /// A value in the overlay, or `None`: removed there, or nowhere.
    Local(Option<V>),
    /// A value in the dump, shadowed from now on.
    Mapped(&'d V::Stored),
}

impl<V: Value> Previous<'_, V> {
    fn existed(&self) -> bool {
        !matches!(self, Previous::Local(None))
    }

    /// The old value, owned: moved out of the overlay, or deserialized from the dump.
    fn into_owned(self) -> Result<Option<V>, rancor::Error> {
        match self {
            Previous::Local(value) => Ok(value),
            Previous::Mapped(stored) => schema::deserialize(stored).map(Some),
        }
    }
}

impl<K: Key, V: Value> MapSchema<K, V> {
    #[inline]
    pub(crate) fn find<'v, Q>(
        dump: Option<&'v ArchivedMap<K, V>>,
        overlay: &'v MapOverlay<K, V>,
        key: &Q,
    ) -> Found<'v, K, V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        if !overlay.entries.is_empty() {
            match overlay.entries.get(key) {
                Some(Some(value)) => return Found::Local(value),
                Some(None) => return Found::Missing(PhantomData),
                None => {}
            }
        }
        if overlay.cleared {
            return Found::Missing(PhantomData);
        }
        match dump.and_then(|dump| dump.get_with(key, |q, stored: &K::Stored| stored == q)) {
            Some(stored) => Found::Mapped(stored),
            None => Found::Missing(PhantomData),
        }
    }

    fn insert<'d>(
        dump: Option<&'d ArchivedMap<K, V>>,
        overlay: &mut MapOverlay<K, V>,
        key: K,
        value: V,
    ) -> Previous<'d, V> {
        use std::collections::hash_map::Entry;
        // One hash and probe of the overlay, not two: the writer's hot path.
        let MapOverlay {
            entries,
            shadows,
            cleared,
            len,
        } = overlay;
        let previous = match entries.entry(key) {
            Entry::Occupied(mut entry) => Previous::Local(entry.insert(Some(value))),
            Entry::Vacant(entry) => {
                let stored = if *cleared {
                    None
                } else {
                    shadows.note(dump, entry.key())
                };
                entry.insert(Some(value));
                stored.map_or(Previous::Local(None), Previous::Mapped)
            }
        };
        if !previous.existed() {
            *len += 1;
        }
        previous
    }

    fn remove<'d>(
        dump: Option<&'d ArchivedMap<K, V>>,
        overlay: &mut MapOverlay<K, V>,
        key: K,
    ) -> Previous<'d, V> {
        let stored = if overlay.cleared {
            None
        } else {
            overlay.shadows.note(dump, &key)
        };
        // A key the dump holds stays in the overlay as removed; any other leaves it.
        let local = match stored {
            Some(_) => overlay.entries.insert(key, None),
            None => overlay.entries.remove(&key),
        };
        let previous = match (local, stored) {
            (Some(local), _) => Previous::Local(local),
            (None, Some(stored)) => Previous::Mapped(stored),
            (None, None) => Previous::Local(None),
        };
        if previous.existed() {
            overlay.len -= 1;
        }
        previous
    }

    fn clear(overlay: &mut MapOverlay<K, V>) {
        overlay.entries.clear();
        overlay.cleared = true;
        overlay.shadows = Shadows::default();
        overlay.len = 0;
    }

    /// Every live entry, owned.
    pub(crate) fn materialize(
        dump: Option<&ArchivedMap<K, V>>,
        overlay: &MapOverlay<K, V>,
    ) -> std::result::Result<FastMap<K, V>, rancor::Error> {
        let mut all = FastMap::with_capacity_and_hasher(overlay.len, Default::default());
        if let (Some(dump), false) = (dump, overlay.cleared) {
            for (stored_key, stored_value) in dump.iter() {
                let key: K = schema::deserialize(stored_key)?;
                if !overlay.entries.contains_key(&key) {
                    all.insert(key, schema::deserialize(stored_value)?);
                }
            }
        }
        for (key, value) in &overlay.entries {
            if let Some(value) = value {
                all.insert(key.clone(), value.clone());
            }
        }
        Ok(all)
    }
}

impl<K: Key, V: Value> Schema for MapSchema<K, V> {
    type Dump = ArchivedMap<K, V>;
    type Update = MapUpdate<K, V>;
    type Touched = K;
    type Overlay = MapOverlay<K, V>;

    fn overlay_for(dump: Option<&Self::Dump>) -> Self::Overlay {
        MapOverlay {
            entries: FastMap::default(),
            cleared: false,
            shadows: Shadows::default(),
            len: dump.map_or(0, ArchivedHashMap::len),
        }
    }

    fn reset_overlay(overlay: &mut Self::Overlay, dump: Option<&Self::Dump>) {
        if overlay.entries.capacity() > RECYCLED_CAPACITY {
            *overlay = Self::overlay_for(dump);
            return;
        }
        overlay.entries.clear();
        overlay.shadows.buckets.clear();
        overlay.cleared = false;
        overlay.len = dump.map_or(0, ArchivedHashMap::len);
    }

    fn fingerprint() -> Fingerprint {
        Fingerprint::new(
            format!(
                "UltraDict<{}, {}>",
                std::any::type_name::<K>(),
                std::any::type_name::<V>()
            ),
            &[Fingerprint::layout_of::<K>(), Fingerprint::layout_of::<V>()],
        )
    }

    fn apply(dump: Option<&Self::Dump>, overlay: &mut Self::Overlay, update: Self::Update) {
        match update {
            MapUpdate::Insert(key, value) => {
                Self::insert(dump, overlay, key, value);
            }
            MapUpdate::Remove(key) => {
                Self::remove(dump, overlay, key);
            }
            MapUpdate::Extend(pairs) => {
                for (key, value) in pairs {
                    Self::insert(dump, overlay, key, value);
                }
            }
            MapUpdate::Clear => Self::clear(overlay),
            MapUpdate::Replace(pairs) => {
                Self::clear(overlay);
                for (key, value) in pairs {
                    Self::insert(dump, overlay, key, value);
                }
            }
        }
    }

    /// A single key's old value (`None` for the batches).
    type Displaced = Option<V>;

    fn apply_displacing(
        dump: Option<&Self::Dump>,
        overlay: &mut Self::Overlay,
        update: Self::Update,
    ) -> Result<Option<V>, rancor::Error> {
        match update {
            MapUpdate::Insert(key, value) => Self::insert(dump, overlay, key, value).into_owned(),
            MapUpdate::Remove(key) => Self::remove(dump, overlay, key).into_owned(),
            batch => {
                Self::apply(dump, overlay, batch);
                Ok(None)
            }
        }
    }

    fn displaced(
        dump: Option<&Self::Dump>,
        overlay: &Self::Overlay,
        update: &Self::Update,
    ) -> Result<Option<V>, rancor::Error> {
        let (MapUpdate::Insert(key, _) | MapUpdate::Remove(key)) = update else {
            return Ok(None);
        };
        match Self::find(dump, overlay, key) {
            Found::Local(value) => Ok(Some(value.clone())),
            Found::Mapped(stored) => schema::deserialize(stored).map(Some),
            Found::Missing(_) => Ok(None),
        }
    }

    fn check_dump(dump: &Self::Dump, archive: &[u8]) -> std::result::Result<(), String> {
        super::table::lookups_terminate(dump, archive)
    }

    type Snapshot = Snapshot<K, V>;

    fn snapshot(
        dump: Option<&Self::Dump>,
        overlay: &Self::Overlay,
        pending: Option<&Self::Update>,
    ) -> std::result::Result<Snapshot<K, V>, rancor::Error> {
        // What the pending update writes: it wins over the dump and the overlay. A single key
        // is looked up here; a batch goes last, and the table's builder lets the last entry of
        // a key win (later pairs of a batch win over earlier ones, as in `HashMap::extend`).
        let mut written: Option<(&K, Option<&V>)> = None;
        let mut batch: Option<&[(K, V)]> = None;
        let keep_old = match pending {
            None => true,
            Some(MapUpdate::Insert(key, value)) => {
                written = Some((key, Some(value)));
                true
            }
            Some(MapUpdate::Remove(key)) => {
                written = Some((key, None));
                true
            }
            Some(MapUpdate::Extend(pairs)) => {
                batch = Some(pairs);
                true
            }
            Some(MapUpdate::Replace(pairs)) => {
                batch = Some(pairs);
                false
            }
            Some(MapUpdate::Clear) => false,
        };
        let is_written = |key: &K| written.is_some_and(|(written, _)| written == key);
        let added = batch.map_or(usize::from(written.is_some()), <[_]>::len);
        let mut entries = Vec::with_capacity(overlay.len + added);
        if keep_old {
            if let (Some(dump), false) = (dump, overlay.cleared) {
                // The dump's entries that the overlay shadows (noted as records were applied)
                // or the pending update does (looked up here): a bit per bucket.
                let buckets = Buckets::of(dump);
                let mut shadowed = buckets.none();
                for &bucket in &overlay.shadows.buckets {
                    shadowed.insert(bucket as usize);
                }
                if let Some((key, _)) = written {
                    let found = dump.get_key_value_with(key, |q, stored: &K::Stored| stored == q);
                    if let Some(bucket) = found.and_then(|(stored, _)| buckets.of_key(stored)) {
                        shadowed.insert(bucket);
                    }
                }
                for (stored_key, stored_value) in dump.iter() {
                    let hidden = match buckets.of_key(stored_key) {
                        Some(bucket) => shadowed.contains(bucket),
                        // Never for a validated table (see `Shadows`): looked up instead.
                        None => {
                            let key: K = schema::deserialize(stored_key)?;
                            overlay.entries.contains_key(&key) || is_written(&key)
                        }
                    };
                    if !hidden {
                        let key = schema::deserialize(stored_key)?;
                        entries.push((key, schema::deserialize(stored_value)?));
                    }
                }
            }
            for (key, value) in &overlay.entries {
                if let (Some(value), false) = (value, is_written(key)) {
                    entries.push((key.clone(), value.clone()));
                }
            }
        }
        if let Some((key, Some(value))) = written {
            entries.push((key.clone(), value.clone()));
        }
        if let Some(pairs) = batch {
            entries.extend_from_slice(pairs);
        }
        Ok(Snapshot {
            entries,
            repeats: batch.is_some(),
        })
    }

    fn archive(
        snapshot: &Snapshot<K, V>,
        out: &mut [std::mem::MaybeUninit<u8>],
    ) -> std::result::Result<usize, schema::Unwritten> {
        schema::archive_into(&DumpEntries(snapshot), out)
    }

    fn record_len_hint(update: &MapUpdate<K, V>) -> usize {
        match update {
            MapUpdate::Extend(pairs) | MapUpdate::Replace(pairs) => {
                pairs.len() * std::mem::size_of::<rkyv::Archived<(K, V)>>()
            }
            MapUpdate::Insert(..) | MapUpdate::Remove(_) | MapUpdate::Clear => 0,
        }
    }

    fn archive_len_hint(snapshot: &Snapshot<K, V>) -> usize {
        super::table::inline_len::<K::Archived, V::Archived>(snapshot.entries.len())
    }
}

/// The entries of a map's next full dump, as a writer gathers them.
pub(crate) struct Snapshot<K, V> {
    /// The entries, in the order the table is built from.
    entries: Vec<(K, V)>,
    /// A key may come more than once (a pending batch goes last); its last entry counts.
    repeats: bool,
}

impl<K, V> Snapshot<K, V> {
    /// A snapshot of `entries`, whose keys are distinct.
    #[cfg(test)]
    pub(super) fn distinct(entries: Vec<(K, V)>) -> Self {
        Snapshot {
            entries,
            repeats: false,
        }
    }

    /// A snapshot of `entries`, where a key may come more than once.
    #[cfg(test)]
    pub(super) fn repeating(entries: Vec<(K, V)>) -> Self {
        Snapshot {
            entries,
            repeats: true,
        }
    }
}

/// Serializes a snapshot as rkyv's `ArchivedHashMap`, straight from the list the writer built
/// (no `HashMap` in between: the archive hashes each key once), with a faster builder than
/// rkyv's that writes the same bytes (see `table.rs`).
struct DumpEntries<'a, K, V>(&'a Snapshot<K, V>);

impl<K: Archive, V: Archive> Archive for DumpEntries<'_, K, V> {
    type Archived = ArchivedHashMap<K::Archived, V::Archived>;
    type Resolver = super::table::TableResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        super::table::resolve(resolver, out);
    }
}

impl<K, V, S> Serialize<S> for DumpEntries<'_, K, V>
where
    K: Serialize<S> + Hash + Eq,
    V: Serialize<S>,
    S: Fallible + Writer + Allocator + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> std::result::Result<Self::Resolver, S::Error> {
        super::table::serialize(&self.0.entries, self.0.repeats, serializer)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rkyv::rancor;

    use super::*;

    type Map = MapSchema<u64, u64>;

    /// A small xorshift generator: the same cases on every run.
    struct Cases(u64);

    impl Cases {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }

        /// Up to 11 pairs; half the batches draw from 8 keys, so that a key often comes twice.
        fn pairs(&mut self) -> Vec<(u64, u64)> {
            let keys = if self.next(2) == 0 { 8 } else { 400 };
            (0..self.next(12))
                .map(|_| (self.next(keys), self.next(1000)))
                .collect()
        }

        /// Mostly inserts and removes of keys the dump may hold, now and then a batch, a
        /// clear or a replacement.
        fn update(&mut self) -> MapUpdate<u64, u64> {
            match self.next(40) {
                0 => MapUpdate::Clear,
                1 => MapUpdate::Replace(self.pairs()),
                2..=5 => MapUpdate::Extend(self.pairs()),
                6..=17 => MapUpdate::Remove(self.next(400)),
                _ => MapUpdate::Insert(self.next(400), self.next(1000)),
            }
        }
    }

    /// Applies `update` to the model; returns the old value a single key's update displaced.
    fn apply_to(model: &mut HashMap<u64, u64>, update: &MapUpdate<u64, u64>) -> Option<u64> {
        match update {
            MapUpdate::Insert(key, value) => return model.insert(*key, *value),
            MapUpdate::Remove(key) => return model.remove(key),
            MapUpdate::Extend(pairs) => model.extend(pairs.iter().copied()),
            MapUpdate::Clear => model.clear(),
            MapUpdate::Replace(pairs) => {
                model.clear();
                model.extend(pairs.iter().copied());
            }
        }
        None
    }

    #[test]
    fn a_snapshot_is_the_dump_under_the_overlay_and_the_pending_update() {
        let mut cases = Cases(0x9E37_79B9_7F4A_7C15);
        for case in 0..300 {
            let base: Vec<(u64, u64)> = (0..cases.next(300)).map(|k| (k, k * 10)).collect();
            let archive = archived(&Snapshot::distinct(base.clone()));
            let dump = rkyv::access::<ArchivedMap<u64, u64>, rancor::Error>(&archive).unwrap();
            let mut model: HashMap<u64, u64> = base.iter().copied().collect();
            let mut overlay = Map::overlay_for(Some(dump));
            for step in 0..cases.next(60) {
                let update = cases.update();
                let looked_up = Map::displaced(Some(dump), &overlay, &update).unwrap();
                let old = apply_to(&mut model, &update);
                assert_eq!(looked_up, old, "case {case}, step {step}: looked up");
                // The writer's path and the reader's, in turn.
                if cases.next(2) == 0 {
                    let displaced = Map::apply_displacing(Some(dump), &mut overlay, update);
                    assert_eq!(
                        displaced.unwrap(),
                        old,
                        "case {case}, step {step}: displaced"
                    );
                } else {
                    Map::apply(Some(dump), &mut overlay, update);
                }
                assert_eq!(overlay.len, model.len(), "case {case}: the count");
            }
            let pending = (cases.next(4) > 0).then(|| cases.update());
            if let Some(update) = &pending {
                apply_to(&mut model, update);
            }
            // The next dump, as the writer archives it and any process reads it.
            let snapshot = Map::snapshot(Some(dump), &overlay, pending.as_ref()).unwrap();
            let archived_next = archived(&snapshot);
            let next =
                rkyv::access::<ArchivedMap<u64, u64>, rancor::Error>(&archived_next).unwrap();
            let mut read: Vec<(u64, u64)> = next
                .iter()
                .map(|(key, value)| (key.to_native(), value.to_native()))
                .collect();
            read.sort_unstable();
            let mut expected: Vec<(u64, u64)> = model.into_iter().collect();
            expected.sort_unstable();
            assert_eq!(read, expected, "case {case}");
            assert_eq!(next.len(), expected.len(), "case {case}: the length");
            assert!(super::super::table::lookups_terminate(next, &archived_next).is_ok());
            for (key, value) in &expected {
                let found = next.get_with(key, |q, k: &rkyv::rend::u64_le| k.to_native() == *q);
                assert_eq!(
                    found.map(|v| v.to_native()),
                    Some(*value),
                    "case {case}: {key}"
                );
            }
        }
    }

    /// `snapshot` archived as a dump, in an aligned buffer.
    fn archived(snapshot: &Snapshot<u64, u64>) -> rkyv::util::AlignedVec<16> {
        let built = schema::archive_to_vec(1 << 10, |out| Map::archive(snapshot, out)).unwrap();
        let mut archive = rkyv::util::AlignedVec::<16>::new();
        archive.extend_from_slice(built.bytes());
        archive
    }
}
