//! The update stream: append-only, 16-byte aligned, framed rkyv records of one epoch.
//!
//! ```text
//! | len u32 | epoch u32 | check u32 | 0 u32 | archive (len bytes) | pad to 16 | next record...
//! ```
//!
//! `len` is the archive's exact length (rkyv puts the root at the end of an archive, so a
//! reader needs it), `epoch` the epoch the record belongs to, and `check` ties both together so
//! that a stray write is caught before the archive is even looked at. The writer holds the
//! writers' lock, serializes straight into the mapped stream after the committed offset, and
//! only then publishes the new offset; readers never look past the committed offset.

use std::mem::MaybeUninit;

use crate::schema::{Data, RecordSerializer, Unwritten};

/// Records start at multiples of this.
pub(crate) const RECORD_ALIGN: usize = 16;

/// Size of a record's frame header.
pub(crate) const FRAME_LEN: usize = 16;

const CHECK_SALT: u32 = 0x7564_6963; // "udic"

fn check(len: u32, epoch: u32) -> u32 {
    len.rotate_left(7) ^ epoch.rotate_left(19) ^ CHECK_SALT
}

/// Rounds `n` up to a multiple of [`RECORD_ALIGN`].
pub(crate) fn align_up(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Why a record was not appended.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// It did not fit in what is left of the stream.
    StreamFull,
    /// The update failed to serialize; rkyv's message.
    Failed(String),
}
use AppendError::StreamFull;

/// Writes `update` as one record at `offset` of the stream that starts at `stream` and holds
/// `capacity` bytes. Returns the offset after the record (unpublished).
///
/// # Safety
/// `stream` is 16-byte aligned and valid for writes of `capacity` bytes, and no other thread
/// or process reads or writes `offset..capacity` during the call: the caller holds the
/// writers' lock, and readers never read past the committed offset, which is `offset`.
pub(crate) unsafe fn append<U>(
    stream: *mut u8,
    capacity: usize,
    offset: usize,
    epoch: u32,
    update: &U,
) -> Result<usize, AppendError>
where
    U: for<'a, 'b> rkyv::Serialize<RecordSerializer<'a, 'b>>,
{
    debug_assert_eq!(offset % RECORD_ALIGN, 0);
    let body_start = offset + FRAME_LEN;
    if body_start >= capacity {
        return Err(StreamFull);
    }
    // SAFETY: in bounds of the stream (checked above), exclusively ours (caller), and
    // `MaybeUninit<u8>` makes no claim about the bytes' current contents.
    let tail = unsafe {
        std::slice::from_raw_parts_mut(
            stream.add(body_start).cast::<MaybeUninit<u8>>(),
            capacity - body_start,
        )
    };
    let written = crate::schema::archive_into(update, tail).map_err(|err| match err {
        Unwritten::Full => StreamFull,
        Unwritten::Failed(detail) => AppendError::Failed(detail),
    })?;
    let len = u32::try_from(written).map_err(|_| StreamFull)?;
    let end = align_up(body_start + written);
    if end > capacity {
        return Err(StreamFull);
    }
    let mut frame = [0u8; FRAME_LEN];
    frame[0..4].copy_from_slice(&len.to_le_bytes());
    frame[4..8].copy_from_slice(&epoch.to_le_bytes());
    frame[8..12].copy_from_slice(&check(len, epoch).to_le_bytes());
    // SAFETY: `offset..offset + FRAME_LEN` is in bounds and exclusively ours, as above.
    unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), stream.add(offset), FRAME_LEN) };
    Ok(end)
}

/// Why a copied-out stream range could not be decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// A record of another epoch: the range was overwritten while being copied.
    Overwritten,
    /// Bytes that are not a valid record: the description.
    Corrupt(String),
}

