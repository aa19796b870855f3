//! Looking at dicts without knowing their types: what the `ultradict` command-line tool
//! shows, and the cleanup of dicts whose processes all died.
//!
//! Everything here reads control blocks through their own mappings and checks them first
//! (`Control::checked`), so a foreign object in /dev/shm is reported, never misread. Whether a
//! handle lives is the kernel's word (see `liveness`), valid across PID namespaces.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::control::Control;
use crate::error::{Error, Result};
use crate::liveness::Anchor;
use crate::naming::{self, PREFIX, Part, Place, SEPARATOR};
use crate::options::Lifetime;
use crate::removal;
use crate::segment::{self, Segment};
use crate::status::{LockHolder, Reading};

/// A handle attached to a dict, as its process-table slot records it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attached {
    /// Its process id, as its own PID namespace numbers it.
    pub pid: u32,
    /// Whether that pid means this process's PID namespace (a process in a container may have
    /// any pid in its own).
    pub same_pid_namespace: bool,
    /// Whether the handle is still open: the kernel's word (the handle holds a lock on its slot
    /// that goes with its process), not a pid lookup.
    pub alive: bool,
    /// Its threads sleeping in `wait_for_change`.
    pub sleepers: u32,
    /// Its machine, for a dict on a server (none for shared memory).
    pub host: Option<String>,
}

/// A nested dict of a dict, as [`DictInfo::nested`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Nested {
    /// Its dict name (open it with [`inspect`] for its own state and nested dicts).
    pub name: String,
    /// What it is, e.g. `nested field stats of AppState` or `nested map`.
    pub what: Option<String>,
}

/// A dict as its control block describes it, read without knowing its key and value types.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DictInfo {
    /// The dict's name.
    pub name: String,
    /// What it stores, e.g. `UltraDict<alloc::string::String, u64>`.
    pub schema: String,
    /// The directory of the dict's objects (/dev/shm unless its creator chose another).
    pub directory: String,
    /// Every object of the dict (nested dicts included), as its name in
    /// [`directory`](Self::directory), with its size in bytes.
    pub segments: Vec<(String, u64)>,
    /// Bytes of stream in the current epoch: the dict's `buffer_size` in epoch 0, then as
    /// much as the current dump's archive if that is more.
    pub buffer_size: u64,
    /// Bytes of stream used in this epoch.
    pub buffer_used: u64,
    /// Fixed dump capacity, if one was set.
    pub full_dump_size: Option<u64>,
    /// Current epoch.
    pub epoch: u32,
    /// Records appended since creation.
    pub records: u64,
    /// Full dumps written since creation.
    pub dumps: u64,
    /// Size of the current dump's archive.
    pub dump_bytes: u64,
    /// When the dict is removed.
    pub lifetime: Lifetime,
    /// The handles in its process table (one entry per handle; dead ones until their slot is
    /// taken again).
    pub attached: Vec<Attached>,
    /// Handles alive and attached.
    pub attached_count: u32,
    /// Threads sleeping in `wait_for_change`, in live handles.
    pub sleepers: u32,
    /// Whether a removal began (a remover that died leaves it marked; `cleanup` or the next
    /// opener finishes it).
    pub removing: bool,
    /// Who holds the lock.
    pub lock_holder: Option<LockHolder>,
    /// Whether the lock holder is alive (`None` when the lock is free).
    pub lock_holder_alive: Option<bool>,
    /// How often a dead holder's lock was recovered.
    pub lock_recoveries: u64,
    /// Publications so far (wraps): watch it to see activity.
    pub changes: u32,
    /// Nested dicts under this one (their dict names).
    pub children: Vec<String>,
    /// The same nested dicts, with what each is as the dict's register records it (a struct
    /// field, a map key); a child found under the name but missing from the register (or a
    /// register this process may not open) has no description.
    pub nested: Vec<Nested>,
}

