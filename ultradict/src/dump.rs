//! Full dumps: one segment per epoch holding the rkyv archive of the whole state, followed, once
//! the archive outgrew the dict's `buffer_size`, by that epoch's update stream.
//!
//! ```text
//! 0          DUMP_HEADER                       stream_at (page aligned)    stream_at + stream_len
//! | header   | rkyv archive (root at its end)  | pad | stream of the epoch  |
//! ```
//!
//! The header and archive are written completely before the epoch is published and never
//! written again, so readers may hold a plain `&[u8]` over them; this process's mapping of
//! them is made read-only. The archive is validated once when mapped; lookups then read it in
//! place. The stream after it, if any, is the epoch's stream (see `stream.rs`), twice as large
//! as the archive, so that a dump is paid for by records in proportion to its size (see
//! `engine.rs`, `stream_len_for`); a dump without one (`stream_len` 0 in the header) is
//! followed by records in the control segment's stream, as epoch 0 is. A dump that came from
//! elsewhere (a fuzzer's input, another backend) lives in an aligned heap buffer instead, has
//! no stream, and is read the same way.

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rkyv::Portable;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;

use crate::control::FORMAT_VERSION;
use crate::error::{Error, Result};
use crate::naming::Place;
use crate::schema::Validator;
use crate::segment::{self, Segment};
use crate::stream;

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
const STREAM_AT: usize = 40;
const STREAM_LEN_AT: usize = 48;

/// Where a dump segment's stream starts: the first page boundary after the archive, so that
/// the archive's pages can be made read-only and the stream's writes share no cache line with
/// the archive's root.
fn stream_start(archive_len: usize) -> usize {
    (DUMP_HEADER + archive_len).next_multiple_of(crate::os::page_size())
}

/// A validated dump whose archive root is a `T`.
pub(crate) struct Dump<T> {
    bytes: DumpBytes,
    archive_len: usize,
    /// Where the epoch's stream starts in a mapped dump that has one (see `immutable_len`).
    stream_at: Option<usize>,
    /// The dump's object, open, while it has a stream: to reserve the stream's space as
    /// records need it (see [`reserve_stream`](Dump::reserve_stream)).
    stream_fd: Option<OwnedFd>,
    /// The part of the stream this process reserved (offsets in the stream): it may write
    /// there. Other processes may have reserved more.
    reserved: Range<usize>,
    /// The stretch of the stream after `reserved` that the helper thread was asked to
    /// reserve, while this process's writers fill `reserved` (see `reserve_stream`).
    ahead: Option<Ahead>,
    _root: PhantomData<fn() -> T>,
}

/// A stretch of a stream that the helper thread reserves and maps for writing (see
/// `reaper.rs`), ahead of the writer that will need it.
struct Ahead {
    /// Stream offsets.
    range: Range<usize>,
    /// [`PENDING`], then [`RESERVED`] or [`FAILED`], set by the helper.
    state: Arc<AtomicU8>,
    /// The fork generation the job was handed over in: a forked child has no helper that
    /// will finish it.
    generation: u64,
}

const PENDING: u8 = 0;
const RESERVED: u8 = 1;
const FAILED: u8 = 2;

impl Ahead {
    /// Where the job stands; [`FAILED`] in a forked child, where it never ends.
    fn state(&self) -> u8 {
        if self.generation != crate::os::fork_generation() {
            return FAILED;
        }
        self.state.load(Ordering::Acquire)
    }
}

impl<T> Drop for Dump<T> {
    /// Waits for a reservation the helper is making in this mapping: it populates the
    /// mapping's pages, which must stay mapped until it is done (under a millisecond).
    fn drop(&mut self) {
        self.wait_for_ahead();
    }
}

impl<T> Dump<T> {
    /// Waits until the helper is not reserving in this mapping (see `Drop`).
    fn wait_for_ahead(&self) {
        if let Some(ahead) = &self.ahead {
            while ahead.state() == PENDING {
                std::thread::yield_now();
            }
        }
    }
}

