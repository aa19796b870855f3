//! Typed schemas: the runtime half of `#[derive(SharedDict)]`.
//!
//! For a state struct, the derive generates a hidden struct of its plain (not nested) fields,
//! an update enum with one variant per field (setting `counter` streams `counter`'s record
//! only) plus one that replaces them all, and an overlay with an `Option` per field. This
//! module turns those into a [`Schema`] for the engine: the full dump is the rkyv archive of
//! the fields struct, read in place; a getter looks at the overlay, then at the dump.

use std::marker::PhantomData;

use rkyv::rancor::{self, Source};

use crate::error::{Error, Result};
use crate::handle::Dict;
use crate::options::Options;
use crate::schema::{Data, Fingerprint, Schema};
use crate::storage::{Storage, View};

/// The plain fields of a derived state struct. Implemented by `#[derive(SharedDict)]`; not
/// meant to be implemented by hand.
#[doc(hidden)]
pub trait StructFields: Data + Clone {
    /// One record: a new value for one field, or for all of them. Names the fields it sets
    /// (by their stored keys) for watchers.
    type Update: Data + crate::watch::Touches<&'static str>;
    /// A process's changes on top of the dump: an `Option` per field.
    type Overlay: Default + Send + Sync;

    /// Name, field names, order and types of the struct.
    fn fingerprint() -> Fingerprint;
    /// Applies a committed update to the overlay.
    fn apply(overlay: &mut Self::Overlay, update: Self::Update);
    /// The current fields, from the overlay where set and the dump elsewhere.
    fn materialize(dump: &Self::Stored, overlay: &Self::Overlay) -> Result<Self, rancor::Error>;
    /// Applies an update to owned fields (for writing a dump that includes it).
    fn apply_to(fields: &mut Self, update: &Self::Update);
    /// The update that replaces every field.
    fn replace_all(self) -> Self::Update;
    /// The fields an update sets, if it sets them all.
    fn from_update(update: &Self::Update) -> Option<Self>;
}

/// The engine schema of a derived struct.
#[doc(hidden)]
pub struct StructSchema<F>(PhantomData<fn() -> F>);

impl<F: StructFields> Schema for StructSchema<F> {
    type Dump = F::Stored;
    type Update = F::Update;
    type Touched = &'static str;
    type Overlay = F::Overlay;

    fn overlay_for(_dump: Option<&Self::Dump>) -> Self::Overlay {
        F::Overlay::default()
    }

    fn fingerprint() -> Fingerprint {
        F::fingerprint()
    }

    fn apply(_dump: Option<&Self::Dump>, overlay: &mut Self::Overlay, update: Self::Update) {
        F::apply(overlay, update);
    }

    type Displaced = ();

    fn apply_displacing(
        dump: Option<&Self::Dump>,
        overlay: &mut Self::Overlay,
        update: Self::Update,
    ) -> Result<(), rancor::Error> {
        Self::apply(dump, overlay, update);
        Ok(())
    }

    fn displaced(
        _dump: Option<&Self::Dump>,
        _overlay: &Self::Overlay,
        _update: &Self::Update,
    ) -> Result<(), rancor::Error> {
        Ok(())
    }

    type Snapshot = F;

    fn snapshot(
        dump: Option<&Self::Dump>,
        overlay: &Self::Overlay,
        pending: Option<&Self::Update>,
    ) -> Result<F, rancor::Error> {
        match dump {
            Some(dump) => {
                let mut fields = F::materialize(dump, overlay)?;
                if let Some(update) = pending {
                    F::apply_to(&mut fields, update);
                }
                Ok(fields)
            }
            // Only the creator's first dump has no predecessor, and it replaces everything.
            None => pending
                .and_then(F::from_update)
                .ok_or_else(|| rancor::Error::new(MissingInitialState)),
        }
    }

