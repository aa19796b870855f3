//! `UltraDict<K, V>`: the dynamic-key schema and its HashMap-like API.
//!
//! The full dump is an rkyv `ArchivedHashMap<K, V>` read in place; the overlay holds what
//! the stream changed since (a value, or `None` for a removed key). A lookup asks the overlay
//! first, then the mapped dump.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use rkyv::collections::swiss_table::{ArchivedHashMap, HashMapResolver};
use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::{Archive, Place, Serialize};

use crate::engine::Engine;
use crate::error::Result;
use crate::handle::Dict;
use crate::lock_guard::LockOptions;
use crate::options::{Lifetime, Options};
use crate::schema::{self, Data, Fingerprint, Schema};
use crate::storage::{Storage, View};

/// A key type: storable, hashable, and comparable with its archived form (so lookups in a
/// mapped dump need no deserialization). Implemented for every type that qualifies.
pub trait Key: Data<Stored: PartialEq<Self>> + Hash + Eq + Clone {}
impl<T> Key for T where T: Data<Stored: PartialEq<T>> + Hash + Eq + Clone {}

/// A value type: storable and cloneable. Implemented for every type that qualifies.
pub trait Value: Data + Clone {}
impl<T: Data + Clone> Value for T {}

/// Load factor of archived maps (rkyv's default for `HashMap`).
const LOAD_FACTOR: (usize, usize) = (7, 8);

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
    /// Number of live keys (dump and overlay together).
    len: usize,
}

/// The number of live keys an overlay (with no dump under it) holds.
#[cfg(feature = "fuzzing")]
pub(crate) fn overlay_len<K, V>(overlay: &MapOverlay<K, V>) -> usize {
    overlay.len
}

/// The schema of `UltraDict<K, V>`.
pub(crate) struct MapSchema<K, V>(PhantomData<fn() -> (K, V)>);

type ArchivedMap<K, V> = ArchivedHashMap<<K as Data>::Stored, <V as Data>::Stored>;

