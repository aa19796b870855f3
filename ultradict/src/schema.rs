//! The contract between the engine and what it stores.
//!
//! The engine moves records and dumps between processes without knowing what they mean; a
//! [`Schema`] says how a record changes the state, how the whole state is archived as a dump,
//! and what its fingerprint is. [`UltraDict`](crate::UltraDict) is one schema (dynamic keys);
//! `#[derive(SharedDict)]` structs are another (one key per field).

use std::cell::Cell;
use std::mem::MaybeUninit;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{self, Source};
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::ser::sharing::Share;
use rkyv::ser::{Positional, Writer};
use rkyv::{Archive, Deserialize, Portable, Serialize};

/// The serializer records and dumps are written with: straight into a byte slice.
pub type RecordSerializer<'a, 'b> = HighSerializer<SliceWriter<'b>, Scratch<'a>, rancor::Error>;

/// Writes an archive into a byte slice (the mapped stream, or a heap buffer for a dump), and
/// remembers whether it ran out of room: rkyv's errors lose their text in release builds, so
/// "full" could not otherwise be told from a value that failed to serialize.
#[derive(Debug)]
pub struct SliceWriter<'b> {
    out: &'b mut [MaybeUninit<u8>],
    len: usize,
    full: &'b Cell<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("out of room")]
struct Full;

impl Positional for SliceWriter<'_> {
    fn pos(&self) -> usize {
        self.len
    }
}

impl<E: Source> Writer<E> for SliceWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let Some(room) = self.out.get_mut(self.len..self.len + bytes.len()) else {
            self.full.set(true);
            return Err(E::new(Full));
        };
        room.write_copy_of_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

/// Why a value could not be archived into a slice.
#[doc(hidden)]
#[derive(Debug)]
pub enum Unwritten {
    /// The slice was too small.
    Full,
    /// The value itself failed to serialize; rkyv's message.
    Failed(String),
}

/// Archives whatever `serialize` writes into `out` and returns the archive's length.
pub(crate) fn write_into(
    out: &mut [MaybeUninit<u8>],
    serialize: impl FnOnce(SliceWriter<'_>) -> Result<SliceWriter<'_>, rancor::Error>,
) -> Result<usize, Unwritten> {
    let full = Cell::new(false);
    let writer = SliceWriter {
        out,
        len: 0,
        full: &full,
    };
    match serialize(writer) {
        Ok(writer) => Ok(writer.len),
        Err(_) if full.get() => Err(Unwritten::Full),
        Err(err) => Err(Unwritten::Failed(err.to_string())),
    }
}

/// Archives `value` into `out` (see [`write_into`]).
pub(crate) fn archive_into<T>(value: &T, out: &mut [MaybeUninit<u8>]) -> Result<usize, Unwritten>
where
    T: for<'a, 'b> Serialize<RecordSerializer<'a, 'b>>,
{
    // This thread's arena, if the serialization asks for scratch space (see `Scratch`).
    let mut arena = None;
    let written = write_into(out, |writer| {
        // What rkyv's `to_bytes_in_with_alloc` does, spelled out: the same serializer and
        // steps. Serializing a `u64` record alone took 47 ns through that call and 19 ns this
        // way (`benches/write_steps.rs`, same run; that call was not inlined).
        let scratch = Scratch(ScratchState::Untouched(&mut arena));
        let mut serializer = rkyv::ser::Serializer::new(writer, scratch, Share::new());
        rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer)?;
        Ok(serializer.into_writer())
    });
    if let Some(arena) = arena {
        // Fails only while the thread is torn down; the arena is then freed here.
        let _ = ARENA.try_with(|slot| slot.set(Some(arena)));
    }
    written
}

thread_local! {
    /// The scratch space serializers allocate from (vectors, maps), kept per thread.
    static ARENA: Cell<Option<Arena>> = const { Cell::new(None) };
}

/// The scratch space a record's serializer allocates from: this thread's arena, taken only
/// when the value first asks for some (a vector of strings, a map; never an integer or a
/// string). Taking it from the thread-local slot and readying it (rkyv's `Arena::acquire`
/// walks and trims its blocks) took 13 ns of a 100 ns `u64` update in a profile, for records
/// that never use it. A serialization that re-enters (archiving from inside `Serialize`)
/// finds the slot empty and gets a fresh arena, as does a thread whose thread-locals are gone.
pub struct Scratch<'a>(ScratchState<'a>);