    fn archive(
        fields: &F,
        out: &mut [std::mem::MaybeUninit<u8>],
    ) -> Result<usize, crate::schema::Unwritten> {
        crate::schema::archive_into(fields, out)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a struct dict has no dump to start from")]
struct MissingInitialState;

/// The shared dict behind a derived handle. Used by generated code.
#[doc(hidden)]
pub type StructDict<F> = Dict<StructSchema<F>>;

impl<F: StructFields> Dict<StructSchema<F>> {
    /// Opens or creates the dict; a dict created here starts from `initial`.
    pub fn open_state(options: &OpenOptions, initial: F) -> Result<Self> {
        Dict::open(&options.0, Some(&initial.replace_all()))
    }

    /// Removes the dict if this handle created it (see [`SharedDict`]'s hidden
    /// `__discard_if_created`).
    pub fn discard_if_created(&self) {
        if self.engine().created_here() {
            let _ = self.engine().unlink();
        }
    }

    /// A plain field's current value: `written`, the overlay's, if the field was written since
    /// the dump, else `stored`, the dump's. The read of generated getters and updaters.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the field if the dump's value fails to deserialize.
    #[inline(always)]
    pub fn field<T: Data + Clone>(
        &self,
        field: &str,
        written: &Option<T>,
        stored: &T::Stored,
    ) -> Result<T> {
        match written {
            Some(value) => Ok(value.clone()),
            None => crate::schema::deserialize::<T>(stored)
                .map_err(|e| Error::corrupt(self.name(), format!("field `{field}`: {e}"))),
        }
    }

    /// Runs `f` on the mapped dump and the overlay, caught up.
    #[inline]
    pub fn read<R>(&self, f: impl FnOnce(&F::Stored, &F::Overlay) -> Result<R>) -> Result<R> {
        self.engine()
            .read(|view: &View<StructSchema<F>>| match view.dump() {
                Some(dump) => f(dump, &view.overlay),
                None => Err(Error::corrupt(
                    self.name(),
                    "a struct dict without its first dump",
                )),
            })
    }

    /// An atomic read-modify-write of the fields (a generated updater): `read` looks at them
    /// caught up under the writers' lock, `make` turns what it found into the update to
    /// commit and what to return. `make` runs with the handle's view let go, so it may use
    /// this state (the lock is re-entrant).
    #[inline]
    pub fn modify<T, R>(
        &self,
        read: impl FnOnce(&F::Stored, &F::Overlay) -> Result<T>,
        make: impl FnOnce(T) -> (F::Update, R),
    ) -> Result<R> {
        self.engine().modify(
            |view: &View<StructSchema<F>>| match view.dump() {
                Some(dump) => read(dump, &view.overlay),
                None => Err(Error::corrupt(
                    self.name(),
                    "a struct dict without its first dump",
                )),
            },
            make,
        )
    }

    /// Commits one update.
    pub fn write(&self, update: F::Update) -> Result<()> {
        self.engine().write(update, |_, _| Ok((true, ())))
    }

    /// The current fields, owned.
    pub fn fields(&self) -> Result<F> {
        self.read(|dump, overlay| {
            F::materialize(dump, overlay)
                .map_err(|e| Error::corrupt(self.name(), format!("deserializing fields: {e}")))
        })
    }
}

/// How a derived state is opened: the same options as [`UltraDict::builder`](crate::UltraDict::builder).
/// Used by generated code.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct OpenOptions(pub(crate) Options);

impl OpenOptions {
    /// The options of the nested child stored under `key` of the dict called `parent`.
    pub fn child(&self, parent: &Dict<impl Schema>, key: &str) -> OpenOptions {
        let name = crate::naming::field_child(parent.name(), key);
        OpenOptions(parent.engine().nested_options(&self.0, name))
    }

    /// Opens the nested map child stored under `key` of `parent`, registering it.
    pub fn open_nested_map<K: crate::Key, V: crate::Value>(
        &self,
        parent: &StructDict<impl StructFields>,
        key: &str,
        initial: impl IntoIterator<Item = (K, V)>,
    ) -> Result<crate::UltraDict<K, V>> {
        let options = self.child(parent, key).0;
        crate::UltraDict::open_nested_in(parent, &options, initial.into_iter().collect(), key)
    }
}

/// Implemented by `#[derive(SharedDict)]`: a state struct whose handle is shared by every
/// process that opens the same name.
///
/// ```
/// use ultradict::SharedDict;
///
/// #[derive(SharedDict, Default)]
/// struct Counters {
///     hits: u64,
///     label: String,
/// }
///
/// # fn main() -> ultradict::Result<()> {
/// let counters = Counters::builder().open()?; // or Counters::open("name")
/// counters.update_hits(|h| h + 1)?;
/// counters.set_label("front page".into())?;
/// assert_eq!(counters.hits()?, 1);
/// let copy: Counters = counters.snapshot()?;
/// assert_eq!(copy.label, "front page");
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a shared dict",
    label = "`#[ultradict(nested)]` needs a type that derives `SharedDict`, or a `HashMap<K, V>`",
    note = "add `#[derive(SharedDict)]` to `{Self}`, or remove `#[ultradict(nested)]` to store it as one value"
)]
pub trait SharedDict: Sized + 'static {
    /// The generated handle type (`Shared` + the struct's name).
    type Handle: Send + Sync + 'static;

    /// Starts configuring a handle with the map's options (name, create mode, sizes,
    /// lifetime).
    fn builder() -> StructBuilder<Self> {
        StructBuilder {
            options: Options::default(),
            _state: PhantomData,
        }
    }

    /// Opens (or creates, from `Default::default()`) the shared state `name`.
    ///
    /// # Errors
    /// As [`StructBuilder::open`].
    fn open(name: &str) -> Result<Self::Handle>
    where
        Self: Default,
    {
        Self::builder().name(name).open()
    }

    #[doc(hidden)]
    fn __open(options: &OpenOptions, initial: Self) -> Result<Self::Handle>;
    #[doc(hidden)]
    fn __snapshot(handle: &Self::Handle) -> Result<Self>;
    #[doc(hidden)]
    fn __replace(handle: &Self::Handle, value: Self) -> Result<()>;
    /// Removes the state `handle` holds if that handle created it (a nested field whose parent
    /// was removed while it was being opened).
    #[doc(hidden)]
    fn __discard_if_created(handle: &Self::Handle);
}

