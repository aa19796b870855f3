//! `UltraDict<K, V>`: the HashMap-like public API of a dynamic-key dict. The schema (records,
//! overlay, dump) is in `schema.rs`, the extra check of a mapped hash table in `table.rs`.

mod schema;
mod table;

use rkyv::Archive;
use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use crate::backend::Backend;
use crate::error::Result;
use crate::handle::Dict;
use crate::options::Options;
use crate::schema::{Data, Schema, Storable};
use crate::storage::{Storage, View};

#[cfg(feature = "internals")]
pub(crate) use schema::MapOverlay;
#[cfg(feature = "fuzzing")]
pub(crate) use schema::overlay_len;
pub(crate) use schema::{Found, MapSchema, MapUpdate};

/// A key type: storable, hashable, and comparable with its archived form (so lookups in a
/// mapped dump need no deserialization). Implemented for every type that qualifies.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key of an `UltraDict`",
    label = "a key needs rkyv's `Archive`, `Serialize` and `Deserialize` (with `compare(PartialEq)`), and `Hash`, `Eq`, `Clone`",
    note = "add `#[derive(ultradict::rkyv::Archive, ultradict::rkyv::Serialize, ultradict::rkyv::Deserialize, Clone, PartialEq, Eq, Hash)]` and `#[rkyv(crate = ultradict::rkyv, compare(PartialEq))]` to `{Self}` (the `crate` part is needed unless your crate depends on rkyv itself)"
)]
pub trait Key: Data<Stored: PartialEq<Self>> + Hash + Eq + Clone {}
#[diagnostic::do_not_recommend]
impl<T> Key for T where T: Data<Stored: PartialEq<T>> + Hash + Eq + Clone {}

/// A value type: storable and cloneable. Implemented for every type that qualifies.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a value of an `UltraDict`",
    label = "a value needs rkyv's `Archive`, `Serialize` and `Deserialize`, and `Clone`",
    note = "add `#[derive(ultradict::rkyv::Archive, ultradict::rkyv::Serialize, ultradict::rkyv::Deserialize, Clone)]` and `#[rkyv(crate = ultradict::rkyv)]` to `{Self}` (the `crate` part is needed unless your crate depends on rkyv itself)"
)]
pub trait Value: Data + Clone {}
#[diagnostic::do_not_recommend]
impl<T: Data + Clone> Value for T {}

/// [`Key`] as generated code assumes it in `where` clauses: see [`Storable`](crate::schema::Storable)
/// for why it spells out its requirements. It implies `Key`.
#[doc(hidden)]
pub trait StorableKey: Storable + Archive<Archived: PartialEq<Self>> + Hash + Eq {}
#[diagnostic::do_not_recommend]
impl<T: Key> StorableKey for T {}

/// Names `K` where it must be a [`Key`] (generated code, once per nested map, on its type).
#[doc(hidden)]
pub const fn key<K: Key>() {}

/// Names `V` where it must be a [`Value`] (generated code, once per nested map, on its type).
#[doc(hidden)]
pub const fn value<V: Value>() {}

