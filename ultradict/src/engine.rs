//! The shared-memory engine's protocol for one handle: catch up, read, write a record, switch
//! epoch with a full dump, read the updates since a position, wait for a change. It implements
//! the storage seam (`storage.rs`) for the handle layer. Opening, attaching and detaching live
//! in `open.rs`, the lock as a handle holds it in `lock_guard.rs`, status in `status.rs`.
//!
//! Storage steps (append a record, publish, read records since an offset, write and read a
//! dump, lock) each live in one function, so that another backend can take them over.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{RwLock, RwLockWriteGuard};

use crate::control::{Control, HEADER_SIZE, StateWord};
use crate::dump::{AlignedBuf, Dump, DumpId};
use crate::error::{Error, Result};
use crate::liveness::Anchor;
use crate::lock_guard::{LockGuard, LockOptions, Reentrant};
use crate::naming::Place;
use crate::options::{Lifetime, Options};
use crate::schema::{Fingerprint, Schema};
use crate::segment::{self, Segment};
use crate::status::Status;
use crate::storage::{Departure, Position, Since, Storage, View};
use crate::stream;

/// Lock-free catch-up attempts before a reader catches up under the lock instead.
const LOCK_FREE_ATTEMPTS: u32 = 16;

/// Bytes of stream an epoch with a stream of its own gets per byte of its dump's archive (see
/// `stream_len_for`).
const STREAM_PER_ARCHIVE: usize = 2;

/// This handle's place among the dict's attached handles: its anchor (see `liveness`) and the
/// process-table slot the anchor holds, for the fork generation that took them.
pub(crate) struct Membership {
    /// The anchor. A forked child replaces its parent's (closed in the child) with its own.
    pub(crate) anchor: RwLock<Anchor>,
    /// `fork generation << 16 | (slot + 1)` of the slot held in that generation; read on every
    /// lock acquire, so a handle copied into a forked child knows it has no slot there yet.
    pub(crate) tag: AtomicU64,
}

impl Membership {
    pub(crate) fn new(anchor: Anchor, slot: usize) -> Self {
        Membership {
            anchor: RwLock::new(anchor),
            tag: AtomicU64::new(Self::tag_of(crate::os::fork_generation(), slot)),
        }
    }

    pub(crate) fn tag_of(generation: u64, slot: usize) -> u64 {
        (generation << 16) | (slot as u64 + 1)
    }

    /// The slot held in fork generation `generation`, if any.
    #[inline]
    pub(crate) fn slot_in(&self, generation: u64) -> Option<usize> {
        let tag = self.tag.load(Ordering::Acquire);
        (tag >> 16 == generation && tag & 0xffff != 0).then(|| (tag & 0xffff) as usize - 1)
    }
}

/// One open handle's engine.
pub(crate) struct Engine<S: Schema> {
    /// The dict's name and directory.
    pub(crate) place: Place,
    /// Control block followed by the stream (shared with the async bridge, if any).
    pub(crate) segment: Arc<Segment>,
    /// Bytes of the control segment's stream, epoch 0's (the dict's `buffer_size`); later
    /// epochs' streams follow their dumps (see `stream_of`).
    pub(crate) stream_capacity: usize,
    pub(crate) fingerprint: Fingerprint,
    /// This instance of the dict (see `naming::dump`).
    pub(crate) instance: u64,
    pub(crate) view: RwLock<Local<S>>,
    /// The state word the view last reached, packed: a hint that lets a read with news go
    /// straight to the catch-up, without first taking the view for reading. Only a hint: the
    /// view's own position, under its lock, decides. A forked child finds it [`STALE`]
    /// (see [`watch_forks`](Self::watch_forks)).
    ///
    /// [`STALE`]: crate::os::STALE
    pub(crate) reached: AtomicU64,
    /// This handle's registration of `reached` to be made stale in forked children, if any.
    pub(crate) stale_in_children: std::sync::OnceLock<Option<usize>>,
    /// Scratch space for a watcher's `updates_since`, which copies records out without taking
    /// the view for writing (catch-ups use the view's own, see [`Local`]).
    pub(crate) scratch: parking_lot::Mutex<Scratch<S::Update>>,
    /// The re-entrant hold of the writers' lock by one thread of this handle.
    pub(crate) reentrant: Reentrant,
    pub(crate) membership: Membership,
    /// The fork generation of the handle that created the dict (`Lifetime::Creator` removes
    /// it when that handle closes, not when a forked child's copy does).
    pub(crate) creator: Option<u64>,
    pub(crate) lifetime: Lifetime,
    /// Permission bits of the dict's objects.
    pub(crate) mode: u32,
    /// How long this handle waits for a busy dict (its `open_timeout`).
    pub(crate) patience: Duration,
    /// A tool's handle (see `Options::observer`).
    pub(crate) observer: bool,
    pub(crate) detached: AtomicBool,
    /// Catch-ups this handle did (reads that found news, and `apply_update` calls).
    pub(crate) catch_ups: AtomicU64,
    /// The helper thread of async waits, started by the first (again in a forked child).
    #[cfg(feature = "tokio")]
    pub(crate) bridge: parking_lot::Mutex<Option<crate::bridge::Bridge>>,
}