/// Configures and opens a derived state's handle.
#[derive(Debug)]
#[must_use = "a builder does nothing until `.open()`"]
pub struct StructBuilder<T> {
    pub(crate) options: Options,
    _state: PhantomData<fn() -> T>,
}

impl<T: SharedDict> StructBuilder<T> {
    crate::options::option_setters!();

    /// Opens the state; if it is created here, it starts from `T::default()`.
    ///
    /// # Errors
    /// As [`Builder::open`](crate::Builder::open); [`Error::SchemaMismatch`] names both
    /// struct definitions when the state was created from another one.
    pub fn open(self) -> Result<T::Handle>
    where
        T: Default,
    {
        self.open_with(T::default())
    }

    /// Opens the state; if it is created here, it starts from `initial`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(self, initial: T) -> Result<T::Handle> {
        T::__open(&OpenOptions(self.options), initial)
    }
}

/// How a derived handle holds the handle of a nested struct field: the nested state's own
/// handle, which it dereferences to (`state.stats().update_hits(..)`).
///
/// Generated code names a nested field's type only through this wrapper and one table of
/// operations ([`nested_ops`]), so the type is required to be a `SharedDict` in exactly one
/// place: a `#[ultradict(nested)]` field of another type is one compile error, on the field's
/// type, not one per generated use.
#[doc(hidden)]
pub struct Nested<T: 'static> {
    handle: AnyHandle,
    ops: &'static NestedOps<T>,
}

