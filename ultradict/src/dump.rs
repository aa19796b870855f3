//! Full dumps: one immutable segment per epoch holding the rkyv archive of the whole state.
//!
//! ```text
//! 0          DUMP_HEADER                          DUMP_HEADER + archive_len
//! | header   | rkyv archive (root at its end)     |
//! ```
//!
//! A dump is written completely before its epoch is published and never written again, so
//! readers may hold a plain `&[u8]` over it. It is validated once when mapped; lookups then
//! read it in place. A dump that came from elsewhere (a fuzzer's input, another backend) lives
//! in an aligned heap buffer instead, and is read the same way.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use rkyv::Portable;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;

use crate::control::FORMAT_VERSION;
use crate::error::{Error, Result};
use crate::naming::Place;
use crate::schema::Validator;
use crate::segment::{self, Segment};

const DUMP_MAGIC: [u8; 8] = *b"ULTRADMP";

/// Bytes before the archive.
pub(crate) const DUMP_HEADER: usize = 64;

/// Header fields, little-endian, at fixed offsets.
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 8;
const EPOCH_AT: usize = 12;
const FINGERPRINT_AT: usize = 16;
const LEN_AT: usize = 24;
const INSTANCE_AT: usize = 32;

/// A validated dump whose archive root is a `T`.
pub(crate) struct Dump<T> {
    bytes: DumpBytes,
    archive_len: usize,
    _root: PhantomData<fn() -> T>,
}

/// Where a dump's bytes (header and archive) live.
enum DumpBytes {
    /// A mapped dump segment.
    Mapped(Segment),
    /// An aligned heap buffer, and what to call it in errors (dumps that did not come from a
    /// mapping: the fuzzers' inputs today, another backend's dumps next).
    #[cfg_attr(
        not(feature = "fuzzing"),
        allow(
            dead_code,
            reason = "built only by the fuzzers until a second backend exists"
        )
    )]
    Heap(AlignedBytes, String),
}

impl DumpBytes {
    fn object(&self) -> &str {
        match self {
            DumpBytes::Mapped(segment) => segment.object(),
            DumpBytes::Heap(_, label) => label,
        }
    }

    /// The whole dump, header included.
    fn all(&self) -> &[u8] {
        match self {
            // SAFETY: dumps are immutable once published (invariant 4), and a mapped one is
            // either published or ours and unpublished: nobody writes its bytes any more.
            DumpBytes::Mapped(segment) => unsafe { segment.immutable_bytes(0, segment.len()) },
            DumpBytes::Heap(bytes, _) => bytes.bytes(),
        }
    }
}

impl<T> std::fmt::Debug for Dump<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dump")
            .field("object", &self.bytes.object())
            .finish()
    }
}