enum ScratchState<'a> {
    /// Not asked for yet: where to keep the arena once it is taken.
    Untouched(&'a mut Option<Arena>),
    /// Handing out scratch space.
    InUse(ArenaHandle<'a>),
    /// Between the two (never seen outside `in_use`).
    Taking,
}

impl<'a> Scratch<'a> {
    fn in_use(&mut self) -> Option<&mut ArenaHandle<'a>> {
        if let ScratchState::Untouched(_) = self.0
            && let ScratchState::Untouched(slot) =
                std::mem::replace(&mut self.0, ScratchState::Taking)
        {
            let arena = ARENA
                .try_with(Cell::take)
                .ok()
                .flatten()
                .unwrap_or_default();
            self.0 = ScratchState::InUse(slot.insert(arena).acquire());
        }
        match &mut self.0 {
            ScratchState::InUse(handle) => Some(handle),
            _ => None,
        }
    }
}

/// A scratch request that found no arena (not expected: `in_use` always makes one).
#[derive(Debug)]
struct NoScratch;

impl std::fmt::Display for NoScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no scratch space for the serializer")
    }
}

impl std::error::Error for NoScratch {}

// SAFETY: every request goes to rkyv's own arena handle, unchanged: the same allocations, in
// the same order, under the same contract.
unsafe impl<E: Source> rkyv::ser::Allocator<E> for Scratch<'_> {
    unsafe fn push_alloc(
        &mut self,
        layout: std::alloc::Layout,
    ) -> Result<std::ptr::NonNull<[u8]>, E> {
        match self.in_use() {
            // SAFETY: the caller's guarantees, passed on.
            Some(handle) => unsafe { handle.push_alloc(layout) },
            None => Err(E::new(NoScratch)),
        }
    }

    unsafe fn pop_alloc(
        &mut self,
        ptr: std::ptr::NonNull<u8>,
        layout: std::alloc::Layout,
    ) -> Result<(), E> {
        match &mut self.0 {
            // SAFETY: the caller's guarantees, passed on (`ptr` came from `push_alloc`, hence
            // from this handle).
            ScratchState::InUse(handle) => unsafe { handle.pop_alloc(ptr, layout) },
            _ => Err(E::new(NoScratch)),
        }
    }
}

/// Archives `value` into a new aligned buffer as large as it needs (the bytes that name a
/// map's nested child, a dump). Fails only if the value itself fails to serialize.
pub(crate) fn archive_to_vec(
    initial: usize,
    mut archive: impl FnMut(&mut [MaybeUninit<u8>]) -> Result<usize, Unwritten>,
) -> Result<crate::dump::AlignedBytes, String> {
    let mut capacity = initial.max(256);
    loop {
        let mut buf = crate::dump::AlignedBuf::with_capacity(capacity);
        match archive(buf.as_uninit_mut()) {
            Ok(len) => return Ok(crate::dump::AlignedBytes::new(buf, len)),
            Err(Unwritten::Failed(detail)) => return Err(detail),
            Err(Unwritten::Full) if capacity >= MAX_ARCHIVE_LEN => {
                return Err(format!("an archive larger than {MAX_ARCHIVE_LEN} bytes"));
            }
            Err(Unwritten::Full) => capacity = capacity.saturating_mul(2).min(MAX_ARCHIVE_LEN),
        }
    }
}

/// Largest archive (rkyv's relative pointers are 32-bit).
pub(crate) const MAX_ARCHIVE_LEN: usize = i32::MAX as usize;

/// The validator every archive read from shared memory goes through.
pub type Validator<'a> = HighValidator<'a, rancor::Error>;

/// The deserializer for turning archived values back into owned ones.
pub type Deserializer = HighDeserializer<rancor::Error>;

/// A type that can be stored in a dict: archivable with rkyv, validated on the way in, and
/// deserializable back. Implemented for every type that derives rkyv's `Archive`,
/// `Serialize` and `Deserialize` (with the default `bytecheck` validation), and for the
/// standard types rkyv supports (integers, `String`, `Vec`, tuples, `Option`, ...).
pub trait Data:
    Archive<Archived = <Self as Data>::Stored>
    + for<'a, 'b> Serialize<RecordSerializer<'a, 'b>>
    + Sized
    + Send
    + Sync
    + 'static
{
    /// The archived form, as it lies in shared memory.
    type Stored: Portable + Deserialize<Self, Deserializer> + for<'a> CheckBytes<Validator<'a>>;
}

impl<T> Data for T
where
    T: Archive + for<'a, 'b> Serialize<RecordSerializer<'a, 'b>> + Send + Sync + 'static,
    T::Archived: Portable + Deserialize<T, Deserializer> + for<'a> CheckBytes<Validator<'a>>,
{
    type Stored = T::Archived;
}

