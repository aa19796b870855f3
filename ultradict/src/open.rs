//! A handle's life in its dict: create, attach, re-attach in a forked child, detach.
//!
//! - **Create**: the creator builds the control segment (and a derived state's first dump)
//!   under a private name, then renames it to the dict's name in one step that fails if the
//!   name is taken. No half-made dict is ever visible, so an opener never waits for a creator
//!   and a creator killed half way leaves nothing that blocks the name.
//! - **Attach**: under the dict's gate (see `liveness`), check that no removal began, then
//!   take a process-table slot. A detacher decides "am I the last?" under the same gate, so
//!   nobody joins a dict that is being removed.
//! - **Detach**: under the gate, give the slot back and, if the lifetime says so, remove the
//!   dict (see `removal`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::control::{Control, HEADER_SIZE, Identity};
use crate::engine::{Engine, Local, Membership, Scratch};
use crate::error::{Error, Result};
use crate::liveness::Anchor;
use crate::lock_guard::Reentrant;
use crate::naming::{self, Place};
use crate::options::{Create, Lifetime, Options};
use crate::removal;
use crate::schema::{Fingerprint, Schema};
use crate::segment::{self, Segment};
use crate::storage::{Departure, Storage, View};

/// Why one open attempt did not produce an engine.
enum Opening {
    /// The dict is busy (being removed, or another process is joining or leaving it), or
    /// another creator won a race: look again shortly.
    Retry,
    Failed(Error),
}
use Opening::{Failed, Retry};

impl From<Error> for Opening {
    fn from(err: Error) -> Self {
        Failed(err)
    }
}

impl<S: Schema> Engine<S> {
    /// Creates or attaches to a dict as `options` say. A dict created here starts from
    /// `initial` (as its first full dump, written before the dict gets its name), or empty.
    pub(crate) fn open_dict(options: &Options, initial: Option<&S::Update>) -> Result<Self> {
        let name = match &options.name {
            Some(name) => name.clone(),
            None => naming::unique(),
        };
        if options.child {
            naming::validate_child(&name)?;
        } else {
            naming::validate(&name)?;
        }
        let place = Place::new(options.effective_dir()?, name);
        let name = place.name();
        let fingerprint = S::fingerprint();
        let deadline = crate::sync::deadline_in(options.open_timeout);
        loop {
            let attempt = match options.create {
                Create::New => Self::create(&place, options, &fingerprint, initial),
                Create::Open => Self::attach(&place, options, &fingerprint, deadline),
                Create::OpenOrCreate => {
                    match Self::attach(&place, options, &fingerprint, deadline) {
                        Err(Failed(Error::NotFound { .. })) => {
                            match Self::create(&place, options, &fingerprint, initial) {
                                // Another process created it first: attach to theirs.
                                Err(Failed(Error::AlreadyExists { .. })) => Err(Retry),
                                other => other,
                            }
                        }
                        other => other,
                    }
                }
            };
            match attempt {
                Ok(engine) => return Ok(engine),
                Err(Failed(err)) => return Err(err),
                Err(Retry) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(Retry) => {
                    return Err(Error::NotReady {
                        name: name.to_owned(),
                        waited: options.open_timeout,
                    });
                }
            }
        }
    }

