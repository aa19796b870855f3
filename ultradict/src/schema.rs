//! The contract between the engine and what it stores.
//!
//! The engine moves records and dumps between processes without knowing what they mean; a
//! [`Schema`] says how a record changes the state, how the whole state is archived as a dump,
//! and what its fingerprint is. [`UltraDict`](crate::UltraDict) is one schema (dynamic keys);
//! `#[derive(SharedDict)]` structs are another (one key per field).

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer;
use rkyv::{Archive, Deserialize, Portable, Serialize};

/// The serializer records and dumps are written with: straight into a byte buffer.
pub type RecordSerializer<'a, 'b> = HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>;

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
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(description.as_bytes());
        for &(size, align) in layouts {
            eat(&(size as u64).to_le_bytes());
            eat(&(align as u64).to_le_bytes());
        }
        Fingerprint { hash, description }
    }

    /// Size and alignment of `T`'s archived form.
    pub fn layout_of<T: Archive>() -> (usize, usize) {
        (
            std::mem::size_of::<T::Archived>(),
            std::mem::align_of::<T::Archived>(),
        )
    }
}

/// How a kind of shared state is stored. The engine is generic over it.
pub trait Schema: Send + Sync + 'static {
    /// The root of a full dump, read in place from the mapped dump segment.
    type Dump: Portable + for<'a> CheckBytes<Validator<'a>>;
    /// One record of the stream.
    type Update: Data;
    /// What a process keeps on top of the dump: the records applied since the dump.
    type Overlay: Send + Sync;

    /// The overlay of a process that has just mapped `dump` (or started epoch 0 without one).
    fn overlay_for(dump: Option<&Self::Dump>) -> Self::Overlay;

    /// Identifies the schema; two handles attach to one dict only if these agree.
    fn fingerprint() -> Fingerprint;

    /// Applies a committed record (this process's own, or one read and validated from the
    /// stream).
    fn apply(dump: Option<&Self::Dump>, overlay: &mut Self::Overlay, update: Self::Update);

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

    /// Archives a snapshot into `out` and returns the archive's length. Fails when `out` is
    /// too small (the engine retries with more room).
    fn archive(snapshot: &Self::Snapshot, out: Buffer<'_>) -> Result<usize, rancor::Error>;
}