/// A type a derived state can keep in a plain field: storable ([`Data`]) and cloneable.
///
/// Generated code checks every plain field's type against it, spanned on the field's type, so
/// that a type without rkyv's derives gets one error there that says what to add. Every other
/// generated item that names the field's type assumes `for<'a> T: Storable` in its `where`
/// clause. The `for<'a>` keeps the compiler from rejecting such a bound when it does not hold
/// (a "trivial bound"), so a broken field type fails the one check, not every generated use.
///
/// It spells out [`Data`]'s requirements instead of naming `Data`: `Data` ties its `Stored`
/// type to `Archive::Archived` through a projection of itself, and assuming such a trait for
/// a concrete type sends the compiler into a cycle. `Storable` implies `Data` all the same.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a shared dict",
    label = "a field's type needs rkyv's `Archive`, `Serialize` and `Deserialize`, and `Clone`",
    note = "add `#[derive(ultradict::rkyv::Archive, ultradict::rkyv::Serialize, ultradict::rkyv::Deserialize, Clone)]` and `#[rkyv(crate = ultradict::rkyv)]` to `{Self}` (the `crate` line is needed unless your crate depends on rkyv itself)"
)]
pub trait Storable:
    Archive<
        Archived: Portable + Deserialize<Self, Deserializer> + for<'a> CheckBytes<Validator<'a>>,
    > + for<'a, 'b> Serialize<RecordSerializer<'a, 'b>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

// Not recommended: a type that falls short gets the one message above, not one error per
// missing rkyv trait.
// `Data + Clone` is the same requirement, said through `Data`: for a given type the compiler
// proves it from the impls, which is where `Data` is no trouble.
#[diagnostic::do_not_recommend]
impl<T: Data + Clone> Storable for T {}

/// Names `T` where it must be [`Storable`] (used by generated code, once per plain field).
#[doc(hidden)]
pub const fn storable<T: Storable>() {}

/// Deserializes an archived value that was validated before (used by generated code).
pub fn deserialize<T: Data>(archived: &T::Stored) -> Result<T, rancor::Error> {
    rkyv::deserialize::<T, rancor::Error>(archived)
}

/// What identifies a schema: a hash for the check, a text for the error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// Compared on attach.
    pub hash: u64,
    /// Shown when the hashes differ, e.g. `UltraDict<alloc::string::String, u64>`.
    pub description: String,
}

impl Fingerprint {
    /// A fingerprint of `description` and of the archived layout of the types in `layouts`
    /// (size and alignment of each archived type), so that two builds whose types share a
    /// name but not a layout still differ.
    pub fn new(description: String, layouts: &[(usize, usize)]) -> Self {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let layouts: Vec<[u8; 16]> = layouts
            .iter()
            .map(|&(size, align)| {
                let mut bytes = [0; 16];
                bytes[..8].copy_from_slice(&(size as u64).to_le_bytes());
                bytes[8..].copy_from_slice(&(align as u64).to_le_bytes());
                bytes
            })
            .collect();
        let mut parts: Vec<&[u8]> = vec![description.as_bytes()];
        parts.extend(layouts.iter().map(|bytes| bytes.as_slice()));
        Fingerprint {
            hash: crate::naming::fnv1a(&parts),
            description,
        }
    }

    /// Size and alignment of `T`'s archived form.
    pub fn layout_of<T: Archive>() -> (usize, usize) {
        (
            std::mem::size_of::<T::Archived>(),
            std::mem::align_of::<T::Archived>(),
        )
    }
}

