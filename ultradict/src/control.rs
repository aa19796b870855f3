//! The control block: the `#[repr(C)]` header at the start of a dict's control segment,
//! followed by the update stream.
//!
//! Layout of `ultradict.NAME`:
//!
//! ```text
//! 0                     HEADER_SIZE                      HEADER_SIZE + buffer_size
//! | Control (padded)    | stream: 16-byte aligned records |
//! ```
//!
//! Shared precondition for the `unsafe` in this module, called *a mapped control segment*:
//! the pointer comes from a [`Segment`] of at least [`HEADER_SIZE`] bytes that stays mapped
//! while the reference lives. Every field that changes after creation is an atomic; the
//! identity fields are written once by the creator before it publishes `ready`, and read by
//! others only after they saw `ready` with Acquire.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::segment::Segment;

/// Identifies an ultradict control segment.
pub(crate) const MAGIC: [u8; 8] = *b"ULTRADCT";

/// The format this build writes and reads. Bump on any change to the shared layout.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Bytes before the stream starts: the control block padded to a page.
pub(crate) const HEADER_SIZE: usize = 8192;

/// The value of `ready` once the creator has finished.
pub(crate) const READY: u32 = 0x5245_4459;

/// Processes (handles) the control block can track at once.
pub(crate) const PROCESS_SLOTS: usize = 256;

/// Bytes of the schema's description kept for error messages.
pub(crate) const SCHEMA_TEXT_LEN: usize = 512;

/// The state word packs the epoch (high 32 bits) and the committed stream offset in bytes
/// (low 32 bits). Readers compare it with one Acquire load; writers publish it with a Release
/// store after the record's bytes are in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StateWord {
    pub(crate) epoch: u32,
    pub(crate) committed: u32,
}

impl StateWord {
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.epoch) << 32) | u64::from(self.committed)
    }

    pub(crate) fn unpack(word: u64) -> Self {
        StateWord {
            epoch: (word >> 32) as u32,
            committed: word as u32,
        }
    }
}

/// A 64-byte aligned wrapper so that hot fields do not share a cache line.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Line<T>(pub(crate) T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Fields of the writers' lock. Written by the lock holder; read by everyone.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct LockFields {
    /// The futex word: 0 when free, else the holder's thread id, plus [`crate::lock::WAITERS`]
    /// when somebody sleeps on it.
    pub(crate) word: AtomicU32,
    /// The holder's process id; 0 while free or before the new holder wrote it.
    pub(crate) holder_pid: AtomicU32,
    /// The holder's identity, `tid << 32 | (thread start time & 0xffff_ffff)`: tells a reused
    /// thread id from the holder. 0 while free or not yet written by a new holder.
    pub(crate) holder: AtomicU64,
    /// When the current holder was first seen holding the lock (ns since the Unix epoch),
    /// 0 until someone looked; see `lock::note_holder_seen`.
    pub(crate) held_since_ns: AtomicU64,
    /// Times a dead holder's lock was taken over.
    pub(crate) recoveries: AtomicU64,
    /// The process id of the last dead holder recovered from.
    pub(crate) last_dead_pid: AtomicU32,
    pub(crate) _reserved: u32,
}

/// Counters for `status()`. Written by lock holders.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Counters {
    /// Records appended since creation.
    pub(crate) records: AtomicU64,
    /// Full dumps written since creation.
    pub(crate) dumps: AtomicU64,
    /// Size in bytes of the current dump's archive (0 in epoch 0).
    pub(crate) dump_len: AtomicU64,
    /// Lock-free catch-ups that gave up and caught up under the lock.
    pub(crate) locked_catch_ups: AtomicU64,
}

/// Change notification: a futex word bumped after every publication, and the number of
/// threads sleeping on it (so that writers make the wake-up call only when someone waits).
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Changes {
    /// Bumped (wrapping) by the writer after each new state word is published.
    pub(crate) sequence: AtomicU32,
    /// Threads inside `wait_for_change`, in any process.
    pub(crate) waiters: AtomicU32,
}