// The engine owns a mapping and process-local state behind locks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine<crate::map::MapSchema<u64, u64>>>();
};

impl<S: Schema> Storage for Engine<S> {
    type Schema = S;

    fn open(options: &Options, initial: Option<&S::Update>) -> Result<Self> {
        Self::open_dict(options, initial)
    }

    fn name(&self) -> &str {
        self.place.name()
    }

    fn lifetime(&self) -> Lifetime {
        self.lifetime
    }

    /// Runs `f` on an up-to-date view. With no news this is one Acquire load, one relaxed load
    /// of this handle's hint of where its view is, and a shared borrow of the view.
    fn read<R>(&self, f: impl FnOnce(&View<S>) -> Result<R>) -> Result<R> {
        let published = self.control().state.load(Ordering::Acquire);
        if self.reached.load(Ordering::Relaxed) == published {
            let view = self.view.read();
            if view.position.0 == u128::from(published) {
                return f(&view);
            }
        }
        self.read_after_catch_up(f)
    }

    /// Brings this handle's view up to the published state (UltraDict's `apply_update`).
    fn catch_up(&self) -> Result<()> {
        self.caught_up().map(drop)
    }

    /// Throws the view away and rebuilds it from the current dump and stream (UltraDict's
    /// `load(force=True)`); without `force`, only catches up.
    fn reload(&self, force: bool) -> Result<()> {
        if force {
            let _guard = self.lock(&LockOptions::default())?;
            let mut view = self.view.write();
            let current = self.control().state();
            let dump = self.map_current_dump(current.epoch)?;
            start_epoch(&mut view, current.epoch, dump);
            return self.catch_up_locked(&mut view);
        }
        self.catch_up()
    }

    /// Commits an update: under the lock, catch up, let `decide` look at the caught-up view
    /// and say whether to commit and what to return, append the record (or, if it does not fit,
    /// write a full dump that includes it), publish, apply locally.
    fn write<R>(
        &self,
        update: S::Update,
        decide: impl FnMut(&View<S>, &S::Update) -> Result<(bool, R)>,
    ) -> Result<R> {
        self.commit::<R, false>(update, decide)
            .map(|(result, _)| result)
    }

    /// [`write`](Self::write), returning what the update displaced: moved out of the overlay
    /// as the record is applied, or looked up before a full dump that includes it.
    fn write_displacing(
        &self,
        update: S::Update,
        mut decide: impl FnMut(&View<S>, &S::Update) -> Result<bool>,
    ) -> Result<Option<S::Displaced>> {
        self.commit::<(), true>(update, |view, update| Ok((decide(view, update)?, ())))
            .map(|((), displaced)| displaced)
    }

    fn write_via_dump(&self, update: Option<&S::Update>) -> Result<()> {
        let _held = self.hold(&LockOptions::default())?;
        let mut view = self.view.write();
        self.catch_up_locked(&mut view)?;
        self.switch_epoch(&mut view, update)
    }

    /// The updates committed since `position`, deserialized, and the position they lead to;
    /// [`Since::Reset`] if a full dump replaced the stream in between (the records are gone).
    fn updates_since(&self, position: Position) -> Result<Since<S::Update>> {
        let position = StateWord::of(position);
        for _ in 0..LOCK_FREE_ATTEMPTS {
            let target = self.control().state();
            if target == position {
                return Ok(Since::Nothing);
            }
            if target.epoch != position.epoch || target.committed < position.committed {
                return Ok(Since::Reset(target.position()));
            }
            // The records live in the epoch's stream, which the view maps once it reached
            // the epoch.
            let view = self.view.read();
            if at(&view).epoch != target.epoch {
                drop(view);
                self.catch_up()?;
                continue;
            }
            let records = (self.stream_of(&view), position.committed, target);
            let mut scratch = self.scratch.lock();
            let updates = self.read_records(records, &mut scratch, false, |updates| {
                std::mem::take(updates)
            })?;
            if let Some(updates) = updates {
                return Ok(Since::Updates(updates, target.position()));
            }
        }
        // Writers kept switching epochs under us: whatever happened, it was a lot.
        Ok(Since::Reset(self.control().state().position()))
    }

