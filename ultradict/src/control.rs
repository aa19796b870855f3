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
//! The stream here serves epoch 0 and every epoch whose dump fits in `buffer_size`; a larger
//! dump brings its epoch's stream in its own segment (see `dump.rs`).
//!
//! Shared precondition for the `unsafe` in this module, called *a mapped control segment*:
//! the pointer comes from a [`Segment`] of at least [`HEADER_SIZE`] bytes that stays mapped
//! while the reference lives.
//!
//! Who writes what:
//! - The *identity* fields (magic to schema text) are plain fields, written once by the
//!   creator while the segment still has a private name, before `ready`; the segment gets the
//!   dict's name only afterwards. Others read them only after they saw `ready` with Acquire
//!   (and reject a segment without it), so they are never read while being written.
//! - Everything after them changes while the dict lives and is an atomic: the state word
//!   and the epoch word (writers; the epoch word also whoever recovers a dead writer's lock),
//!   the lock fields (lock holders and waiters), counters (writers), the change
//!   sequence (writers and sleepers), the removal mark (removers), the process table (each
//!   slot by the handle that holds it).

use std::time::{Duration, Instant};

use crate::sync::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::segment::Segment;
use crate::storage::Position;

/// Identifies an ultradict control segment.
pub(crate) const MAGIC: [u8; 8] = *b"ULTRADCT";

/// The format this build writes and reads. Bump on any change to the shared layout.
/// Version 2: liveness by open-file-description locks, slot-tagged lock word, removal mark.
/// Version 3: each dump segment holds its epoch's stream, sized from the dump. Version 4: the
/// epoch word, on a line of its own beside the state word. Version 5: a process slot's role
/// (a tool's handle does not count as a user); builds that left the field alone must not
/// share a dict with builds that read it.
pub(crate) const FORMAT_VERSION: u32 = 5;

/// Bytes before the stream starts: the control block padded to a page.
pub(crate) const HEADER_SIZE: usize = 8192;

/// The value of `ready` once the creator has finished.
pub(crate) const READY: u32 = 0x5245_4459;

/// Handles that can be attached to one dict at once (the process table's slots).
pub(crate) const PROCESS_SLOTS: usize = 256;

/// Bytes of the schema's description kept for error messages.
pub(crate) const SCHEMA_TEXT_LEN: usize = 512;

/// Set in [`Changes::sequence`] while a thread may sleep on it: the next publication wakes
/// sleepers and clears it. A sleeper killed in its sleep leaves the bit set for at most one
/// more publication, never for good.
pub(crate) const SLEEPERS: u32 = 1 << 31;

/// The value of [`Life::removed`] once a removal has started.
pub(crate) const REMOVED: u32 = 0x4445_4144;

/// The state word packs the epoch (high 32 bits) and the committed stream offset in bytes
/// (low 32 bits). Readers compare it with one Acquire load; writers publish it with a Release
/// store after the record's bytes are in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StateWord {
    pub(crate) epoch: u32,
    pub(crate) committed: u32,
}

impl StateWord {
    #[inline]
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.epoch) << 32) | u64::from(self.committed)
    }

    #[inline]
    pub(crate) fn unpack(word: u64) -> Self {
        StateWord {
            epoch: (word >> 32) as u32,
            committed: word as u32,
        }
    }

    /// The state word as a position in the dict's history.
    #[inline]
    pub(crate) fn position(self) -> Position {
        Position(u128::from(self.pack()))
    }

    /// The state word a position of this backend packs.
    #[inline]
    pub(crate) fn of(position: Position) -> Self {
        Self::unpack(position.0 as u64)
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
    /// The futex word: 0 when free, else the holder (see `lock::holder_word`: its process-table
    /// slot and thread id), plus [`crate::lock::WAITERS`] when somebody sleeps on it.
    pub(crate) word: AtomicU32,
    pub(crate) _reserved: u32,
    /// When the current holder was first seen holding the lock (ns since the Unix epoch),
    /// 0 until someone looked; see `lock::note_holder_seen`.
    pub(crate) held_since_ns: AtomicU64,
    /// Times a dead holder's lock was taken over.
    pub(crate) recoveries: AtomicU64,
    /// The process id (in its own PID namespace) of the last dead holder recovered from.
    pub(crate) last_dead_pid: AtomicU32,
    pub(crate) _reserved2: u32,
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
    /// Bytes of stream in the current epoch's dump segment (0 in epoch 0, whose stream is the
    /// control segment's `buffer_size` bytes). For reports only.
    pub(crate) stream_len: AtomicU64,
    /// Lock-free catch-ups that gave up and caught up under the lock.
    pub(crate) locked_catch_ups: AtomicU64,
}