impl<T> Dump<T>
where
    T: Portable + for<'a> CheckBytes<Validator<'a>>,
{
    /// Maps and validates the dump of `epoch` of dict `name`.
    ///
    /// A missing segment (the dump was superseded and unlinked meanwhile) comes back as an
    /// [`Error::Io`] of kind `NotFound`; see [`segment::is_not_found`].
    pub(crate) fn open(id: DumpId<'_>, epoch: u32) -> Result<Self> {
        let object = id.place.dump(id.instance, epoch);
        let segment = Segment::open(&object, false)?;
        Self::validate(DumpBytes::Mapped(segment), id, epoch)
    }

    /// Validates `bytes` (header and archive, in an aligned heap buffer) as the dump of
    /// `epoch` of the dict `id` names; `label` names it in errors.
    #[cfg_attr(
        not(feature = "fuzzing"),
        allow(
            dead_code,
            reason = "used only by the fuzzers until a second backend exists"
        )
    )]
    pub(crate) fn from_heap(
        bytes: AlignedBytes,
        label: &str,
        id: DumpId<'_>,
        epoch: u32,
    ) -> Result<Self> {
        Self::validate(DumpBytes::Heap(bytes, label.to_owned()), id, epoch)
    }

    /// Writes `archive` as the dump of `epoch` of dict `name` and maps it.
    ///
    /// A segment already under that name can only be the unpublished leftover of a writer
    /// that died before publishing it (the caller holds the lock and `epoch` is not yet
    /// published), so it is replaced.
    pub(crate) fn create(id: DumpId<'_>, epoch: u32, archive: &[u8], mode: u32) -> Result<Self> {
        let object = id.place.dump(id.instance, epoch);
        let len = (DUMP_HEADER + archive.len()) as u64;
        let segment = match Segment::create(&object, len, mode) {
            Err(err) if segment::is_already_exists(&err) => {
                segment::unlink(&object)?;
                Segment::create(&object, len, mode)?
            }
            other => other?,
        };
        let header = header(id, epoch, archive.len());
        // SAFETY: the segment was just created by this process and is not yet published, so
        // nobody else maps it; both copies stay within its `len` bytes.
        unsafe {
            let base = segment.as_mut_ptr();
            std::ptr::copy_nonoverlapping(header.as_ptr(), base, DUMP_HEADER);
            std::ptr::copy_nonoverlapping(archive.as_ptr(), base.add(DUMP_HEADER), archive.len());
        }
        Self::validate(DumpBytes::Mapped(segment), id, epoch).inspect_err(|_| {
            let _ = segment::unlink(&object);
        })
    }

    fn validate(bytes: DumpBytes, id: DumpId<'_>, epoch: u32) -> Result<Self> {
        let archive_len = check::<T>(bytes.all(), bytes.object(), id, epoch)?.len();
        Ok(Dump {
            bytes,
            archive_len,
            _root: PhantomData,
        })
    }

    /// The archive's root.
    pub(crate) fn root(&self) -> &T {
        // SAFETY: `validate` checked these exact, immutable bytes as a `T` when the dump was
        // mapped.
        unsafe { rkyv::access_unchecked::<T>(self.archive()) }
    }
}

/// Checks a whole dump (header and archive) as it lies in `object`, and returns its archive.
/// Everything is validated: a dump is bytes from shared memory, which anyone attached could
/// have written.
pub(crate) fn check<'a, T>(
    bytes: &'a [u8],
    object: &str,
    id: DumpId<'_>,
    epoch: u32,
) -> Result<&'a [u8]>
where
    T: Portable + for<'v> CheckBytes<Validator<'v>>,
{
    let Some(header) = bytes.get(..DUMP_HEADER) else {
        return Err(Error::corrupt(object, "dump shorter than its header"));
    };
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
    if header[MAGIC_AT..MAGIC_AT + 8] != DUMP_MAGIC {
        return Err(Error::Foreign {
            segment: object.to_owned(),
            reason: "no dump magic".into(),
        });
    }
    if u32_at(VERSION_AT) != FORMAT_VERSION {
        return Err(Error::VersionMismatch {
            segment: object.to_owned(),
            found: u32_at(VERSION_AT),
            expected: FORMAT_VERSION,
        });
    }
    if u32_at(EPOCH_AT) != epoch {
        return Err(Error::corrupt(
            object,
            format!("dump says epoch {}", u32_at(EPOCH_AT)),
        ));
    }
    if u64_at(FINGERPRINT_AT) != id.fingerprint {
        return Err(Error::corrupt(object, "dump written with another schema"));
    }
    if u64_at(INSTANCE_AT) != id.instance {
        return Err(Error::corrupt(
            object,
            "dump of another instance of the dict",
        ));
    }
    let archive = usize::try_from(u64_at(LEN_AT))
        .ok()
        .and_then(|len| bytes.get(DUMP_HEADER..DUMP_HEADER.checked_add(len)?))
        .ok_or_else(|| Error::corrupt(object, "archive length beyond the segment"))?;
    rkyv::access::<T, rancor::Error>(archive)
        .map_err(|e| Error::corrupt(object, format!("dump failed validation: {e}")))?;
    Ok(archive)
}

