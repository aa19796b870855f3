//! The protocol: attach, catch up, write, dump, switch epoch, detach. Generic over a
//! [`Schema`]; it never knows whether it serves a map or a struct.
//!
//! Storage steps (append a record, publish, read records since an offset, write and read a
//! dump, lock) each live in one function here, so that another backend can take them over.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::RwLock;
use rkyv::rancor;
use rkyv::ser::writer::Buffer;

use crate::control::{
    self, Control, FORMAT_VERSION, HEADER_SIZE, MAGIC, PROCESS_SLOTS, READY, SCHEMA_TEXT_LEN,
    StateWord,
};
use crate::dump::{AlignedBuf, Dump, DumpId};
use crate::error::{Error, Result};
use crate::lock::{self, Acquired, Busy, WaitPolicy};
use crate::lock_guard::{LockGuard, LockOptions, Unlock, Wait};
use crate::naming;
use crate::options::{Create, Lifetime, Options};
use crate::schema::{Data, Fingerprint, Schema};
use crate::segment::{self, Segment};
use crate::status::{LockHolder, Status};
use crate::stream;

/// Lock-free catch-up attempts before a reader catches up under the lock instead.
const LOCK_FREE_ATTEMPTS: u32 = 16;

/// Largest archive a dump may grow to (rkyv's relative pointers are 32-bit).
const MAX_DUMP_LEN: usize = i32::MAX as usize;

/// What a process knows of the shared state: a position in the stream, the dump of its
/// epoch, and the records applied on top of that dump.
pub(crate) struct View<S: Schema> {
    pub(crate) state: StateWord,
    pub(crate) dump: Option<Dump<S::Dump>>,
    pub(crate) overlay: S::Overlay,
}

impl<S: Schema> View<S> {
    /// The root of the current dump, if this epoch has one.
    pub(crate) fn dump(&self) -> Option<&S::Dump> {
        self.dump.as_ref().map(Dump::root)
    }
}

/// One open handle's engine.
pub(crate) struct Engine<S: Schema> {
    name: String,
    /// Control block followed by the stream.
    segment: Segment,
    stream_capacity: usize,
    fingerprint: Fingerprint,
    /// This instance of the dict (see `naming::dump`).
    instance: u64,
    view: RwLock<View<S>>,
    /// Scratch space for copying stream ranges out; guarded by its own lock so a catching-up
    /// thread does not block readers of the view while it copies.
    scratch: parking_lot::Mutex<AlignedBuf>,
    /// Thread id holding the writers' lock through this handle, 0 if none.
    owner_tid: AtomicU32,
    /// How many times the owner entered; touched by the owner thread only.
    depth: AtomicU32,
    slot: usize,
    attached_pid: u32,
    creator: bool,
    lifetime: Lifetime,
    detached: AtomicBool,
    /// Catch-ups this handle did (reads that found news, and `apply_update` calls).
    catch_ups: AtomicU64,
}

// The engine owns a mapping and process-local state behind locks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine<crate::map::MapSchema<u64, u64>>>();
};

impl<S: Schema> Engine<S> {
    /// Creates or attaches to a dict as `options` say. A dict created here starts from
    /// `initial` (as its first full dump, written before the dict is published), or empty.
    pub(crate) fn open(options: &Options, initial: Option<&S::Update>) -> Result<Self> {
        let name = match &options.name {
            Some(name) => name.clone(),
            None => naming::unique(),
        };
        if options.child {
            naming::validate_child(&name)?;
        } else {
            naming::validate(&name)?;
        }
        // Registers the fork handler before any fork can copy this handle.
        crate::os::current_tid();
        let fingerprint = S::fingerprint();
        let deadline = Instant::now() + options.open_timeout;
        loop {
            let attempt = match options.create {
                Create::New => Self::create(&name, options, &fingerprint, initial),
                Create::Open => Self::attach(&name, options, &fingerprint, deadline),
                Create::OpenOrCreate => {
                    match Self::attach(&name, options, &fingerprint, deadline) {
                        Err(Failed(Error::NotFound { .. })) => {
                            match Self::create(&name, options, &fingerprint, initial) {
                                // Another process created it first: attach to theirs.
                                Err(Failed(Error::AlreadyExists { .. })) => continue,
                                other => other,
                            }
                        }
                        other => other,
                    }
                }
            };
            match attempt {
                Err(Dying) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(Dying) => {
                    return Err(Error::NotReady {
                        name,
                        waited: options.open_timeout,
                    });
                }
                Ok(engine) => return Ok(engine),
                Err(Failed(err)) => return Err(err),
            }
        }
    }