    fn published(&self) -> Position {
        self.control().state().position()
    }

    fn position(&self) -> Position {
        self.view.read().position
    }

    /// Sleeps until the published state differs from `seen` or `timeout` passes, on the
    /// shared futex that every publication bumps. Returns whether it changed.
    fn wait_for_change(&self, seen: Position, timeout: Duration) -> bool {
        let seen = StateWord::of(seen);
        let control = self.control();
        // Counted in this handle's own slot, so a sleeper killed in its sleep stops counting
        // when its slot dies.
        let counted = self
            .membership
            .slot_in(crate::os::fork_generation())
            .map(|slot| &control.processes[slot].sleepers);
        if let Some(count) = counted {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let changed = control.published().wait_for_change(seen, timeout);
        if let Some(count) = counted {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        changed
    }

    fn lock(&self, options: &LockOptions) -> Result<LockGuard<'_>> {
        self.acquire(options)
    }

    fn status(&self) -> Status {
        self.report()
    }

    fn check_not_removed(&self) -> Result<()> {
        if self.control().is_removed() {
            return Err(self.removed());
        }
        Ok(())
    }

    fn created_here(&self) -> bool {
        self.creator == Some(crate::os::fork_generation())
    }

    fn detach(&self, remove: impl FnOnce(&Departure) -> bool) -> Result<()> {
        self.leave(remove)
    }

    fn unlink(&self) -> Result<()> {
        self.remove()
    }

    #[cfg(feature = "tokio")]
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        match &mut *self.bridge.lock() {
            Some(bridge) if bridge.runs_here() => bridge.subscribe(),
            slot => slot
                .insert(crate::bridge::Bridge::start(Arc::clone(&self.segment)))
                .subscribe(),
        }
    }
}

/// Resets `view` to the start of `epoch`, whose dump (none for epoch 0) is `dump`.
fn start_epoch<S: Schema>(view: &mut View<S>, epoch: u32, dump: Option<Dump<S::Dump>>) {
    S::reset_overlay(&mut view.overlay, dump.as_ref().map(Dump::root));
    if let Some(old) = std::mem::replace(&mut view.dump, dump) {
        old.retire();
    }
    view.position = StateWord {
        epoch,
        committed: 0,
    }
    .position();
}

/// The state word a view has reached.
fn at<S: Schema>(view: &View<S>) -> StateWord {
    StateWord::of(view.position)
}

impl<S: Schema> Engine<S> {
    /// The engine's write ([`Storage::write`]); with `DISPLACE`, it also returns what the
    /// update displaced (`None` if `decide` did not commit it).
    fn commit<R, const DISPLACE: bool>(
        &self,
        update: S::Update,
        mut decide: impl FnMut(&View<S>, &S::Update) -> Result<(bool, R)>,
    ) -> Result<(R, Option<S::Displaced>)> {
        let _held = self.hold(&LockOptions::default())?;
        let mut view = self.view.write();
        self.catch_up_locked(&mut view)?;
        let (commit, result) = decide(&view, &update)?;
        if !commit {
            return Ok((result, None));
        }
        let displaced = self.append::<DISPLACE>(&mut view, update)?;
        Ok((result, displaced))
    }

    /// An atomic read-modify-write in one hold of the writers' lock: catch up, let `read`
    /// take what it needs from the view, let `make` turn that into the update to commit and
    /// what to return, and commit it. `make` runs with the view let go, so it may read or
    /// write this dict (the writers' lock is re-entrant); what it wrote comes before the
    /// update it returns. One hold and one catch-up check less than a read followed by a
    /// [`write`](Storage::write) under [`hold`](Self::hold).
    pub(crate) fn modify<T, R>(
        &self,
        read: impl FnOnce(&View<S>) -> Result<T>,
        make: impl FnOnce(T) -> (S::Update, R),
    ) -> Result<R> {
        let _held = self.hold(&LockOptions::default())?;
        let mut view = self.view.write();
        self.catch_up_locked(&mut view)?;
        let current = read(&view)?;
        let (update, result) = RwLockWriteGuard::unlocked(&mut view, || make(current));
        // Whatever `make` wrote went through this view (no other handle of the dict writes
        // while this thread holds the lock: `LockedByOtherHandle`), so this is a check of one
        // load, kept so that the record cannot go anywhere but after the published state.
        self.catch_up_locked(&mut view)?;
        self.append::<false>(&mut view, update)?;
        Ok(result)
    }