/// What tells other processes that something happened: publications, and removal.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Changes {
    /// Publications so far (wrapping, 31 bits), plus [`SLEEPERS`] while a thread may sleep
    /// on it, so that writers make the wake-up call only when someone sleeps.
    pub(crate) sequence: AtomicU32,
    /// [`REMOVED`] once a removal began: no handle may attach any more, and handles still
    /// attached create no new object (they get `Error::Removed`).
    pub(crate) removed: AtomicU32,
}

/// One handle's entry in the process table. Whether the handle is alive is never read from
/// here (see `liveness`): the entry says who it is, for reports, and how many of its threads
/// sleep in `wait_for_change`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ProcessSlot {
    /// The attached process's nonce (`os::process_nonce`); 0 when the slot was released.
    pub(crate) owner: AtomicU64,
    /// Its process id, as its own PID namespace numbers it.
    pub(crate) pid: AtomicU32,
    /// The low 32 bits of its PID namespace's inode (0 if unknown).
    pub(crate) pid_namespace: AtomicU32,
    /// Its threads sleeping in `wait_for_change` right now.
    pub(crate) sleepers: AtomicU32,
    /// [`OBSERVER`] for a tool's handle, which does not keep the dict for its lifetime; 0
    /// for a user's (and in segments of earlier builds, where it was reserved).
    pub(crate) role: AtomicU32,
}

/// [`ProcessSlot::role`] of a tool's handle.
pub(crate) const OBSERVER: u32 = 1;

/// The shared header of a dict.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Control {
    // ---- identity: written once by the creator, before `ready` and before the name ----
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
    /// Permission bits of every object of the dict (0o600 unless the creator chose others).
    pub(crate) mode: u32,
    /// Human-readable schema, UTF-8, `schema_text_len` bytes used.
    pub(crate) schema_text: [u8; SCHEMA_TEXT_LEN],

    // ---- the state word, on a line of its own: read on every operation ----
    /// [`StateWord`], packed.
    pub(crate) state: Line<AtomicU64>,

    // ---- the epoch word, on a line of its own: changes only with the epoch ----
    /// The epoch a writer is starting or has started (see [`Published::epoch`]).
    pub(crate) epoch: Line<AtomicU32>,

    // ---- the writers' lock ----
    pub(crate) lock: Line<LockFields>,

    // ---- counters ----
    pub(crate) counters: Line<Counters>,

    // ---- change notification and removal ----
    pub(crate) changes: Line<Changes>,

    // ---- attached handles ----
    pub(crate) processes: [ProcessSlot; PROCESS_SLOTS],
}

// Under loom the atomics are models, larger than the real ones; no control block is mapped then.
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Control>() <= HEADER_SIZE);

/// The published state of a dict: the state word, the epoch word and the change sequence
/// that every publication bumps. Writers publish; readers compare; sleepers wait for a change.
/// (A view of three fields of the control block, so that the model checks can run it on its
/// own.)
///
/// The epoch word is the stream's sequence number for copies made without the lock. A new
/// epoch may write its records over the control segment's stream, where a reader may still be
/// copying the old epoch's; the reader keeps its copy only if the epoch did not change while
/// it copied ([`still_in`](Published::still_in)). That check reads the epoch word, not the
/// state word: the state word's line changes with every record, so the check would fetch it
/// from the writer's cache once more per catch-up, while the epoch word's line changes once
/// per epoch.
#[derive(Clone, Copy)]
pub(crate) struct Published<'a> {
    pub(crate) state: &'a AtomicU64,
    /// The epoch that may have records: a writer stores it after the state word that starts
    /// the epoch, and before the epoch's records.
    pub(crate) epoch: &'a AtomicU32,
    pub(crate) changes: &'a Changes,
}