/// The shared header of a dict.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Control {
    // ---- identity: written once by the creator, before `ready` ----
    pub(crate) magic: [u8; 8],
    pub(crate) format_version: u32,
    /// [`READY`] once every identity field is written; 0 before.
    pub(crate) ready: AtomicU32,
    pub(crate) header_size: u64,
    /// Bytes of stream after the header.
    pub(crate) buffer_size: u64,
    /// Fixed dump capacity in bytes; 0 lets dumps grow.
    pub(crate) full_dump_size: u64,
    /// `Lifetime` as chosen by the creator.
    pub(crate) lifetime: u32,
    pub(crate) creator_pid: u32,
    /// Hash of the schema (types or struct fields).
    pub(crate) fingerprint: u64,
    /// Random, chosen at creation: this instance of the dict, in its dump names and headers.
    pub(crate) instance: u64,
    pub(crate) schema_text_len: u32,
    pub(crate) _reserved: u32,
    /// Human-readable schema, UTF-8, `schema_text_len` bytes used.
    pub(crate) schema_text: [u8; SCHEMA_TEXT_LEN],

    // ---- the state word, on a line of its own: read on every operation ----
    /// [`StateWord`], packed.
    pub(crate) state: Line<AtomicU64>,

    // ---- the writers' lock ----
    pub(crate) lock: Line<LockFields>,

    // ---- counters ----
    pub(crate) counters: Line<Counters>,

    // ---- change notification ----
    pub(crate) changes: Line<Changes>,

    // ---- attached processes ----
    /// Live handles attached. The last to detach (under `Lifetime::LastClose`) removes the
    /// dict; 0 means the dict is being removed and may not be attached to.
    pub(crate) attached: Line<AtomicU32>,
    /// One slot per handle: `pid << 32 | (process start time & 0xffff_ffff)`, 0 when free.
    pub(crate) processes: [AtomicU64; PROCESS_SLOTS],
}

const _: () = assert!(std::mem::size_of::<Control>() <= HEADER_SIZE);

impl Control {
    /// The control block at the start of `segment`.
    ///
    /// # Safety
    /// `segment` is *a mapped control segment* (see the module docs).
    pub(crate) unsafe fn from_segment(segment: &Segment) -> &Control {
        debug_assert!(segment.len() >= HEADER_SIZE);
        // SAFETY: the mapping is page aligned, at least HEADER_SIZE long (caller), and lives as
        // long as `segment`. Every field is valid for any bit pattern (integers, arrays and
        // atomics), so bytes written by anyone are a valid `Control`.
        unsafe { &*segment.as_ptr().cast::<Control>() }
    }

    pub(crate) fn state(&self) -> StateWord {
        StateWord::unpack(self.state.load(Ordering::Acquire))
    }

    /// Publishes a new state word, then wakes whoever waits for a change.
    pub(crate) fn publish(&self, state: StateWord) {
        self.state.0.store(state.pack(), Ordering::Release);
        // Stream bytes written after this (a new epoch's records) stay after it, so a reader
        // that copies them and then sees the old epoch again knows its copy is stale.
        std::sync::atomic::fence(Ordering::Release);
        // SeqCst pairs with the waiter's increment of `waiters` before it reads `sequence`:
        // either it sees our bump, or we see it waiting and wake it.
        self.changes.sequence.fetch_add(1, Ordering::SeqCst);
        if self.changes.waiters.load(Ordering::SeqCst) > 0 {
            crate::os::futex_wake(&self.changes.sequence, u32::MAX >> 1);
        }
    }

    /// The schema text, as far as it is UTF-8.
    pub(crate) fn schema_text(&self) -> String {
        let len = (self.schema_text_len as usize).min(SCHEMA_TEXT_LEN);
        String::from_utf8_lossy(&self.schema_text[..len]).into_owned()
    }

    /// Process ids of the live handles' processes (one entry per handle).
    pub(crate) fn attached_pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|&entry| entry != 0)
            .map(|entry| (entry >> 32) as u32)
            .collect()
    }
}

/// The process-table entry of the calling process.
pub(crate) fn process_entry(pid: u32, start_time: u64) -> u64 {
    (u64::from(pid) << 32) | (start_time & 0xffff_ffff)
}

/// Whether the process behind a table entry still runs.
pub(crate) fn entry_alive(entry: u64) -> bool {
    let pid = (entry >> 32) as u32;
    match crate::os::task(pid) {
        crate::os::Task::Alive { start_time } => {
            (start_time & 0xffff_ffff) == (entry & 0xffff_ffff)
        }
        crate::os::Task::Dead => false,
    }
}