    /// Commits `update` on `view`, caught up under the writers' lock: appends its record,
    /// publishes and applies it, or, if it does not fit, starts a new epoch with a full dump
    /// that includes it. With `DISPLACE`, returns what the update displaced.
    #[inline(always)]
    fn append<const DISPLACE: bool>(
        &self,
        view: &mut Local<S>,
        update: S::Update,
    ) -> Result<Option<S::Displaced>> {
        let control = self.control();
        let state = at(view);
        let offset = state.committed as usize;
        let (stream, capacity) = self.stream_of(view);
        // A dump's stream is reserved as records need it: a record that does not fit in what
        // this process reserved gets more reserved, up to the stream's end, and is tried again.
        let mut writable = match view.dump.as_ref() {
            Some(dump) if dump.stream().is_some() => dump.writable_to(offset),
            _ => capacity,
        };
        // A record that cannot fit in what is left of the stream goes straight to a full dump:
        // neither archived into the stream until it runs out (a bulk `extend`) nor reserved for.
        let fits = offset + stream::FRAME_LEN + S::record_len_hint(&update) <= capacity;
        let appended = loop {
            if !fits {
                break Err(stream::AppendError::StreamFull);
            }
            // SAFETY: `stream_of` gives the caught-up epoch's stream, which `view` keeps
            // mapped, and up to `writable` its space is reserved; we hold the writers' lock and
            // nobody reads past the committed offset `at`.
            match unsafe { stream::append(stream, writable, offset, state.epoch, &update) } {
                Err(stream::AppendError::StreamFull) if writable < capacity => {
                    let dump = view
                        .dump
                        .as_mut()
                        .expect("only a dump's stream is reserved");
                    match dump.reserve_stream(offset)? {
                        more if more > writable => writable = more,
                        _ => break Err(stream::AppendError::StreamFull),
                    }
                }
                appended => break appended,
            }
        };
        match appended {
            Ok(end) => {
                crate::fault::point("record-written");
                let next = StateWord {
                    epoch: state.epoch,
                    committed: end as u32,
                };
                control.publish(next);
                // Only lock holders change the counter: a load and a store, not a
                // read-modify-write (one atomic RMW less per write, about 5 ns here).
                let records = &control.counters.records;
                records.store(records.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                let View { dump, overlay, .. } = &mut view.view;
                let dump = dump.as_ref().map(Dump::root);
                let displaced = if DISPLACE {
                    Some(S::apply_displacing(dump, overlay, update))
                } else {
                    S::apply(dump, overlay, update);
                    None
                };
                view.position = next.position();
                self.note_reached(view);
                // Committed and applied whatever this says: only a displaced value that failed
                // to deserialize from the dump (see `Schema::apply_displacing`) is an error.
                displaced.transpose().map_err(|e| {
                    let detail = "the write was committed, but the value it replaced failed to \
                                  deserialize";
                    Error::corrupt("dump", format!("{detail}: {e}"))
                })
            }
            Err(stream::AppendError::StreamFull) => {
                let displaced = if DISPLACE {
                    let found = S::displaced(view.dump(), &view.overlay, &update);
                    Some(found.map_err(|e| Error::undeserializable(&e))?)
                } else {
                    None
                };
                self.switch_epoch(view, Some(&update))?;
                Ok(displaced)
            }
            Err(stream::AppendError::Failed(detail)) => Err(Error::Serialize {
                name: self.place.name().to_owned(),
                detail,
            }),
        }
    }

    /// Which dict this handle's dumps belong to.
    fn dump_id(&self) -> DumpId<'_> {
        DumpId {
            place: &self.place,
            instance: self.instance,
            fingerprint: self.fingerprint.hash,
        }
    }

    /// The name of this dict's dump of `epoch`.
    pub(crate) fn dump_object(&self, epoch: u32) -> String {
        self.place.dump(self.instance, epoch)
    }

    pub(crate) fn control(&self) -> &Control {
        // SAFETY: `segment` is a mapped control segment, checked when it was opened, and
        // lives as long as `self`.
        unsafe { Control::from_segment(&self.segment) }
    }