/// Decodes a copied-out range of committed records of `epoch` (from stream offset `base`):
/// validates every record (frame and rkyv archive) before deserializing any, then pushes the
/// updates in order onto `updates`, which must be empty and is left empty on an error (a
/// reader catching up reuses one vector rather than allocating one per catch-up). The one
/// decoder: readers catching up, the Redis backend and the fuzzers run this.
pub(crate) fn decode_into<U: Data>(
    bytes: &[u8],
    base: usize,
    epoch: u32,
    updates: &mut Vec<U>,
) -> Result<(), DecodeError> {
    debug_assert!(updates.is_empty());
    // Two passes over the records, so that nothing is collected but the updates: the first
    // validates every frame and archive, the second reads the same bytes again, unchecked.
    let mut count = 0;
    for record in records(bytes, base, epoch) {
        let record = match record {
            Ok(record) => record,
            Err(FrameError::WrongEpoch { .. }) => return Err(DecodeError::Overwritten),
            Err(err) => return Err(DecodeError::Corrupt(err.to_string())),
        };
        rkyv::access::<U::Stored, rkyv::rancor::Error>(record.archive)
            .map_err(|e| DecodeError::Corrupt(format!("record failed validation: {e}")))?;
        count += 1;
    }
    updates.reserve(count);
    for record in records(bytes, base, epoch).flatten() {
        // SAFETY: the first pass validated this very archive, in `bytes`, which nobody
        // changes while they are borrowed here.
        let stored = unsafe { rkyv::access_unchecked::<U::Stored>(record.archive) };
        match crate::schema::deserialize::<U>(stored) {
            Ok(update) => updates.push(update),
            Err(e) => {
                updates.clear();
                return Err(DecodeError::Corrupt(format!(
                    "record could not be read: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// A record found in a copied-out stream range.
pub(crate) struct RecordRef<'a> {
    /// The archive's bytes, 16-byte aligned if the copy was.
    pub(crate) archive: &'a [u8],
}

/// Why a stream range could not be parsed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The frame header does not hold together.
    BadFrame { offset: usize },
    /// A record of another epoch: the range was overwritten while being copied.
    WrongEpoch { offset: usize, found: u32 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadFrame { offset } => {
                write!(f, "bad record frame at stream offset {offset}")
            }
            FrameError::WrongEpoch { offset, found } => {
                write!(f, "record of epoch {found} at stream offset {offset}")
            }
        }
    }
}

/// Splits `bytes` (a copy of the stream from offset `base`, ending at a committed offset) into
/// records of `epoch`.
pub(crate) fn records(
    bytes: &[u8],
    base: usize,
    epoch: u32,
) -> impl Iterator<Item = Result<RecordRef<'_>, FrameError>> {
    let mut at = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= bytes.len() {
            return None;
        }
        let offset = base + at;
        let frame = match bytes.get(at..at + FRAME_LEN) {
            Some(frame) => frame,
            None => {
                failed = true;
                return Some(Err(FrameError::BadFrame { offset }));
            }
        };
        let word =
            |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        let (len, found_epoch, found_check) = (word(0), word(4), word(8));
        if found_epoch != epoch {
            failed = true;
            return Some(Err(FrameError::WrongEpoch {
                offset,
                found: found_epoch,
            }));
        }
        let body = at + FRAME_LEN;
        let end = body
            .checked_add(len as usize)
            .filter(|&end| end <= bytes.len());
        let Some(end) = end.filter(|_| found_check == check(len, found_epoch)) else {
            failed = true;
            return Some(Err(FrameError::BadFrame { offset }));
        };
        at = align_up(end);
        Some(Ok(RecordRef {
            archive: &bytes[body..end],
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(16))]
    struct Aligned([u8; 256]);

    #[test]
    fn append_then_parse_roundtrips_and_overflow_is_reported() {
        let mut stream = Aligned([0; 256]);
        let ptr = stream.0.as_mut_ptr();
        // SAFETY: the buffer is local, aligned, and 256 bytes long.
        let end = unsafe { append(ptr, 256, 0, 7, &(5u64, String::from("hello"))) }.unwrap();
        // SAFETY: as above.
        let end2 = unsafe { append(ptr, 256, end, 7, &(6u64, String::from("world"))) }.unwrap();
        let parsed: Vec<_> = records(&stream.0[..end2], 0, 7)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 2);
        let first =
            rkyv::access::<rkyv::Archived<(u64, String)>, rkyv::rancor::Error>(parsed[0].archive)
                .unwrap();
        assert_eq!(first.1, "hello");
        // SAFETY: as above.
        let full = unsafe { append(ptr, 256, end2, 7, &vec![0u8; 300]) };
        assert!(full.is_err());
        assert_eq!(
            records(&stream.0[..end2], 0, 8).next().unwrap().err(),
            Some(FrameError::WrongEpoch {
                offset: 0,
                found: 7
            })
        );
    }
}