impl Published<'_> {
    /// The published state word (Acquire: the records and dump it names are visible).
    #[inline]
    pub(crate) fn state(&self) -> StateWord {
        StateWord::unpack(self.state.load(Ordering::Acquire))
    }

    /// Publishes a new state word of the current epoch (Release: after the bytes it names),
    /// then wakes whoever sleeps waiting for a change.
    #[inline]
    pub(crate) fn publish(&self, state: StateWord) {
        self.store_state(state);
        crate::sync::fence(Ordering::Release);
        self.bump_sequence();
    }

    /// Publishes the state word that starts a new epoch, then stores the epoch in the epoch
    /// word, then wakes whoever sleeps waiting for a change.
    ///
    /// The epoch word changes after the state word, and before the epoch's records (the fence
    /// below keeps the stream bytes written after it after it): a copy of the old epoch's
    /// bytes is refused only once they may have been overwritten, so a writer stopped between
    /// the two stores holds no reader up. (A state word that starts an epoch names no record:
    /// nobody copies against it.) A writer that dies there leaves the epoch word behind; the
    /// lock's recovery mends it (`mend_epoch`) before anyone writes a record of that epoch.
    pub(crate) fn publish_epoch(&self, state: StateWord) {
        self.store_state(state);
        crate::fault::point("epoch-published");
        self.epoch.store(state.epoch, Ordering::Relaxed);
        crate::sync::fence(Ordering::Release);
        self.bump_sequence();
    }

    #[inline]
    fn store_state(&self, state: StateWord) {
        #[cfg(not(ultradict_loom_broken))]
        self.state.store(state.pack(), Ordering::Release);
        // The model checks' deliberately broken build: readers may then see the new offset
        // before the record's bytes (`models.rs` shows that a model catches it).
        #[cfg(ultradict_loom_broken)]
        self.state.store(state.pack(), Ordering::Relaxed);
    }

    /// Whether a copy of stream bytes made since the state word of `epoch` was loaded
    /// (Acquire) holds that epoch's bytes: the epoch did not change meanwhile. The copy's
    /// loads come before this call's Acquire fence; if one of them saw bytes a later epoch
    /// wrote, the writer's Release fence after storing that epoch in the epoch word orders
    /// the store before them, and the load here sees it. A state word that names records of
    /// `epoch` was published after `epoch` went into the epoch word (by the writer of its
    /// first record, or the lock's recovery before it), so the load sees that too.
    #[inline]
    pub(crate) fn still_in(&self, epoch: u32) -> bool {
        crate::sync::fence(Ordering::Acquire);
        self.epoch.load(Ordering::Relaxed) == epoch
    }

    /// Sets the epoch word to the published epoch if a writer died between publishing an
    /// epoch and storing it there. Only by the recovery of a dead holder's lock: no epoch is
    /// then being started.
    pub(crate) fn mend_epoch(&self) {
        let epoch = self.state().epoch;
        if self.epoch.load(Ordering::Relaxed) != epoch {
            self.epoch.store(epoch, Ordering::Relaxed);
            // Ordered before the records the recovering writer then writes over the old bytes,
            // as `publish_epoch` orders its store (`still_in` relies on it).
            crate::sync::fence(Ordering::Release);
        }
    }

    /// Advances the change sequence; if [`SLEEPERS`] was set, clears it and wakes every
    /// sleeper. One atomic add on the common path: a compare-and-swap loop would fetch the
    /// line twice when writers in two processes take turns. A sleeper sets the bit with a
    /// compare-and-swap on the exact value it then sleeps on, so either this add sees the bit,
    /// or the sleeper's swap or sleep sees the new value; clearing the bit before the wake-up
    /// can only send a sleeper that set it again back to look once more.
    #[inline]
    fn bump_sequence(&self) {
        let sequence = &self.changes.sequence;
        // The count is 31 bits: a carry into the bit costs one needless wake-up, nothing more.
        let previous = sequence.fetch_add(1, Ordering::AcqRel);
        if previous & SLEEPERS != 0 {
            sequence.fetch_and(!SLEEPERS, Ordering::AcqRel);
            crate::sync::futex_wake(sequence, u32::MAX >> 1);
        }
    }

    /// Sleeps until the published state differs from `seen` or `timeout` passes; returns
    /// whether it changed. Each sleep lasts at most [`RECHECK`]: a writer killed between
    /// publishing a state and bumping the sequence wakes nobody, and its change is then seen
    /// at the next look.
    pub(crate) fn wait_for_change(&self, seen: StateWord, timeout: Duration) -> bool {
        let sequence = &self.changes.sequence;
        let deadline = crate::sync::deadline_in(timeout);
        loop {
            let seen_sequence = sequence.load(Ordering::Acquire);
            if self.state() != seen {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let asleep = seen_sequence | SLEEPERS;
            if seen_sequence != asleep
                && sequence
                    .compare_exchange(seen_sequence, asleep, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            let _ = crate::sync::futex_wait(sequence, asleep, left.min(RECHECK));
        }
    }

    /// Bumps the change sequence, waking every sleeper: after a dead writer's lock was
    /// recovered, in case it died between publishing and waking.
    pub(crate) fn wake_sleepers(&self) {
        self.bump_sequence();
    }
}

/// The longest a sleeper in `wait_for_change` sleeps before looking at the state again, woken
/// or not: how late it may see a change whose writer died before waking anyone.
const RECHECK: Duration = Duration::from_millis(100);

/// What the creator writes into the identity fields.
pub(crate) struct Identity<'a> {
    pub(crate) buffer_size: u64,
    pub(crate) full_dump_size: u64,
    pub(crate) lifetime: u32,
    pub(crate) fingerprint: u64,
    pub(crate) schema_text: &'a str,
    pub(crate) instance: u64,
    pub(crate) mode: u32,
}

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

    /// The control block of `segment`, an object found under a dict's name, after checking
    /// that it is one: big enough, ultradict's magic, this format version, ready, and sizes
    /// that hold together.
    ///
    /// # Errors
    /// [`Error::Foreign`], [`Error::VersionMismatch`] or [`Error::Corrupt`], naming the object.
    pub(crate) fn checked(segment: &Segment) -> Result<&Control> {
        let object = segment.object();
        if segment.len() < HEADER_SIZE {
            return Err(Error::Foreign {
                segment: object.to_owned(),
                reason: format!("{} bytes, smaller than a control block", segment.len()),
            });
        }
        // SAFETY: a mapping of at least HEADER_SIZE bytes, alive as long as `segment`.
        let control = unsafe { Control::from_segment(segment) };
        // A dict's identity fields are complete before it has its name; anything else under
        // the name is read with volatile loads until the magic says it is ours.
        // SAFETY: both fields lie within the mapping; volatile reads of plain integers.
        let (magic, version) = unsafe {
            (
                std::ptr::read_volatile(&raw const control.magic),
                std::ptr::read_volatile(&raw const control.format_version),
            )
        };
        if magic != MAGIC {
            return Err(Error::Foreign {
                segment: object.to_owned(),
                reason: "no ultradict magic".into(),
            });
        }
        if version != FORMAT_VERSION {
            return Err(Error::VersionMismatch {
                segment: object.to_owned(),
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        if !control.is_ready() {
            return Err(Error::Foreign {
                segment: object.to_owned(),
                reason: "an ultradict control block that was never finished".into(),
            });
        }
        let buffer_size = usize::try_from(control.buffer_size).unwrap_or(usize::MAX);
        if control.header_size != HEADER_SIZE as u64
            || Some(segment.len()) != HEADER_SIZE.checked_add(buffer_size)
            || buffer_size % 16 != 0
            || buffer_size > crate::options::MAX_BUFFER_SIZE
        {
            return Err(Error::corrupt(object, "header and segment sizes disagree"));
        }
        Ok(control)
    }

    /// Writes the identity fields of a segment nobody else can see yet.
    ///
    /// # Safety
    /// `segment` is *a mapped control segment*, writable, created by this process under a
    /// private name that nobody else opens, zero-filled by the kernel.
    pub(crate) unsafe fn initialize(segment: &Segment, identity: &Identity<'_>) {
        // SAFETY: the caller's guarantees: a private, writable mapping of at least HEADER_SIZE
        // bytes that nobody reads or writes while we write its plain fields.
        unsafe {
            let raw = segment.as_mut_ptr().cast::<Control>();
            (*raw).magic = MAGIC;
            (*raw).format_version = FORMAT_VERSION;
            (*raw).header_size = HEADER_SIZE as u64;
            (*raw).buffer_size = identity.buffer_size;
            (*raw).full_dump_size = identity.full_dump_size;
            (*raw).lifetime = identity.lifetime;
            (*raw).creator_pid = crate::os::current_pid();
            (*raw).fingerprint = identity.fingerprint;
            (*raw).instance = identity.instance;
            (*raw).mode = identity.mode;
            let text = identity.schema_text.as_bytes();
            let len = text.len().min(SCHEMA_TEXT_LEN);
            (&mut (*raw).schema_text)[..len].copy_from_slice(&text[..len]);
            (*raw).schema_text_len = len as u32;
        }
    }

    /// Marks the identity fields complete.
    pub(crate) fn mark_ready(&self) {
        self.ready.store(READY, Ordering::Release);
    }

    /// Whether the creator finished writing the identity fields (Acquire: after this returns
    /// `true`, they may be read).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) == READY
    }

    #[inline]
    pub(crate) fn state(&self) -> StateWord {
        self.published().state()
    }

    /// The state word and the change sequence, as the protocol uses them.
    #[inline]
    pub(crate) fn published(&self) -> Published<'_> {
        Published {
            state: &self.state,
            epoch: &self.epoch,
            changes: &self.changes,
        }
    }

    /// Publishes a new state word of the current epoch, then wakes whoever sleeps waiting for
    /// a change. Inlined into every write (the engine is generic, so without this a write in
    /// another crate would call it).
    #[inline]
    pub(crate) fn publish(&self, state: StateWord) {
        self.published().publish(state);
    }

    /// Publishes the state word that starts a new epoch (see [`Published::publish_epoch`]).
    pub(crate) fn publish_epoch(&self, state: StateWord) {
        self.published().publish_epoch(state);
    }

    /// The schema text, as far as it is UTF-8.
    pub(crate) fn schema_text(&self) -> String {
        let len = (self.schema_text_len as usize).min(SCHEMA_TEXT_LEN);
        String::from_utf8_lossy(&self.schema_text[..len]).into_owned()
    }

    /// Whether a removal of this dict has begun.
    pub(crate) fn is_removed(&self) -> bool {
        self.changes.removed.load(Ordering::SeqCst) == REMOVED
    }

    /// Marks the dict as being removed.
    pub(crate) fn mark_removed(&self) {
        self.changes.removed.store(REMOVED, Ordering::SeqCst);
    }

    /// Fills slot `slot` with the calling process's identity (the caller holds the slot).
    pub(crate) fn occupy(&self, slot: usize, observer: bool) {
        let entry = &self.processes[slot];
        entry.sleepers.store(0, Ordering::Relaxed);
        entry
            .role
            .store(if observer { OBSERVER } else { 0 }, Ordering::Relaxed);
        entry
            .pid_namespace
            .store(crate::os::pid_namespace(), Ordering::Relaxed);
        entry.pid.store(crate::os::current_pid(), Ordering::Relaxed);
        entry
            .owner
            .store(crate::os::process_nonce(), Ordering::Release);
    }

    /// Whether the handle in slot `slot` (alive, so the role written when it took the slot
    /// stands) is a tool's.
    pub(crate) fn is_observer(&self, slot: usize) -> bool {
        self.processes[slot].role.load(Ordering::Acquire) == OBSERVER
    }

    /// Empties slot `slot` (the caller holds it and is about to let it go).
    pub(crate) fn vacate(&self, slot: usize) {
        let entry = &self.processes[slot];
        entry.owner.store(0, Ordering::Release);
        entry.sleepers.store(0, Ordering::Relaxed);
        entry.role.store(0, Ordering::Relaxed);
    }

    /// The process id recorded in slot `slot`, and whether it is in the caller's PID namespace
    /// (only then does the number name a process here).
    pub(crate) fn slot_pid(&self, slot: usize) -> (u32, bool) {
        let entry = &self.processes[slot];
        let ns = entry.pid_namespace.load(Ordering::Relaxed);
        (
            entry.pid.load(Ordering::Relaxed),
            ns != 0 && ns == crate::os::pid_namespace(),
        )
    }
}