impl<T> Dump<T>
where
    Superseded<T>: Send + 'static,
{
    /// Lets go of a dump a new epoch superseded: a large one on the helper thread (see
    /// `reaper.rs`), which first drops its page-table entries a megabyte at a time, so that
    /// the unmapping does not hold off this process's other mappings for milliseconds (see
    /// `os::release_mapped_pages`).
    pub(crate) fn retire(self) {
        let bytes = self.mapped_len();
        crate::reaper::retire(Superseded(self), bytes);
    }
}

/// A superseded dump on its way out: dropping it releases a large mapping's pages gradually
/// before unmapping it.
pub(crate) struct Superseded<T>(Dump<T>);

impl<T> Drop for Superseded<T> {
    fn drop(&mut self) {
        let dump = &self.0;
        if let DumpBytes::Mapped(segment) = &dump.bytes
            && segment.len() >= crate::reaper::LARGE
        {
            // The helper's reservation populates pages of this mapping: let it finish first.
            dump.wait_for_ahead();
            crate::os::release_mapped_pages(segment.as_ptr().cast_mut(), segment.len());
        }
    }
}

/// How much stream a writer reserves at a time (or less, where the stream ends): the space a
/// stream takes in /dev/shm follows its records, a megabyte at a time, instead of all of it
/// being taken (and mapped) when the dump is written.
const STREAM_CHUNK: usize = 1 << 20;

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

    /// How many of its bytes are header and archive (the part before the stream), as the
    /// header delimits them: read once, by `Dump::validate`, which checks and uses that one
    /// reading (a header read twice could say two things).
    fn fixed_len(&self) -> usize {
        match self {
            DumpBytes::Mapped(segment) => immutable_len(segment),
            DumpBytes::Heap(bytes, _) => bytes.bytes().len(),
        }
    }

    /// The first `fixed` bytes ([`fixed_len`](Self::fixed_len)): the header and archive.
    fn head(&self, fixed: usize) -> &[u8] {
        match self {
            DumpBytes::Mapped(segment) => {
                // SAFETY: the first bytes of a dump, up to its stream, are immutable once
                // published (invariant 4), and a mapped dump is either published or ours and
                // unpublished: nobody writes them any more. Nobody ever writes the header, so
                // reading it to find where the stream starts is sound too.
                unsafe { segment.immutable_bytes(0, fixed) }
            }
            DumpBytes::Heap(bytes, _) => &bytes.bytes()[..fixed],
        }
    }
}

/// How many bytes at the start of a mapped dump are header and archive: up to the stream the
/// header announces, if that stream ends exactly at the segment's end; otherwise the whole
/// segment (and `check` then rejects the dump).
fn immutable_len(segment: &Segment) -> usize {
    if segment.len() < DUMP_HEADER {
        return segment.len();
    }
    // SAFETY: the header is never written after the dump was created (see `all`).
    let header = unsafe { segment.immutable_bytes(0, DUMP_HEADER) };
    let (at, len) = (u64_at(header, STREAM_AT), u64_at(header, STREAM_LEN_AT));
    match (usize::try_from(at), usize::try_from(len)) {
        // A stream's offsets are 32-bit (the state word): a longer one is not ours.
        (Ok(at), Ok(len))
            if len > 0
                && len <= crate::options::MAX_BUFFER_SIZE
                && at.checked_add(len) == Some(segment.len()) =>
        {
            at
        }
        _ => segment.len(),
    }
}

fn u32_at(header: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
}