/// Where a key's current value lives.
enum Found<'v, K: Data, V: Data> {
    Local(&'v V),
    Mapped(&'v V::Stored),
    Missing(PhantomData<K>),
}

impl<K: Key, V: Value> MapSchema<K, V> {
    fn find<'v, Q>(
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

    fn in_dump(dump: Option<&ArchivedMap<K, V>>, overlay: &MapOverlay<K, V>, key: &K) -> bool {
        !overlay.cleared
            && dump.is_some_and(|dump| {
                dump.get_with(key, |q, stored: &K::Stored| stored == q)
                    .is_some()
            })
    }

    fn insert(dump: Option<&ArchivedMap<K, V>>, overlay: &mut MapOverlay<K, V>, key: K, value: V) {
        let existed = match overlay.entries.get(&key) {
            Some(entry) => entry.is_some(),
            None => Self::in_dump(dump, overlay, &key),
        };
        overlay.entries.insert(key, Some(value));
        if !existed {
            overlay.len += 1;
        }
    }

    fn remove(dump: Option<&ArchivedMap<K, V>>, overlay: &mut MapOverlay<K, V>, key: K) {
        let shadows_dump = Self::in_dump(dump, overlay, &key);
        let existed = match overlay.entries.get(&key) {
            Some(entry) => entry.is_some(),
            None => shadows_dump,
        };
        if shadows_dump {
            overlay.entries.insert(key, None);
        } else {
            overlay.entries.remove(&key);
        }
        if existed {
            overlay.len -= 1;
        }
    }

    fn clear(overlay: &mut MapOverlay<K, V>) {
        overlay.entries.clear();
        overlay.cleared = true;
        overlay.len = 0;
    }

    /// Every live entry, owned.
    fn materialize(
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
            len: dump.map_or(0, ArchivedHashMap::len),
        }
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
            MapUpdate::Insert(key, value) => Self::insert(dump, overlay, key, value),
            MapUpdate::Remove(key) => Self::remove(dump, overlay, key),
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

    fn check_dump(dump: &Self::Dump, archive: &[u8]) -> std::result::Result<(), String> {
        lookups_terminate(dump, archive)
    }

    type Snapshot = Vec<(K, V)>;

    fn snapshot(
        dump: Option<&Self::Dump>,
        overlay: &Self::Overlay,
        pending: Option<&Self::Update>,
    ) -> std::result::Result<Vec<(K, V)>, rancor::Error> {
        // What the pending update writes: it wins over the dump and the overlay. Later pairs
        // of a batch win over earlier ones.
        let mut written: FastMap<&K, Option<&V>> = FastMap::default();
        let keep_old = match pending {
            None => true,
            Some(MapUpdate::Insert(key, value)) => {
                written.insert(key, Some(value));
                true
            }
            Some(MapUpdate::Remove(key)) => {
                written.insert(key, None);
                true
            }
            Some(MapUpdate::Extend(pairs)) => {
                written.extend(pairs.iter().map(|(key, value)| (key, Some(value))));
                true
            }
            Some(MapUpdate::Replace(pairs)) => {
                written.extend(pairs.iter().map(|(key, value)| (key, Some(value))));
                false
            }
            Some(MapUpdate::Clear) => false,
        };
        let mut entries = Vec::with_capacity(overlay.len + written.len());
        if keep_old {
            if let (Some(dump), false) = (dump, overlay.cleared) {
                for (stored_key, stored_value) in dump.iter() {
                    let key: K = schema::deserialize(stored_key)?;
                    let shadowed = (!overlay.entries.is_empty()
                        && overlay.entries.contains_key(&key))
                        || (!written.is_empty() && written.contains_key(&key));
                    if !shadowed {
                        entries.push((key, schema::deserialize(stored_value)?));
                    }
                }
            }
            for (key, value) in &overlay.entries {
                if let (Some(value), false) = (value, written.contains_key(key)) {
                    entries.push((key.clone(), value.clone()));
                }
            }
        }
        entries.extend(
            written
                .into_iter()
                .filter_map(|(key, value)| Some((key.clone(), value?.clone()))),
        );
        Ok(entries)
    }

    fn archive(
        entries: &Vec<(K, V)>,
        out: &mut [std::mem::MaybeUninit<u8>],
    ) -> std::result::Result<usize, schema::Unwritten> {
        schema::write_into(out, |writer| {
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&DumpEntries(entries), writer)
        })
    }
}

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
fn lookups_terminate<K, V>(
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
    use super::*;

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

/// The archived bytes of a key: the same in every process, so nested dicts get stable names.
fn key_bytes<K: Key>(key: &K, name: &str) -> Result<Vec<u8>> {
    schema::archive_to_vec(256, |out| schema::archive_into(key, out))
        .map(|built| built.bytes().to_vec())
        .map_err(|detail| crate::Error::Serialize {
            name: name.to_owned(),
            detail: format!("the key of a nested dict: {detail}"),
        })
}

/// Serializes distinct key-value pairs as rkyv's `ArchivedHashMap`, straight from the list the
/// writer built (no `HashMap` in between: the archive hashes each key once).
struct DumpEntries<'a, K, V>(&'a [(K, V)]);

impl<K: Archive, V: Archive> Archive for DumpEntries<'_, K, V> {
    type Archived = ArchivedHashMap<K::Archived, V::Archived>;
    type Resolver = HashMapResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedHashMap::resolve_from_len(self.0.len(), LOAD_FACTOR, resolver, out);
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
        ArchivedHashMap::<K::Archived, V::Archived>::serialize_from_iter::<_, _, _, K, V, _>(
            self.0.iter().map(|(key, value)| (key, value)),
            LOAD_FACTOR,
            serializer,
        )
    }
}