/// How a kind of shared state is stored. The engine is generic over it. Implemented by
/// ultradict's map and derived-state schemas; not a stable API.
#[doc(hidden)]
pub trait Schema: Send + Sync + 'static {
    /// The root of a full dump, read in place from the mapped dump segment.
    type Dump: Portable + for<'a> CheckBytes<Validator<'a>>;
    /// One record of the stream; says what it touched, for watchers.
    type Update: Data + crate::watch::Touches<Self::Touched>;
    /// What a watcher reports as changed: a map's keys, a derived state's field names.
    type Touched: PartialEq;
    /// What a process keeps on top of the dump: the records applied since the dump.
    type Overlay: Send + Sync;

    /// The overlay of a process that has just mapped `dump` (or started epoch 0 without one).
    fn overlay_for(dump: Option<&Self::Dump>) -> Self::Overlay;

    /// Makes `overlay` the overlay of a process that has just mapped `dump`, as
    /// [`overlay_for`](Self::overlay_for) would, but keeping what it allocated where it can:
    /// the epoch before needed that much, and the next one likely will (a map's overlay grew
    /// from nothing in every epoch, rehashing as it went). The default builds a new one.
    fn reset_overlay(overlay: &mut Self::Overlay, dump: Option<&Self::Dump>) {
        *overlay = Self::overlay_for(dump);
    }

    /// Identifies the schema; two handles attach to one dict only if these agree.
    fn fingerprint() -> Fingerprint;

    /// Applies a committed record (this process's own, or one read and validated from the
    /// stream).
    fn apply(dump: Option<&Self::Dump>, overlay: &mut Self::Overlay, update: Self::Update);

    /// What a committed update displaced, for its writer to return: a map's insert or remove,
    /// the key's old value; `()` where writers return nothing.
    type Displaced;

    /// [`apply`](Self::apply) on the writer's path, returning what the update displaced: the
    /// old value is moved out of the overlay, not looked up and cloned before the commit (a
    /// hot 16-byte `String` insert: 187 -> 137 ns, `cargo bench --bench map_ops`). The update
    /// is committed: it is applied in full even if the displaced value (found in the dump)
    /// fails to deserialize, which is the error returned then.
    fn apply_displacing(
        dump: Option<&Self::Dump>,
        overlay: &mut Self::Overlay,
        update: Self::Update,
    ) -> Result<Self::Displaced, rancor::Error>;

    /// What `update` would displace, looked up without applying it: for a commit that does
    /// not go through [`apply_displacing`](Self::apply_displacing) (a full dump, a remote
    /// backend).
    fn displaced(
        dump: Option<&Self::Dump>,
        overlay: &Self::Overlay,
        update: &Self::Update,
    ) -> Result<Self::Displaced, rancor::Error>;

    /// Checks what validating the archive does not cover but reading it relies on; `archive`
    /// holds the bytes `dump` lies in. The default has nothing to check.
    ///
    /// # Errors
    /// A description of the problem.
    fn check_dump(_dump: &Self::Dump, _archive: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// The whole state (dump, then overlay, then `pending` if any) as owned values, ready to
    /// be archived as the next full dump.
    type Snapshot;

    /// Builds the [`Snapshot`](Self::Snapshot) of the next full dump.
    fn snapshot(
        dump: Option<&Self::Dump>,
        overlay: &Self::Overlay,
        pending: Option<&Self::Update>,
    ) -> Result<Self::Snapshot, rancor::Error>;

    /// Archives a snapshot into `out` and returns the archive's length (see [`archive_into`]):
    /// when `out` is too small, the engine retries with more room.
    #[doc(hidden)]
    fn archive(snapshot: &Self::Snapshot, out: &mut [MaybeUninit<u8>]) -> Result<usize, Unwritten>;

    /// About how many bytes [`archive`](Self::archive) will write for `snapshot` (the map's
    /// estimate is exact for distinct keys of types kept inline, low when they keep bytes out
    /// of line, high when keys repeat), so that the engine's first buffer is large enough:
    /// each retry archives everything again into a buffer twice as large, from fresh pages
    /// (a bulk `extend` of a million entries went through ten). The default knows nothing.
    #[doc(hidden)]
    fn archive_len_hint(_snapshot: &Self::Snapshot) -> usize {
        0
    }

    /// A lower bound of the bytes `update`'s archive takes, its frame not counted (never
    /// more than `archive_into` writes for it), found without archiving it: a record that
    /// cannot fit in what is left of the stream goes straight to a full dump. The default
    /// knows nothing.
    #[doc(hidden)]
    fn record_len_hint(_update: &Self::Update) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this thread's slot holds an arena (left as it was).
    fn arena_kept() -> bool {
        ARENA.with(|slot| {
            let arena = slot.take();
            let kept = arena.is_some();
            slot.set(arena);
            kept
        })
    }

    fn archived<T: for<'a, 'b> Serialize<RecordSerializer<'a, 'b>>>(value: &T) -> Vec<u8> {
        let mut out = crate::dump::AlignedBuf::with_capacity(1 << 10);
        let len = archive_into(value, out.as_uninit_mut()).unwrap();
        // SAFETY: `archive_into` wrote the first `len` bytes.
        unsafe { out.initialized(len) }.to_vec()
    }

    #[test]
    fn scratch_space_is_taken_only_when_asked_for_and_kept_for_the_next() {
        ARENA.with(|slot| drop(slot.take()));
        // A record of integers asks for none.
        let plain = (7u64, 9u32);
        assert_eq!(
            archived(&plain),
            rkyv::to_bytes::<rancor::Error>(&plain).unwrap().as_slice()
        );
        assert!(!arena_kept());
        // Strings in a vector do (their resolvers wait in scratch space), twice: the second
        // time from the arena the first one kept. The bytes are rkyv's own.
        let strings: Vec<String> = vec!["a".into(), "b".repeat(40), String::new()];
        for _ in 0..2 {
            let expected = rkyv::to_bytes::<rancor::Error>(&strings).unwrap();
            assert_eq!(archived(&strings), expected.as_slice());
            assert!(arena_kept());
        }
    }
}