impl DictInfo {
    /// Total bytes of shared memory the dict's objects take.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(_, len)| len).sum()
    }

    /// Processes still attached and alive.
    pub fn live_pids(&self) -> Vec<u32> {
        self.attached
            .iter()
            .filter(|a| a.alive)
            .map(|a| a.pid)
            .collect()
    }

    /// Whether nobody will remove it: no handle is alive and its lifetime is not
    /// `Persistent` (a persistent dict is meant to outlive its processes), or a removal began
    /// whose remover died.
    pub fn orphaned(&self) -> bool {
        self.removing || (self.lifetime != Lifetime::Persistent && self.attached_count == 0)
    }
}

/// Reads the control block of dict `name` (a root or nested dict name) in /dev/shm.
///
/// # Errors
/// [`Error::NotFound`], [`Error::Foreign`] (not an ultradict control segment, or one never
/// finished), [`Error::VersionMismatch`], [`Error::PermissionDenied`].
pub fn inspect(name: &str) -> Result<DictInfo> {
    inspect_in(crate::os::SHM_DIR, name)
}

/// [`inspect`] for a dict whose objects live in directory `dir` (see
/// [`Builder::directory`](crate::Builder::directory)).
///
/// # Errors
/// As [`inspect`]; [`Error::InvalidOption`] if `dir` is not a directory.
pub fn inspect_in(dir: impl AsRef<Path>, name: &str) -> Result<DictInfo> {
    if name.contains(SEPARATOR) {
        naming::validate_child(name)?;
    } else {
        naming::validate(name)?;
    }
    let place = place_in(dir.as_ref(), name)?;
    let (segment, anchor) = open_control(&place, false)?;
    let control = Control::checked(&segment)?;
    let reading = Reading::of(control, &anchor);
    let mut segments = Vec::new();
    for object in place.objects()? {
        let len = std::fs::metadata(&object).map(|m| m.len()).unwrap_or(0);
        segments.push((Place::file_name(&object).to_owned(), len));
    }
    let children: Vec<String> = segments
        .iter()
        .filter_map(|(object, _)| match place.classify(object) {
            Part::Child(child) => Some(child),
            _ => None,
        })
        .collect();
    let registered = crate::register::children(&place).unwrap_or_default();
    let mut nested: Vec<Nested> = registered
        .into_iter()
        .map(|(name, what)| Nested {
            name,
            what: Some(what),
        })
        .collect();
    for child in &children {
        if !nested.iter().any(|known| &known.name == child) {
            nested.push(Nested {
                name: child.clone(),
                what: None,
            });
        }
    }
    nested.sort_by(|a, b| a.name.cmp(&b.name));
    let state = reading.state;
    Ok(DictInfo {
        name: name.to_owned(),
        directory: place.dir().to_string(),
        schema: control.schema_text(),
        segments,
        buffer_size: match control.counters.stream_len.load(Ordering::Relaxed) {
            0 => control.buffer_size,
            len => len,
        },
        buffer_used: u64::from(state.committed),
        full_dump_size: (control.full_dump_size != 0).then_some(control.full_dump_size),
        epoch: state.epoch,
        records: reading.records,
        dumps: reading.dumps,
        dump_bytes: reading.dump_bytes,
        lifetime: reading.lifetime,
        attached_count: reading.live().count() as u32,
        sleepers: reading.live().map(|a| a.sleepers).sum(),
        lock_holder_alive: reading.lock_holder_alive,
        lock_holder: reading.lock_holder,
        lock_recoveries: reading.lock_recoveries,
        changes: reading.changes,
        removing: reading.removing,
        attached: reading.attached,
        children,
        nested,
    })
}