/// The archived bytes of a key: the same in every process, so nested dicts get stable names.
fn key_bytes<K: Key>(key: &K, name: &str) -> Result<Vec<u8>> {
    crate::schema::archive_to_vec(256, |out| crate::schema::archive_into(key, out))
        .map(|built| built.bytes().to_vec())
        .map_err(|detail| crate::Error::Serialize {
            name: name.to_owned(),
            detail: format!("the key of a nested dict: {detail}"),
        })
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

    pub(crate) fn engine(&self) -> &Backend<MapSchema<K, V>> {
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
        let options = self.engine().nested_options(&Options::default(), child);
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
        // Nested and unwrapped, unlike a derived getter's read: measured faster here, by the
        // compiler's choices rather than by design (`cargo bench --bench map_ops`: a `u64`
        // from the overlay in 11.6 ns, 17.1 passed on flat).
        self.engine().read(|view| Ok(Self::value_in(view, key)))?
    }

    /// Kept out of line so that `get`'s read stays small enough to be inlined into the caller:
    /// inlined here, it was not, and a `u64` get measured 17.9 ns instead of 11.0
    /// (`cargo bench --bench map_ops`, three alternating runs).
    #[inline(never)]
    fn value_in<Q>(view: &View<MapSchema<K, V>>, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        match MapSchema::find(view.dump(), &view.overlay, key) {
            Found::Local(value) => Ok(Some(value.clone())),
            Found::Mapped(stored) => crate::schema::deserialize(stored)
                .map(Some)
                .map_err(|e| crate::Error::undeserializable(&e)),
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
            Ok(!matches!(
                MapSchema::find(view.dump(), &view.overlay, key),
                Found::Missing(_)
            ))
        })
    }

    /// Sets `key` to `value` in every process; returns the previous value.
    ///
    /// # Errors
    /// [`Error::OutOfSpace`](crate::Error::OutOfSpace) or
    /// [`Error::DumpTooSmall`](crate::Error::DumpTooSmall) if the update forced a full dump that
    /// could not be written; nothing changed then. [`Error::Corrupt`](crate::Error::Corrupt) if
    /// the previous value, read from the mapped dump, failed to deserialize: the write may have
    /// been committed then (the message says so), since the old value is read as the record
    /// is applied.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        // The old value comes out of the overlay as the record goes in: no lookup and clone
        // before the commit (`Schema::apply_displacing`).
        let old = self
            .engine()
            .write_displacing(MapUpdate::Insert(key, value), |_, _| Ok(true))?;
        Ok(old.flatten())
    }

    /// Removes `key` in every process; returns its value.
    ///
    /// # Errors
    /// As [`insert`](Self::insert), `Corrupt` included.
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        K::Stored: PartialEq<Q>,
    {
        // Committed only if the key has a value, which comes out of the overlay (or the
        // dump) as the record is applied.
        let old =
            self.engine()
                .write_displacing(MapUpdate::Remove(key.to_owned()), |view, _| {
                    let found = MapSchema::find(view.dump(), &view.overlay, key);
                    Ok(!matches!(found, Found::Missing(_)))
                })?;
        Ok(old.flatten())
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
        self.engine().modify(
            |view| Self::value_in(view, key),
            |current| {
                let new = f(current);
                (MapUpdate::Insert(key.to_owned(), new.clone()), new)
            },
        )
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
        self.engine().locked(|| {
            if let Some(value) = self.get(&key)? {
                return Ok(value);
            }
            let value = f();
            let stored = value.clone();
            self.engine()
                .write(MapUpdate::Insert(key, stored), |_, _| Ok((true, ())))?;
            Ok(value)
        })
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
            .write(MapUpdate::Extend(pairs), |_, _| Ok((true, ())))
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
        self.engine().read(|view| Ok(view.overlay.len))
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
        let all = self.engine().read(|view| {
            MapSchema::materialize(view.dump(), &view.overlay)
                .map_err(|e| crate::Error::corrupt("dump", format!("deserializing: {e}")))
        })?;
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
        crate::removal::remove_by_name(&crate::naming::Place::in_shm(name))
    }

    /// [`unlink_by_name`](Self::unlink_by_name) for a dict whose objects live in directory
    /// `dir` (see [`Builder::directory`]).
    ///
    /// # Errors
    /// As [`unlink_by_name`](Self::unlink_by_name); [`Error::InvalidOption`](crate::Error::InvalidOption)
    /// if `dir` is not a directory.
    pub fn unlink_by_name_in(dir: impl AsRef<std::path::Path>, name: &str) -> Result<()> {
        crate::naming::validate(name)?;
        let options = Options {
            dir: Some(dir.as_ref().to_path_buf()),
            ..Options::default()
        };
        let place = crate::naming::Place::new(options.effective_dir()?, name);
        crate::removal::remove_by_name(&place)
    }
}

/// Configures and opens an [`UltraDict`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `.open()`"]
pub struct Builder<K, V> {
    pub(crate) options: Options,
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