    /// The stream of the epoch `view` is at, and its length: the one after the archive in
    /// the epoch's dump segment if that has one (see `stream_len_for`), else the control
    /// segment's. Valid while `view` keeps that dump.
    fn stream_of(&self, view: &View<S>) -> (*mut u8, usize) {
        match view.dump.as_ref().and_then(Dump::stream) {
            Some(stream) => stream,
            // SAFETY: the control segment is HEADER_SIZE + stream_capacity bytes long.
            None => (
                unsafe { self.segment.as_mut_ptr().add(HEADER_SIZE) },
                self.stream_capacity,
            ),
        }
    }

    /// The read path with news: cold and out of line, so that the path with none stays small.
    #[cold]
    #[inline(never)]
    fn read_after_catch_up<R>(&self, f: impl FnOnce(&View<S>) -> Result<R>) -> Result<R> {
        let generation = crate::os::fork_generation();
        if self.membership.slot_in(generation).is_none() && !self.detached.load(Ordering::Acquire) {
            // A copy in a forked child, reading for the first time there (see `watch_forks`): it
            // takes a slot of its own, without waiting (a read never waits for the gate). The
            // read goes on from what the view has if it cannot: for good if the dict was
            // removed meanwhile (as a removed dict's handles read on); otherwise (the gate
            // busy, a process stopped in it) the next read tries again, since the hint is not
            // left matching.
            let attached = match self.attach_in_fork(generation, Duration::ZERO) {
                Ok(_) | Err(Error::Removed { .. }) => true,
                Err(_) => false,
            };
            let view = RwLockWriteGuard::downgrade(self.caught_up()?);
            if !attached {
                self.reached.store(crate::os::STALE, Ordering::Relaxed);
            }
            return f(&view);
        }
        // Read shared, not under the write hold: `f` may take long (a whole dict's contents),
        // and other threads of this handle read meanwhile.
        let view = RwLockWriteGuard::downgrade(self.caught_up()?);
        f(&view)
    }