fn u64_at(header: &[u8], at: usize) -> u64 {
    u64::from(u32_at(header, at)) | (u64::from(u32_at(header, at + 4)) << 32)
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
        let (segment, fd) = Segment::open_with_fd(&object, true)?;
        Self::validate(
            DumpBytes::Mapped(segment),
            Some(fd),
            id,
            epoch,
            Trust::Nothing,
        )
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
        Self::validate(
            DumpBytes::Heap(bytes, label.to_owned()),
            None,
            id,
            epoch,
            Trust::Nothing,
        )
    }

    /// Writes `archive` as the dump of `epoch` of dict `name`, followed by an empty stream of
    /// `stream_len` bytes (a multiple of 16) whose space is reserved as records need it, and
    /// maps it.
    ///
    /// A segment already under that name can only be the unpublished leftover of a writer
    /// that died before publishing it (the caller holds the lock and `epoch` is not yet
    /// published), so it is replaced.
    pub(crate) fn create(
        id: DumpId<'_>,
        epoch: u32,
        archive: &[u8],
        stream_len: usize,
        mode: u32,
    ) -> Result<Self> {
        let object = id.place.dump(id.instance, epoch);
        let stream_at = stream_start(archive.len());
        let len = match stream_len {
            0 => DUMP_HEADER + archive.len(),
            _ => stream_at + stream_len,
        } as u64;
        let mut header = header(id, epoch, archive.len());
        if stream_len > 0 {
            header[STREAM_AT..STREAM_AT + 8].copy_from_slice(&(stream_at as u64).to_le_bytes());
            header[STREAM_LEN_AT..STREAM_LEN_AT + 8]
                .copy_from_slice(&(stream_len as u64).to_le_bytes());
        }
        let head: [&[u8]; 2] = [&header, archive];
        let written = (DUMP_HEADER + archive.len()) as u64;
        let (segment, fd) = match Segment::create_with(&object, &head, written, len, mode) {
            Err(err) if segment::is_already_exists(&err) => {
                segment::unlink(&object)?;
                Segment::create_with(&object, &head, written, len, mode)?
            }
            other => other?,
        };
        // The archive is this process's own serializer output, and the bytes in the segment
        // are the ones it wrote: validating them again would only re-check rkyv (a full pass
        // over the archive, a third of a large dump's time). Every other process validates
        // the dump when it maps it.
        Self::validate(
            DumpBytes::Mapped(segment),
            Some(fd),
            id,
            epoch,
            Trust::OwnOutput,
        )
        .inspect_err(|_| {
            let _ = segment::unlink(&object);
        })
    }

    fn validate(
        bytes: DumpBytes,
        fd: Option<OwnedFd>,
        id: DumpId<'_>,
        epoch: u32,
        trust: Trust,
    ) -> Result<Self> {
        let fixed = bytes.fixed_len();
        let head = bytes.head(fixed);
        let archive_len = match trust {
            Trust::Nothing => check::<T>(head, bytes.object(), id, epoch)?.len(),
            Trust::OwnOutput => check_header(head, bytes.object(), id, epoch)?.len(),
        };
        let mut stream_at = None;
        if let DumpBytes::Mapped(segment) = &bytes {
            // Our own mapping of the header and archive becomes read-only: a stray write of
            // this process faults instead of corrupting every reader's dump.
            if fixed < segment.len() {
                // The check saw the stream start where `fixed` says only if the header said
                // the same both times it was read: bytes changed under us are corruption.
                if fixed != stream_start(archive_len) {
                    return Err(Error::corrupt(
                        bytes.object(),
                        "the header changed while it was read",
                    ));
                }
                segment.protect_read_only(fixed)?;
                stream_at = Some(fixed);
            } else {
                segment.protect_read_only(segment.len())?;
            }
        }
        Ok(Dump {
            bytes,
            archive_len,
            stream_at,
            stream_fd: fd.filter(|_| stream_at.is_some()),
            reserved: 0..0,
            ahead: None,
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
    let archive = check_header(bytes, object, id, epoch)?;
    rkyv::access::<T, rancor::Error>(archive)
        .map_err(|e| Error::corrupt(object, format!("dump failed validation: {e}")))?;
    Ok(archive)
}

/// What a dump's bytes are trusted to be before they are read in place.
#[derive(Clone, Copy)]
enum Trust {
    /// Bytes from shared memory: validate everything.
    Nothing,
    /// The archive this process serialized a moment ago: check the header only.
    OwnOutput,
}

/// Checks a dump's header (magic, version, epoch, schema, instance, lengths) and returns the
/// archive it delimits, unvalidated.
fn check_header<'a>(bytes: &'a [u8], object: &str, id: DumpId<'_>, epoch: u32) -> Result<&'a [u8]> {
    let Some(header) = bytes.get(..DUMP_HEADER) else {
        return Err(Error::corrupt(object, "dump shorter than its header"));
    };
    let u32_at = |at: usize| u32_at(header, at);
    let u64_at = |at: usize| u64_at(header, at);
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
    // `bytes` ends where the stream starts when the header's stream fits the segment exactly
    // (see `immutable_len`); a stream the header announces but the segment does not hold, or
    // one that starts anywhere but after the archive, is corruption.
    let stream_len = u64_at(STREAM_LEN_AT);
    if stream_len > 0
        && (u64_at(STREAM_AT) != stream_start(archive.len()) as u64
            || bytes.len() as u64 != u64_at(STREAM_AT)
            || !stream_len.is_multiple_of(stream::RECORD_ALIGN as u64))
    {
        return Err(Error::corrupt(
            object,
            "dump's stream does not follow its archive",
        ));
    }
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
        let base = match &self.bytes {
            DumpBytes::Mapped(segment) => segment.as_ptr(),
            DumpBytes::Heap(bytes, _) => bytes.bytes().as_ptr(),
        };
        // SAFETY: `validate` checked that the archive, `archive_len` bytes from DUMP_HEADER,
        // lies within the part of the bytes nobody writes (see `DumpBytes::all`), which live as
        // long as `self`. Every lookup comes here: nothing but this pointer arithmetic on the
        // way.
        unsafe { std::slice::from_raw_parts(base.add(DUMP_HEADER), self.archive_len) }
    }

    /// Bytes of memory the dump takes in this process: its whole mapping, or heap buffer.
    pub(crate) fn mapped_len(&self) -> usize {
        match &self.bytes {
            DumpBytes::Mapped(segment) => segment.len(),
            DumpBytes::Heap(bytes, _) => bytes.bytes().len(),
        }
    }

    /// Bytes of archive.
    pub(crate) fn archive_len(&self) -> usize {
        self.archive_len
    }

    /// The epoch's stream that follows the archive in a mapped dump: its start (16-byte
    /// aligned) and length. `None` for a dump without one (a heap dump).
    ///
    /// The stream is shared memory that writers holding the lock append to: access it only as
    /// `stream.rs` does. Its committed records lie in space their writers reserved; a writer
    /// may write only where it reserved (see [`writable_to`](Self::writable_to)).
    pub(crate) fn stream(&self) -> Option<(*mut u8, usize)> {
        match (&self.bytes, self.stream_at) {
            (DumpBytes::Mapped(segment), Some(at)) => {
                // SAFETY: `validate` found the stream at `at < segment.len()`: in the mapping.
                let start = unsafe { segment.as_mut_ptr().add(at) };
                Some((start, segment.len() - at))
            }
            _ => None,
        }
    }
}

impl<T> Dump<T> {
    /// How far from stream offset `offset` this process may write: the end of the part it
    /// reserved if that holds `offset`, else `offset` (nothing).
    pub(crate) fn writable_to(&self, offset: usize) -> usize {
        if self.reserved.contains(&offset) {
            self.reserved.end
        } else {
            offset
        }
    }

    /// Reserves more of the stream for a record at `offset` that did not fit before
    /// `writable_to(offset)`: up to a chunk past that, or twice the room it had for a record
    /// larger than a chunk, within the stream. Returns the new `writable_to(offset)`. A full
    /// /dev/shm is [`Error::OutOfSpace`], and nothing is written.
    ///
    /// The chunk after the one reserved is handed to the helper thread to reserve meanwhile
    /// (`reaper::run_ahead`): the next call takes it over if it is ready and follows on, and
    /// reserves in place otherwise. /dev/shm space is then taken at most two chunks ahead of
    /// the records (the one being filled and the next), per writing process.
    pub(crate) fn reserve_stream(&mut self, offset: usize) -> Result<usize> {
        let before = self.writable_to(offset);
        self.take_ahead(offset);
        if self.writable_to(offset) <= before {
            self.reserve_in_place(offset)?;
        }
        self.ask_ahead();
        Ok(self.writable_to(offset))
    }

    /// Where the stream starts, the dump's descriptor and its segment, for a mapped dump
    /// with a stream of its own.
    fn stream_parts(&self) -> Option<(usize, &OwnedFd, &Segment)> {
        match (self.stream_at, self.stream_fd.as_ref(), &self.bytes) {
            (Some(at), Some(fd), DumpBytes::Mapped(segment)) => Some((at, fd, segment)),
            _ => None,
        }
    }

    /// Takes over what the helper reserved ahead if it is done, and follows what this
    /// process reserved or holds `offset`.
    fn take_ahead(&mut self, offset: usize) {
        let Some(ahead) = self.ahead.take_if(|ahead| ahead.state() != PENDING) else {
            return;
        };
        if ahead.state() != RESERVED {
            return;
        }
        let range = ahead.range.clone();
        // Only ever more room at `offset`: a record larger than a chunk may have been reserved
        // in place past the helper's range meanwhile.
        if range.end <= self.writable_to(offset) {
            return;
        }
        if self.reserved.end == range.start && self.reserved.start <= offset {
            self.reserved.end = range.end;
        } else if range.contains(&offset) {
            self.reserved = range;
        }
    }

    /// Reserves up to a chunk past `writable_to(offset)`, here (see
    /// [`reserve_stream`](Self::reserve_stream)).
    fn reserve_in_place(&mut self, offset: usize) -> Result<()> {
        let Some((at, fd, segment)) = self.stream_parts() else {
            return Ok(());
        };
        let stream_len = segment.len() - at;
        if offset >= stream_len {
            return Ok(());
        }
        let page = crate::os::page_size();
        let from = self.writable_to(offset);
        let room = from - offset;
        // Keep what is reserved past `offset`, or start afresh on `offset`'s page.
        let (start, from) = if room > 0 {
            (self.reserved.start, from)
        } else {
            (offset / page * page, offset / page * page)
        };
        let end = chunk_end(from, STREAM_CHUNK.max(room), stream_len);
        if end > from {
            segment.reserve(fd.as_fd(), at + from, end - from)?;
        }
        self.reserved = start..end;
        Ok(())
    }

    /// Hands the chunk after what this process reserved to the helper thread, unless it has
    /// one in hand already or the stream ends there.
    fn ask_ahead(&mut self) {
        let Some((at, fd, segment)) = self.stream_parts() else {
            return;
        };
        if self.ahead.is_some() || self.reserved.is_empty() {
            return;
        }
        let from = self.reserved.end;
        let end = chunk_end(from, STREAM_CHUNK, segment.len() - at);
        if end <= from {
            return;
        }
        // The job keeps a descriptor of its own; the mapping stays while it runs, since
        // dropping this dump waits for it.
        let Ok(fd) = fd.try_clone() else {
            return;
        };
        let state = Arc::new(AtomicU8::new(PENDING));
        let done = Arc::clone(&state);
        // SAFETY: `at + from` is within the stream, so within the mapping. The address goes
        // to the helper as a number (a pointer is not `Send`), its provenance exposed.
        let start = unsafe { segment.as_mut_ptr().add(at + from) }.expose_provenance();
        let job = move || {
            if let Some(delay) = crate::fault::ahead_delay() {
                std::thread::sleep(delay);
            }
            let reserved =
                crate::os::reserve_range(fd.as_fd(), (at + from) as u64, (end - from) as u64);
            if reserved.is_ok() {
                // Still mapped: dropping the dump waits for this job (see `Dump::drop`).
                let start = std::ptr::with_exposed_provenance_mut(start);
                crate::os::prefault_for_writing(start, end - from);
            }
            done.store(
                if reserved.is_ok() { RESERVED } else { FAILED },
                Ordering::Release,
            );
        };
        if crate::reaper::run_ahead(job) {
            self.ahead = Some(Ahead {
                range: from..end,
                state,
                generation: crate::os::fork_generation(),
            });
        }
    }
}

/// The end of a stretch of stream reserved from `from`: `len` bytes on, rounded up to a
/// page, within the stream's `stream_len` bytes.
fn chunk_end(from: usize, len: usize, stream_len: usize) -> usize {
    from.saturating_add(len)
        .next_multiple_of(crate::os::page_size())
        .min(stream_len)
}

/// An archive built in an aligned heap buffer.
pub(crate) struct AlignedBytes {
    buf: AlignedBuf,
    len: usize,
}

impl AlignedBytes {
    /// The first `len` bytes of `buf`, which a serializer wrote.
    pub(crate) fn new(buf: AlignedBuf, len: usize) -> Self {
        assert!(len <= buf.len());
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
    /// A large buffer's own anonymous mapping, used instead of `blocks`: it asks for huge
    /// pages (a fault per 2 MiB instead of per 4 KiB: writing a 1M-entry dump's 19 MB archive
    /// took 13.4 ms in 4 KiB faults, 5.5 ms in huge ones), which advice on the allocator's
    /// heap would leave behind on memory it hands out later.
    mapped: Option<memmap2::MmapMut>,
}

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Block([u8; 16]);

impl AlignedBuf {
    /// Buffers at least this large get their own mapping.
    const MAPPED: usize = 4 << 20;

    pub(crate) fn with_capacity(bytes: usize) -> Self {
        let len = bytes.next_multiple_of(16);
        let map = (len >= Self::MAPPED)
            .then(|| memmap2::MmapOptions::new().len(len).map_anon().ok())
            .flatten();
        if let Some(mut map) = map {
            crate::os::advise_huge_pages(map.as_mut_ptr(), len);
            return AlignedBuf {
                blocks: Vec::new(),
                mapped: Some(map),
            };
        }
        let mut blocks: Vec<MaybeUninit<Block>> = Vec::with_capacity(len / 16);
        blocks.resize(len / 16, MaybeUninit::uninit());
        AlignedBuf {
            blocks,
            mapped: None,
        }
    }

    /// Where the buffer starts (16-byte aligned) and its length.
    fn raw(&self) -> (*const u8, usize) {
        match &self.mapped {
            Some(map) => (map.as_ptr(), map.len()),
            None => (self.blocks.as_ptr().cast(), self.blocks.len() * 16),
        }
    }

    /// Bytes in the buffer.
    pub(crate) fn len(&self) -> usize {
        self.raw().1
    }

    /// The whole buffer, for a serializer to fill.
    pub(crate) fn as_uninit_mut(&mut self) -> &mut [MaybeUninit<u8>] {
        let (start, len) = match &mut self.mapped {
            Some(map) => (map.as_mut_ptr(), map.len()),
            None => (self.blocks.as_mut_ptr().cast(), self.blocks.len() * 16),
        };
        // SAFETY: the buffer (the mapping, page aligned, or `blocks`) owns `len` bytes at
        // `start`, which any byte pattern (or none) inhabits as `MaybeUninit`, and the borrow
        // of `self` keeps them exclusive.
        unsafe { std::slice::from_raw_parts_mut(start.cast(), len) }
    }

    /// The first `len` bytes, which a serializer has written.
    ///
    /// # Safety
    /// The first `len` bytes were initialized.
    pub(crate) unsafe fn initialized(&self, len: usize) -> &[u8] {
        let (start, capacity) = self.raw();
        assert!(len <= capacity);
        // SAFETY: in bounds (asserted) and initialized (caller).
        unsafe { std::slice::from_raw_parts(start, len) }
    }

    /// The first `len` bytes as `fill` writes them, without zeroing them first (a reader's
    /// catch-up copies every record into this buffer).
    ///
    /// # Safety
    /// `fill` writes every one of the `len` bytes it is given.
    pub(crate) unsafe fn filled_with(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [MaybeUninit<u8>]),
    ) -> &mut [u8] {
        self.mapped = None;
        let blocks = len.div_ceil(16);
        if self.blocks.len() < blocks {
            self.blocks.resize(blocks, MaybeUninit::uninit());
        }
        let start = self.blocks.as_mut_ptr().cast::<u8>();
        // SAFETY: `blocks` owns at least `len` bytes at `start`, any byte pattern inhabits
        // `MaybeUninit<u8>`, and the borrow of `self` keeps them exclusive.
        fill(unsafe { std::slice::from_raw_parts_mut(start.cast(), len) });
        // SAFETY: as above, and `fill` initialized all `len` bytes (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(start, len) }
    }

    /// The whole buffer, zero-initialized first, as aligned bytes.
    #[cfg(any(feature = "redis", feature = "fuzzing"))]
    pub(crate) fn zeroed_mut(&mut self, len: usize) -> &mut [u8] {
        self.mapped = None;
        let blocks = len.div_ceil(16);
        self.blocks.clear();
        self.blocks.resize(blocks, MaybeUninit::new(Block([0; 16])));
        // SAFETY: every block was just initialized to zeros.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast(), len) }
    }
}