/// A dictionary shared by every process that opens the same name.
///
/// Reads are served from this process's view with no locking: when nothing changed since the
/// last read, a read costs one atomic load and a hash lookup (in the records applied since
/// the last full dump, then in place in the mapped dump). Writes take the cross-process lock,
/// append one record to the shared stream and publish it.
///
/// A handle is `Send + Sync`: threads may share one (`Arc<UltraDict<..>>`) and exclude each
/// other through its lock exactly as processes do.
///
/// ```
/// # fn main() -> ultradict::Result<()> {
/// use ultradict::UltraDict;
///
/// let jobs: UltraDict<String, u64> = UltraDict::builder().open()?; // a fresh, unique name
/// jobs.insert("done".into(), 1)?;
/// jobs.update("done", |n| n.unwrap_or(0) + 1)?; // atomic read-modify-write
/// assert_eq!(jobs.get("done")?, Some(2));
/// # Ok(()) }
/// ```
///
/// Several operations in one critical section, and waiting for other processes' commits:
///
/// ```
/// # fn main() -> ultradict::Result<()> {
/// use std::time::Duration;
/// let d: ultradict::UltraDict<u32, u64> = ultradict::UltraDict::builder().open()?;
/// {
///     let _guard = d.lock()?; // re-entrant; other processes and threads wait
///     let v = d.get(&1)?.unwrap_or(0);
///     d.insert(1, v + 1)?; // nobody wrote in between
/// }
/// assert!(d.try_lock().is_ok());
/// // Nothing new since this handle last looked: times out.
/// assert!(!d.wait_for_change(Duration::from_millis(10))?);
/// # Ok(()) }
/// ```
pub struct UltraDict<K: Key, V: Value> {
    dict: Dict<MapSchema<K, V>>,
}