    /// Brings this handle's view up to the published state and keeps it, still taken for
    /// writing (downgraded by a read, not let go and taken again).
    fn caught_up(&self) -> Result<RwLockWriteGuard<'_, Local<S>>> {
        let mut view = self.view.write();
        self.catch_up_here(&mut view)?;
        Ok(view)
    }

    /// The catch-up of [`caught_up`](Self::caught_up), on the view it holds for writing.
    fn catch_up_here(&self, view: &mut RwLockWriteGuard<'_, Local<S>>) -> Result<()> {
        // Every catch-up counts under the view's write lock: a load and a store suffice.
        self.catch_ups.store(
            self.catch_ups.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        if self.holds_lock() {
            return self.catch_up_locked(view);
        }
        for _ in 0..crate::fault::lock_free_attempts(LOCK_FREE_ATTEMPTS) {
            match self.try_catch_up(view, false)? {
                Progress::Done => return Ok(()),
                Progress::Retry => std::hint::spin_loop(),
            }
        }
        // Writers kept overtaking us: catch up once with them held off. This always ends.
        self.control()
            .counters
            .locked_catch_ups
            .fetch_add(1, Ordering::Relaxed);
        RwLockWriteGuard::unlocked(view, || -> Result<()> {
            let _held = self.hold(&LockOptions::default())?;
            let mut view = self.view.write();
            self.catch_up_locked(&mut view)
        })
    }

    /// Catches up while holding the writers' lock: nothing moves underneath. A writer's view
    /// is usually current already (it wrote last): that check is inlined into the write.
    #[inline]
    fn catch_up_locked(&self, view: &mut Local<S>) -> Result<()> {
        if self.control().state().position() == view.position {
            self.note_reached(view);
            return Ok(());
        }
        self.catch_up_locked_behind(view)
    }

    /// [`catch_up_locked`](Self::catch_up_locked) for a view that is behind.
    #[inline(never)]
    fn catch_up_locked_behind(&self, view: &mut Local<S>) -> Result<()> {
        loop {
            if let Progress::Done = self.try_catch_up(view, true)? {
                return Ok(());
            }
        }
    }

    /// One attempt at reaching the published state.
    fn try_catch_up(&self, view: &mut Local<S>, locked: bool) -> Result<Progress> {
        let control = self.control();
        let target = control.state();
        if target.position() == view.position {
            self.note_reached(view);
            return Ok(Progress::Done);
        }
        if target.epoch != at(view).epoch {
            let mapped = if locked {
                self.map_current_dump(target.epoch)
            } else {
                self.map_dump(target.epoch)
            };
            match mapped {
                Ok(dump) => {
                    start_epoch(view, target.epoch, dump);
                    return Ok(Progress::Retry);
                }
                // Superseded between our load and the open: look again.
                Err(err) if !locked && segment::is_not_found(&err) => return Ok(Progress::Retry),
                Err(err) => return Err(err),
            }
        }
        let committed = at(view).committed;
        let stream = self.stream_of(view);
        let Local {
            view: View { dump, overlay, .. },
            scratch,
        } = view;
        let dump = dump.as_ref().map(Dump::root);
        // Every record is deserialized before any is applied: a failure changes nothing.
        let records = (stream, committed, target);
        let applied = self.read_records(records, scratch, locked, |updates| {
            for update in updates.drain(..) {
                S::apply(dump, overlay, update);
            }
        })?;
        if applied.is_none() {
            return Ok(Progress::Retry);
        }
        view.position = target.position();
        self.note_reached(view);
        Ok(Progress::Done)
    }

    /// Has every child forked from now on find [`reached`](Self::reached) stale, so that the
    /// first read of the child's copy takes the slow way, which gives the copy a slot of its
    /// own (`read_after_catch_up`): the copy counts as a user from its first read (it used to
    /// from its first lock, and a parent's last close removed the dict under a child that had
    /// only read). The fast read pays nothing for it. Called once the engine has its final
    /// place (the handle's `Arc`); an engine that never calls it attaches at its first lock.
    pub(crate) fn watch_forks(&self) {
        self.stale_in_children
            .get_or_init(|| crate::os::mark_stale_in_children(&self.reached));
    }

    /// Keeps the hint of where the view is (see [`reached`](Self::reached)) current; called
    /// under the view's write lock wherever its position moves to the published state.
    #[inline]
    fn note_reached(&self, view: &View<S>) {
        self.reached.store(at(view).pack(), Ordering::Relaxed);
    }

    /// Reads the records of `target`'s epoch from offset `from` up to `target`, validated and
    /// deserialized, from `stream` (that epoch's, from [`stream_of`](Self::stream_of)), and
    /// hands them to `consume` (in `scratch`'s reused vector, which it leaves empty or takes).
    /// `None` if the range was overwritten while being copied (only possible without the
    /// lock).
    fn read_records<R>(
        &self,
        ((stream, capacity), from, target): ((*mut u8, usize), u32, StateWord),
        scratch: &mut Scratch<S::Update>,
        locked: bool,
        consume: impl FnOnce(&mut Vec<S::Update>) -> R,
    ) -> Result<Option<R>> {
        let (from, to) = (from as usize, target.committed as usize);
        let aligned =
            from.is_multiple_of(stream::RECORD_ALIGN) && to.is_multiple_of(stream::RECORD_ALIGN);
        if to < from || to > capacity || !aligned {
            if locked {
                return Err(Error::corrupt(
                    self.segment.object(),
                    format!("committed offset {to} is not after {from} within the stream"),
                ));
            }
            return Ok(None);
        }
        let Scratch { bytes, updates } = scratch;
        // SAFETY: `copy_out` writes every byte it is given. `from..to` lies within the stream
        // (checked above), which the caller keeps mapped, and starts and ends at offsets
        // aligned for records (checked above; the stream is 16-byte aligned), so it is 8-byte
        // aligned and a multiple of 8 bytes long; the copy uses atomic loads, so
        // bytes a writer changes meanwhile are merely stale, and the epoch re-check below
        // throws such a copy away.
        let bytes = unsafe { bytes.filled_with(to - from, |out| copy_out(stream.add(from), out)) };
        // Under the lock no writer moves: nothing to re-check.
        if !locked && !self.control().published().still_in(target.epoch) {
            return Ok(None);
        }
        updates.clear();
        match stream::decode_into::<S::Update>(bytes, from, target.epoch, updates) {
            Ok(()) => Ok(Some(consume(updates))),
            Err(stream::DecodeError::Overwritten) if !locked => Ok(None),
            Err(stream::DecodeError::Overwritten) => Err(Error::corrupt(
                self.segment.object(),
                "a record of another epoch before the committed offset",
            )),
            Err(stream::DecodeError::Corrupt(detail)) => {
                Err(Error::corrupt(self.segment.object(), detail))
            }
        }
    }

    /// Maps the dump that starts `epoch` (epoch 0 has none).
    fn map_dump(&self, epoch: u32) -> Result<Option<Dump<S::Dump>>> {
        if epoch == 0 {
            return Ok(None);
        }
        let dump = Dump::open(self.dump_id(), epoch)?;
        self.check_dump(&dump)?;
        Ok(Some(dump))
    }

    /// [`map_dump`](Self::map_dump) of the published epoch, under the writers' lock: then no
    /// writer supersedes it meanwhile, and a dump that is not there went with the dict's
    /// removal ([`Error::Removed`]) or was removed by hand ([`Error::Corrupt`]).
    fn map_current_dump(&self, epoch: u32) -> Result<Option<Dump<S::Dump>>> {
        self.map_dump(epoch).map_err(|err| match err {
            err if !segment::is_not_found(&err) => err,
            _ if self.control().is_removed() => self.removed(),
            _ => Error::corrupt(&self.dump_object(epoch), "the current full dump is missing"),
        })
    }

    /// The schema's own checks of a validated dump.
    fn check_dump(&self, dump: &Dump<S::Dump>) -> Result<()> {
        S::check_dump(dump.root(), dump.archive())
            .map_err(|detail| Error::corrupt(dump.object(), detail))
    }

    /// Starts a new epoch from a full dump of the state plus `pending`. All or nothing: until
    /// the new state word is published, nothing shared or local has changed.
    pub(crate) fn switch_epoch(
        &self,
        view: &mut View<S>,
        pending: Option<&S::Update>,
    ) -> Result<()> {
        let control = self.control();
        if control.is_removed() {
            return Err(self.removed());
        }
        let old_epoch = at(view).epoch;
        let next_epoch = old_epoch
            .checked_add(1)
            .ok_or_else(|| Error::corrupt(self.segment.object(), "epoch counter exhausted"))?;
        let archive = self.serialize_dump(view, pending)?;
        let stream_len = self.stream_len_for(archive.bytes().len());
        let dump = Dump::<S::Dump>::create(
            self.dump_id(),
            next_epoch,
            archive.bytes(),
            stream_len,
            self.mode,
        )?;
        let discard = |err| {
            let _ = segment::unlink(&self.dump_object(next_epoch));
            err
        };
        self.check_dump(&dump).map_err(discard)?;
        // A remover marks the dict before it lists its objects: either it lists this dump, or
        // this sees the mark (and takes the dump back).
        if control.is_removed() {
            return Err(discard(self.removed()));
        }
        crate::fault::point("dump-written");
        control
            .counters
            .dump_len
            .store(dump.archive_len() as u64, Ordering::Relaxed);
        control
            .counters
            .stream_len
            .store(stream_len as u64, Ordering::Relaxed);
        control.counters.dumps.fetch_add(1, Ordering::Relaxed);
        control.publish_epoch(StateWord {
            epoch: next_epoch,
            committed: 0,
        });
        crate::fault::point("dump-published");
        // The old dump is superseded: remove its name; mappings elsewhere stay valid.
        if old_epoch > 0 {
            let _ = segment::unlink(&self.dump_object(old_epoch));
        }
        start_epoch(view, next_epoch, Some(dump));
        self.note_reached(view);
        Ok(())
    }

    /// Bytes of stream in the dump segment of an epoch whose archive takes `archive_len`
    /// bytes: none while the archive fits in the dict's `buffer_size` (the epoch then streams
    /// into the control segment, as epoch 0 does), [`STREAM_PER_ARCHIVE`] times the archive
    /// beyond that.
    ///
    /// A full dump costs time in proportion to the archive. A stream twice that large needs
    /// records of at least twice that many bytes before the next dump, so each byte written
    /// pays for at most half a byte dumped, however large the dict: a write's amortized cost
    /// does not grow with the dict. The /dev/shm space it takes follows its records (see
    /// `Dump::reserve_stream`), at most twice the archive. (As large as the archive, a hot
    /// write into a 1M-entry dict cost 2.3x one into a 1k-entry dict, the dump's share being
    /// about 100 ns of it; twice as large, 1.7x: `cargo bench --bench growth`.)
    /// Small dicts keep streaming into the control segment, whose pages every handle has
    /// mapped and touched already: a fresh stream per epoch would cost each of them a page
    /// fault per page written (see the README's growth figures).
    fn stream_len_for(&self, archive_len: usize) -> usize {
        if archive_len <= self.stream_capacity {
            return 0;
        }
        archive_len
            .saturating_mul(STREAM_PER_ARCHIVE)
            .min(crate::options::MAX_BUFFER_SIZE)
            .next_multiple_of(stream::RECORD_ALIGN)
    }

    /// Archives the whole state plus `pending` into an aligned heap buffer (so that its size
    /// is known before any /dev/shm space is taken), within the fixed dump capacity if there
    /// is one.
    fn serialize_dump(
        &self,
        view: &View<S>,
        pending: Option<&S::Update>,
    ) -> Result<crate::dump::AlignedBytes> {
        let snapshot = S::snapshot(view.dump(), &view.overlay, pending).map_err(|e| {
            Error::corrupt(
                self.segment.object(),
                format!("reading the state for a dump: {e}"),
            )
        })?;
        let current = view.dump.as_ref().map_or(0, Dump::archive_len);
        let initial = (2 * (current + at(view).committed as usize))
            .min(crate::schema::MAX_ARCHIVE_LEN)
            .max(S::archive_len_hint(&snapshot).saturating_add(4 << 10))
            .max(64 << 10);
        let archive = crate::schema::archive_to_vec(initial, |out| S::archive(&snapshot, out))
            .map_err(|detail| Error::Serialize {
                name: self.place.name().to_owned(),
                detail,
            })?;
        let fixed = usize::try_from(self.control().full_dump_size).unwrap_or(usize::MAX);
        if fixed > 0 && archive.bytes().len() > fixed.saturating_sub(crate::dump::DUMP_HEADER) {
            return Err(Error::DumpTooSmall {
                name: self.place.name().to_owned(),
                capacity: fixed as u64,
            });
        }
        Ok(archive)
    }

    /// The dict's name and directory.
    pub(crate) fn place(&self) -> &Place {
        &self.place
    }

    /// The options a nested dict of this one, named `name`, is opened with: this dict's
    /// directory and permissions, and `options`' timeouts.
    pub(crate) fn nested_options(&self, options: &Options, name: String) -> Options {
        Options {
            dir: Some(self.place.dir().as_ref().into()),
            mode: Some(self.mode),
            ..options.nested(name)
        }
    }

    /// The error of a handle whose dict was removed.
    pub(crate) fn removed(&self) -> Error {
        Error::Removed {
            name: self.place.name().to_owned(),
        }
    }
}