    fn create(
        name: &str,
        options: &Options,
        fingerprint: &Fingerprint,
        initial: Option<&S::Update>,
    ) -> Result<Self, Opening> {
        let buffer_size = options.effective_buffer_size()?;
        let full_dump_size = options.effective_full_dump_size()?;
        let lifetime = options.lifetime.unwrap_or_default();
        let object = naming::control(name);
        let segment =
            Segment::create(&object, (HEADER_SIZE + buffer_size) as u64).map_err(|err| {
                if segment::is_already_exists(&err) {
                    Error::AlreadyExists {
                        name: name.to_owned(),
                    }
                } else {
                    err
                }
            })?;
        // Dumps left behind by an earlier dict of this name would be mistaken for ours.
        let stale_dumps = format!("{object}{}dump.", naming::SEPARATOR);
        for stale in naming::segments_of(name)? {
            if stale.starts_with(&stale_dumps) {
                let _ = segment::unlink(&stale);
            }
        }
        let pid = crate::os::current_pid();
        let entry = control::process_entry(pid, crate::os::current_process_start_time());
        // SAFETY: the segment was just created by this process and is HEADER_SIZE + buffer
        // bytes long; until `ready` is published nobody else reads its identity fields, and
        // the kernel zero-filled it.
        unsafe {
            let raw = segment.as_mut_ptr().cast::<Control>();
            (*raw).magic = MAGIC;
            (*raw).format_version = FORMAT_VERSION;
            (*raw).header_size = HEADER_SIZE as u64;
            (*raw).buffer_size = buffer_size as u64;
            (*raw).full_dump_size = full_dump_size;
            (*raw).lifetime = lifetime.to_raw();
            (*raw).creator_pid = pid;
            (*raw).fingerprint = fingerprint.hash;
            (*raw).instance = naming::random_u64();
            let text = fingerprint.description.as_bytes();
            let len = text.len().min(SCHEMA_TEXT_LEN);
            (&mut (*raw).schema_text)[..len].copy_from_slice(&text[..len]);
            (*raw).schema_text_len = len as u32;
        }
        // SAFETY: a mapped control segment of the right size.
        let control = unsafe { Control::from_segment(&segment) };
        control.attached.0.store(1, Ordering::Relaxed);
        control.processes[0].store(entry, Ordering::Relaxed);
        let engine = Self::assemble(
            name,
            segment,
            fingerprint.clone(),
            0,
            pid,
            true,
            lifetime,
            buffer_size,
        );
        if let Some(initial) = initial {
            // Nobody can attach before `ready`, so no lock is needed yet.
            let mut view = engine.view.write();
            if let Err(err) = engine.switch_epoch(&mut view, Some(initial)) {
                drop(view);
                engine.detached.store(true, Ordering::Relaxed);
                let _ = segment::unlink(&object);
                return Err(err.into());
            }
        }
        engine.control().ready.store(READY, Ordering::Release);
        Ok(engine)
    }