/// Dict `name` in directory `dir` (checked as a dict's directory is).
fn place_in(dir: &Path, name: &str) -> Result<Place> {
    let options = crate::options::Options {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    Ok(Place::new(options.effective_dir()?, name))
}

/// Opens the control segment of the dict at `place` with an anchor of its own.
fn open_control(place: &Place, writable: bool) -> Result<(Segment, Anchor)> {
    let object = place.control();
    match Segment::open_with_fd(&object, writable) {
        Err(err) if segment::is_not_found(&err) => Err(Error::NotFound {
            name: place.name().to_owned(),
        }),
        Err(err) => Err(err),
        Ok((segment, fd)) => Ok((segment, Anchor::new(fd)?)),
    }
}

/// One root dict found in /dev/shm: what it says, or why it could not be read.
#[derive(Debug)]
pub struct Listed {
    /// The dict's name (the part of the object names after `ultradict.` and before `~`).
    pub name: String,
    /// Its description, or the error reading it (a foreign object, a dict of another format
    /// version, objects left under a name whose control segment is gone).
    pub info: Result<DictInfo>,
}

/// Every root dict in /dev/shm (nested dicts are listed in their root's
/// [`DictInfo::children`]), sorted by name.
///
/// # Errors
/// [`Error::Io`] if /dev/shm cannot be read.
pub fn list() -> Result<Vec<Listed>> {
    list_in(crate::os::SHM_DIR)
}

/// [`list`] for the dicts whose objects live in directory `dir`.
///
/// # Errors
/// [`Error::Io`] if `dir` cannot be read; [`Error::InvalidOption`] if it is not a directory.
pub fn list_in(dir: impl AsRef<Path>) -> Result<Vec<Listed>> {
    let dir = dir.as_ref();
    Ok(root_names(dir)?
        .into_iter()
        .map(|name| {
            let info = inspect_in(dir, &name);
            Listed { name, info }
        })
        .collect())
}

/// The names of every root dict that has an object in `dir`.
fn root_names(dir: &Path) -> Result<BTreeSet<String>> {
    let place = place_in(dir, "x")?;
    let objects = crate::os::list_objects(place.dir(), PREFIX)
        .map_err(|e| Error::io(format!("listing {}", place.dir()), e))?;
    Ok(objects
        .iter()
        .map(|object| {
            let rest = &object[PREFIX.len()..];
            rest.split(SEPARATOR).next().unwrap_or(rest)
        })
        .filter(|root| naming::validate(root).is_ok())
        .map(str::to_owned)
        .collect())
}

/// Removes every dict that nobody will remove (see [`DictInfo::orphaned`]: no live handle and
/// not persistent, or a removal whose remover died), with its nested dicts, and objects left
/// under names whose control segment is gone; with `dry_run`, only says which. Returns the
/// names of the dicts removed (or that would be): of a name whose control segment is gone,
/// only once nothing is left under it (a nested dict still in use stays until a later cleanup
/// after its last close).
///
/// A dict that a process is creating, joining or leaving right now is left alone, as are
/// foreign objects and dicts of another format version. Handles are judged alive by the
/// kernel (see the crate docs on liveness), so a dict used only by processes in another PID
/// namespace is never taken for orphaned.
///
/// A name with an object under it that cannot be removed (another user's, in a sticky
/// directory such as /dev/shm, or a directory) keeps that object, and is not reported; a
/// name whose cleaning fails otherwise does not stop the others'.
///
/// # Errors
/// [`Error::Io`] if /dev/shm cannot be read; the first error of a name whose cleaning failed,
/// once the other names were cleaned.
pub fn cleanup(dry_run: bool) -> Result<Vec<String>> {
    cleanup_in(crate::os::SHM_DIR, dry_run)
}

/// [`cleanup`] for the dicts whose objects live in directory `dir`.
///
/// # Errors
/// As [`cleanup`]; [`Error::InvalidOption`] if `dir` is not a directory.
pub fn cleanup_in(dir: impl AsRef<Path>, dry_run: bool) -> Result<Vec<String>> {
    let dir = dir.as_ref();
    let mut removed = Vec::new();
    let mut failed = None;
    for name in root_names(dir)? {
        // A name that cannot be cleaned stays and the other names are still cleaned. What
        // cannot be the dicts' (another user's objects, say) is no failure; anything else is
        // reported once every other name was cleaned.
        match clean(&place_in(dir, &name)?, dry_run) {
            Ok(true) => removed.push(name),
            Ok(false) | Err(Error::PermissionDenied { .. } | Error::Foreign { .. }) => {}
            Err(err) => {
                failed.get_or_insert(err);
            }
        }
    }
    match failed {
        Some(err) => Err(err),
        None => Ok(removed),
    }
}

/// Takes what is left under the name of a dict whose control segment is gone (its creator or
/// its remover died half way, or someone unlinked it): dead creations, dumps of instances
/// that can no longer get the name, and its nested dicts and register unless in use (nobody
/// reaches them through the dict any more, whatever their lifetime). A creator may rename its
/// object into the name at any moment: nothing of the dict that then has the name is touched
/// (its dumps, its nested dicts, its register), and neither are strays no dict of ours makes.
fn clean_leftovers(place: &Place) -> Result<()> {
    removal::sweep_dead_creations(place)?;
    for object in place.objects()? {
        match place.classify(&object) {
            Part::Dump { instance } if removal::instance_is_gone(place, instance)? => {
                removal::unless_not_ours(segment::unlink(&object))?;
            }
            Part::Child(child) => remove_if_unused(&place.sibling(&child), place)?,
            _ => {}
        }
    }
    remove_if_unused(&place.register(), place)
}

/// Removes `dict` (a nested dict or the register of `parent`, whose control segment was
/// gone) with its tree, if nobody has it open and `parent` still has no control segment; what
/// is left of it if its own control segment is gone too. Judged under its gate, which an
/// opener takes to attach: a parent that got the name meanwhile opens its nested dicts and
/// register after, and finds them removed, or before, and keeps them.
fn remove_if_unused(dict: &Place, parent: &Place) -> Result<()> {
    let (segment, anchor) = match open_control(dict, true) {
        Ok(opened) => opened,
        Err(Error::NotFound { .. }) if !dict.objects()?.is_empty() => {
            return clean_leftovers(dict);
        }
        Err(_) => return Ok(()),
    };
    let Ok(control) = Control::checked(&segment) else {
        return Ok(());
    };
    let Some(gate) = anchor.gate(Instant::now())? else {
        return Ok(());
    };
    if !anchor.others_alive(control) && !segment::exists(&parent.control())? {
        removal::remove_held(dict, &anchor, control)?;
    }
    drop(gate);
    Ok(())
}

/// Removes the dict at `place` (or what is left under its name) if nobody will; returns
/// whether it did (or, with `dry_run`, would).
fn clean(place: &Place, dry_run: bool) -> Result<bool> {
    let (segment, anchor) = match open_control(place, true) {
        Ok(opened) => opened,
        Err(Error::NotFound { .. }) => {
            // Objects without their control segment: leftovers, unless a creator is at work.
            if place.objects()?.is_empty() || removal::creation_under_way(place)? {
                return Ok(false);
            }
            if dry_run {
                return Ok(true);
            }
            crate::fault::point("cleanup-judged");
            clean_leftovers(place)?;
            // A nested dict still in use stays (until a later cleanup after its last close),
            // and a dict created meanwhile has the name: then the name was not cleaned.
            return Ok(place.objects()?.is_empty());
        }
        // Foreign objects, other users' dicts: not ours to judge.
        Err(_) => return Ok(false),
    };
    let Ok(control) = Control::checked(&segment) else {
        return Ok(false);
    };
    // Somebody attaching, leaving or removing right now is alive and at work.
    let Some(gate) = anchor.gate(Instant::now())? else {
        return Ok(false);
    };
    let lifetime = Lifetime::from_raw(control.lifetime).unwrap_or_default();
    let orphaned =
        control.is_removed() || (lifetime != Lifetime::Persistent && !anchor.others_alive(control));
    if orphaned && !dry_run {
        removal::remove_held(place, &anchor, control)?;
    }
    drop(gate);
    Ok(orphaned)
}