/// A handle of some derived state, its type erased.
type AnyHandle = Box<dyn std::any::Any + Send + Sync>;

/// The operations on a nested struct field of type `T`, filled in where `T: SharedDict` is
/// known (see [`Nested`]).
#[doc(hidden)]
pub struct NestedOps<T> {
    open: fn(&OpenOptions, T) -> Result<(AnyHandle, String)>,
    snapshot: fn(&(dyn std::any::Any + Send + Sync)) -> Result<T>,
    replace: fn(&(dyn std::any::Any + Send + Sync), T) -> Result<()>,
    discard_if_created: fn(&(dyn std::any::Any + Send + Sync)),
}

impl<T: SharedDict> NestedOps<T> {
    /// The operations of `T`.
    pub const OF: &'static NestedOps<T> = &NestedOps {
        open: |options, initial| {
            let handle = T::__open(options, initial)?;
            Ok((Box::new(handle), options.0.name.clone().unwrap_or_default()))
        },
        snapshot: |handle| T::__snapshot(typed::<T>(handle)?),
        replace: |handle, value| T::__replace(typed::<T>(handle)?, value),
        discard_if_created: |handle| {
            if let Ok(handle) = typed::<T>(handle) {
                T::__discard_if_created(handle);
            }
        },
    };
}

/// The operations of the nested field type `T`: a function, so that a type that is not a
/// `SharedDict` fails its bound with the trait's own message.
#[doc(hidden)]
pub const fn nested_ops<T: SharedDict>() -> &'static NestedOps<T> {
    NestedOps::<T>::OF
}

/// The typed handle a [`Nested`] holds; it was made by the same `T`'s operations, so the
/// downcast cannot fail, but a failure is an error rather than a panic.
fn typed<T: SharedDict>(handle: &(dyn std::any::Any + Send + Sync)) -> Result<&T::Handle> {
    handle
        .downcast_ref::<T::Handle>()
        .ok_or_else(|| Error::corrupt("nested handle", "a handle of another type"))
}

impl<T> Nested<T> {
    /// Opens the nested dict of type `T` with `ops` (at `options`, created from `initial` if
    /// new) under `parent`, and records it in the parent's register as `what`. Fails with
    /// [`Error::Removed`] if the parent was removed before or meanwhile, and then takes back
    /// the nested dict if it was created here (a remover marks the parent before it lists the
    /// objects under its name: either it listed the child, or this sees the mark).
    pub fn open_in<P: Schema>(
        ops: &'static NestedOps<T>,
        parent: &Dict<P>,
        options: &OpenOptions,
        initial: T,
        what: &str,
    ) -> Result<Self> {
        parent.engine().check_not_removed()?;
        let (handle, name) = (ops.open)(options, initial)?;
        let nested = Nested { handle, ops };
        if let Err(err) = parent.register_child(&name, what) {
            if matches!(err, Error::Removed { .. }) {
                (ops.discard_if_created)(&*nested.handle);
            }
            return Err(err);
        }
        Ok(nested)
    }

    /// An owned copy of the nested state.
    pub fn snapshot(&self) -> Result<T> {
        (self.ops.snapshot)(&*self.handle)
    }

    /// Replaces the whole nested state.
    pub fn replace(&self, value: T) -> Result<()> {
        (self.ops.replace)(&*self.handle, value)
    }
}

impl<T: SharedDict> std::ops::Deref for Nested<T> {
    type Target = T::Handle;

    fn deref(&self) -> &T::Handle {
        match self.handle.downcast_ref::<T::Handle>() {
            Some(handle) => handle,
            // `open` is the only maker of a `Nested<T>`, from `T`'s own operations.
            None => unreachable!("a nested handle always holds its own type's handle"),
        }
    }
}

impl<T> std::fmt::Debug for Nested<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nested")
    }
}