    fn attach(
        name: &str,
        options: &Options,
        fingerprint: &Fingerprint,
        deadline: Instant,
    ) -> Result<Self, Opening> {
        let object = naming::control(name);
        let segment = Self::open_ready(name, &object, options, deadline)?;
        // SAFETY: `open_ready` checked the size and the ready flag.
        let control = unsafe { Control::from_segment(&segment) };
        if control.format_version != FORMAT_VERSION {
            return Err(Error::VersionMismatch {
                segment: object,
                found: control.format_version,
                expected: FORMAT_VERSION,
            }
            .into());
        }
        let buffer_size = usize::try_from(control.buffer_size).unwrap_or(usize::MAX);
        if control.header_size != HEADER_SIZE as u64
            || Some(segment.len()) != HEADER_SIZE.checked_add(buffer_size)
            || buffer_size % 16 != 0
            || buffer_size > crate::options::MAX_BUFFER_SIZE
        {
            return Err(Error::corrupt(&object, "header and segment sizes disagree").into());
        }
        if control.fingerprint != fingerprint.hash {
            return Err(Error::SchemaMismatch {
                name: name.to_owned(),
                expected: fingerprint.description.clone(),
                found: control.schema_text(),
            }
            .into());
        }
        let lifetime = Lifetime::from_raw(control.lifetime)
            .ok_or_else(|| Error::corrupt(&object, "unknown lifetime"))?;
        check_parameter(
            name,
            "buffer_size",
            options
                .buffer_size
                .map(|_| options.effective_buffer_size())
                .transpose()?
                .map(|s| s as u64),
            control.buffer_size,
        )?;
        check_parameter(
            name,
            "full_dump_size",
            options
                .full_dump_size
                .map(|_| options.effective_full_dump_size())
                .transpose()?,
            control.full_dump_size,
        )?;
        if let Some(requested) = options.lifetime
            && requested != lifetime
        {
            return Err(Error::ParameterMismatch {
                name: name.to_owned(),
                parameter: "lifetime",
                requested: format!("{requested:?}"),
                actual: format!("{lifetime:?}"),
            }
            .into());
        }
        // Count ourselves in, unless the last handle is removing the dict right now.
        let mut attached = control.attached.load(Ordering::Acquire);
        loop {
            // Under LastClose, 0 means the last handle is removing the dict right now. Other
            // lifetimes legitimately drop to 0 handles and live on.
            if attached == 0 && lifetime == Lifetime::LastClose {
                return Err(Dying);
            }
            match control.attached.0.compare_exchange_weak(
                attached,
                attached + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => attached = now,
            }
        }
        reap_dead_processes(control);
        let pid = crate::os::current_pid();
        let entry = control::process_entry(pid, crate::os::current_process_start_time());
        let slot = control.processes.iter().position(|slot| {
            slot.compare_exchange(0, entry, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        let Some(slot) = slot else {
            control.attached.0.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::TooManyHandles {
                name: name.to_owned(),
                limit: PROCESS_SLOTS,
            }
            .into());
        };
        let engine = Self::assemble(
            name,
            segment,
            fingerprint.clone(),
            slot,
            pid,
            false,
            lifetime,
            buffer_size,
        );
        engine.catch_up()?;
        Ok(engine)
    }

    /// Opens the control segment and waits (bounded) until its creator published it.
    fn open_ready(
        name: &str,
        object: &str,
        options: &Options,
        deadline: Instant,
    ) -> Result<Segment, Opening> {
        loop {
            let segment = match Segment::open(object, true) {
                Err(err) if segment::is_not_found(&err) => {
                    return Err(Error::NotFound {
                        name: name.to_owned(),
                    }
                    .into());
                }
                other => other?,
            };
            let magic_seen = segment.len() >= 8 && {
                // SAFETY: at least 8 bytes are mapped; the magic is written once, before
                // `ready`, and a torn read only delays the decision to the next round.
                let magic = unsafe { std::ptr::read_volatile(segment.as_ptr().cast::<[u8; 8]>()) };
                if magic != MAGIC && magic != [0; 8] {
                    return Err(Error::Foreign {
                        segment: object.to_owned(),
                        reason: "its first bytes are not ultradict's magic".into(),
                    }
                    .into());
                }
                magic == MAGIC
            };
            if segment.len() >= HEADER_SIZE {
                // SAFETY: a mapped control segment of at least HEADER_SIZE bytes.
                let control = unsafe { Control::from_segment(&segment) };
                if control.ready.load(Ordering::Acquire) == READY {
                    return Ok(segment);
                }
            }
            if Instant::now() >= deadline {
                if segment.len() > 0 && segment.len() < HEADER_SIZE {
                    return Err(Error::Foreign {
                        segment: object.to_owned(),
                        reason: format!("{} bytes, smaller than a control block", segment.len()),
                    }
                    .into());
                }
                if !magic_seen && segment.len() > 0 {
                    return Err(Error::Foreign {
                        segment: object.to_owned(),
                        reason: "no ultradict magic".into(),
                    }
                    .into());
                }
                return Err(Error::NotReady {
                    name: name.to_owned(),
                    waited: options.open_timeout,
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        name: &str,
        segment: Segment,
        fingerprint: Fingerprint,
        slot: usize,
        attached_pid: u32,
        creator: bool,
        lifetime: Lifetime,
        buffer_size: usize,
    ) -> Self {
        // SAFETY: `segment` is a mapped control segment whose identity fields are written (by
        // us before `ready`, or by the creator and seen through `ready`).
        let instance = unsafe { Control::from_segment(&segment) }.instance;
        Engine {
            name: name.to_owned(),
            segment,
            stream_capacity: buffer_size,
            fingerprint,
            instance,
            view: RwLock::new(View {
                state: StateWord {
                    epoch: 0,
                    committed: 0,
                },
                dump: None,
                overlay: S::overlay_for(None),
            }),
            scratch: parking_lot::Mutex::new(AlignedBuf::with_capacity(0)),
            owner_tid: AtomicU32::new(0),
            depth: AtomicU32::new(0),
            slot,
            attached_pid,
            creator,
            lifetime,
            detached: AtomicBool::new(false),
            catch_ups: AtomicU64::new(0),
        }
    }

    /// The dict's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Which dict this handle's dumps belong to.
    fn dump_id(&self) -> DumpId<'_> {
        DumpId {
            name: &self.name,
            instance: self.instance,
            fingerprint: self.fingerprint.hash,
        }
    }

    /// The name of this dict's dump of `epoch`.
    fn dump_object(&self, epoch: u32) -> String {
        naming::dump(&self.name, self.instance, epoch)
    }

    pub(crate) fn control(&self) -> &Control {
        // SAFETY: `segment` is a mapped control segment, checked when it was opened, and
        // lives as long as `self`.
        unsafe { Control::from_segment(&self.segment) }
    }

    fn stream_ptr(&self) -> *mut u8 {
        // SAFETY: the control segment is HEADER_SIZE + stream_capacity bytes long.
        unsafe { self.segment.as_mut_ptr().add(HEADER_SIZE) }
    }

    // ---------------------------------------------------------------- reading

    /// Runs `f` on an up-to-date view. With no news this is one Acquire load and a shared
    /// borrow of the view.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&View<S>) -> R) -> Result<R> {
        let published = self.control().state.load(Ordering::Acquire);
        {
            let view = self.view.read();
            if view.state.pack() == published {
                return Ok(f(&view));
            }
        }
        self.catch_up()?;
        Ok(f(&self.view.read()))
    }

    /// Brings this handle's view up to the published state (UltraDict's `apply_update`).
    pub(crate) fn catch_up(&self) -> Result<()> {
        self.catch_ups.fetch_add(1, Ordering::Relaxed);
        let mut view = self.view.write();
        if self.holds_lock() {
            return self.catch_up_locked(&mut view);
        }
        for _ in 0..LOCK_FREE_ATTEMPTS {
            match self.try_catch_up(&mut view, false)? {
                Progress::Done => return Ok(()),
                Progress::Retry => std::hint::spin_loop(),
            }
        }
        // Writers kept overtaking us: catch up once with them held off. This always ends.
        drop(view);
        self.control()
            .counters
            .locked_catch_ups
            .fetch_add(1, Ordering::Relaxed);
        let _guard = self.lock(&LockOptions::default())?;
        let mut view = self.view.write();
        self.catch_up_locked(&mut view)
    }

    /// Catches up while holding the writers' lock: nothing moves underneath.
    fn catch_up_locked(&self, view: &mut View<S>) -> Result<()> {
        loop {
            if let Progress::Done = self.try_catch_up(view, true)? {
                return Ok(());
            }
        }
    }

    /// One attempt at reaching the published state.
    fn try_catch_up(&self, view: &mut View<S>, locked: bool) -> Result<Progress> {
        let control = self.control();
        let target = control.state();
        if target == view.state {
            return Ok(Progress::Done);
        }
        if target.epoch != view.state.epoch {
            match self.map_dump(target.epoch) {
                Ok(dump) => {
                    view.overlay = S::overlay_for(dump.as_ref().map(Dump::root));
                    view.dump = dump;
                    view.state = StateWord {
                        epoch: target.epoch,
                        committed: 0,
                    };
                    return Ok(Progress::Retry);
                }
                // Superseded between our load and the open: look again.
                Err(err) if !locked && segment::is_not_found(&err) => return Ok(Progress::Retry),
                Err(err) => return Err(err),
            }
        }
        let View {
            dump,
            overlay,
            state,
        } = view;
        let dump = dump.as_ref().map(Dump::root);
        // Deserialize every record before applying any: a failure changes nothing.
        let mut updates = Vec::new();
        let progress = self.read_records(state.committed, target, locked, |stored| {
            let update = crate::schema::deserialize::<S::Update>(stored).map_err(|e| {
                Error::corrupt(
                    self.segment.object(),
                    format!("record could not be read: {e}"),
                )
            })?;
            updates.push(update);
            Ok(())
        })?;
        if let Progress::Done = progress {
            for update in updates {
                S::apply(dump, overlay, update);
            }
            *state = target;
        }
        Ok(progress)
    }

    /// Reads the records of `target`'s epoch from offset `from` up to `target`, validates all
    /// of them, then hands each to `visit` in order. `Retry` if the range was overwritten
    /// while being copied (only possible without the lock).
    fn read_records(
        &self,
        from: u32,
        target: StateWord,
        locked: bool,
        mut visit: impl FnMut(&<S::Update as Data>::Stored) -> Result<()>,
    ) -> Result<Progress> {
        let (from, to) = (from as usize, target.committed as usize);
        if to < from || to > self.stream_capacity || !to.is_multiple_of(stream::RECORD_ALIGN) {
            if locked {
                return Err(Error::corrupt(
                    self.segment.object(),
                    format!("committed offset {to} is not after {from} within the stream"),
                ));
            }
            return Ok(Progress::Retry);
        }
        let mut scratch = self.scratch.lock();
        let bytes = scratch.zeroed_mut(to - from);
        // SAFETY: `from..to` lies within the stream (checked above); the copy uses atomic
        // loads, so bytes a new epoch's writer changes meanwhile are merely stale, and the
        // epoch re-check below throws such a copy away.
        unsafe { copy_out(self.stream_ptr().add(from), bytes) };
        fence(Ordering::Acquire);
        if self.control().state().epoch != target.epoch {
            return Ok(Progress::Retry);
        }
        // Validate every record before using any, so a bad record changes nothing.
        let mut archived = Vec::new();
        for record in stream::records(bytes, from, target.epoch) {
            let record = match record {
                Ok(record) => record,
                Err(stream::FrameError::WrongEpoch { .. }) if !locked => {
                    return Ok(Progress::Retry);
                }
                Err(err) => return Err(Error::corrupt(self.segment.object(), err.to_string())),
            };
            let update = rkyv::access::<<S::Update as Data>::Stored, rancor::Error>(record.archive)
                .map_err(|e| {
                    Error::corrupt(
                        self.segment.object(),
                        format!("record failed validation: {e}"),
                    )
                })?;
            archived.push(update);
        }
        for update in archived {
            visit(update)?;
        }
        Ok(Progress::Done)
    }

    /// The updates committed since `position`, deserialized, and the position they lead to;
    /// [`Since::Reset`] if a full dump replaced the stream in between (the records are gone).
    pub(crate) fn updates_since(&self, position: StateWord) -> Result<Since<S::Update>> {
        for _ in 0..LOCK_FREE_ATTEMPTS {
            let target = self.control().state();
            if target == position {
                return Ok(Since::Nothing);
            }
            if target.epoch != position.epoch || target.committed < position.committed {
                return Ok(Since::Reset(target));
            }
            let mut updates = Vec::new();
            let progress = self.read_records(position.committed, target, false, |stored| {
                let update = crate::schema::deserialize::<S::Update>(stored)
                    .map_err(|e| Error::corrupt(self.segment.object(), format!("record: {e}")))?;
                updates.push(update);
                Ok(())
            })?;
            if let Progress::Done = progress {
                return Ok(Since::Updates(updates, target));
            }
        }
        // Writers kept switching epochs under us: whatever happened, it was a lot.
        Ok(Since::Reset(self.control().state()))
    }

    /// The published position.
    pub(crate) fn published(&self) -> StateWord {
        self.control().state()
    }

    /// Sleeps until the published state differs from `seen` or `timeout` passes, on the
    /// shared futex that every publication bumps. Returns whether it changed.
    pub(crate) fn wait_for_change_since(&self, seen: StateWord, timeout: Duration) -> bool {
        let changes = &self.control().changes;
        let deadline = Instant::now() + timeout;
        changes.waiters.fetch_add(1, Ordering::SeqCst);
        let changed = loop {
            let sequence = changes.sequence.load(Ordering::SeqCst);
            if self.control().state() != seen {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            crate::os::futex_wait(&changes.sequence, sequence, left);
        };
        changes.waiters.fetch_sub(1, Ordering::SeqCst);
        changed
    }

    /// The position this handle's view has reached.
    pub(crate) fn view_position(&self) -> StateWord {
        self.view.read().state
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

    /// The schema's own checks of a validated dump.
    fn check_dump(&self, dump: &Dump<S::Dump>) -> Result<()> {
        S::check_dump(dump.root(), dump.archive())
            .map_err(|detail| Error::corrupt(dump.object(), detail))
    }

    /// Throws the view away and rebuilds it from the current dump and stream (UltraDict's
    /// `load(force=True)`); without `force`, only catches up.
    pub(crate) fn reload(&self, force: bool) -> Result<()> {
        if force {
            let _guard = self.lock(&LockOptions::default())?;
            let mut view = self.view.write();
            let current = self.control().state();
            let dump = self.map_dump(current.epoch)?;
            view.overlay = S::overlay_for(dump.as_ref().map(Dump::root));
            view.dump = dump;
            view.state = StateWord {
                epoch: current.epoch,
                committed: 0,
            };
            return self.catch_up_locked(&mut view);
        }
        self.catch_up()
    }

    // ---------------------------------------------------------------- writing

    /// Commits an update: under the lock, catch up, let `make` look at the caught-up view and
    /// decide the update (or none) and a result, append the record (or, if it does not fit,
    /// write a full dump that includes it), publish, apply locally.
    pub(crate) fn write<R>(
        &self,
        make: impl FnOnce(&View<S>) -> Result<(Option<S::Update>, R)>,
    ) -> Result<R> {
        let _guard = self.lock(&LockOptions::default())?;
        let mut view = self.view.write();
        self.catch_up_locked(&mut view)?;
        let (update, result) = make(&view)?;
        let Some(update) = update else {
            return Ok(result);
        };
        let control = self.control();
        let at = view.state.committed as usize;
        // SAFETY: the stream is `stream_capacity` bytes after the 16-aligned header; we hold
        // the writers' lock and nobody reads past the committed offset `at`.
        let appended = unsafe {
            stream::append(
                self.stream_ptr(),
                self.stream_capacity,
                at,
                view.state.epoch,
                &update,
            )
        };
        match appended {
            Ok(end) => {
                crate::fault::point("record-written");
                let next = StateWord {
                    epoch: view.state.epoch,
                    committed: end as u32,
                };
                control.publish(next);
                control.counters.records.fetch_add(1, Ordering::Relaxed);
                let View {
                    dump,
                    overlay,
                    state,
                } = &mut *view;
                S::apply(dump.as_ref().map(Dump::root), overlay, update);
                *state = next;
            }
            Err(stream::StreamFull) => self.switch_epoch(&mut view, Some(&update))?,
        }
        Ok(result)
    }

    /// Writes a full dump now (UltraDict's `dump()`): the stream starts empty again.
    pub(crate) fn dump(&self) -> Result<()> {
        let _guard = self.lock(&LockOptions::default())?;
        let mut view = self.view.write();
        self.catch_up_locked(&mut view)?;
        self.switch_epoch(&mut view, None)
    }

    /// Commits `update` through a full dump rather than the stream (for updates that make
    /// most of the state obsolete, such as clearing it).
    pub(crate) fn write_via_dump(&self, update: &S::Update) -> Result<()> {
        let _guard = self.lock(&LockOptions::default())?;
        let mut view = self.view.write();
        self.catch_up_locked(&mut view)?;
        self.switch_epoch(&mut view, Some(update))
    }

    /// Starts a new epoch from a full dump of the state plus `pending`. All or nothing: until
    /// the new state word is published, nothing shared or local has changed.
    fn switch_epoch(&self, view: &mut View<S>, pending: Option<&S::Update>) -> Result<()> {
        let control = self.control();
        let old_epoch = view.state.epoch;
        let next_epoch = old_epoch
            .checked_add(1)
            .ok_or_else(|| Error::corrupt(self.segment.object(), "epoch counter exhausted"))?;
        let archive = self.serialize_dump(view, pending)?;
        // SAFETY: `serialize_dump` returns the buffer and the length it initialized.
        let bytes = unsafe { archive.0.initialized(archive.1) };
        let dump = Dump::<S::Dump>::create(self.dump_id(), next_epoch, bytes)?;
        self.check_dump(&dump).inspect_err(|_| {
            let _ = segment::unlink(&self.dump_object(next_epoch));
        })?;
        crate::fault::point("dump-written");
        control
            .counters
            .dump_len
            .store(dump.archive_len() as u64, Ordering::Relaxed);
        control.counters.dumps.fetch_add(1, Ordering::Relaxed);
        control.publish(StateWord {
            epoch: next_epoch,
            committed: 0,
        });
        crate::fault::point("dump-published");
        // The old dump is superseded: remove its name; mappings elsewhere stay valid.
        if old_epoch > 0 {
            let _ = segment::unlink(&self.dump_object(old_epoch));
        }
        view.overlay = S::overlay_for(Some(dump.root()));
        view.dump = Some(dump);
        view.state = StateWord {
            epoch: next_epoch,
            committed: 0,
        };
        Ok(())
    }

    /// Archives the whole state plus `pending` into a heap buffer, growing it as needed,
    /// within the fixed dump capacity if there is one.
    fn serialize_dump(
        &self,
        view: &View<S>,
        pending: Option<&S::Update>,
    ) -> Result<(AlignedBuf, usize)> {
        let fixed = usize::try_from(self.control().full_dump_size).unwrap_or(usize::MAX);
        let current = view.dump.as_ref().map_or(0, Dump::archive_len);
        let mut capacity = (2 * (current + view.state.committed as usize)).max(64 << 10);
        if fixed > 0 {
            capacity = capacity.min(fixed.saturating_sub(crate::dump::DUMP_HEADER));
        }
        let snapshot = S::snapshot(view.dump(), &view.overlay, pending).map_err(|e| {
            Error::corrupt(
                self.segment.object(),
                format!("reading the state for a dump: {e}"),
            )
        })?;
        loop {
            let mut buf = AlignedBuf::with_capacity(capacity);
            match S::archive(&snapshot, Buffer::from(buf.as_uninit_mut())) {
                Ok(len) => return Ok((buf, len)),
                Err(err) => {
                    if fixed > 0 && capacity >= fixed.saturating_sub(crate::dump::DUMP_HEADER) {
                        return Err(Error::DumpTooSmall {
                            name: self.name.clone(),
                            capacity: fixed as u64,
                        });
                    }
                    if capacity >= MAX_DUMP_LEN {
                        return Err(Error::Serialize {
                            name: self.name.clone(),
                            detail: err.to_string(),
                        });
                    }
                    capacity = capacity.saturating_mul(2).min(MAX_DUMP_LEN);
                    if fixed > 0 {
                        capacity = capacity.min(fixed.saturating_sub(crate::dump::DUMP_HEADER));
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- the lock

    fn holds_lock(&self) -> bool {
        self.owner_tid.load(Ordering::Relaxed) == crate::os::current_tid()
    }

    /// Takes the writers' lock for the calling thread (re-entrantly).
    pub(crate) fn lock(&self, options: &LockOptions) -> Result<LockGuard<'_>> {
        let tid = crate::os::current_tid();
        if self.owner_tid.load(Ordering::Relaxed) == tid {
            self.depth
                .store(self.depth.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            return Ok(LockGuard::new(self));
        }
        let fields = &self.control().lock.0;
        if lock::held_by_caller(fields) {
            return Err(Error::LockedByOtherHandle {
                name: self.name.clone(),
            });
        }
        // Only a timed wait needs the clock; an uncontended acquire should not pay for it.
        let started = matches!(options.wait, Wait::Timeout(_)).then(Instant::now);
        let policy = WaitPolicy {
            spins: options.spins,
            max_sleep: options.sleep_time,
        };
        let acquired = match options.wait {
            Wait::NonBlocking => lock::try_acquire(fields, tid),
            Wait::Forever => lock::acquire(fields, tid, policy, None),
            Wait::Timeout(timeout) => lock::acquire(
                fields,
                tid,
                policy,
                started.map(|started| started + timeout),
            ),
        };
        match acquired {
            Ok(how) => {
                self.owner_tid.store(tid, Ordering::Relaxed);
                self.depth.store(1, Ordering::Relaxed);
                let guard = LockGuard::new(self);
                if let Acquired::FromDead { .. } = how {
                    self.tidy_after_dead_holder();
                }
                crate::fault::point("locked");
                Ok(guard)
            }
            Err(Busy::Held { holder_pid }) => Err(match options.wait {
                Wait::NonBlocking => Error::WouldBlock {
                    name: self.name.clone(),
                    holder_pid,
                },
                _ => Error::LockTimeout {
                    name: self.name.clone(),
                    holder_pid,
                    waited: started.map(|started| started.elapsed()).unwrap_or_default(),
                },
            }),
        }
    }

    /// A holder died: whatever it left half done is garbage. Its unpublished records are
    /// ignored by construction; remove the dump segments it may have left behind (an
    /// unpublished next dump, or a superseded one it had not unlinked yet).
    fn tidy_after_dead_holder(&self) {
        let epoch = self.control().state().epoch;
        let _ = segment::unlink(&self.dump_object(epoch.wrapping_add(1)));
        if epoch > 1 {
            let _ = segment::unlink(&self.dump_object(epoch - 1));
        }
    }
}

impl<S: Schema> Unlock for Engine<S> {
    fn unlock(&self) {
        // A guard copied into a forked child (or any thread but the owner) releases nothing.
        if self.owner_tid.load(Ordering::Relaxed) != crate::os::current_tid() {
            return;
        }
        // Only the owner thread touches `depth`: a load and a store, no atomic RMW.
        let depth = self.depth.load(Ordering::Relaxed) - 1;
        self.depth.store(depth, Ordering::Relaxed);
        if depth == 0 {
            self.owner_tid.store(0, Ordering::Relaxed);
            lock::release(&self.control().lock.0, crate::os::current_tid());
        }
    }
}

impl<S: Schema> Engine<S> {
    // ---------------------------------------------------------------- status & lifetime

    pub(crate) fn status(&self) -> Status {
        let control = self.control();
        let state = control.state();
        let holder_tid = lock::holder_tid(&control.lock.0);
        let lock_holder = (holder_tid != 0).then(|| {
            lock::note_holder_seen(&control.lock.0);
            let since = control.lock.held_since_ns.load(Ordering::Relaxed);
            LockHolder {
                pid: lock::holder_pid(&control.lock.0),
                since: (since != 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(since)),
            }
        });
        let last_dead = control.lock.last_dead_pid.load(Ordering::Relaxed);
        Status {
            name: self.name.clone(),
            schema: control.schema_text(),
            control_segment: self.segment.object().to_owned(),
            dump_segment: (state.epoch > 0).then(|| self.dump_object(state.epoch)),
            buffer_size: self.stream_capacity,
            buffer_used: state.committed as usize,
            full_dump_size: match control.full_dump_size {
                0 => None,
                size => Some(size),
            },
            epoch: state.epoch,
            committed_offset: state.committed as usize,
            records: control.counters.records.load(Ordering::Relaxed),
            dumps: control.counters.dumps.load(Ordering::Relaxed),
            dump_bytes: control.counters.dump_len.load(Ordering::Relaxed),
            lifetime: self.lifetime,
            attached_pids: control.attached_pids(),
            lock_holder,
            lock_recoveries: control.lock.recoveries.load(Ordering::Relaxed),
            last_dead_holder: (last_dead != 0).then_some(last_dead),
            locked_catch_ups: control.counters.locked_catch_ups.load(Ordering::Relaxed),
            catch_ups: self.catch_ups.load(Ordering::Relaxed),
        }
    }

    /// Removes every segment of this dict from /dev/shm now. Open handles keep working on
    /// their mappings; new opens create a new dict.
    pub(crate) fn unlink(&self) -> Result<()> {
        unlink_by_name(&self.name)
    }

    /// Leaves the dict: frees this handle's process slot and, if its lifetime says so,
    /// removes the dict. Runs once; later calls do nothing.
    pub(crate) fn detach(&self) -> Result<()> {
        if self.detached.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // A forked child's copy of a handle never attached: leave the parent's entry alone.
        if crate::os::current_pid() != self.attached_pid {
            return Ok(());
        }
        let control = self.control();
        control.processes[self.slot].store(0, Ordering::Release);
        let last = control.attached.0.fetch_sub(1, Ordering::AcqRel) == 1;
        let remove = match self.lifetime {
            Lifetime::LastClose => last,
            Lifetime::Creator => self.creator,
            Lifetime::Persistent => false,
        };
        if !remove {
            return Ok(());
        }
        if self.name_is_ours() {
            return self.unlink();
        }
        // The dict was removed while we used it, and a new one may have the name now: take
        // away only what this instance left (its dumps), never the successor's segments.
        let own_dumps = self.dump_object(0);
        let own_dumps = &own_dumps[..own_dumps.len() - 1];
        for object in naming::segments_of(&self.name)? {
            if object.starts_with(own_dumps) {
                segment::unlink(&object)?;
            }
        }
        Ok(())
    }

    /// Whether the control segment under this dict's name is still this instance's.
    fn name_is_ours(&self) -> bool {
        match Segment::open(&naming::control(&self.name), false) {
            Ok(segment) if segment.len() >= HEADER_SIZE => {
                // SAFETY: a mapped segment of at least HEADER_SIZE bytes; any bytes are a
                // valid `Control`, and only its identity fields are read.
                let control = unsafe { Control::from_segment(&segment) };
                control.magic == MAGIC && control.instance == self.instance
            }
            _ => false,
        }
    }
}

impl<S: Schema> Drop for Engine<S> {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// Removes every segment of dict `name` (a root's or a nested child's name, as a handle
/// holds it) and of its nested children.
pub(crate) fn unlink_by_name(name: &str) -> Result<()> {
    crate::register::unlink_tree(name)
}

/// Frees the process-table slots of processes that died without detaching.
fn reap_dead_processes(control: &Control) {
    for slot in &control.processes {
        let entry = slot.load(Ordering::Acquire);
        if entry != 0
            && !control::entry_alive(entry)
            && slot
                .compare_exchange(entry, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            control.attached.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn check_parameter(
    name: &str,
    parameter: &'static str,
    requested: Option<u64>,
    actual: u64,
) -> Result<()> {
    match requested {
        Some(requested) if requested != actual => Err(Error::ParameterMismatch {
            name: name.to_owned(),
            parameter,
            requested: requested.to_string(),
            actual: if actual == 0 {
                "unset".into()
            } else {
                actual.to_string()
            },
        }),
        _ => Ok(()),
    }
}

/// Copies `dst.len()` bytes (a multiple of 8) from shared memory with relaxed atomic loads.
///
/// # Safety
/// `src` is 8-byte aligned and valid for reads of `dst.len()` bytes.
unsafe fn copy_out(src: *const u8, dst: &mut [u8]) {
    debug_assert_eq!(dst.len() % 8, 0);
    let words = src.cast::<AtomicU64>();
    for (i, chunk) in dst.chunks_exact_mut(8).enumerate() {
        // SAFETY: aligned and in bounds by the caller's contract; AtomicU64 has the layout of
        // u64, and shared memory may be read atomically whatever others do to it.
        let word = unsafe { (*words.add(i)).load(Ordering::Relaxed) };
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
}

enum Progress {
    Done,
    Retry,
}

/// What happened since a position in the stream.
pub(crate) enum Since<U> {
    /// Nothing was published.
    Nothing,
    /// These updates, in order, lead to this position.
    Updates(Vec<U>, StateWord),
    /// A full dump started a new epoch: the updates in between are not known one by one.
    Reset(StateWord),
}

/// Why one open attempt did not produce an engine.
enum Opening {
    /// The last handle is removing the dict: try again shortly.
    Dying,
    Failed(Error),
}
use Opening::{Dying, Failed};

impl From<Error> for Opening {
    fn from(err: Error) -> Self {
        Failed(err)
    }
}