/// Which dict a dump belongs to: its place, instance and schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DumpId<'a> {
    pub(crate) place: &'a Place,
    pub(crate) instance: u64,
    pub(crate) fingerprint: u64,
}

/// Builds the header of a dump of `archive_len` bytes.
pub(crate) fn header(id: DumpId<'_>, epoch: u32, archive_len: usize) -> [u8; DUMP_HEADER] {
    let mut header = [0u8; DUMP_HEADER];
    header[MAGIC_AT..MAGIC_AT + 8].copy_from_slice(&DUMP_MAGIC);
    header[VERSION_AT..VERSION_AT + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[EPOCH_AT..EPOCH_AT + 4].copy_from_slice(&epoch.to_le_bytes());
    header[FINGERPRINT_AT..FINGERPRINT_AT + 8].copy_from_slice(&id.fingerprint.to_le_bytes());
    header[INSTANCE_AT..INSTANCE_AT + 8].copy_from_slice(&id.instance.to_le_bytes());
    header[LEN_AT..LEN_AT + 8].copy_from_slice(&(archive_len as u64).to_le_bytes());
    header
}

impl<T> Dump<T> {
    /// The dump's object name in /dev/shm (or its label).
    pub(crate) fn object(&self) -> &str {
        self.bytes.object()
    }

    /// The archive's bytes.
    pub(crate) fn archive(&self) -> &[u8] {
        // `validate` checked that the archive lies within the bytes.
        &self.bytes.all()[DUMP_HEADER..DUMP_HEADER + self.archive_len]
    }

    /// Bytes of archive.
    pub(crate) fn archive_len(&self) -> usize {
        self.archive_len
    }
}

/// An archive built in an aligned heap buffer.
pub(crate) struct AlignedBytes {
    buf: AlignedBuf,
    len: usize,
}

impl AlignedBytes {
    /// The first `len` bytes of `buf`, which a serializer wrote.
    pub(crate) fn new(buf: AlignedBuf, len: usize) -> Self {
        assert!(len <= buf.blocks.len() * 16);
        AlignedBytes { buf, len }
    }

    /// The archive's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `new`'s caller vouched that the serializer initialized these `len` bytes.
        unsafe { self.buf.initialized(self.len) }
    }
}

/// A heap buffer aligned for rkyv archives, for building a dump before it has a segment.
pub(crate) struct AlignedBuf {
    blocks: Vec<MaybeUninit<Block>>,
}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Block([u8; 16]);

impl AlignedBuf {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        let mut blocks = Vec::with_capacity(bytes.div_ceil(16));
        blocks.resize(bytes.div_ceil(16), MaybeUninit::uninit());
        AlignedBuf { blocks }
    }

    /// The whole buffer, for a serializer to fill.
    pub(crate) fn as_uninit_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        let len = self.blocks.len() * 16;
        // SAFETY: `blocks` owns `len` bytes of `MaybeUninit`, which any byte pattern (or none)
        // inhabits, and the borrow of `self` keeps them exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast(), len) }
    }

    /// The first `len` bytes, which a serializer has written.
    ///
    /// # Safety
    /// The first `len` bytes were initialized.
    pub(crate) unsafe fn initialized(&self, len: usize) -> &[u8] {
        assert!(len <= self.blocks.len() * 16);
        // SAFETY: in bounds (asserted) and initialized (caller).
        unsafe { std::slice::from_raw_parts(self.blocks.as_ptr().cast(), len) }
    }

    /// The whole buffer, zero-initialized first, as aligned bytes.
    pub(crate) fn zeroed_mut(&mut self, len: usize) -> &mut [u8] {
        let blocks = len.div_ceil(16);
        self.blocks.clear();
        self.blocks.resize(blocks, MaybeUninit::new(Block([0; 16])));
        // SAFETY: every block was just initialized to zeros.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast(), len) }
    }
}