    fn create(
        place: &Place,
        options: &Options,
        fingerprint: &Fingerprint,
        initial: Option<&S::Update>,
    ) -> Result<Self, Opening> {
        let buffer_size = options.effective_buffer_size()?;
        let full_dump_size = options.effective_full_dump_size()?;
        let lifetime = options.lifetime.unwrap_or_default();
        let mode = options.effective_mode(place.dir())?;
        let name = place.name();
        let object = place.control();
        if segment::exists(&object)? {
            // A symbolic link or another odd object is not a dict that exists: say what it is.
            if let Err(err @ Error::Foreign { .. }) = segment::open_fd(&object, false) {
                return Err(err.into());
            }
            return Err(Error::AlreadyExists {
                name: name.to_owned(),
            }
            .into());
        }
        removal::sweep_dead_creations(place)?;
        let instance = crate::os::random_u64();
        let pending = place.pending(instance);
        let (segment, fd) =
            match Segment::create_with_fd(&pending, (HEADER_SIZE + buffer_size) as u64, mode) {
                // Another creator drew the same instance number: draw again.
                Err(err) if segment::is_already_exists(&err) => return Err(Retry),
                other => other?,
            };
        crate::fault::point("create-unlocked");
        // Until the slot is claimed below, a failure takes back the pending object here (the
        // `discard` further down takes over once the engine exists).
        let abandon = |err: Error| {
            let _ = segment::unlink(&pending);
            Opening::from(err)
        };
        let anchor = Anchor::new(fd).map_err(abandon)?;
        // SAFETY: `segment` is a writable mapping of HEADER_SIZE + buffer_size bytes that this
        // process just created under a private name; the kernel zero-filled it.
        unsafe {
            Control::initialize(
                &segment,
                &Identity {
                    buffer_size: buffer_size as u64,
                    full_dump_size,
                    lifetime: lifetime.to_raw(),
                    fingerprint: fingerprint.hash,
                    schema_text: &fingerprint.description,
                    instance,
                    mode,
                },
            );
        }
        // SAFETY: a mapped control segment of the right size.
        let control = unsafe { Control::from_segment(&segment) };
        let slot = anchor
            .claim_slot(control, name, options.observer)
            .map_err(abandon)?;
        crate::fault::point("create-pending");
        let mut engine = Self::assemble(place, segment, fingerprint, anchor, slot, true, options);
        // Until it has the dict's name, nothing of this instance counts: a failure takes back
        // every object it made.
        let discard = |engine: &Self| {
            engine.detached.store(true, Ordering::Relaxed);
            removal::discard_instance(place, instance);
        };
        if let Some(initial) = initial {
            // Nobody else can see the dict yet, so no lock is needed.
            let mut view = engine.view.write();
            if let Err(err) = engine.switch_epoch(&mut view, Some(initial)) {
                drop(view);
                discard(&engine);
                return Err(err.into());
            }
        }
        engine.control().mark_ready();
        crate::fault::point("create-ready");
        match crate::os::rename_object_noreplace(&pending, &object) {
            Ok(()) => {
                if let Some(segment) = Arc::get_mut(&mut engine.segment) {
                    segment.renamed(&object);
                }
                Ok(engine)
            }
            Err(err) => {
                discard(&engine);
                match err.kind() {
                    std::io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                        name: name.to_owned(),
                    }
                    .into()),
                    // Someone took our pending object for a dead creator's: start again.
                    std::io::ErrorKind::NotFound => Err(Retry),
                    _ => Err(Error::io(format!("renaming {pending} to {object}"), err).into()),
                }
            }
        }
    }

    fn attach(
        place: &Place,
        options: &Options,
        fingerprint: &Fingerprint,
        deadline: Instant,
    ) -> Result<Self, Opening> {
        let name = place.name();
        let object = place.control();
        let (segment, fd) = match Segment::open_with_fd(&object, true) {
            Err(err) if segment::is_not_found(&err) => {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                }
                .into());
            }
            other => other?,
        };
        let control = Control::checked(&segment)?;
        if control.fingerprint != fingerprint.hash {
            return Err(Error::SchemaMismatch {
                name: name.to_owned(),
                expected: fingerprint.description.clone(),
                found: control.schema_text(),
            }
            .into());
        }
        check_parameters(name, options, control)?;
        let anchor = Anchor::new(fd)?;
        let Some(gate) = anchor.gate(deadline)? else {
            return Err(Retry);
        };
        if control.is_removed() {
            // We hold the gate, so whoever began removing it died (or just finished): finish
            // the work, then look again.
            removal::remove_held(place, &anchor, control)?;
            drop(gate);
            return Err(Retry);
        }
        let slot = anchor.claim_slot(control, name, options.observer)?;
        crate::fault::point("attach-claimed");
        drop(gate);
        let engine = Self::assemble(place, segment, fingerprint, anchor, slot, false, options);
        engine.recover_lock_of(slot);
        engine.catch_up()?;
        Ok(engine)
    }

    fn assemble(
        place: &Place,
        segment: Segment,
        fingerprint: &Fingerprint,
        anchor: Anchor,
        slot: usize,
        creator: bool,
        options: &Options,
    ) -> Self {
        // SAFETY: `segment` is a mapped control segment whose identity fields are written (by
        // us, or by the creator and seen through `ready`).
        let control = unsafe { Control::from_segment(&segment) };
        let (instance, mode) = (control.instance, control.mode);
        let lifetime = Lifetime::from_raw(control.lifetime).unwrap_or_default();
        Engine {
            place: place.clone(),
            stream_capacity: segment.len() - HEADER_SIZE,
            segment: Arc::new(segment),
            fingerprint: fingerprint.clone(),
            instance,
            view: RwLock::new(Local::new(View::empty())),
            reached: AtomicU64::new(0),
            stale_in_children: std::sync::OnceLock::new(),
            scratch: parking_lot::Mutex::new(Scratch::new()),
            reentrant: Reentrant::default(),
            membership: Membership::new(anchor, slot),
            creator: creator.then(crate::os::fork_generation),
            lifetime,
            mode,
            patience: options.open_timeout,
            observer: options.observer,
            detached: AtomicBool::new(false),
            catch_ups: AtomicU64::new(0),
            #[cfg(feature = "tokio")]
            bridge: parking_lot::Mutex::new(None),
        }
    }

    /// Takes an anchor and slot of its own for a handle copied into a forked child (the
    /// parent's were closed in the child right after the fork), waiting at most `patience`
    /// for the handle's anchor and the dict's gate. Returns the slot.
    pub(crate) fn attach_in_fork(&self, generation: u64, patience: Duration) -> Result<usize> {
        let not_ready = || Error::NotReady {
            name: self.place.name().to_owned(),
            waited: patience,
        };
        let mut anchor = self
            .membership
            .anchor
            .try_write_for(patience)
            .ok_or_else(not_ready)?;
        if let Some(slot) = self.membership.slot_in(generation) {
            return Ok(slot);
        }
        if self.detached.load(Ordering::Acquire) {
            return Err(self.removed());
        }
        let object = self.place.control();
        let fresh = match segment::open_fd(&object, true) {
            Ok(fd) => Anchor::new(fd)?,
            Err(err) if segment::is_not_found(&err) => return Err(self.removed()),
            Err(err) => return Err(err),
        };
        if !fresh.same_object(&anchor) {
            return Err(self.removed());
        }
        let control = self.control();
        let Some(gate) = fresh.gate(crate::sync::deadline_in(patience))? else {
            return Err(not_ready());
        };
        if control.is_removed() {
            return Err(self.removed());
        }
        let slot = fresh.claim_slot(control, self.place.name(), self.observer)?;
        // A dead holder of this slot's lock is recovered before the slot is this process's:
        // once the tag names it, another thread of this child may take the lock as this slot,
        // and a recovery then would rob that live hold.
        self.recover_lock_of(slot);
        drop(gate);
        *anchor = fresh;
        self.membership
            .tag
            .store(Membership::tag_of(generation, slot), Ordering::Release);
        crate::fault::point("fork-tagged");
        drop(anchor);
        Ok(slot)
    }

    /// Leaves the dict: gives this handle's slot back and, if `remove` says so (the handle
    /// layer's lifetime policy, told whether this was the last handle and whether it created
    /// the dict), removes the dict. Runs once; later calls do nothing.
    pub(crate) fn leave(&self, remove: impl FnOnce(&Departure) -> bool) -> Result<()> {
        if self.detached.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let generation = crate::os::fork_generation();
        // A copy in a forked child that never attached there holds nothing.
        let Some(slot) = self.membership.slot_in(generation) else {
            return Ok(());
        };
        let anchor = self.membership.anchor.read();
        let control = self.control();
        // A process stopped while holding the gate must not keep us here forever: after our
        // patience, leave without deciding on removal (`cleanup` can finish it).
        let gate = anchor.gate(crate::sync::deadline_in(self.patience))?;
        anchor.release_slot(control, slot);
        self.membership.tag.store(0, Ordering::Release);
        crate::fault::point("detach-released");
        let departure = Departure {
            // Without the gate somebody may be joining: never take this for the last handle.
            last: gate.is_some() && !anchor.others_alive(control),
            creator: self.creator == Some(generation),
        };
        let removed = if remove(&departure) {
            removal::remove_held(&self.place, &anchor, control)
        } else {
            Ok(())
        };
        drop(gate);
        removed
    }

    /// Removes this dict (if the name still names it) with its nested dicts. Open handles
    /// keep reading what they have; new opens create a new dict.
    pub(crate) fn remove(&self) -> Result<()> {
        let generation = crate::os::fork_generation();
        if self.membership.slot_in(generation).is_none() {
            match self.attach_in_fork(generation, self.patience) {
                Err(Error::Removed { .. }) => return Ok(()),
                other => other?,
            };
        }
        let anchor = self.membership.anchor.read();
        removal::remove(&self.place, &anchor, self.control(), self.patience)
    }
}

impl<S: Schema> Drop for Engine<S> {
    /// A handle is normally left through the handle layer (which applies the lifetime); an
    /// engine dropped without that still gives its slot back, and removes nothing.
    fn drop(&mut self) {
        if let Some(&Some(registration)) = self.stale_in_children.get() {
            crate::os::unmark_in_children(registration);
        }
        let _ = self.detach(|_| false);
    }
}

fn check_parameters(name: &str, options: &Options, control: &Control) -> Result<()> {
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
    check_parameter(
        name,
        "mode",
        options.mode.map(u64::from),
        u64::from(control.mode),
    )?;
    let lifetime = Lifetime::from_raw(control.lifetime)
        .ok_or_else(|| Error::corrupt(name, "unknown lifetime"))?;
    if let Some(requested) = options.lifetime
        && requested != lifetime
    {
        return Err(Error::ParameterMismatch {
            name: name.to_owned(),
            parameter: "lifetime",
            requested: format!("{requested:?}"),
            actual: format!("{lifetime:?}"),
        });
    }
    Ok(())
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