/// Copies `dst.len()` bytes from shared memory with relaxed atomic loads, writing every byte
/// of `dst`.
///
/// # Safety
/// `src` is 8-byte aligned and valid for reads of `dst.len()` bytes, and `dst.len()` is a
/// multiple of 8 (else its last bytes would be left unwritten).
unsafe fn copy_out(src: *const u8, dst: &mut [MaybeUninit<u8>]) {
    debug_assert_eq!(dst.len() % 8, 0);
    let words = src.cast::<AtomicU64>();
    for (i, chunk) in dst.chunks_exact_mut(8).enumerate() {
        // SAFETY: aligned and in bounds by the caller's contract; AtomicU64 has the layout of
        // u64, and shared memory may be read atomically whatever others do to it.
        let word = unsafe { (*words.add(i)).load(Ordering::Relaxed) };
        for (out, byte) in chunk.iter_mut().zip(word.to_ne_bytes()) {
            out.write(byte);
        }
    }
}

/// What a handle holds under its view lock: the view, and the scratch space its catch-ups copy
/// records into and decode them into. A catch-up holds the view for writing anyway, so its
/// scratch needs no lock of its own (a second lock took two atomic operations per catch-up).
pub(crate) struct Local<S: Schema> {
    pub(crate) view: View<S>,
    scratch: Scratch<S::Update>,
}

impl<S: Schema> Local<S> {
    pub(crate) fn new(view: View<S>) -> Self {
        Local {
            view,
            scratch: Scratch::new(),
        }
    }
}

impl<S: Schema> std::ops::Deref for Local<S> {
    type Target = View<S>;

    fn deref(&self) -> &View<S> {
        &self.view
    }
}

impl<S: Schema> std::ops::DerefMut for Local<S> {
    fn deref_mut(&mut self) -> &mut View<S> {
        &mut self.view
    }
}

/// What a catch-up copies records into and decodes them into, reused from one catch-up to
/// the next.
pub(crate) struct Scratch<U> {
    bytes: AlignedBuf,
    updates: Vec<U>,
}

impl<U> Scratch<U> {
    pub(crate) fn new() -> Self {
        Scratch {
            bytes: AlignedBuf::with_capacity(0),
            updates: Vec::new(),
        }
    }
}

enum Progress {
    Done,
    Retry,
}