impl<K: Key, V: Value> fmt::Debug for UltraDict<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UltraDict")
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl<K: Key, V: Value> UltraDict<K, V> {
    crate::__handle_methods!(dict, K);

    fn engine(&self) -> &Engine<MapSchema<K, V>> {
        self.dict.engine()
    }

    /// Starts configuring a handle. Without `.name(..)` a unique name is chosen (find it with
    /// [`name`](Self::name) to share it).
    ///
    /// Names are 1 to [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes of ASCII letters, digits,
    /// `.`, `_` and `-`, not starting with `.`; anything else is [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn builder() -> Builder<K, V> {
        Builder {
            options: Options::default(),
            _types: PhantomData,
        }
    }

    /// Opens (or creates) the dict `name` with default options.
    ///
    /// # Errors
    /// As [`Builder::open`].
    pub fn open(name: &str) -> Result<Self> {
        Self::builder().name(name).open()
    }

    /// Opens with `options`; a dict created here starts with `initial`.
    pub(crate) fn open_with(options: &Options, initial: Option<Vec<(K, V)>>) -> Result<Self> {
        let initial = initial
            .filter(|entries| !entries.is_empty())
            .map(MapUpdate::Extend);
        Ok(UltraDict {
            dict: Dict::open(options, initial.as_ref())?,
        })
    }

    /// The nested dict registered under `key`, created empty if it does not exist yet: any
    /// process that asks for the same key gets the same dict (UltraDict's `recurse=True`).
    /// Removing this dict removes its nested dicts. The nested dict's handle keeps this dict
    /// attached while it lives, so `UltraDict::open(n)?.nested(k)?` stays usable on its own.
    ///
    /// ```
    /// # fn main() -> ultradict::Result<()> {
    /// let root: ultradict::UltraDict<String, u64> = ultradict::UltraDict::builder().open()?;
    /// let jobs = root.nested::<String, u64>("jobs")?;
    /// jobs.update("count", |n| n.unwrap_or(0) + 1)?;
    /// assert_eq!(root.nested::<String, u64>("jobs")?.get("count")?, Some(1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) if the nested dict under `key`
    /// holds other types; [`Error::Removed`](crate::Error::Removed) if this dict was removed;
    /// [`Error::Serialize`](crate::Error::Serialize) if the key cannot be serialized; the
    /// errors of [`Builder::open`].
    pub fn nested<K2: Key, V2: Value>(
        &self,
        key: &(impl ToOwned<Owned = K> + ?Sized),
    ) -> Result<UltraDict<K2, V2>> {
        let child =
            crate::naming::key_child(self.name(), &key_bytes(&key.to_owned(), self.name())?);
        let options = Options {
            name: Some(child),
            lifetime: Some(Lifetime::Persistent),
            child: true,
            ..Options::default()
        };
        Ok(UltraDict {
            dict: self.dict.open_nested(&options, None, "nested map")?,
        })
    }

    /// Opens the nested map field `field` of the derived state `parent` (registered there),
    /// created from `initial` if it does not exist yet.
    pub(crate) fn open_nested_in<S: Schema>(
        parent: &Dict<S>,
        options: &Options,
        initial: Vec<(K, V)>,
        field: &str,
    ) -> Result<Self> {
        let initial = (!initial.is_empty()).then_some(MapUpdate::Extend(initial));
        let what = format!("nested map field {field}");
        Ok(UltraDict {
            dict: parent.open_nested(options, initial.as_ref(), &what)?,
        })
    }

    /// Replaces the whole contents with `entries`, through one full dump.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn replace_all(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        self.engine()
            .write_via_dump(Some(&MapUpdate::Replace(entries.into_iter().collect())))
    }

    /// The value of `key`, if any.
    ///
    /// # Errors
    /// Only if catching up with other processes' updates failed (corrupt shared memory).
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        self.engine().read(|view| Self::value_in(view, key))?
    }

    fn value_in<Q>(view: &View<MapSchema<K, V>>, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        match MapSchema::find(view.dump(), &view.overlay, key) {
            Found::Local(value) => Ok(Some(value.clone())),
            Found::Mapped(stored) => schema::deserialize(stored).map(Some).map_err(|e| {
                crate::Error::corrupt("dump", format!("value failed to deserialize: {e}"))
            }),
            Found::Missing(_) => Ok(None),
        }
    }

    /// Whether `key` has a value.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        self.engine().read(|view| {
            !matches!(
                MapSchema::find(view.dump(), &view.overlay, key),
                Found::Missing(_)
            )
        })
    }

    /// Sets `key` to `value` in every process; returns the previous value.
    ///
    /// # Errors
    /// [`Error::OutOfSpace`](crate::Error::OutOfSpace) or
    /// [`Error::DumpTooSmall`](crate::Error::DumpTooSmall) if the update forced a full dump that
    /// could not be written; nothing changed then.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        self.engine().write(|view| {
            let previous = Self::value_in(view, &key)?;
            Ok((Some(MapUpdate::Insert(key, value)), previous))
        })
    }

    /// Removes `key` in every process; returns its value.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        self.engine().write(|view| {
            let previous = Self::value_in(view, key)?;
            let update = previous.as_ref().map(|_| MapUpdate::Remove(key.to_owned()));
            Ok((update, previous))
        })
    }

    /// Atomically replaces the value of `key` with `f(current value)` and returns the new
    /// value. No other process or thread writes in between.
    ///
    /// ```
    /// # fn main() -> ultradict::Result<()> {
    /// let counters: ultradict::UltraDict<String, u64> = ultradict::UltraDict::builder().open()?;
    /// counters.update("hits", |n| n.unwrap_or(0) + 1)?;
    /// assert_eq!(counters.update("hits", |n| n.unwrap_or(0) + 1)?, 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn update<Q>(&self, key: &Q, f: impl FnOnce(Option<V>) -> V) -> Result<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        // `f` runs under the cross-process lock but outside this handle's view lock, so it
        // may itself read or write this dict (the lock is re-entrant).
        let _guard = self.engine().lock(&LockOptions::default())?;
        let new = f(self.get(key)?);
        let value = new.clone();
        self.engine()
            .write(|_| Ok((Some(MapUpdate::Insert(key.to_owned(), value)), ())))?;
        Ok(new)
    }

    /// The value of `key`; if there is none, inserts `f()` first. Atomic like
    /// [`update`](Self::update).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn get_or_insert_with(&self, key: K, f: impl FnOnce() -> V) -> Result<V> {
        if let Some(value) = self.get(&key)? {
            return Ok(value);
        }
        let _guard = self.engine().lock(&LockOptions::default())?;
        if let Some(value) = self.get(&key)? {
            return Ok(value);
        }
        let value = f();
        let stored = value.clone();
        self.engine()
            .write(|_| Ok((Some(MapUpdate::Insert(key, stored)), ())))?;
        Ok(value)
    }

    /// Inserts many entries as one record (or one full dump if they do not fit the stream),
    /// not one record per entry.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn extend(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let pairs: Vec<(K, V)> = entries.into_iter().collect();
        if pairs.is_empty() {
            return Ok(());
        }
        self.engine()
            .write(|_| Ok((Some(MapUpdate::Extend(pairs)), ())))
    }

    /// Removes every entry, through a full dump of the empty map (so the memory of the old
    /// dump is given back once every process has moved on).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn clear(&self) -> Result<()> {
        self.engine().write_via_dump(Some(&MapUpdate::Clear))
    }

    /// Number of entries.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn len(&self) -> Result<usize> {
        self.engine().read(|view| view.overlay.len)
    }

    /// Whether the dict has no entries.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A consistent snapshot of every entry.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn to_hashmap(&self) -> Result<HashMap<K, V>> {
        let all = self
            .engine()
            .read(|view| MapSchema::materialize(view.dump(), &view.overlay))?;
        let all = all.map_err(|e| crate::Error::corrupt("dump", format!("deserializing: {e}")))?;
        Ok(all.into_iter().collect())
    }

    /// The entries of a consistent snapshot.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn iter(&self) -> Result<std::collections::hash_map::IntoIter<K, V>> {
        Ok(self.to_hashmap()?.into_iter())
    }

    /// The keys of a consistent snapshot.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn keys(&self) -> Result<Vec<K>> {
        Ok(self.to_hashmap()?.into_keys().collect())
    }

    /// The values of a consistent snapshot.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn values(&self) -> Result<Vec<V>> {
        Ok(self.to_hashmap()?.into_values().collect())
    }

    /// Closes the handle and returns the final contents. Under `Lifetime::LastClose` the last
    /// handle to close removes the dict. While handles of nested dicts opened through this one
    /// live, they keep it attached: it is left when the last of them closes.
    ///
    /// # Errors
    /// As [`to_hashmap`](Self::to_hashmap), or if removing the segments failed.
    pub fn close(self) -> Result<HashMap<K, V>> {
        let contents = self.to_hashmap()?;
        self.dict.close()?;
        Ok(contents)
    }

    /// Removes every segment of the dict `name` without opening it (for dicts whose
    /// processes died, or persistent ones).
    ///
    /// # Errors
    /// [`Error::InvalidName`](crate::Error::InvalidName), or [`Error::Io`](crate::Error::Io) if a
    /// segment could not be removed.
    pub fn unlink_by_name(name: &str) -> Result<()> {
        crate::naming::validate(name)?;
        crate::removal::remove_by_name(name)
    }
}

/// Configures and opens an [`UltraDict`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `.open()`"]
pub struct Builder<K, V> {
    options: Options,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K: Key, V: Value> Builder<K, V> {
    crate::options::option_setters!();

    /// Opens the dict.
    ///
    /// # Errors
    /// [`Error::InvalidName`](crate::Error::InvalidName), [`Error::AlreadyExists`](crate::Error::AlreadyExists)
    /// (`Create::New`), [`Error::NotFound`](crate::Error::NotFound) (`Create::Open`),
    /// [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) (other key or value types),
    /// [`Error::ParameterMismatch`](crate::Error::ParameterMismatch),
    /// [`Error::Foreign`](crate::Error::Foreign) (not an ultradict segment),
    /// [`Error::NotReady`](crate::Error::NotReady), [`Error::OutOfSpace`](crate::Error::OutOfSpace),
    /// [`Error::PermissionDenied`](crate::Error::PermissionDenied).
    pub fn open(self) -> Result<UltraDict<K, V>> {
        UltraDict::open_with(&self.options, None)
    }
}
